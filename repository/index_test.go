package repository

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/custos-backup/custos/repository/backend"
	"github.com/custos-backup/custos/repository/backend/local"
	"github.com/custos-backup/custos/repository/format"
)

// indexIDs lists the index files in the repository.
func indexIDs(t testing.TB, r *Repository) []ID {
	t.Helper()
	ids, err := r.listIDs(context.Background(), backend.IndexFile, nil)
	if err != nil {
		t.Fatal(err)
	}
	return ids
}

// indexFileOf returns the path of the index file that lists blob.
func indexFileOf(t testing.TB, r *Repository, blob ID) string {
	t.Helper()
	var object string
	err := r.forEachIndexFile(context.Background(), true, func(id ID, f *format.IndexFile) error {
		for _, p := range f.Packs {
			for _, pb := range p.Blobs {
				if pb.ID == blob {
					object = backend.Handle{Type: backend.IndexFile, Name: id.String()}.Path()
				}
			}
		}
		return nil
	})
	if err != nil || object == "" {
		t.Fatalf("no index file lists blob %s (%v)", blob.Short(), err)
	}
	return object
}

// mustMatchFreshIndex checks that r's in-memory index knows exactly the
// blobs a freshly opened handle knows, and locates each in a pack that
// exists.
func mustMatchFreshIndex(t *testing.T, r *Repository, dir, password string) {
	t.Helper()
	fresh := reopen(t, dir, password)
	stored := storedPacks(t, r)
	x, fx := r.index(), fresh.index()
	if n, fn := x.BlobCount(), fx.BlobCount(); n != fn {
		t.Errorf("handle knows %d blobs, a fresh handle %d", n, fn)
	}
	fx.Each(func(h BlobHandle, _ ID) {
		if !x.Has(h) {
			t.Errorf("%s is indexed but the handle does not know it", h)
		}
	})
	x.Each(func(h BlobHandle, pack ID) {
		if _, ok := stored[pack]; !ok {
			t.Errorf("handle locates %s in pack %s, which does not exist", h, pack.Short())
		}
	})
}

// TestIndexRefreshIncremental: a long-lived handle (a) follows another
// handle's (b) backups by loading only the index files it has not seen, and
// rebuilds its index from every file once b's prune replaced the files it
// had loaded.
func TestIndexRefreshIncremental(t *testing.T) {
	ctx := context.Background()
	const pw = "pw"
	a, dir := newSmallPackRepo(t, pw)
	b := reopen(t, dir, pw)
	srcOf := map[ID]string{} // snapshot -> the directory it holds
	round := 0
	backupBy := func(t *testing.T, r *Repository) {
		// A directory per round, each with its own content, all in one
		// dataset: forget --last 1 then leaves prune most packs to delete.
		src := filepath.Join(dir+"-src", fmt.Sprint(round))
		writeRandomFiles(t, src, fmt.Sprintf("r%d", round), 2, 300<<10, uint64(1000*round))
		round++
		sn := backupDir(t, r, src, "d")
		srcOf[sn.ID] = src
	}
	steps := []struct {
		name        string
		do          func(t *testing.T)
		wantLoads   int // index files a's refresh loads; -1: every file (a rebuild)
		wantRebuild bool
	}{
		{"b backs up", func(t *testing.T) { backupBy(t, b) }, 1, false},
		{"b backs up again", func(t *testing.T) { backupBy(t, b) }, 1, false},
		{"nothing changed", func(*testing.T) {}, 0, false},
		{"a backs up itself", func(t *testing.T) { backupBy(t, a) }, 0, false},
		{"b backs up twice", func(t *testing.T) { backupBy(t, b); backupBy(t, b) }, 2, false},
		{"b forgets and prunes", func(t *testing.T) {
			if _, _, err := b.Forget(ctx, RetentionPolicy{Last: 1}, false); err != nil {
				t.Fatal(err)
			}
			st, err := b.Prune(ctx, PruneOptions{})
			if err != nil || st.PacksDeleted == 0 {
				t.Fatalf("prune: %+v, %v; want packs deleted", st, err)
			}
		}, -1, true},
		{"b backs up after the prune", func(t *testing.T) { backupBy(t, b) }, 1, false},
	}
	for _, st := range steps {
		t.Run(st.name, func(t *testing.T) {
			st.do(t)
			before := a.index()
			loads := a.indexLoads.Load()
			if err := a.refreshIndex(ctx, true); err != nil {
				t.Fatal(err)
			}
			want := int64(st.wantLoads)
			if want < 0 {
				want = int64(len(indexIDs(t, a)))
			}
			if got := a.indexLoads.Load() - loads; got != want {
				t.Errorf("refresh loaded %d index files, want %d", got, want)
			}
			if rebuilt := a.index() != before; rebuilt != st.wantRebuild {
				t.Errorf("refresh rebuilt the index: %v, want %v", rebuilt, st.wantRebuild)
			}
			mustMatchFreshIndex(t, a, dir, pw)
			snaps, err := a.Snapshots(ctx)
			if err != nil {
				t.Fatal(err)
			}
			for _, sn := range snaps {
				restoreCompare(t, a, sn, srcOf[sn.ID])
			}
		})
	}
}

