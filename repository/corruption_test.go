package repository

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/custos-backup/custos/repository/backend"
	"github.com/custos-backup/custos/repository/backend/local"
	"github.com/custos-backup/custos/repository/format"
)

// corruptionFixture is a repository with two snapshots of different
// datasets: "a" (files a/..., backed up first) and "b" (files b/...).
type corruptionFixture struct {
	r            *Repository
	dir          string
	srcA, srcB   string
	snapA, snapB *Snapshot
}

const corruptPW = "pw"

func newCorruptionFixture(t *testing.T) *corruptionFixture {
	t.Helper()
	r, dir := newSmallPackRepo(t, corruptPW)
	f := &corruptionFixture{r: r, dir: dir, srcA: t.TempDir(), srcB: t.TempDir()}
	writeRandomFiles(t, f.srcA, "a", 4, 240<<10, 100)
	writeFile(t, filepath.Join(f.srcA, "deep", "dir", "log.txt"), []byte(strings.Repeat("a log line that compresses\n", 20000)), 0o644)
	writeRandomFiles(t, f.srcB, "b", 4, 240<<10, 200)
	f.snapA = backupDir(t, r, f.srcA, "a")
	f.snapB = backupDir(t, r, f.srcB, "b")
	return f
}

// flip XORs one byte of the object at path (relative to the repository)
// with 0xff. A negative offset counts from the end.
func (f *corruptionFixture) flip(t *testing.T, object string, off int64) {
	t.Helper()
	p := filepath.Join(f.dir, object)
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	if off < 0 {
		off += int64(len(b))
	}
	b[off] ^= 0xff
	// Objects are stored read-only by some backends; replace the file.
	if err := os.Remove(p); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// reopenTolerant opens the damaged repository as the CLI's check and
// restore do.
func (f *corruptionFixture) reopenTolerant(t *testing.T) (*Repository, []string) {
	t.Helper()
	be, err := local.Open(context.Background(), f.dir)
	if err != nil {
		t.Fatal(err)
	}
	r, damaged, err := OpenTolerant(context.Background(), be, []byte(corruptPW))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = r.Close() })
	return r, damaged
}

func findProblem(t *testing.T, res *CheckResult, object string) *Problem {
	t.Helper()
	for i := range res.Problems {
		if res.Problems[i].Object == object {
			return &res.Problems[i]
		}
	}
	var got []string
	for _, p := range res.Problems {
		got = append(got, p.Object+": "+p.Err)
	}
	t.Fatalf("check did not name %s; problems: %v", object, got)
	return nil
}

