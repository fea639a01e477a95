package cache_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/custos-backup/custos/repository/backend"
	"github.com/custos-backup/custos/repository/backend/backendtest"
	"github.com/custos-backup/custos/repository/backend/cache"
	"github.com/custos-backup/custos/repository/backend/local"
)

func TestConformance(t *testing.T) {
	backendtest.Run(t, func(t *testing.T) backend.Backend {
		be, err := local.Create(context.Background(), filepath.Join(t.TempDir(), "repo"))
		if err != nil {
			t.Fatal(err)
		}
		c, err := cache.New(be, t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		return c
	})
}

// named is an object of type t named by the SHA-256 of its bytes, as the
// repository names snapshot and index files.
func named(t backend.FileType, data []byte) backend.Handle {
	sum := sha256.Sum256(data)
	return backend.Handle{Type: t, Name: hex.EncodeToString(sum[:])}
}

// fixture is a cache over a real local backend, through a Faulty that
// counts the loads that reach the storage.
type fixture struct {
	store *backendtest.Faulty
	c     *cache.Backend
	loads *backendtest.Rule
}

func newFixture(t *testing.T, root string) *fixture {
	t.Helper()
	be, err := local.Create(context.Background(), filepath.Join(t.TempDir(), "repo"))
	if err != nil {
		t.Fatal(err)
	}
	return wrap(t, be, root)
}

func wrap(t *testing.T, be backend.Backend, root string) *fixture {
	t.Helper()
	f := &fixture{store: backendtest.NewFaulty(be), loads: &backendtest.Rule{Op: backendtest.OpLoad}}
	f.store.Add(f.loads)
	c, err := cache.New(f.store, root)
	if err != nil {
		t.Fatal(err)
	}
	f.c = c
	return f
}

// copyOf is where the cache keeps h.
func (f *fixture) copyOf(h backend.Handle) string {
	return filepath.Join(f.c.Dir(), string(h.Type), h.Name)
}

func (f *fixture) save(t *testing.T, be backend.Backend, h backend.Handle, data []byte) {
	t.Helper()
	if err := be.Save(context.Background(), h, bytes.NewReader(data), int64(len(data))); err != nil {
		t.Fatal(err)
	}
}

func (f *fixture) list(t *testing.T, ft backend.FileType) {
	t.Helper()
	if err := f.c.List(context.Background(), ft, func(backend.FileInfo) error { return nil }); err != nil {
		t.Fatal(err)
	}
}

func load(t *testing.T, be backend.Backend, ctx context.Context, h backend.Handle) []byte {
	t.Helper()
	return loadRange(t, be, ctx, h, 0, 0)
}

// TestListedObjectsAreLoadedOnce: after a listing, a snapshot or index
// file is fetched from the storage once, also by another process sharing
// the folder; packs, ranged reads and uncached contexts always go to the
// storage.
func TestListedObjectsAreLoadedOnce(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	f := newFixture(t, root)
	snap := []byte("sealed snapshot bytes")
	idx := bytes.Repeat([]byte("index "), 1000)
	hs := named(backend.SnapshotFile, snap)
	hi := named(backend.IndexFile, idx)
	pack := named(backend.PackFile, []byte("pack"))
	f.save(t, f.store, hs, snap) // written by another host: not through the cache
	f.save(t, f.store, hi, idx)
	f.save(t, f.store, pack, []byte("pack"))
	f.list(t, backend.SnapshotFile)
	f.list(t, backend.IndexFile)

	for range 3 {
		if got := load(t, f.c, ctx, hs); !bytes.Equal(got, snap) {
			t.Fatalf("snapshot: %q", got)
		}
		if got := load(t, f.c, ctx, hi); !bytes.Equal(got, idx) {
			t.Fatal("index file differs")
		}
	}
	if n := f.store.Hits(f.loads); n != 2 {
		t.Fatalf("%d loads reached the storage for 2 objects read 3 times each", n)
	}

	// Another process, same folder: its first listing lets it use the
	// copies at once.
	g := wrap(t, f.store.Backend, root)
	g.list(t, backend.SnapshotFile)
	if got := load(t, g.c, ctx, hs); !bytes.Equal(got, snap) || g.store.Hits(g.loads) != 0 {
		t.Fatalf("second process: %q after %d loads from the storage", got, g.store.Hits(g.loads))
	}

	before := f.store.Hits(f.loads)
	load(t, f.c, ctx, pack)
	load(t, f.c, backend.Uncached(ctx), hs)
	rd, err := f.c.Load(ctx, hi, 10, 5)
	if err != nil {
		t.Fatal(err)
	}
	part, _ := io.ReadAll(rd)
	rd.Close()
	if !bytes.Equal(part, idx[5:15]) {
		t.Fatalf("ranged read: %q", part)
	}
	if n := f.store.Hits(f.loads) - before; n != 3 {
		t.Fatalf("pack, uncached and ranged loads: %d reached the storage, want 3", n)
	}
}

// TestUnlistedObjectsComeFromTheStorage: a copy of an object that the
// latest listing does not name (forgotten on another host) is not used:
// the load reaches the storage and fails as it would without a cache.
func TestUnlistedObjectsComeFromTheStorage(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, t.TempDir())
	snap := []byte("a snapshot")
	h := named(backend.SnapshotFile, snap)
	f.save(t, f.c, h, snap) // through the cache: a copy is kept
	if _, err := os.Stat(f.copyOf(h)); err != nil {
		t.Fatalf("no copy after Save: %v", err)
	}
	if err := f.store.Remove(ctx, h); err != nil { // another host forgets it
		t.Fatal(err)
	}
	f.list(t, backend.SnapshotFile)
	if _, err := f.c.Load(ctx, h, 0, 0); !errors.Is(err, backend.ErrNotExist) {
		t.Fatalf("load of a forgotten snapshot: %v, want not exist", err)
	}
	if _, err := os.Stat(f.copyOf(h)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the listing kept the copy of an object it does not name: %v", err)
	}
	// Saved through this cache after the listing: its copy is used.
	snap2 := []byte("another snapshot")
	h2 := named(backend.SnapshotFile, snap2)
	f.save(t, f.c, h2, snap2)
	before := f.store.Hits(f.loads)
	if got := load(t, f.c, ctx, h2); !bytes.Equal(got, snap2) || f.store.Hits(f.loads) != before {
		t.Fatalf("a snapshot saved through the cache: %q, %d loads from the storage", got, f.store.Hits(f.loads)-before)
	}
	if err := f.c.Remove(ctx, h2); err != nil {
		t.Fatal(err)
	}
	if _, err := f.c.Load(ctx, h2, 0, 0); !errors.Is(err, backend.ErrNotExist) {
		t.Fatalf("load after Remove: %v, want not exist", err)
	}
}