// TestIndexRefreshSupersedingFile: prune writes the index file that
// supersedes the others, deletes packs, and deletes the superseded files
// last. A handle refreshing in between (or after a prune that stopped
// there) sees every file it loaded still present, plus the new one; it must
// not go on using a deleted pack, even when the new file is damaged and so
// cannot say what it supersedes.
func TestIndexRefreshSupersedingFile(t *testing.T) {
	for _, damaged := range []bool{false, true} {
		t.Run(fmt.Sprintf("damaged=%v", damaged), func(t *testing.T) {
			ctx := context.Background()
			const pw = "pw"
			a, dir := newSmallPackRepo(t, pw)
			keepSrc, goneSrc := t.TempDir(), t.TempDir()
			writeRandomFiles(t, keepSrc, "k", 2, 200<<10, 1)
			gone := randBytes(77, 200<<10) // below the minimum chunk size: one blob
			writeFile(t, filepath.Join(goneSrc, "gone.bin"), gone, 0o644)
			keep := backupDir(t, a, keepSrc, "keep")
			backupDir(t, a, goneSrc, "gone")

			// What a prune that dropped gone.bin's pack leaves while it is
			// stopped before deleting the old index files.
			b := reopen(t, dir, pw)
			gonePack, _, ok := b.index().Lookup(format.DataHandle(format.HashID(gone)))
			if !ok {
				t.Fatal("gone.bin is not one blob in the index")
			}
			var packs []format.IndexPack
			if err := b.forEachIndexFile(ctx, false, func(_ ID, f *format.IndexFile) error {
				for _, p := range f.Packs {
					if p.ID != gonePack {
						packs = append(packs, p)
					}
				}
				return nil
			}); err != nil {
				t.Fatal(err)
			}
			old := indexIDs(t, b)
			if err := b.writeIndexes(ctx, packs, old); err != nil {
				t.Fatal(err)
			}
			if err := b.be.Remove(ctx, backend.Handle{Type: backend.PackFile, Name: gonePack.String()}); err != nil {
				t.Fatal(err)
			}
			if damaged {
				for _, id := range indexIDs(t, b) {
					if !slices.Contains(old, id) {
						p := filepath.Join(dir, backend.Handle{Type: backend.IndexFile, Name: id.String()}.Path())
						if err := os.WriteFile(p, []byte("damaged"), 0o644); err != nil {
							t.Fatal(err)
						}
					}
				}
			}

			before := a.index()
			if err := a.refreshIndex(ctx, true); err != nil {
				t.Fatal(err)
			}
			if a.index() == before {
				t.Error("the new file was added incrementally instead of rebuilding")
			}
			if a.index().Has(format.DataHandle(format.HashID(gone))) {
				t.Fatal("the handle still locates gone.bin in a deleted pack")
			}
			mustMatchFreshIndex(t, a, dir, pw)
			// The next backup of the same data stores it again, and it
			// restores.
			again := backupDir(t, a, goneSrc, "gone")
			if again.Summary.BlobsAdded < 1 {
				t.Errorf("backup of gone.bin added %d blobs; it deduplicated against the deleted pack", again.Summary.BlobsAdded)
			}
			if got := len(again.Warnings) > 0; got != damaged {
				t.Errorf("backup warnings %q; want some only if an index file is damaged", again.Warnings)
			}
			restoreCompare(t, a, again, goneSrc)
			restoreCompare(t, a, keep, keepSrc)
		})
	}
}

