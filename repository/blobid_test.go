package repository

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/custos-backup/custos/repository/backend"
	"github.com/custos-backup/custos/repository/format"
)

// emptyTree is the encoding of an empty directory's tree: a file with these
// bytes has the id of every empty directory's tree blob.
var emptyTree = format.EncodeTree(&format.Tree{})

// TestTypeCollisionRoundTrip backs up a file whose bytes equal the tree of
// an empty directory next to such a directory, in either order, in one
// backup and across two. Both blobs must be stored: check is clean, and
// restore, a copy and a prune keep both byte-exact.
func TestTypeCollisionRoundTrip(t *testing.T) {
	type step struct {
		files []string // files to create with emptyTree's bytes
		dirs  []string // empty directories to create
	}
	cases := []struct {
		name  string
		steps []step
	}{
		{"one backup", []step{{files: []string{"a/f"}, dirs: []string{"a/emptydir"}}}},
		{"one backup, directory sorts first", []step{{files: []string{"z/zz"}, dirs: []string{"z/0", "0"}}}},
		{"file first, then the directory", []step{{files: []string{"a/f"}}, {dirs: []string{"a/emptydir"}}}},
		{"directory first, then the file", []step{{dirs: []string{"a/emptydir"}}, {files: []string{"a/f"}}}},
		{"file first, in another dataset", []step{{files: []string{"f"}}, {dirs: []string{"d"}}}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			r, dir := newSmallPackRepo(t, "pw")
			src := t.TempDir()
			var snaps []*Snapshot
			for i, st := range tc.steps {
				for _, f := range st.files {
					writeFile(t, filepath.Join(src, f), emptyTree, 0o644)
				}
				for _, d := range st.dirs {
					if err := os.MkdirAll(filepath.Join(src, d), 0o755); err != nil {
						t.Fatal(err)
					}
				}
				ds := "t/a"
				if strings.Contains(tc.name, "another dataset") && i > 0 {
					ds = "t/b"
				}
				snaps = append(snaps, backupDir(t, r, src, ds))
			}
			last := snaps[len(snaps)-1]
			h := format.HashID(emptyTree)
			for _, want := range []BlobHandle{format.DataHandle(h), format.TreeHandle(h)} {
				if !r.index().Has(want) {
					t.Errorf("%s is not indexed", want)
				}
			}
			mustCheckClean(t, reopen(t, dir, "pw"), true)
			restoreCompare(t, reopen(t, dir, "pw"), last, src)

			// Copy keeps both blobs too.
			dst, dstDir := newSmallPackRepo(t, "other")
			if _, err := Copy(ctx, r, dst, []*Snapshot{last}, nil); err != nil {
				t.Fatal(err)
			}
			dsnaps, err := reopen(t, dstDir, "other").Snapshots(ctx)
			if err != nil || len(dsnaps) != 1 {
				t.Fatalf("copied snapshots: %v, %v", dsnaps, err)
			}
			mustCheckClean(t, reopen(t, dstDir, "other"), true)
			restoreCompare(t, reopen(t, dstDir, "other"), dsnaps[0], src)

			// Prune after dropping every other snapshot keeps both.
			for _, sn := range snaps[:len(snaps)-1] {
				if err := r.be.Remove(ctx, backend.Handle{Type: backend.SnapshotFile, Name: sn.ID.String()}); err != nil {
					t.Fatal(err)
				}
			}
			if _, err := r.Prune(ctx, PruneOptions{}); err != nil {
				t.Fatal(err)
			}
			mustCheckClean(t, reopen(t, dir, "pw"), true)
			restoreCompare(t, reopen(t, dir, "pw"), last, src)
		})
	}
}

// TestPruneKeepsTreeSharingIDWithFile: a file whose bytes are the encoding
// of a non-empty directory's tree, listed before that directory, must not
// make prune skip the directory's subtree (the used set once keyed blobs by
// id, so marking the file's data blob marked the tree as visited).
func TestPruneKeepsTreeSharingIDWithFile(t *testing.T) {
	ctx := context.Background()
	r, dir := newSmallPackRepo(t, "pw")
	src := t.TempDir()
	writeRandomFiles(t, filepath.Join(src, "d"), "x", 3, 50<<10, 5)
	first := backupDir(t, r, src, "t/a")
	top, err := r.loadTree(ctx, first.Tree)
	if err != nil {
		t.Fatal(err)
	}
	dTree, err := r.loadBlob(ctx, TreeBlob, top.Find("d").Subtree, nil)
	if err != nil {
		t.Fatal(err)
	}
	// "a" sorts before "d": the file is visited first.
	writeFile(t, filepath.Join(src, "a"), dTree, 0o644)
	second := backupDir(t, r, src, "t/a")
	if err := r.be.Remove(ctx, backend.Handle{Type: backend.SnapshotFile, Name: first.ID.String()}); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Prune(ctx, PruneOptions{}); err != nil {
		t.Fatal(err)
	}
	mustCheckClean(t, reopen(t, dir, "pw"), true)
	restoreCompare(t, reopen(t, dir, "pw"), second, src)
}