// TestDamage: a damaged copy is replaced from the storage; a stored object
// that does not match its name is returned as stored (for the repository
// to report) and never copied.
func TestDamage(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, t.TempDir())
	idx := []byte("index file bytes")
	h := named(backend.IndexFile, idx)
	f.save(t, f.store, h, idx)
	f.list(t, backend.IndexFile)
	load(t, f.c, ctx, h)
	copyPath := f.copyOf(h)
	if err := os.WriteFile(copyPath, []byte("index file bytez"), 0o600); err != nil {
		t.Fatal(err)
	}
	if got := load(t, f.c, ctx, h); !bytes.Equal(got, idx) {
		t.Fatalf("with a damaged copy: %q", got)
	}
	if got, _ := os.ReadFile(copyPath); !bytes.Equal(got, idx) {
		t.Fatalf("the damaged copy was not replaced: %q", got)
	}

	bad := []byte("stored bytes that changed")
	hb := backend.Handle{Type: backend.IndexFile, Name: named(backend.IndexFile, []byte("what was written")).Name}
	f.save(t, f.store, hb, bad)
	f.list(t, backend.IndexFile)
	for range 2 {
		if got := load(t, f.c, ctx, hb); !bytes.Equal(got, bad) {
			t.Fatalf("damaged object: %q, want its stored bytes", got)
		}
	}
	if _, err := os.Stat(f.copyOf(hb)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("a damaged object was copied: %v", err)
	}
}

