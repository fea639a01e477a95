package repository

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"testing"

	"github.com/custos-backup/custos/repository/cdc"
	"github.com/custos-backup/custos/repository/format"
	"github.com/restic/chunker"
)

// TestDirectRead reads files of awkward sizes from awkward offsets with a
// directReader, alone (in page-aligned pooled buffers, as the chunker
// reads) and behind a readAhead, and compares every byte. t.TempDir is on
// a disk file system here, where the reads must go direct; /dev/shm
// (tmpfs) is read too when it exists.
func TestDirectRead(t *testing.T) {
	dirs := []string{t.TempDir()}
	if st, err := os.Stat("/dev/shm"); err == nil && st.IsDir() {
		d, err := os.MkdirTemp("/dev/shm", "custos-readahead-")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = os.RemoveAll(d) })
		dirs = append(dirs, d)
	}
	for di, dir := range dirs {
		for _, ahead := range []bool{false, true} {
			for _, tc := range []struct {
				name      string
				size, off int
				stopAfter int // 0: read to the end; else stop after this many bytes
			}{
				{"empty-rest", 4096, 4096, 0},
				{"aligned", 2 << 20, 256 << 10, 0},
				{"odd-size", 3<<20 + 12345, 256 << 10, 0},
				{"odd-offset", 3<<20 + 1, 300001, 0},
				{"one-byte-rest", readAheadSize + 1, readAheadSize, 0},
				{"from-zero", readAheadSize * 3, 0, 0},
				{"stop-early", 8 << 20, 4096, 2 << 20},
			} {
				t.Run(fmt.Sprintf("%d-%v-%s", di, ahead, tc.name), func(t *testing.T) {
					data := randBytes(uint64(tc.size), tc.size)
					p := filepath.Join(dir, tc.name)
					writeFile(t, p, data, 0o644)
					f, err := os.Open(p)
					if err != nil {
						t.Fatal(err)
					}
					defer func() { _ = f.Close() }()
					if _, err := f.Seek(int64(tc.off), io.SeekStart); err != nil {
						t.Fatal(err)
					}
					bufs := &bufPool{}
					dr := &directReader{f: f, off: int64(tc.off)}
					var rd io.Reader = dr
					var ra *readAhead
					if ahead {
						ra = newReadAhead(dr, bufs)
						rd = ra
					}
					// As in readFile, the first off bytes were read before.
					rd = io.MultiReader(&bytesReader{b: data[:tc.off]}, rd)
					got, err := readAligned(rd, bufs, tc.stopAfter)
					if ra != nil {
						ra.close()
						if bufs.retained != 2*readAheadSize+readAheadSize {
							t.Errorf("pool holds %d bytes after close, want every buffer back", bufs.retained)
						}
					}
					if err != nil {
						t.Fatal(err)
					}
					want := data
					if tc.stopAfter > 0 {
						want = want[:tc.stopAfter]
					}
					mustEqual(t, got, want, tc.name)
					if di == 0 && len(data)-tc.off >= 2*directAlign && dr.directBytes == 0 {
						t.Errorf("nothing read with O_DIRECT from %s", dir)
					}
				})
			}
		}
	}
}

// readAligned reads rd to its end (or limit bytes, if not 0) the way the
// chunker does: io.ReadFull into one pooled buffer of readAheadSize.
func readAligned(rd io.Reader, bufs *bufPool, limit int) ([]byte, error) {
	buf := bufs.get(readAheadSize)
	defer bufs.put(buf)
	var out []byte
	for limit == 0 || len(out) < limit {
		n, err := io.ReadFull(rd, buf)
		out = append(out, buf[:n]...)
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			break
		}
		if err != nil {
			return nil, err
		}
	}
	if limit > 0 {
		out = out[:limit]
	}
	return out, nil
}

// TestDirectReadFallsBack makes a direct read fail (the file offset is
// not where the reader believes, so it is not aligned) and expects the
// rest of the file, read through the page cache.
func TestDirectReadFallsBack(t *testing.T) {
	data := randBytes(9, 2<<20+77)
	p := filepath.Join(t.TempDir(), "f")
	writeFile(t, p, data, 0o644)
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = f.Close() }()
	if _, err := f.Seek(100, io.SeekStart); err != nil {
		t.Fatal(err)
	}
	dr := &directReader{f: f}
	got, err := readAligned(dr, &bufPool{}, 0)
	if err != nil {
		t.Fatal(err)
	}
	mustEqual(t, got, data[100:], "rest")
	if !dr.failed || dr.direct || dr.directBytes != 0 {
		t.Errorf("after EINVAL: failed %v, direct %v, %d bytes direct", dr.failed, dr.direct, dr.directBytes)
	}
	// The same behind a readAhead.
	if _, err := f.Seek(100, io.SeekStart); err != nil {
		t.Fatal(err)
	}
	dr = &directReader{f: f}
	ra := newReadAhead(dr, &bufPool{})
	got, err = readAligned(ra, &bufPool{}, 0)
	ra.close()
	if err != nil {
		t.Fatal(err)
	}
	mustEqual(t, got, data[100:], "rest")
	if !dr.failed || dr.direct || dr.directBytes != 0 {
		t.Errorf("after EINVAL: failed %v, direct %v, %d bytes direct", dr.failed, dr.direct, dr.directBytes)
	}
}