// failIndexLoads makes reading index files fail while fail is set, as a
// broken connection would; the files themselves are intact.
type failIndexLoads struct {
	backend.Backend
	fail atomic.Bool
}

func (f *failIndexLoads) Load(ctx context.Context, h backend.Handle, length int, offset int64) (io.ReadCloser, error) {
	if h.Type == backend.IndexFile && f.fail.Load() {
		return nil, fmt.Errorf("load %s: connection reset (injected)", h)
	}
	return f.Backend.Load(ctx, h, length, offset)
}

// TestIndexRefreshAfterFailedReload: a reader's refresh that cannot read
// the index files a prune wrote keeps the index it has, with a warning; the
// next writer's refresh must still notice the change and rebuild, instead
// of deduplicating against the packs prune deleted.
func TestIndexRefreshAfterFailedReload(t *testing.T) {
	ctx := context.Background()
	const pw = "pw"
	_, dir := newSmallPackRepo(t, pw)
	lbe, err := local.Open(ctx, dir)
	if err != nil {
		t.Fatal(err)
	}
	fbe := &failIndexLoads{Backend: lbe}
	a, err := Open(ctx, fbe, []byte(pw))
	if err != nil {
		t.Fatal(err)
	}
	keepSrc, goneSrc := t.TempDir(), t.TempDir()
	writeRandomFiles(t, keepSrc, "k", 2, 200<<10, 1)
	gone := randBytes(78, 200<<10) // below the minimum chunk size: one blob
	writeFile(t, filepath.Join(goneSrc, "gone.bin"), gone, 0o644)
	keep := backupDir(t, a, keepSrc, "keep")
	goneSnap := backupDir(t, a, goneSrc, "gone")

	// Another process forgets gone.bin's snapshot and prunes.
	b := reopen(t, dir, pw)
	if err := b.be.Remove(ctx, backend.Handle{Type: backend.SnapshotFile, Name: goneSnap.ID.String()}); err != nil {
		t.Fatal(err)
	}
	if st, err := b.Prune(ctx, PruneOptions{}); err != nil || st.PacksDeleted == 0 {
		t.Fatalf("prune: %+v, %v; want packs deleted", st, err)
	}

	fbe.fail.Store(true)
	restoreCompare(t, a, keep, keepSrc) // refreshes, fails to reload, goes on
	if !a.index().Has(format.DataHandle(format.HashID(gone))) {
		t.Fatal("the failed reload replaced the index anyway")
	}
	if err := a.refreshIndex(ctx, true); err == nil {
		t.Error("a writer's refresh that cannot read the index files succeeded")
	}
	fbe.fail.Store(false)
	again := backupDir(t, a, goneSrc, "gone")
	if again.Summary.BlobsAdded < 1 || !storedPackHas(t, a, format.HashID(gone)) {
		t.Fatalf("backup after the failed reload added %d blobs; it deduplicated against a deleted pack", again.Summary.BlobsAdded)
	}
	restoreCompare(t, reopen(t, dir, pw), again, goneSrc)
	mustMatchFreshIndex(t, a, dir, pw)
}

// storedPackHas reports whether r locates blob in a pack that exists.
func storedPackHas(t testing.TB, r *Repository, blob ID) bool {
	t.Helper()
	pack, _, ok := r.index().Lookup(format.DataHandle(blob))
	if !ok {
		return false
	}
	_, ok = storedPacks(t, r)[pack]
	return ok
}