// TestAbilitiesStayReachable: the wrapped backend's optional abilities are
// found through the cache (backend.As). The cache's folder is made with
// its first copy, private.
func TestAbilitiesStayReachable(t *testing.T) {
	be, err := local.Create(context.Background(), filepath.Join(t.TempDir(), "repo"))
	if err != nil {
		t.Fatal(err)
	}
	c, err := cache.New(be, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := backend.As[backend.LeftoverRemover](c); !ok {
		t.Fatal("the local backend's leftover removal is hidden by the cache")
	}
	if _, err := os.Stat(c.Dir()); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("a cache with no copies made its folder: %v", err)
	}
	snap := []byte("snapshot")
	h := named(backend.SnapshotFile, snap)
	if err := c.Save(context.Background(), h, bytes.NewReader(snap), int64(len(snap))); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{c.Dir(), filepath.Join(c.Dir(), "snapshots")} {
		if fi, err := os.Stat(d); err != nil || fi.Mode().Perm() != 0o700 {
			t.Fatalf("cache folder %s: %v, %v; want it private", d, fi.Mode(), err)
		}
	}
}

// TestLargeObjectsPassThrough: an object larger than any the repository
// writes of a cached type is returned whole and never copied.
func TestLargeObjectsPassThrough(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, t.TempDir())
	big := bytes.Repeat([]byte("0123456789"), 100)
	h := named(backend.IndexFile, big)
	f.save(t, f.store, h, big)
	f.list(t, backend.IndexFile)
	cache.SetMaxCopy(f.c, 64)
	for range 2 {
		if got := load(t, f.c, ctx, h); !bytes.Equal(got, big) {
			t.Fatalf("got %d bytes, want %d", len(got), len(big))
		}
	}
	if _, err := os.Stat(f.copyOf(h)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("a large object was copied: %v", err)
	}
	if n := f.store.Hits(f.loads); n != 2 {
		t.Fatalf("%d loads reached the storage, want 2", n)
	}
}