// dropIndexEntry rewrites the index as an older version could have left
// it: the blob h is not indexed (its twin of the other type is). The new
// index file supersedes every old one, which are then removed.
func dropIndexEntry(t *testing.T, r *Repository, h BlobHandle) {
	t.Helper()
	ctx := context.Background()
	f := &format.IndexFile{}
	var old []ID
	dropped := false
	err := r.forEachIndexFile(ctx, false, func(id ID, in *format.IndexFile) error {
		old = append(old, id)
		for _, p := range in.Packs {
			p.Blobs = slices.DeleteFunc(slices.Clone(p.Blobs), func(pb format.PackedBlob) bool {
				if pb.Handle() == h {
					dropped = true
					return true
				}
				return false
			})
			f.Packs = append(f.Packs, p)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if !dropped {
		t.Fatalf("%s is not indexed", h)
	}
	f.Supersedes = old
	if _, err := r.saveIndexFile(ctx, f); err != nil {
		t.Fatal(err)
	}
	for _, id := range old {
		if err := r.be.Remove(ctx, backend.Handle{Type: backend.IndexFile, Name: id.String()}); err != nil {
			t.Fatal(err)
		}
	}
}

// TestCheckFindsTypeCollision: a repository written before blobs were
// keyed by type holds only one of a data blob and a tree blob that share
// an id. Check names the snapshot and the path that needs the missing one,
// restore fails naming it, and the next backup of the data stores it.
func TestCheckFindsTypeCollision(t *testing.T) {
	cases := []struct {
		missing  BlobType
		wantPath string
	}{
		{DataBlob, "a/f"},
		{TreeBlob, "a/emptydir/"},
	}
	for _, tc := range cases {
		t.Run(tc.missing.String(), func(t *testing.T) {
			ctx := context.Background()
			r, dir := newSmallPackRepo(t, "pw")
			src := t.TempDir()
			writeFile(t, filepath.Join(src, "a", "f"), emptyTree, 0o644)
			if err := os.MkdirAll(filepath.Join(src, "a", "emptydir"), 0o755); err != nil {
				t.Fatal(err)
			}
			sn := backupDir(t, r, src, "t/a")
			h := BlobHandle{Type: tc.missing, ID: format.HashID(emptyTree)}
			dropIndexEntry(t, r, h)

			old := reopen(t, dir, "pw")
			res, err := old.Check(ctx, CheckOptions{ReadData: true})
			if err != nil {
				t.Fatal(err)
			}
			p := findProblem(t, res, "index")
			if !slices.Contains(p.Blobs, h.ID.String()) {
				t.Errorf("problem does not name blob %s: %+v", h.ID, p)
			}
			if !slices.Contains(p.Snapshots, sn.ID.String()) {
				t.Errorf("problem does not name snapshot %s: %+v", sn.ID.Short(), p)
			}
			if want := sn.ID.Short() + ":" + tc.wantPath; !slices.Contains(p.Paths, want) {
				t.Errorf("problem does not name %s: %v", want, p.Paths)
			}
			if !strings.Contains(p.Err, "other type") {
				t.Errorf("problem does not say the blob exists with the other type: %s", p.Err)
			}
			_, err = old.Restore(ctx, sn, t.TempDir(), RestoreOptions{})
			var be *BlobError
			if !errors.As(err, &be) || be.Blob != h.ID {
				t.Errorf("restore: %v, want an error naming blob %s", err, h.ID.Short())
			}

			// The next backup stores the missing blob, and its snapshot
			// restores byte-exact.
			healed := backupDir(t, old, src, "t/a")
			if healed.Summary.BlobsAdded < 1 {
				t.Errorf("the next backup added %d blobs", healed.Summary.BlobsAdded)
			}
			fresh := reopen(t, dir, "pw")
			if !fresh.index().Has(h) {
				t.Errorf("%s is still not indexed", h)
			}
			restoreCompare(t, fresh, healed, src)
			// The old snapshot references the same blobs, so the repository
			// is whole again.
			mustCheckClean(t, fresh, true)
			restoreCompare(t, fresh, sn, src)
		})
	}
}
