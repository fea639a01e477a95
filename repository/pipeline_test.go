package repository

import (
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"testing/iotest"

	"github.com/custos-backup/custos/repository/backend"
	"github.com/custos-backup/custos/repository/backend/local"
	"github.com/custos-backup/custos/repository/format"
)

// plainBackend hides the optional methods of a backend (Stage), as any
// wrapper does, so that the saver must fall back to backend.Save.
type plainBackend struct{ backend.Backend }

// TestPackModes backs up the same tree with every way of assembling packs
// (staged in the repository folder, in memory, in temp files) and checks
// that each repository verifies completely, restores byte-exact, keeps
// packs within pack_size, and leaves no temp files behind.
func TestPackModes(t *testing.T) {
	src := t.TempDir()
	for i := range 6 {
		writeFile(t, filepath.Join(src, "big", string(rune('a'+i))), randBytes(uint64(100+i), 700<<10+i*333<<10), 0o644)
	}
	for i := range 300 {
		writeFile(t, filepath.Join(src, "small", string(rune('a'+i%26))+strings.Repeat("x", i/26)), randBytes(uint64(1000+i), 1+i*97), 0o644)
	}
	writeFile(t, filepath.Join(src, "log.txt"), benchText(3<<20), 0o644)

	for _, tc := range []struct {
		name     string
		wrap     bool  // hide Stage
		inMemory bool  // Repository.packsInMemory
		packSize int64 // 0: the test default (1 MiB)
		want     packMode
	}{
		{name: "staged", want: packStaged},
		{name: "in-memory-forced", inMemory: true, want: packInMemory},
		{name: "in-memory-wrapped", wrap: true, want: packInMemory},
		{name: "temp-file", wrap: true, packSize: 2 * maxInMemoryPackSize, want: packTempFile},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			be, dir := newBackend(t)
			if tc.wrap {
				be = plainBackend{be}
			}
			ps := tc.packSize
			if ps == 0 {
				ps = format.MinPackSize
			}
			r, err := Init(ctx, be, InitOptions{Password: testPassword, kdfParams: cheapKDF, PackSize: ps})
			if err != nil {
				t.Fatal(err)
			}
			r.packsInMemory = tc.inMemory
			if got, _ := r.packMode(); got != tc.want {
				t.Fatalf("pack mode %d, want %d", got, tc.want)
			}
			sn, err := r.Backup(ctx, src, nil, BackupOptions{Dataset: "d"})
			if err != nil {
				t.Fatal(err)
			}
			res, err := r.Check(ctx, CheckOptions{ReadData: true})
			if err != nil || len(res.Problems) != 0 {
				t.Fatalf("check: %v %+v", err, res)
			}
			target := t.TempDir()
			if _, err := r.Restore(ctx, sn, target, RestoreOptions{}); err != nil {
				t.Fatal(err)
			}
			compareTrees(t, src, target)

			var packs int
			err = filepath.Walk(filepath.Join(dir, "data"), func(p string, fi os.FileInfo, err error) error {
				if err != nil || fi.IsDir() {
					return err
				}
				if strings.HasPrefix(fi.Name(), local.TempPrefix) {
					t.Errorf("temp file left behind: %s", p)
				}
				packs++
				// A whole pack (header included) fits in pack_size unless
				// it holds a single larger blob.
				if fi.Size() > ps {
					id, err := ParseID(fi.Name())
					if err != nil {
						return err
					}
					h, err := r.readPackHeader(ctx, id, fi.Size())
					if err != nil {
						return err
					}
					if len(h.Blobs) != 1 {
						t.Errorf("pack %s has %d bytes in %d blobs, pack_size is %d", fi.Name(), fi.Size(), len(h.Blobs), ps)
					}
				}
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			if ps == format.MinPackSize && packs < 5 {
				t.Errorf("%d packs for about 8 MiB of data in 1 MiB packs", packs)
			}
		})
	}
}

// failingStager is a local backend whose third pack commit fails (a fault
// the real backend cannot be made to produce on demand when running as
// root); like the real commit on error, it removes the staged file.
type failingStager struct {
	*local.Backend
	commits atomic.Int32
}

func (f *failingStager) Stage(ctx context.Context, t backend.FileType) (io.Writer, func(context.Context, backend.Handle) error, func(), error) {
	file, commit, abort, err := f.Backend.Stage(ctx, t)
	if err != nil {
		return nil, nil, nil, err
	}
	return file, func(ctx context.Context, h backend.Handle) error {
		if f.commits.Add(1) == 3 {
			abort()
			return errors.New("injected commit failure")
		}
		return commit(ctx, h)
	}, abort, nil
}

