package local_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/custos-backup/custos/repository/backend"
	"github.com/custos-backup/custos/repository/backend/local"
)

func packHandle(c string) backend.Handle {
	return backend.Handle{Type: backend.PackFile, Name: strings.Repeat(c, 64)}
}

func listNames(t *testing.T, be *local.Backend, ft backend.FileType) []string {
	t.Helper()
	var names []string
	if err := be.List(context.Background(), ft, func(fi backend.FileInfo) error {
		names = append(names, fi.Name)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return names
}

// tempFiles lists the temp files anywhere in the repository folder.
func tempFiles(t *testing.T, be *local.Backend) []string {
	t.Helper()
	var found []string
	_ = filepath.Walk(be.Dir(), func(p string, fi os.FileInfo, err error) error {
		if err == nil && strings.HasPrefix(fi.Name(), local.TempPrefix) {
			found = append(found, p)
		}
		return nil
	})
	return found
}

func TestStage(t *testing.T) {
	ctx := context.Background()
	data := bytes.Repeat([]byte("pack bytes "), 10000)
	for _, tc := range []struct {
		name    string
		run     func(t *testing.T, be *local.Backend, f io.Writer, commit func(context.Context, backend.Handle) error, abort func()) error
		visible bool // the object exists afterwards
	}{
		{"commit", func(t *testing.T, be *local.Backend, f io.Writer, commit func(context.Context, backend.Handle) error, abort func()) error {
			// Not listed while staged.
			if names := listNames(t, be, backend.PackFile); len(names) != 0 {
				t.Errorf("staged object listed: %v", names)
			}
			err := commit(ctx, packHandle("a"))
			abort() // after commit: does nothing
			return err
		}, true},
		{"abort", func(t *testing.T, be *local.Backend, f io.Writer, commit func(context.Context, backend.Handle) error, abort func()) error {
			abort()
			if err := commit(ctx, packHandle("a")); err == nil {
				t.Error("commit after abort succeeded")
			}
			return nil
		}, false},
		{"wrong type", func(t *testing.T, be *local.Backend, f io.Writer, commit func(context.Context, backend.Handle) error, abort func()) error {
			if err := commit(ctx, backend.Handle{Type: backend.IndexFile, Name: strings.Repeat("a", 64)}); err == nil {
				t.Error("commit under another type succeeded")
			}
			return nil
		}, false},
		{"cancelled", func(t *testing.T, be *local.Backend, f io.Writer, commit func(context.Context, backend.Handle) error, abort func()) error {
			cctx, cancel := context.WithCancel(ctx)
			cancel()
			if err := commit(cctx, packHandle("a")); !errors.Is(err, context.Canceled) {
				t.Errorf("cancelled commit: %v, want context.Canceled", err)
			}
			return nil
		}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			be := newLocal(t)
			f, commit, abort, err := be.Stage(ctx, backend.PackFile)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := f.Write(data); err != nil {
				t.Fatal(err)
			}
			if err := tc.run(t, be, f, commit, abort); err != nil {
				t.Fatal(err)
			}
			got, err := os.ReadFile(filepath.Join(be.Dir(), "data", "aa", strings.Repeat("a", 64)))
			switch {
			case tc.visible && err != nil:
				t.Fatalf("committed object: %v", err)
			case tc.visible && !bytes.Equal(got, data):
				t.Fatalf("committed object has %d bytes, want the %d written", len(got), len(data))
			case !tc.visible && err == nil:
				t.Fatal("object exists after a failed or aborted commit")
			}
			if left := tempFiles(t, be); len(left) != 0 {
				t.Fatalf("temp files left: %v", left)
			}
		})
	}
}

func TestStageInvalidType(t *testing.T) {
	be := newLocal(t)
	for _, ft := range []backend.FileType{backend.ConfigFile, "bogus"} {
		if _, _, _, err := be.Stage(context.Background(), ft); err == nil {
			t.Errorf("Stage(%q) succeeded", ft)
		}
	}
}

// onlyReader hides every method but Read.
type onlyReader struct{ r io.Reader }

func (o onlyReader) Read(p []byte) (int, error) { return o.r.Read(p) }

// TestSaveSources saves from each kind of reader Save has a fast path for
// (a file: copied in the kernel; a bytes.Reader: written from its memory;
// anything else: buffered), each exact, short and long.
func TestSaveSources(t *testing.T) {
	ctx := context.Background()
	data := make([]byte, 20<<20+12345) // more than one copy step
	for i := range data {
		data[i] = byte(i*7 + i>>13)
	}
	srcFile := filepath.Join(t.TempDir(), "src")
	if err := os.WriteFile(srcFile, data, 0o600); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var opened []*os.File
	t.Cleanup(func() {
		for _, f := range opened {
			_ = f.Close()
		}
	})
	sources := map[string]func(t *testing.T) io.ReadSeeker{
		"file": func(t *testing.T) io.ReadSeeker {
			f, err := os.Open(srcFile)
			if err != nil {
				t.Fatal(err)
			}
			mu.Lock()
			opened = append(opened, f)
			mu.Unlock()
			return f
		},
		"bytes": func(*testing.T) io.ReadSeeker { return bytes.NewReader(data) },
		"plain": func(*testing.T) io.ReadSeeker {
			return struct {
				io.Reader
				io.Seeker
			}{onlyReader{bytes.NewReader(data)}, nil}
		},
	}
	for name, src := range sources {
		for _, tc := range []struct {
			size int64
			ok   bool
		}{{int64(len(data)), true}, {int64(len(data)) + 1, false}, {int64(len(data)) - 1, false}} {
			be := newLocal(t)
			h := packHandle("b")
			err := be.Save(ctx, h, src(t), tc.size)
			if tc.ok != (err == nil) {
				t.Fatalf("%s, size %d of %d: Save error %v", name, tc.size, len(data), err)
			}
			got, rerr := os.ReadFile(filepath.Join(be.Dir(), "data", "bb", h.Name))
			if tc.ok && (rerr != nil || !bytes.Equal(got, data)) {
				t.Fatalf("%s: saved object differs (%v, %d bytes)", name, rerr, len(got))
			}
			if !tc.ok && rerr == nil {
				t.Fatalf("%s, size %d of %d: failed Save left the object", name, tc.size, len(data))
			}
			if left := tempFiles(t, be); len(left) != 0 {
				t.Fatalf("%s: temp files left: %v", name, left)
			}
		}
	}
}