// TestBackupWithDamagedIndex: a backup goes on while an index file is
// damaged. The blobs listed only there are stored again, its snapshot names
// the damaged file and restores byte-exact without it, and check still
// reports the damaged file.
func TestBackupWithDamagedIndex(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		name string
		// setup damages one index file and returns the handle that backs
		// up, the damaged file, and the snapshot whose blobs it listed
		// with its source.
		setup func(t *testing.T, f *corruptionFixture) (r *Repository, object string, damaged *Snapshot, src string)
	}{
		{"Open after the damage", func(t *testing.T, f *corruptionFixture) (*Repository, string, *Snapshot, string) {
			object := indexFileOf(t, f.r, format.HashID(mustRead(t, filepath.Join(f.srcB, "b-00.bin"))))
			f.flip(t, object, 20)
			return reopen(t, f.dir, corruptPW), object, f.snapB, f.srcB
		}},
		{"OpenTolerant after the damage", func(t *testing.T, f *corruptionFixture) (*Repository, string, *Snapshot, string) {
			object := indexFileOf(t, f.r, format.HashID(mustRead(t, filepath.Join(f.srcB, "b-00.bin"))))
			f.flip(t, object, -1)
			r, damaged := f.reopenTolerant(t)
			if len(damaged) != 1 || !strings.Contains(damaged[0], object) {
				t.Errorf("OpenTolerant reported %v, want %s", damaged, object)
			}
			return r, object, f.snapB, f.srcB
		}},
		{"long-lived handle, damaged file new to it", func(t *testing.T, f *corruptionFixture) (*Repository, string, *Snapshot, string) {
			r := reopen(t, f.dir, corruptPW)
			// Another process backs up; its new index file is damaged
			// before r has read it.
			srcC := t.TempDir()
			writeRandomFiles(t, srcC, "c", 3, 240<<10, 300)
			snapC := backupDir(t, f.r, srcC, "c")
			object := indexFileOf(t, f.r, format.HashID(mustRead(t, filepath.Join(srcC, "c-00.bin"))))
			f.flip(t, object, 0)
			return r, object, snapC, srcC
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newCorruptionFixture(t)
			r, object, damaged, src := tc.setup(t, f)
			rt, _ := f.reopenTolerant(t)
			if _, err := rt.Restore(ctx, damaged, t.TempDir(), RestoreOptions{}); err == nil {
				t.Fatal("the snapshot whose index file is damaged restored before the backup")
			}
			for i := range 2 {
				sn, err := r.Backup(ctx, src, nil, BackupOptions{Dataset: damaged.Dataset, Host: damaged.Host})
				if err != nil {
					t.Fatalf("backup %d with a damaged index file: %v", i, err)
				}
				if !slices.ContainsFunc(sn.Warnings, func(w string) bool { return strings.Contains(w, object) }) {
					t.Errorf("backup %d: warnings %q do not name %s", i, sn.Warnings, object)
				}
				// The first backup stores the blobs again; the second finds
				// them in its own index file.
				if added := sn.Summary.BlobsAdded; (i == 0) != (added > 0) {
					t.Errorf("backup %d added %d blobs", i, added)
				}
				// A fresh handle, which cannot read the damaged file either,
				// restores the new snapshot byte-exact.
				rt, _ := f.reopenTolerant(t)
				restoreAndCompare(t, rt, sn, src, nil)
				res, err := rt.Check(ctx, CheckOptions{ReadData: true})
				if err != nil {
					t.Fatal(err)
				}
				findProblem(t, res, object)
				for _, p := range res.Problems {
					if slices.Contains(p.Snapshots, sn.ID.String()) {
						t.Errorf("check blames the new snapshot: %+v", p)
					}
				}
				// The blobs stored again are the ones the damaged file
				// listed (the source did not change), so the older
				// snapshot is whole again.
				restoreAndCompare(t, rt, damaged, src, nil)
			}
		})
	}
}

func mustRead(t testing.TB, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
