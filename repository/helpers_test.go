package repository

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/custos-backup/custos/repository/backend"
	"github.com/custos-backup/custos/repository/backend/cache"
	"github.com/custos-backup/custos/repository/backend/local"
	"github.com/custos-backup/custos/repository/format"
	"github.com/custos-backup/custos/repository/index"
)

var testPassword = []byte("correct horse battery staple")

// cheapKDF keeps tests fast; the format is the same as with the defaults.
// cheapKDF is the least the bounds allow of the default KDF (argon2id), and
// cheapScrypt of scrypt, so that tests do not spend their time deriving.
var (
	cheapKDF    = &format.KdfParams{Time: 1, MemoryKiB: 8 << 10, Threads: 1}
	cheapScrypt = &format.KdfParams{N: 1 << 10, R: 8, P: 1}
)

func newBackend(t testing.TB) (backend.Backend, string) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "repo")
	be, err := local.Create(context.Background(), dir)
	if err != nil {
		t.Fatal(err)
	}
	return be, dir
}

func newTestRepo(t testing.TB, unencrypted bool) (*Repository, string) {
	t.Helper()
	be, dir := newBackend(t)
	r, err := Init(context.Background(), be, InitOptions{Password: testPassword, Unencrypted: unencrypted, kdfParams: cheapKDF, PackSize: 4 << 20})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = r.Close() })
	return r, dir
}

func randBytes(seed uint64, n int) []byte {
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	b := make([]byte, n)
	for i := 0; i < n; i += 8 {
		v := rng.Uint64()
		for j := 0; j < 8 && i+j < n; j++ {
			b[i+j] = byte(v >> (8 * j))
		}
	}
	return b
}

func writeFile(t testing.TB, p string, data []byte, mode fs.FileMode) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, data, mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, mode); err != nil {
		t.Fatal(err)
	}
}

func fileHash(t testing.TB, p string) [32]byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return sha256.Sum256(b)
}

// compareTrees checks that got mirrors want: types, modes, mtimes of files
// and directories, symlink targets, contents and hard-link groups.
func compareTrees(t *testing.T, want, got string) {
	t.Helper()
	linksWant := map[uint64]string{}
	n := 0
	err := filepath.Walk(want, func(p string, wfi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(want, p)
		n++
		gp := filepath.Join(got, rel)
		gfi, err := os.Lstat(gp)
		if err != nil {
			t.Errorf("%q: missing in restore: %v", rel, err)
			return nil
		}
		// The snapshot root itself has no node (and so no metadata).
		if rel != "." && wfi.Mode() != gfi.Mode() {
			t.Errorf("%q: mode %v, want %v", rel, gfi.Mode(), wfi.Mode())
		}
		if rel != "." && wfi.Mode()&fs.ModeSymlink == 0 && !wfi.ModTime().Equal(gfi.ModTime()) {
			t.Errorf("%q: mtime %v, want %v", rel, gfi.ModTime(), wfi.ModTime())
		}
		switch {
		case wfi.Mode()&fs.ModeSymlink != 0:
			wl, _ := os.Readlink(p)
			gl, _ := os.Readlink(gp)
			if wl != gl {
				t.Errorf("%q: link %q, want %q", rel, gl, wl)
			}
		case wfi.Mode().IsRegular():
			if wfi.Size() != gfi.Size() {
				t.Errorf("%q: size %d, want %d", rel, gfi.Size(), wfi.Size())
			} else if wfi.Size() < 64<<20 && fileHash(t, p) != fileHash(t, gp) {
				t.Errorf("%q: content differs", rel)
			}
			ws := wfi.Sys().(*syscall.Stat_t)
			gs := gfi.Sys().(*syscall.Stat_t)
			if ws.Nlink > 1 {
				if first, ok := linksWant[ws.Ino]; ok {
					fs1, err := os.Lstat(filepath.Join(got, first))
					if err != nil || !os.SameFile(fs1, gfi) {
						t.Errorf("%q: not a hard link of %q in the restore", rel, first)
					}
				} else {
					linksWant[ws.Ino] = rel
				}
			}
			_ = gs
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	// Nothing extra in the restore.
	m := 0
	_ = filepath.Walk(got, func(string, os.FileInfo, error) error { m++; return nil })
	if m != n {
		t.Errorf("restore has %d entries, source %d", m, n)
	}
}

func mustEqual(t *testing.T, a, b []byte, what string) {
	t.Helper()
	if !bytes.Equal(a, b) {
		t.Fatalf("%s: content differs (%d vs %d bytes)", what, len(a), len(b))
	}
}

// fuzzRepo is an unencrypted repository shell: with the checksum sealer,
// the decoders behind the seal are reachable without a backend.
func fuzzRepo() *Repository {
	return &Repository{seal: &format.Sealer{}, idx: index.New()}
}

// together returns a Before (backendtest.Rule) for n calls that each wait
// until all n have started: calls made one after another fail it after
// 5 s, naming the object. A rule with Times: n asserts that n calls run at
// once; one shared by two rules, that their calls overlap.
func together(n int) func(context.Context, backend.Handle) error {
	var started sync.WaitGroup
	started.Add(n)
	all := make(chan struct{})
	go func() { started.Wait(); close(all) }()
	return func(ctx context.Context, h backend.Handle) error {
		started.Done()
		select {
		case <-all:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(5 * time.Second):
			return fmt.Errorf("%s: no other call started beside this one", h)
		}
	}
}

// newCachedRepo initialises a repository on a real local backend wrapped
// in the S3 cache (backend/cache), which location puts only around S3.
func newCachedRepo(t *testing.T) (*Repository, backend.Backend, *cache.Backend) {
	t.Helper()
	be, _ := newBackend(t)
	c, err := cache.New(be, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	r, err := Init(context.Background(), c, InitOptions{Password: []byte("pw"), kdfParams: cheapKDF})
	if err != nil {
		t.Fatal(err)
	}
	return r, be, c
}