// loadRange reads length bytes at offset of h through be.
func loadRange(t *testing.T, be backend.Backend, ctx context.Context, h backend.Handle, length int, offset int64) []byte {
	t.Helper()
	rd, err := be.Load(ctx, h, length, offset)
	if err != nil {
		t.Fatal(err)
	}
	defer rd.Close()
	b, err := io.ReadAll(rd)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestMarkedPacks: a pack loaded with backend.CachePacks is fetched whole
// once and its ranges served from the copy, also to another process
// sharing the folder and after it was saved through the cache; unmarked
// and uncached loads, loads marked for other packs, and packs over the
// limit, read ranges from the
// storage; a damaged copy is fetched again; a listing, a removal and
// RetainPacks drop the copies of packs that are gone.
func TestMarkedPacks(t *testing.T) {
	ctx := context.Background()
	marked := backend.CachePacks(ctx, func(string) bool { return true })
	pack := make([]byte, 100<<10)
	for i := range pack {
		pack[i] = byte(i * 7 % 251)
	}
	h := named(backend.PackFile, pack)
	ranges := []struct {
		length int
		offset int64
	}{{100, 0}, {4096, 5000}, {0, 90 << 10}, {1, int64(len(pack) - 1)}}
	readAll := func(t *testing.T, be backend.Backend, ctx context.Context) {
		t.Helper()
		for _, r := range ranges {
			want := pack[r.offset:]
			if r.length > 0 {
				want = want[:r.length]
			}
			if got := loadRange(t, be, ctx, h, r.length, r.offset); !bytes.Equal(got, want) {
				t.Fatalf("range %d at %d: %d bytes, not the pack's", r.length, r.offset, len(got))
			}
		}
	}
	cases := []struct {
		name string
		// prepare stores the pack and may do more; it returns the
		// context the loads use and how many of them reach the storage.
		prepare    func(t *testing.T, f *fixture) (context.Context, int)
		copyAfter  bool
		otherFinds bool // a second process sharing the folder finds the copy
	}{
		{"marked", func(t *testing.T, f *fixture) (context.Context, int) {
			f.save(t, f.store, h, pack)
			return marked, 1
		}, true, true},
		{"saved through the cache", func(t *testing.T, f *fixture) (context.Context, int) {
			if err := f.c.Save(marked, h, bytes.NewReader(pack), int64(len(pack))); err != nil {
				t.Fatal(err)
			}
			return marked, 0
		}, true, true},
		{"not marked", func(t *testing.T, f *fixture) (context.Context, int) {
			f.save(t, f.store, h, pack)
			return ctx, len(ranges)
		}, false, false},
		{"marked for other packs", func(t *testing.T, f *fixture) (context.Context, int) {
			f.save(t, f.store, h, pack)
			return backend.CachePacks(ctx, func(name string) bool { return name != h.Name }), len(ranges)
		}, false, false},
		{"marked but uncached", func(t *testing.T, f *fixture) (context.Context, int) {
			f.save(t, f.store, h, pack)
			return backend.Uncached(marked), len(ranges)
		}, false, false},
		{"over the limit", func(t *testing.T, f *fixture) (context.Context, int) {
			cache.SetMaxPackCopy(f.c, len(pack)-1)
			f.save(t, f.store, h, pack)
			// One whole load finds it too large; then ranges.
			return marked, 1 + len(ranges)
		}, false, false},
		{"damaged copy", func(t *testing.T, f *fixture) (context.Context, int) {
			f.save(t, f.store, h, pack)
			bad := bytes.Clone(pack)
			bad[10] ^= 1
			if err := os.MkdirAll(filepath.Dir(f.copyOf(h)), 0o700); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(f.copyOf(h), bad, 0o600); err != nil {
				t.Fatal(err)
			}
			return marked, 1
		}, true, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			f := newFixture(t, root)
			lctx, want := tc.prepare(t, f)
			before := f.store.Hits(f.loads)
			readAll(t, f.c, lctx)
			if n := f.store.Hits(f.loads) - before; n != want {
				t.Errorf("%d loads reached the storage, want %d", n, want)
			}
			if _, err := os.Stat(f.copyOf(h)); (err == nil) != tc.copyAfter {
				t.Errorf("copy kept: %v, want %v", err == nil, tc.copyAfter)
			}
			g := wrap(t, f.store.Backend, root)
			readAll(t, g.c, marked)
			if n := g.store.Hits(g.loads); (n == 0) != tc.otherFinds {
				t.Errorf("a second process sharing the folder made %d loads from the storage", n)
			}
		})
	}

	t.Run("damaged in the storage", func(t *testing.T) {
		f := newFixture(t, t.TempDir())
		bad := bytes.Clone(pack)
		bad[10] ^= 1
		f.save(t, f.store, h, bad)
		for range 2 {
			// Each load returns the stored bytes, for the repository to
			// report, and keeps no copy.
			if got := loadRange(t, f.c, marked, h, 100, 0); !bytes.Equal(got, bad[:100]) {
				t.Fatal("a range of a pack damaged in the storage is not the stored bytes")
			}
		}
		if _, err := os.Stat(f.copyOf(h)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("a pack whose bytes do not match its name was copied: %v", err)
		}
		ents, _ := os.ReadDir(filepath.Dir(f.copyOf(h)))
		if len(ents) != 0 {
			t.Errorf("the folder holds %d files after the fetches, want none", len(ents))
		}
	})

	t.Run("gone", func(t *testing.T) {
		f := newFixture(t, t.TempDir())
		other := []byte("another pack")
		ho := named(backend.PackFile, other)
		f.save(t, f.store, h, pack)
		f.save(t, f.store, ho, other)
		readAll(t, f.c, marked)
		loadRange(t, f.c, marked, ho, 0, 0)
		if n := f.c.RetainPacks(func(name string) bool { return name == ho.Name }); n != 1 {
			t.Errorf("RetainPacks removed %d copies, want 1", n)
		}
		if _, err := os.Stat(f.copyOf(h)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("the copy of a pack the index no longer names survived RetainPacks: %v", err)
		}
		// Removed through the cache: the copy goes too.
		if err := f.c.Remove(ctx, ho); err != nil {
			t.Fatal(err)
		}
		if _, err := os.Stat(f.copyOf(ho)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("the copy of a removed pack survived: %v", err)
		}
		// Removed by another host: the next listing drops the copy.
		readAll(t, f.c, marked)
		if err := f.store.Remove(ctx, h); err != nil {
			t.Fatal(err)
		}
		f.list(t, backend.PackFile)
		if _, err := os.Stat(f.copyOf(h)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("the copy of a pack no longer listed survived the listing: %v", err)
		}
	})
}