// restoreAndCompare restores sn and compares every file with src; files
// in bad must fail (named in the error), all others must be byte-exact.
func restoreAndCompare(t *testing.T, r *Repository, sn *Snapshot, src string, bad []string) {
	t.Helper()
	target := t.TempDir()
	_, err := r.Restore(context.Background(), sn, target, RestoreOptions{})
	if len(bad) > 0 {
		if err == nil {
			t.Fatalf("restore succeeded although %v are damaged", bad)
		}
		for _, b := range bad {
			if !strings.Contains(err.Error(), b) {
				t.Errorf("restore error does not name %s: %v", b, err)
			}
		}
	} else if err != nil {
		t.Fatalf("restore of an undamaged snapshot failed: %v", err)
	}
	err = filepath.Walk(src, func(p string, fi os.FileInfo, err error) error {
		if err != nil || !fi.Mode().IsRegular() {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		for _, b := range bad {
			if filepath.ToSlash(rel) == b || strings.HasPrefix(filepath.ToSlash(rel), b+"/") {
				return nil
			}
		}
		want, _ := os.ReadFile(p)
		got, gerr := os.ReadFile(filepath.Join(target, rel))
		if gerr != nil || !bytes.Equal(got, want) {
			t.Errorf("undamaged file %s not restored byte-exact (err %v)", rel, gerr)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// compareTree checks that every regular file below src except those
// below skip was restored byte-exact below target, and that target holds
// no regular file that src does not.
func compareTree(t *testing.T, src, target, skip string) {
	t.Helper()
	seen := 0
	err := filepath.Walk(src, func(p string, fi os.FileInfo, err error) error {
		if err != nil || !fi.Mode().IsRegular() {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		if rel = filepath.ToSlash(rel); rel == skip || strings.HasPrefix(rel, skip+"/") {
			return nil
		}
		seen++
		want, _ := os.ReadFile(p)
		got, gerr := os.ReadFile(filepath.Join(target, rel))
		if gerr != nil || !bytes.Equal(got, want) {
			t.Errorf("undamaged file %s not restored byte-exact (err %v)", rel, gerr)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if seen == 0 {
		t.Fatal("no file to compare")
	}
}

// TestCorruptPack flips one byte at several places of a pack: inside a data
// blob, inside a tree blob, and in the pack's header and trailer.
func TestCorruptPack(t *testing.T) {
	type where int
	const (
		inDataBlob where = iota
		inTreeBlob
		inTrailer
		inHeader
	)
	tests := []struct {
		name  string
		where where
	}{
		{"data blob", inDataBlob},
		{"tree blob", inTreeBlob},
		{"trailer", inTrailer},
		{"header", inHeader},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			f := newCorruptionFixture(t)
			victim := "a-02.bin"
			data, _ := os.ReadFile(filepath.Join(f.srcA, victim))
			blob := format.DataHandle(format.HashID(data))
			if tc.where == inTreeBlob {
				t2, err := f.r.loadTree(ctx, f.snapA.Tree)
				if err != nil {
					t.Fatal(err)
				}
				blob = format.TreeHandle(t2.Find("deep").Subtree)
			}
			pack, pb, ok := f.r.index().Lookup(blob)
			if !ok {
				t.Fatal("victim blob not indexed")
			}
			object := backend.Handle{Type: backend.PackFile, Name: pack.String()}.Path()
			switch tc.where {
			case inDataBlob, inTreeBlob:
				f.flip(t, object, int64(pb.Offset)+int64(pb.Length)/2)
			case inTrailer:
				f.flip(t, object, -1)
			case inHeader:
				f.flip(t, object, -10)
			}

			// The structure check reads trees, so it sees damaged trees;
			// the full check sees everything.
			r, _ := f.reopenTolerant(t)
			res, err := r.Check(ctx, CheckOptions{ReadData: true})
			if err != nil {
				t.Fatal(err)
			}
			p := findProblem(t, res, object)
			if len(res.Problems) != 1 {
				t.Errorf("want exactly one damaged object, got %+v", res.Problems)
			}
			if !slices.Contains(p.Snapshots, f.snapA.ID.String()) {
				t.Errorf("problem does not name snapshot a: %+v", p)
			}
			if slices.Contains(p.Snapshots, f.snapB.ID.String()) {
				t.Errorf("problem blames snapshot b, which does not use the pack: %+v", p)
			}
			switch tc.where {
			case inDataBlob:
				if !slices.Equal(p.Blobs, []string{blob.ID.String()}) {
					t.Errorf("damaged blobs %v, want only %s", p.Blobs, blob)
				}
				if !slices.Contains(p.Paths, f.snapA.ID.Short()+":"+victim) {
					t.Errorf("problem does not name %s: %v", victim, p.Paths)
				}
				restoreAndCompare(t, r, f.snapA, f.srcA, []string{victim})
			case inTreeBlob:
				if !slices.Contains(p.Blobs, blob.ID.String()) {
					t.Errorf("damaged blobs %v, want %s", p.Blobs, blob)
				}
				if !slices.Contains(p.Paths, f.snapA.ID.Short()+":deep/") {
					t.Errorf("problem does not name the damaged directory: %v", p.Paths)
				}
				// A full restore fails loudly, naming the tree and the
				// lost directory, but restores everything else.
				target := t.TempDir()
				_, err := r.Restore(ctx, f.snapA, target, RestoreOptions{})
				var te *TreeError
				if !errors.As(err, &te) || te.Tree != blob.ID || te.Path != "deep" {
					t.Fatalf("restore with a damaged tree: err %v, want a TreeError for tree %s of deep", err, blob)
				}
				var be *BlobError
				if !errors.As(err, &be) || be.Pack != pack {
					t.Errorf("restore error does not name the pack %s: %v", object, err)
				}
				if !strings.Contains(err.Error(), blob.ID.String()) || !strings.Contains(err.Error(), `"deep"`) {
					t.Errorf("restore error does not name the tree and directory: %v", err)
				}
				compareTree(t, f.srcA, target, "deep")
				if left, err := os.ReadDir(filepath.Join(target, "deep")); err != nil || len(left) != 0 {
					t.Errorf("damaged directory deep: %v entries, err %v; want it empty", left, err)
				}
				// --include of undamaged files works without any error.
				target = t.TempDir()
				inc := []string{"a-00.bin", "a-01.bin", "a-02.bin", "a-03.bin"}
				if _, err := r.Restore(ctx, f.snapA, target, RestoreOptions{Include: inc}); err != nil {
					t.Fatalf("restore of the undamaged files: %v", err)
				}
				for _, n := range inc {
					want, _ := os.ReadFile(filepath.Join(f.srcA, n))
					got, _ := os.ReadFile(filepath.Join(target, n))
					if !bytes.Equal(got, want) {
						t.Errorf("%s not restored byte-exact", n)
					}
				}
				// The structure check reads trees too.
				res, err := r.Check(ctx, CheckOptions{})
				if err != nil {
					t.Fatal(err)
				}
				findProblem(t, res, object)
			default:
				// Header damage: every blob still verifies through the
				// index, so restore works; the pack still needs healing.
				if !strings.Contains(p.Err, "does not match its name") {
					t.Errorf("problem does not report the pack hash mismatch: %s", p.Err)
				}
				if len(p.Paths) == 0 {
					t.Errorf("problem names no dependent files: %+v", p)
				}
				restoreAndCompare(t, r, f.snapA, f.srcA, nil)
			}
			restoreAndCompare(t, r, f.snapB, f.srcB, nil)
		})
	}
}

func TestCorruptIndex(t *testing.T) {
	ctx := context.Background()
	for _, off := range []int64{0, 20, -1} {
		f := newCorruptionFixture(t)
		// Each backup wrote its own index file; find the one that lists
		// snapshot b's blobs.
		data, _ := os.ReadFile(filepath.Join(f.srcB, "b-00.bin"))
		var object string
		err := f.r.forEachIndexFile(ctx, true, func(id ID, ix *format.IndexFile) error {
			for _, p := range ix.Packs {
				for _, pb := range p.Blobs {
					if pb.ID == format.HashID(data) {
						object = backend.Handle{Type: backend.IndexFile, Name: id.String()}.Path()
					}
				}
			}
			return nil
		})
		if err != nil || object == "" {
			t.Fatalf("index file of snapshot b not found (%v)", err)
		}
		f.flip(t, object, off)

		be, err := local.Open(ctx, f.dir)
		if err != nil {
			t.Fatal(err)
		}
		// Open leaves the damaged file out (so that backups go on), and
		// prune through it refuses, naming the file.
		ro, err := Open(ctx, be, []byte(corruptPW))
		if err != nil {
			t.Fatalf("Open of a repository with a damaged index file: %v", err)
		}
		if w := ro.indexDamageWarnings(); len(w) != 1 || !strings.Contains(w[0], object) {
			t.Errorf("Open: damage warnings %q, want one naming %s", w, object)
		}
		if _, err := ro.Prune(ctx, PruneOptions{}); err == nil || !strings.Contains(err.Error(), object) {
			t.Errorf("prune through Open with a damaged index: err %v, want a refusal naming %s", err, object)
		}
		r, damaged := f.reopenTolerant(t)
		if len(damaged) != 1 || !strings.Contains(damaged[0], object) {
			t.Errorf("OpenTolerant reported %v, want %s", damaged, object)
		}
		res, err := r.Check(ctx, CheckOptions{ReadData: true})
		if err != nil {
			t.Fatal(err)
		}
		p := findProblem(t, res, object)
		if !slices.Equal(p.Snapshots, []string{f.snapB.ID.String()}) {
			t.Errorf("damaged index: dependent snapshots %v, want only b", p.Snapshots)
		}
		if !slices.Contains(p.Paths, f.snapB.ID.Short()+":/") {
			t.Errorf("damaged index: want the whole of snapshot b named, got %v", p.Paths)
		}
		// Snapshot b cannot be restored at all (its trees were in that
		// index); a's files all restore.
		if _, err := r.Restore(ctx, f.snapB, t.TempDir(), RestoreOptions{}); err == nil {
			t.Error("restore of snapshot b succeeded without its index")
		}
		restoreAndCompare(t, r, f.snapA, f.srcA, nil)
		// Prune must refuse: it cannot know what the damaged file listed.
		if _, err := r.Prune(ctx, PruneOptions{}); err == nil {
			t.Error("prune ran with a damaged index file")
		}
	}
}

func TestCorruptSnapshot(t *testing.T) {
	ctx := context.Background()
	for _, off := range []int64{0, 40, -1} {
		f := newCorruptionFixture(t)
		object := backend.Handle{Type: backend.SnapshotFile, Name: f.snapB.ID.String()}.Path()
		f.flip(t, object, off)
		r := reopen(t, f.dir, corruptPW)
		res, err := r.Check(ctx, CheckOptions{ReadData: true})
		if err != nil {
			t.Fatal(err)
		}
		p := findProblem(t, res, object)
		if len(res.Problems) != 1 || !slices.Equal(p.Snapshots, []string{f.snapB.ID.String()}) {
			t.Errorf("problems %+v, want only snapshot b", res.Problems)
		}
		if _, err := r.LoadSnapshot(ctx, f.snapB.ID); err == nil {
			t.Error("damaged snapshot loaded")
		}
		sa, err := r.LoadSnapshot(ctx, f.snapA.ID)
		if err != nil {
			t.Fatal(err)
		}
		restoreAndCompare(t, r, sa, f.srcA, nil)
		// Listing goes on past the damaged file and reports it.
		snaps, damaged, err := r.ListSnapshots(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(snaps) != 1 || snaps[0].ID != f.snapA.ID {
			t.Errorf("readable snapshots %v, want only a", snaps)
		}
		if len(damaged) != 1 || damaged[0].ID != f.snapB.ID || !strings.Contains(damaged[0].Err.Error(), object) {
			t.Errorf("damaged %+v, want snapshot b named by its object", damaged)
		}
		if all, err := r.Snapshots(ctx); err != nil || len(all) != 1 {
			t.Errorf("Snapshots: %v, %v; want snapshot a", all, err)
		}
		if latest, err := r.FindSnapshot(ctx, "latest", "", ""); err != nil || latest.ID != f.snapA.ID {
			t.Errorf("latest: %v, %v; want snapshot a", latest, err)
		}
		// Forget applies the policy to the rest and leaves the damaged
		// file in place.
		keep, remove, err := r.Forget(ctx, RetentionPolicy{Last: 1}, false)
		if err != nil {
			t.Fatalf("forget with a damaged snapshot file: %v", err)
		}
		if len(keep) != 1 || keep[0].ID != f.snapA.ID || len(remove) != 0 {
			t.Errorf("forget: keep %v remove %v, want a kept and nothing removed", keep, remove)
		}
		// Prune refuses: it cannot know what the damaged snapshot uses.
		if _, err := r.Prune(ctx, PruneOptions{}); err == nil || !strings.Contains(err.Error(), f.snapB.ID.String()) {
			t.Errorf("prune with a damaged snapshot: %v, want a refusal naming it", err)
		}
		if _, err := os.Stat(filepath.Join(f.dir, object)); err != nil {
			t.Errorf("the damaged snapshot file was removed: %v", err)
		}
	}
}

// TestCorruptEveryByteOfSmallObjects flips each byte of an index file and
// a snapshot file in turn: check must name the object every time and never
// panic.
func TestCorruptEveryByteOfSmallObjects(t *testing.T) {
	ctx := context.Background()
	r, dir := newSmallPackRepo(t, corruptPW)
	sn, err := r.BackupStream(ctx, "f", strings.NewReader("small"), BackupOptions{Dataset: "d"})
	if err != nil {
		t.Fatal(err)
	}
	ids, err := r.listIDs(ctx, backend.IndexFile, nil)
	if err != nil || len(ids) != 1 {
		t.Fatalf("want one index file: %v %v", ids, err)
	}
	objects := []string{
		backend.Handle{Type: backend.IndexFile, Name: ids[0].String()}.Path(),
		backend.Handle{Type: backend.SnapshotFile, Name: sn.ID.String()}.Path(),
	}
	for _, object := range objects {
		p := filepath.Join(dir, object)
		orig, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		for i := range orig {
			b := slices.Clone(orig)
			b[i] ^= 0xff
			if err := os.WriteFile(p, b, 0o644); err != nil {
				t.Fatal(err)
			}
			be, _ := local.Open(ctx, dir)
			r2, _, err := OpenTolerant(ctx, be, []byte(corruptPW))
			if err != nil {
				t.Fatal(err)
			}
			res, err := r2.Check(ctx, CheckOptions{ReadData: true})
			if err != nil {
				t.Fatal(err)
			}
			if len(res.Problems) == 0 || !slices.ContainsFunc(res.Problems, func(p Problem) bool { return p.Object == object }) {
				t.Fatalf("byte %d of %s flipped: not reported (%+v)", i, object, res.Problems)
			}
		}
		if err := os.WriteFile(p, orig, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	mustCheckClean(t, reopen(t, dir, corruptPW), true)
}
