package repository

import (
	"bytes"
	"context"
	"crypto/sha256"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/custos-backup/custos/repository/format"
	"github.com/restic/chunker"
)

// TestReadAhead reads files of awkward sizes from awkward offsets through
// readAhead and compares every byte. t.TempDir is on a disk file system
// here, where the reads must go direct; /dev/shm (tmpfs) is read too when
// it exists.
func TestReadAhead(t *testing.T) {
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
		for _, tc := range []struct {
			name      string
			size, off int
			stopAfter int // 0: read to the end; else close after this many bytes
		}{
			{"empty-rest", 4096, 4096, 0},
			{"aligned", 2 << 20, 256 << 10, 0},
			{"odd-size", 3<<20 + 12345, 256 << 10, 0},
			{"odd-offset", 3<<20 + 1, 300001, 0},
			{"one-byte-rest", readAheadSize + 1, readAheadSize, 0},
			{"from-zero", readAheadSize * 3, 0, 0},
			{"stop-early", 8 << 20, 4096, 1 << 20},
		} {
			t.Run(tc.name, func(t *testing.T) {
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
				ra := newReadAhead(f, int64(tc.off), bufs)
				var got []byte
				if tc.stopAfter > 0 {
					got = make([]byte, tc.stopAfter)
					_, err = io.ReadFull(ra, got)
				} else {
					got, err = io.ReadAll(ra)
				}
				ra.close()
				if err != nil {
					t.Fatal(err)
				}
				want := data[tc.off:]
				if tc.stopAfter > 0 {
					want = want[:tc.stopAfter]
				}
				mustEqual(t, got, want, tc.name)
				if di == 0 && len(data)-tc.off >= 2*directAlign && ra.directBytes.Load() == 0 {
					t.Errorf("nothing read with O_DIRECT from %s", dir)
				}
				if bufs.retained != 2*readAheadSize {
					t.Errorf("pool holds %d bytes after close, want both buffers back", bufs.retained)
				}
			})
		}
	}
}

// TestReadAheadFallsBack makes a direct read fail (the file offset is not
// where readAhead believes, so it is not aligned) and expects the rest of
// the file, read through the page cache.
func TestReadAheadFallsBack(t *testing.T) {
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
	ra := newReadAhead(f, 0, &bufPool{})
	got, err := io.ReadAll(ra)
	ra.close()
	if err != nil {
		t.Fatal(err)
	}
	mustEqual(t, got, data[100:], "rest")
	if ra.direct.Load() || ra.directBytes.Load() != 0 {
		t.Errorf("still direct after EINVAL (direct %v, %d bytes)", ra.direct.Load(), ra.directBytes.Load())
	}
}

// TestBackupCutsLikeRestic backs up large files of odd sizes and checks
// that their content is restic/chunker v0.4.0's chunks with the
// repository's polynomial and sizes, in order (deduplication against
// existing repositories depends on it), and that they restore byte-exact.
func TestBackupCutsLikeRestic(t *testing.T) {
	ctx := context.Background()
	r, _ := newTestRepo(t, false)
	src := t.TempDir()
	files := map[string][]byte{}
	mixed := randBytes(5, 20<<20)
	clear(mixed[3<<20 : 12<<20]) // zeros longer than chunk_max: cuts at chunk_max
	for name, data := range map[string][]byte{
		"min":       randBytes(1, int(r.cfg.MinChunk)),
		"min+1":     randBytes(2, int(r.cfg.MinChunk)+1),
		"odd":       randBytes(3, 5<<20+12345),
		"aligned":   randBytes(4, 4<<20),
		"mixed":     mixed,
		"sub/small": randBytes(6, 1000),
	} {
		writeFile(t, filepath.Join(src, name), data, 0o644)
		files[name] = data
	}
	sn, err := r.Backup(ctx, src, nil, BackupOptions{Dataset: "d"})
	if err != nil {
		t.Fatal(err)
	}
	pol, err := chunkerPol(r.cfg)
	if err != nil {
		t.Fatal(err)
	}
	for name, data := range files {
		n, err := r.findNode(ctx, sn.Tree, name)
		if err != nil {
			t.Fatal(err)
		}
		ch := chunker.NewWithBoundaries(bytes.NewReader(data), pol, r.cfg.MinChunk, r.cfg.MaxChunk)
		ch.SetAverageBits(r.cfg.AverageBits())
		var want []ID
		for {
			c, err := ch.Next(nil)
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			want = append(want, sha256.Sum256(c.Data))
		}
		if len(n.Content) != len(want) {
			t.Fatalf("%s: %d chunks, restic/chunker cuts %d", name, len(n.Content), len(want))
		}
		for i := range want {
			if n.Content[i] != want[i] {
				t.Fatalf("%s: chunk %d is not restic/chunker's", name, i)
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
}

// chunkerPol is the repository's chunker polynomial.
func chunkerPol(cfg *format.Config) (chunker.Pol, error) {
	var p chunker.Pol
	err := p.UnmarshalJSON([]byte(`"` + cfg.Polynomial + `"`))
	return p, err
}
