package repository

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/custos-backup/custos/internal/s3server"
	"github.com/custos-backup/custos/repository/backend"
	"github.com/custos-backup/custos/repository/backend/backendtest"
	"github.com/custos-backup/custos/repository/backend/cache"
	"github.com/custos-backup/custos/repository/backend/location"
	"github.com/custos-backup/custos/repository/format"
)

// TestCacheS3 runs a repository on a real S3 server through the cache, as
// every command on S3 does: a second process that shares the cache folder
// opens the repository and backs up without fetching any snapshot or index
// file it has a copy of, and check still reads the stored index files, so
// that damage to one is reported although the cache holds a good copy.
func TestCacheS3(t *testing.T) {
	ctx := context.Background()
	srv := s3server.Start(t)
	srv.CreateBucket(t, "custos")
	srv.SetEnv(t)
	url := srv.URL("custos", "cached")
	dir := t.TempDir()
	// open is one process: the S3 backend as location makes it, counted
	// by a Faulty below the cache.
	var packLoads *backendtest.Rule // of the latest open
	open := func(create bool) (*Repository, *backendtest.Faulty, *backendtest.Rule, *backendtest.Rule) {
		t.Helper()
		openBE := location.Open
		if create {
			openBE = location.Create
		}
		be, err := openBE(ctx, url, location.Options{})
		if err != nil {
			t.Fatal(err)
		}
		f := backendtest.NewFaulty(be)
		snapLoads := &backendtest.Rule{Op: backendtest.OpLoad, Type: backend.SnapshotFile}
		idxLoads := &backendtest.Rule{Op: backendtest.OpLoad, Type: backend.IndexFile}
		packLoads = &backendtest.Rule{Op: backendtest.OpLoad, Type: backend.PackFile}
		f.Add(snapLoads)
		f.Add(idxLoads)
		f.Add(packLoads)
		c, err := cache.New(f, dir)
		if err != nil {
			t.Fatal(err)
		}
		var r *Repository
		if create {
			r, err = Init(ctx, c, InitOptions{Password: []byte("pw"), kdfParams: cheapKDF})
		} else {
			r, err = Open(ctx, c, []byte("pw"))
		}
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = r.Close() })
		return r, f, snapLoads, idxLoads
	}
	src := t.TempDir()
	writeRandomFiles(t, src, "f", 4, 100<<10, 7)
	writeRandomFiles(t, filepath.Join(src, "sub", "deeper"), "g", 2, 10<<10, 70)
	r1, f1, _, _ := open(true)
	for _, ds := range []string{"a", "b", "c"} {
		backupDir(t, r1, src, ds)
	}
	_ = f1

	r2, f2, snaps2, idx2 := open(false)
	sn := backupDir(t, r2, src, "b")
	if sn.Parent == nil {
		t.Fatal("the second process's backup found no parent")
	}
	if n, m := f2.Hits(snaps2), f2.Hits(idx2); n != 0 || m != 0 {
		t.Fatalf("a process sharing the cache fetched %d snapshot and %d index files from S3, want none", n, m)
	}
	// The parent's trees, three levels, come from the copy of the tree
	// pack the first process saved through the cache.
	if n := f2.Hits(packLoads); n != 0 {
		t.Fatalf("a process sharing the cache loaded %d packs from S3 for a backup with nothing new, want none", n)
	}
	// Check reads the trees from S3, not from the copy.
	if _, err := r2.Check(ctx, CheckOptions{}); err != nil {
		t.Fatal(err)
	}
	if n := f2.Hits(packLoads); n == 0 {
		t.Fatal("check read the trees from the cache's copy of their pack, not from S3")
	}
	target := t.TempDir()
	if _, err := r2.Restore(ctx, sn, target, RestoreOptions{}); err != nil {
		t.Fatal(err)
	}
	compareTrees(t, src, target)

	// Damage one stored index file; the cache keeps its good copy.
	var victim string
	err := r2.be.List(ctx, backend.IndexFile, func(fi backend.FileInfo) error { victim = fi.Name; return nil })
	if err != nil || victim == "" {
		t.Fatalf("no index file listed: %v", err)
	}
	obj := filepath.Join(srv.Dir, "custos", "cached", "index", victim)
	b, err := os.ReadFile(obj)
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)/2] ^= 0xff
	if err := os.WriteFile(obj, b, 0o644); err != nil {
		t.Fatal(err)
	}
	res, err := r2.Check(ctx, CheckOptions{})
	if err != nil {
		t.Fatal(err)
	}
	p := findProblem(t, res, "index/"+victim)
	if p == nil {
		t.Fatalf("check did not report the damaged index file: %+v", res.Problems)
	}
}