// TestBackupFailureRemovesStagedPacks makes a pack commit fail midway and
// checks that the failed backup leaves neither a snapshot, an index file,
// nor staged temp files (packs being filled are aborted).
func TestBackupFailureRemovesStagedPacks(t *testing.T) {
	ctx := context.Background()
	dir := filepath.Join(t.TempDir(), "repo")
	lb, err := local.Create(ctx, dir)
	if err != nil {
		t.Fatal(err)
	}
	fs := &failingStager{Backend: lb}
	r, err := Init(ctx, fs, InitOptions{Password: testPassword, kdfParams: cheapKDF, PackSize: format.MinPackSize})
	if err != nil {
		t.Fatal(err)
	}
	if m, _ := r.packMode(); m != packStaged {
		t.Fatalf("pack mode %d, want staged", m)
	}
	src := t.TempDir()
	for i := range 12 {
		writeFile(t, filepath.Join(src, string(rune('a'+i))), randBytes(uint64(200+i), 600<<10), 0o644)
	}
	_, err = r.Backup(ctx, src, nil, BackupOptions{Dataset: "d"})
	if err == nil || !strings.Contains(err.Error(), "injected commit failure") {
		t.Fatalf("backup error %v, want the injected commit failure", err)
	}
	if fs.commits.Load() < 3 {
		t.Fatalf("only %d commits", fs.commits.Load())
	}
	for _, sub := range []string{"snapshots", "index"} {
		if e, _ := os.ReadDir(filepath.Join(dir, sub)); len(e) != 0 {
			t.Errorf("failed backup wrote %s: %v", sub, e)
		}
	}
	_ = filepath.Walk(filepath.Join(dir, "data"), func(p string, fi os.FileInfo, err error) error {
		if err == nil && strings.HasPrefix(fi.Name(), local.TempPrefix) {
			t.Errorf("failed backup left temp file %s", p)
		}
		return nil
	})
}

func TestBufPoolClasses(t *testing.T) {
	for _, n := range []int{1, 4096, 4097, 5120, 5121, 8191, 8192, 8193, 600 << 10, 1<<20 + 28, 8<<20 + 28, 32 << 20} {
		c := bufClass(n)
		if classSize(c) < n {
			t.Errorf("bufClass(%d) = %d of size %d: too small", n, c, classSize(c))
		}
		if c > 0 && classSize(c-1) >= n {
			t.Errorf("bufClass(%d) = %d, but class %d (size %d) fits", n, c, c-1, classSize(c-1))
		}
		if c > 0 && float64(classSize(c)) > 1.25*float64(n) {
			t.Errorf("bufClass(%d) wastes %d bytes", n, classSize(c)-n)
		}
	}
	var p bufPool
	b := p.get(1<<20 + 28)
	p.put(b)
	if c := p.get(1 << 20); &c[:1][0] != &b[:1][0] {
		t.Error("a freed buffer one class up was not reused")
	}
	p.put(p.get(64 << 20)) // beyond the classes: not retained
	if p.retained != 0 {
		t.Errorf("pool retains %d bytes, want 0", p.retained)
	}
	for range 100 {
		p.put(make([]byte, 1<<20))
	}
	if p.retained > maxPoolRetained {
		t.Errorf("pool retains %d bytes, limit %d", p.retained, maxPoolRetained)
	}
}

// countingReader counts Read calls.
type countingReader struct {
	r     io.Reader
	reads int
}

func (c *countingReader) Read(p []byte) (int, error) { c.reads++; return c.r.Read(p) }

func TestReadSmall(t *testing.T) {
	for _, tc := range []struct {
		name      string
		content   string
		oneByte   bool // the reader returns one byte per call
		bufLen    int
		statSize  int64
		wantN     int
		wantErr   error
		wantReads int
	}{
		{"as stat said: no read for EOF", "hello", false, 6, 5, 5, io.ErrUnexpectedEOF, 1},
		{"short reads up to the stat size", "hello", true, 6, 5, 5, io.ErrUnexpectedEOF, 5},
		{"empty", "", false, 1, 0, 0, io.EOF, 1},
		{"shrunk since stat", "hel", true, 6, 5, 3, io.ErrUnexpectedEOF, 4},
		{"grew since stat", "hello!!", false, 6, 5, 6, nil, 1},
		{"stat size beyond buffer (chunked file)", "0123456789", false, 4, 10, 4, nil, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var src io.Reader = strings.NewReader(tc.content)
			if tc.oneByte {
				src = iotest.OneByteReader(src)
			}
			r := &countingReader{r: src}
			buf := make([]byte, tc.bufLen)
			n, err := readSmall(r, buf, tc.statSize)
			if n != tc.wantN || err != tc.wantErr {
				t.Fatalf("readSmall = %d, %v; want %d, %v", n, err, tc.wantN, tc.wantErr)
			}
			if string(buf[:n]) != tc.content[:n] {
				t.Fatalf("read %q", buf[:n])
			}
			if r.reads != tc.wantReads {
				t.Fatalf("%d reads, want %d", r.reads, tc.wantReads)
			}
		})
	}
}

func TestCompressible(t *testing.T) {
	text := []byte(strings.Repeat("2026-11-22T06:10:34Z INFO request served path=/index.html status=200\n", 2000))
	half := append(randBytes(41, 64<<10), text[:64<<10]...)
	for _, tc := range []struct {
		name string
		data []byte
		want bool
	}{
		{"random 1 MiB", randBytes(40, 1<<20), false},
		{"random 8 KiB", randBytes(42, 8<<10), false},
		{"random, shorter than a window", randBytes(43, 3000), false},
		{"tiny (always tried)", randBytes(44, 100), true},
		{"log text", text, true},
		{"zeros", make([]byte, 1<<20), true},
		{"random then text (a sampled window is text)", half, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := compressible(tc.data); got != tc.want {
				t.Errorf("compressible = %v, want %v", got, tc.want)
			}
		})
	}
}