// TestBackupCutsLikeItsChunker backs up large files of odd sizes and
// checks that their content is the chunks that the repository's chunker
// (cdc's gear, or restic/chunker v0.4.0), driven directly with the
// repository's secret and sizes, cuts, in order (deduplication against
// existing repositories depends on it), and that they restore byte-exact.
// On one core the chunker's goroutine stores the chunks itself; with two
// and one large file, the file is read ahead and stored by goroutines of
// its own.
func TestBackupCutsLikeItsChunker(t *testing.T) {
	for _, name := range []string{format.ChunkerGear, format.ChunkerRabin} {
		t.Run(name, func(t *testing.T) { testBackupCuts(t, name) })
	}
}

func testBackupCuts(t *testing.T, chunkerName string) {
	mixed := randBytes(5, 20<<20)
	clear(mixed[3<<20 : 12<<20]) // zeros longer than chunk_max: cuts at chunk_max
	for _, tc := range []struct {
		name  string
		procs int
		files []string
	}{
		{"one-core", 1, []string{"min", "min+1", "odd", "aligned", "mixed", "sub/small"}},
		{"alone", 2, []string{"mixed", "sub/small"}},
		{"two-at-once", 2, []string{"min", "min+1", "odd", "aligned", "mixed", "sub/small"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(tc.procs))
			ctx := context.Background()
			r := newChunkerRepo(t, chunkerName)
			if r.cfg.Chunker != chunkerName {
				t.Fatalf("repository uses chunker %q", r.cfg.Chunker)
			}
			all := map[string][]byte{
				"min":       randBytes(1, int(r.cfg.MinChunk)),
				"min+1":     randBytes(2, int(r.cfg.MinChunk)+1),
				"odd":       randBytes(3, 5<<20+12345),
				"aligned":   randBytes(4, 4<<20),
				"mixed":     mixed,
				"sub/small": randBytes(6, 1000),
			}
			src := t.TempDir()
			for _, name := range tc.files {
				writeFile(t, filepath.Join(src, name), all[name], 0o644)
			}
			sn, err := r.Backup(ctx, src, nil, BackupOptions{Dataset: "d"})
			if err != nil {
				t.Fatal(err)
			}
			for _, name := range tc.files {
				data := all[name]
				n, err := findNode(ctx, r, sn.Tree, name)
				if err != nil {
					t.Fatal(err)
				}
				want := referenceChunks(t, r.cfg, data)
				if len(n.Content) != len(want) {
					t.Fatalf("%s: %d chunks, the chunker cuts %d", name, len(n.Content), len(want))
				}
				for i := range want {
					if n.Content[i] != want[i] {
						t.Fatalf("%s: chunk %d is not the chunker's", name, i)
					}
				}
				if n.Digest != ID(sha256.Sum256(data)) {
					t.Errorf("%s: digest is not the file's SHA-256", name)
				}
			}
			target := t.TempDir()
			if _, err := r.Restore(ctx, sn, target, RestoreOptions{}); err != nil {
				t.Fatal(err)
			}
			compareTrees(t, src, target)
		})
	}
}

// newChunkerRepo is newTestRepo with the chunker chosen.
func newChunkerRepo(t testing.TB, chunkerName string) *Repository {
	t.Helper()
	be, _ := newBackend(t)
	r, err := Init(context.Background(), be, InitOptions{Password: testPassword, kdfParams: cheapKDF, PackSize: 4 << 20, Chunker: chunkerName})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = r.Close() })
	return r
}

// referenceChunks is the ids of the chunks of data as the chunker library
// itself cuts them, built from the config's fields without the config's
// own NewChunker.
func referenceChunks(t testing.TB, cfg *format.Config, data []byte) []ID {
	t.Helper()
	var next func() ([]byte, error)
	switch cfg.Chunker {
	case format.ChunkerGear:
		seed, err := hex.DecodeString(cfg.ChunkerSeed)
		if err != nil {
			t.Fatal(err)
		}
		ch := cdc.New(bytes.NewReader(data), cdc.NewTable(seed), cdc.Params{Min: int(cfg.MinChunk), Max: int(cfg.MaxChunk), AvgBits: cfg.AverageBits()})
		next = func() ([]byte, error) { return ch.Next(nil) }
	default:
		var pol chunker.Pol
		if err := pol.UnmarshalJSON([]byte(`"` + cfg.Polynomial + `"`)); err != nil {
			t.Fatal(err)
		}
		ch := chunker.NewWithBoundaries(bytes.NewReader(data), pol, cfg.MinChunk, cfg.MaxChunk)
		ch.SetAverageBits(cfg.AverageBits())
		next = func() ([]byte, error) {
			c, err := ch.Next(nil)
			return c.Data, err
		}
	}
	var ids []ID
	for {
		c, err := next()
		if err == io.EOF {
			return ids
		}
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, sha256.Sum256(c))
	}
}