// TestCachedTreePacksFollowTheIndex: a copy of a tree pack that a prune
// elsewhere (not through this cache) deleted is dropped when the
// repository is next opened through the cache, and the copies of packs
// still indexed stay.
func TestCachedTreePacksFollowTheIndex(t *testing.T) {
	ctx := context.Background()
	r, be, c := newCachedRepo(t)
	keep, gone := t.TempDir(), t.TempDir()
	writeRandomFiles(t, filepath.Join(keep, "k"), "k", 2, 10<<10, 1)
	writeRandomFiles(t, filepath.Join(gone, "g"), "g", 2, 10<<10, 2)
	backupDir(t, r, keep, "keep")
	forgotten := backupDir(t, r, gone, "gone")
	copies := func() map[string]bool {
		t.Helper()
		ents, err := os.ReadDir(filepath.Join(c.Dir(), string(backend.PackFile)))
		if err != nil {
			t.Fatal(err)
		}
		out := map[string]bool{}
		for _, e := range ents {
			out[e.Name()] = true
		}
		return out
	}
	before := copies()
	if len(before) != 2 {
		t.Fatalf("%d tree packs kept by the cache after two backups, want 2", len(before))
	}
	_ = r.Close()

	// Another host, no cache: forget and prune.
	other, err := Open(ctx, be, []byte("pw"))
	if err != nil {
		t.Fatal(err)
	}
	if err := other.RemoveSnapshots(ctx, forgotten.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := other.Prune(ctx, PruneOptions{}); err != nil {
		t.Fatal(err)
	}
	r2, err := Open(ctx, c, []byte("pw"))
	if err != nil {
		t.Fatal(err)
	}
	defer r2.Close()
	after := copies()
	for name := range before {
		id, err := format.ParseID(name)
		if err != nil {
			t.Fatal(err)
		}
		if indexed := r2.index().HasPack(id); after[name] != indexed {
			t.Errorf("tree pack %s: indexed %v, copy kept %v", id.Short(), indexed, after[name])
		}
	}
	if len(after) != 1 {
		t.Errorf("%d copies after the prune, want the kept dataset's tree pack only", len(after))
	}
}

// TestCacheKeepsOnlyTreePacks: a tree in a pack that also holds file data
// (as prune's rewrites made them before they kept trees apart) is read by
// range, and no copy of that pack is kept; a pack of trees only is kept.
func TestCacheKeepsOnlyTreePacks(t *testing.T) {
	ctx := context.Background()
	r, be, c := newCachedRepo(t)
	defer r.Close()
	tree := format.EncodeTree(&format.Tree{Nodes: []format.Node{{Name: "f", Type: format.NodeFile, Mode: 0o644}}})
	data := randBytes(5, 4000)
	build := func(blobs ...[]byte) ID {
		t.Helper()
		var pb packBuilder
		for i, b := range blobs {
			typ := TreeBlob
			if i > 0 {
				typ = DataBlob
			}
			pb.add(typ, format.HashID(b), 0, len(b), r.seal.Seal(nil, b))
		}
		if _, err := pb.finish(r.seal, time.Now()); err != nil {
			t.Fatal(err)
		}
		id := format.HashID(pb.buf)
		if err := saveBytes(ctx, be, backend.Handle{Type: backend.PackFile, Name: id.String()}, pb.buf); err != nil {
			t.Fatal(err)
		}
		if err := r.writeIndexes(ctx, []format.IndexPack{{ID: id, Size: int64(len(pb.buf)), Blobs: pb.blobs}}, nil); err != nil {
			t.Fatal(err)
		}
		return id
	}
	mixed := build(tree, data)
	if err := r.refreshIndex(ctx, true); err != nil {
		t.Fatal(err)
	}
	copyOf := func(id ID) bool {
		_, err := os.Stat(filepath.Join(c.Dir(), string(backend.PackFile), id.String()))
		return err == nil
	}
	if _, err := r.loadTree(ctx, format.HashID(tree)); err != nil {
		t.Fatal(err)
	}
	if copyOf(mixed) {
		t.Error("the cache kept a copy of a pack that holds file data")
	}
	// The same tree in a pack of its own is kept.
	other := format.EncodeTree(&format.Tree{Nodes: []format.Node{{Name: "g", Type: format.NodeFile, Mode: 0o644}}})
	alone := build(other)
	if err := r.refreshIndex(ctx, true); err != nil {
		t.Fatal(err)
	}
	if _, err := r.loadTree(ctx, format.HashID(other)); err != nil {
		t.Fatal(err)
	}
	if !copyOf(alone) {
		t.Error("the cache kept no copy of a pack of trees only")
	}
}
