package repository

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/custos-backup/custos/repository/backend"
	"github.com/custos-backup/custos/repository/backend/backendtest"
	"github.com/custos-backup/custos/repository/format"
)

// writeDeepTree writes root/dNN/sNN/files (two levels of trees below the
// root's) plus twinN/x/files, two folders with equal content (one subtree
// id, named twice).
func writeDeepTree(t *testing.T, root string) (dirs int) {
	t.Helper()
	for d := range 4 {
		for s := range 3 {
			writeRandomFiles(t, filepath.Join(root, fmt.Sprintf("d%02d", d), fmt.Sprintf("s%02d", s)), "f", 2, 3<<10, uint64(100*d+10*s))
		}
	}
	for _, twin := range []string{"twin1", "twin2"} {
		writeRandomFiles(t, filepath.Join(root, twin, "x"), "f", 2, 3<<10, 7)
	}
	return 1 + 4 + 4*3 + 2*2
}

// failingTrees is a tree loader that fails every call as a whole.
type failingTrees struct{}

func (failingTrees) loadTrees(context.Context, []ID, bool) (map[ID]loadedTree, error) {
	return nil, errRoleFault
}

// TestTreePrefetch: every take returns what loadTree returns, whether the
// prefetch read the tree (one loadTrees call per level), stopped at its
// budget, failed for one tree or failed as a whole; takes run from several
// goroutines, as backup's walkers do, and equal subtrees named twice are
// taken twice.
func TestTreePrefetch(t *testing.T) {
	ctx := context.Background()
	r, _ := newTestRepo(t, false)
	dir := t.TempDir()
	dirs := writeDeepTree(t, dir)
	sn := backupDir(t, r, dir, "a")
	root, err := r.loadTree(ctx, sn.Tree)
	if err != nil {
		t.Fatal(err)
	}
	var failID ID // d01/s02
	if err := r.walkTree(ctx, sn.Tree, func(p string, n *format.Node) error {
		if p == "d01/s02" {
			failID = n.Subtree
		}
		return nil
	}); err != nil || failID == (ID{}) {
		t.Fatalf("no tree d01/s02: %v", err)
	}

	for _, tc := range []struct {
		name   string
		trees  func() treeLoader
		budget int
		// settle: let the prefetch run until it stops before any take.
		settle     bool
		wantCalls  int // loadTrees calls (two levels below the root); -1: do not check
		wantDirect int // takes that loaded their tree themselves; -1: do not check
		wantFail   bool
	}{
		{name: "ahead of the walk", trees: func() treeLoader { return &levelCounter{treeLoader: r} }, budget: 1 << 20, wantCalls: 2, wantDirect: 0},
		{name: "budget reached after the first level", trees: func() treeLoader { return &levelCounter{treeLoader: r} }, budget: 1, settle: true,
			wantCalls: 1, wantDirect: dirs - 1 - 6}, // the root's own six subtrees come from the prefetch
		{name: "one tree fails", trees: func() treeLoader { return &levelCounter{treeLoader: r, fail: failID} }, budget: 1 << 20, wantCalls: 2, wantDirect: 0, wantFail: true},
		{name: "the loader fails as a whole", trees: func() treeLoader { return failingTrees{} }, budget: 1 << 20, wantCalls: -1, wantDirect: dirs - 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var direct atomic.Int64
			one := func(ctx context.Context, id ID) (*format.Tree, error) {
				direct.Add(1)
				return r.loadTree(ctx, id)
			}
			trees := tc.trees()
			p := startTreePrefetch(ctx, trees, one, root, tc.budget)
			defer p.stop()
			if tc.settle {
				<-p.done
			}
			var (
				wg     sync.WaitGroup
				mu     sync.Mutex
				failed []string
				takes  atomic.Int64
			)
			var walk func(path string, tr *format.Tree)
			walk = func(path string, tr *format.Tree) {
				for i := range tr.Nodes {
					n := &tr.Nodes[i]
					if n.Type != format.NodeDir {
						continue
					}
					p2 := path + "/" + n.Name
					wg.Go(func() {
						got, err := p.take(ctx, n.Subtree)
						takes.Add(1)
						want, werr := r.loadTree(ctx, n.Subtree)
						switch {
						case n.Subtree == failID && tc.wantFail:
							if !errors.Is(err, errRoleFault) {
								t.Errorf("%s: take = %v, want the loader's fault", p2, err)
							}
							mu.Lock()
							failed = append(failed, p2)
							mu.Unlock()
							return
						case err != nil || werr != nil:
							t.Errorf("%s: take: %v (loadTree: %v)", p2, err, werr)
							return
						}
						gb := format.EncodeTree(got)
						wb := format.EncodeTree(want)
						if !bytes.Equal(gb, wb) {
							t.Errorf("%s: take returned another tree than loadTree", p2)
						}
						walk(p2, got)
					})
				}
			}
			walk("", root)
			wg.Wait()
			if int(takes.Load()) != dirs-1 {
				t.Errorf("%d takes, want one per folder below the root (%d)", takes.Load(), dirs-1)
			}
			if tc.wantFail && (len(failed) != 1 || failed[0] != "/d01/s02") {
				t.Errorf("failed takes %v, want /d01/s02", failed)
			}
			if lc, ok := trees.(*levelCounter); ok && tc.wantCalls >= 0 && lc.calls != tc.wantCalls {
				t.Errorf("loadTrees calls = %d, want %d", lc.calls, tc.wantCalls)
			}
			if tc.wantDirect >= 0 && int(direct.Load()) != tc.wantDirect {
				t.Errorf("direct loads = %d, want %d", direct.Load(), tc.wantDirect)
			}
		})
	}
}

// TestTreePrefetchTakeCancelled: a take waiting for a tree the prefetch has
// not named yet returns when its context ends.
func TestTreePrefetchTakeCancelled(t *testing.T) {
	ctx := context.Background()
	block := make(chan struct{})
	defer close(block)
	trees := blockingTrees{block}
	root := &format.Tree{Nodes: []format.Node{{Name: "a", Type: format.NodeDir, Subtree: ID{1}}}}
	p := startTreePrefetch(ctx, trees, func(context.Context, ID) (*format.Tree, error) {
		return nil, errors.New("must not load directly")
	}, root, 1<<20)
	defer p.stop()
	cctx, cancel := context.WithCancelCause(ctx)
	cancel(errRoleFault)
	if _, err := p.take(cctx, ID{2}); !errors.Is(err, errRoleFault) {
		t.Fatalf("take of an unnamed tree with its context ended: %v, want the cause", err)
	}
	if _, err := p.take(cctx, ID{1}); !errors.Is(err, errRoleFault) {
		t.Fatalf("take of a tree being read with its context ended: %v, want the cause", err)
	}
}

// blockingTrees is a tree loader that waits until block closes or ctx ends.
type blockingTrees struct{ block chan struct{} }

func (b blockingTrees) loadTrees(ctx context.Context, _ []ID, _ bool) (map[ID]loadedTree, error) {
	select {
	case <-b.block:
	case <-ctx.Done():
	}
	return nil, errors.New("blocked")
}

// TestBackupParentTreesByLevel: on remote storage a backup reads the
// parent snapshot's trees a level at a time (a few pack requests, not one
// per folder), and the result is the same: nothing read again, the same
// root tree. On a local folder it reads each tree when it walks its folder.
func TestBackupParentTreesByLevel(t *testing.T) {
	for _, tc := range []struct {
		name   string
		remote bool
	}{{"local folder", false}, {"remote", true}} {
		t.Run(tc.name, func(t *testing.T) {
			conns := 0
			if tc.remote {
				conns = 8
			}
			r, f, _ := newRecordedRepo(t, conns, 0)
			dir := t.TempDir()
			dirs := writeDeepTree(t, dir)
			first := backupDir(t, r, dir, "a")
			f.Reset()
			second := backupDir(t, r, dir, "a")
			if second.Tree != first.Tree || second.Summary.BytesRead != 0 {
				t.Fatalf("no-change backup: tree %s (was %s), read %d bytes", second.Tree.Short(), first.Tree.Short(), second.Summary.BytesRead)
			}
			loads := packReads(f)
			// The root (by the parent lookup), then one loadTrees per
			// level below it: at most a request per level while the trees
			// fit one pack.
			if tc.remote && loads > 4 {
				t.Errorf("%d pack reads for %d trees, want about one per level", loads, dirs)
			}
			// Locally every folder's tree is read as the walk reaches it
			// (nothing held ahead): the twins' equal trees twice.
			if !tc.remote && loads != dirs {
				t.Errorf("local: %d pack reads for %d folders, want one each", loads, dirs)
			}
		})
	}
}

// TestWholeTreeWalksByLevel: the walks that go into every folder (a
// replica's verification, find, a recursive listing) read a remote
// repository's trees a level at a time, and find what a walk a tree at a
// time finds.
func TestWholeTreeWalksByLevel(t *testing.T) {
	ctx := context.Background()
	r, f, _ := newRecordedRepo(t, 8, 0)
	dir := t.TempDir()
	dirs := writeDeepTree(t, dir)
	sn := backupDir(t, r, dir, "a")
	var want []string // every path, as a walk a tree at a time finds them
	if err := r.walkTree(ctx, sn.Tree, func(p string, _ *format.Node) error {
		want = append(want, p)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		run  func() ([]string, error)
	}{
		{"verify held", func() ([]string, error) { return want, r.VerifyHeld(ctx, sn.ID) }},
		{"find", func() (got []string, err error) {
			err = r.Find(ctx, sn, "*", func(e Entry) error { got = append(got, e.Path); return nil })
			return got, err
		}},
		{"recursive list", func() (got []string, err error) {
			err = r.List(ctx, sn, "", true, func(e Entry) error { got = append(got, e.Path); return nil })
			return got, err
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f.Reset()
			got, err := tc.run()
			if err != nil {
				t.Fatal(err)
			}
			if strings.Join(got, "\n") != strings.Join(want, "\n") {
				t.Errorf("walked\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
			}
			if loads := packReads(f); loads > 4 {
				t.Errorf("%d pack reads for %d trees, want about one per level", loads, dirs)
			}
		})
	}
}

// TestCopyNeedsByLevel: the space a copy needs is the sealed size of the
// blobs below the snapshots that the destination lacks, counted once, and
// a remote source's trees are read a level at a time to find it.
func TestCopyNeedsByLevel(t *testing.T) {
	ctx := context.Background()
	src, f, _ := newRecordedRepo(t, 8, 0)
	dir := t.TempDir()
	writeDeepTree(t, dir)
	s1 := backupDir(t, src, dir, "a")
	writeRandomFiles(t, filepath.Join(dir, "d00", "s00", "new"), "g", 3, 5<<10, 90)
	s2 := backupDir(t, src, dir, "a")

	sealed := func(hs map[BlobHandle]bool) (n int64) {
		for h := range hs {
			_, pb, ok := src.index().Lookup(h)
			if !ok {
				t.Fatalf("blob %v not in the source's index", h)
			}
			n += int64(pb.Length)
		}
		return n
	}
	both := union(snapshotBlobs(t, src, s1), snapshotBlobs(t, src, s2))
	dst, _ := newTestRepo(t, false)
	for _, tc := range []struct {
		name string
		pre  []*Snapshot // copied into dst first
		want int64
	}{
		{"empty destination", nil, sealed(both)},
		{"destination holds the first snapshot", []*Snapshot{s1}, sealed(minus(both, snapshotBlobs(t, src, s1)))},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if len(tc.pre) > 0 {
				if _, err := Copy(ctx, src, dst, tc.pre, nil); err != nil {
					t.Fatal(err)
				}
			}
			f.Reset()
			got, err := CopyNeeds(ctx, src, dst, []*Snapshot{s1, s2})
			if err != nil || got != tc.want {
				t.Fatalf("CopyNeeds = %d, %v; want %d", got, err, tc.want)
			}
			loads := packReads(f)
			// Four levels, each in at most the two backups' tree packs: a
			// tree at a time would be 25 reads.
			if loads > 8 {
				t.Errorf("%d pack reads of the source, want about one per level and pack", loads)
			}
		})
	}
}

// countingWalker is the listings' repository, counting single tree loads
// and level loads, failing one tree, and reporting conns requests in
// flight (0: a local folder).
type countingWalker struct {
	treeWalker
	conns          int
	fail           ID
	single, levels atomic.Int64
}

func (w *countingWalker) loadTree(ctx context.Context, id ID) (*format.Tree, error) {
	w.single.Add(1)
	if id == w.fail {
		return nil, fmt.Errorf("load tree %s: %w", id.Short(), errRoleFault)
	}
	return w.treeWalker.loadTree(ctx, id)
}

func (w *countingWalker) loadTrees(ctx context.Context, ids []ID, keepRaw bool) (map[ID]loadedTree, error) {
	w.levels.Add(1)
	out, err := w.treeWalker.loadTrees(ctx, ids, keepRaw)
	if _, ok := out[w.fail]; ok {
		out[w.fail] = loadedTree{err: fmt.Errorf("load tree %s: %w", w.fail.Short(), errRoleFault)}
	}
	return out, err
}

func (w *countingWalker) readers(local int) int {
	if w.conns > 0 {
		return w.conns
	}
	return local
}

// TestListingsThroughTreeWalker: find and a recursive listing read a local
// repository's trees one folder at a time and a remote one's a level at a
// time, find the same entries either way, and a tree that cannot be read
// stops them with an error naming its folder.
func TestListingsThroughTreeWalker(t *testing.T) {
	ctx := context.Background()
	r, _ := newTestRepo(t, false)
	dir := t.TempDir()
	dirs := writeDeepTree(t, dir)
	sn := backupDir(t, r, dir, "a")
	var want []string
	var failID ID
	if err := r.walkTree(ctx, sn.Tree, func(p string, n *format.Node) error {
		want = append(want, p)
		if p == "d01/s02" {
			failID = n.Subtree
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	walks := []struct {
		name string
		run  func(tw treeWalker) ([]string, error)
	}{
		{"find", func(tw treeWalker) (got []string, err error) {
			err = find(ctx, tw, sn, "*", func(e Entry) error { got = append(got, e.Path); return nil })
			return got, err
		}},
		{"recursive list", func(tw treeWalker) (got []string, err error) {
			err = list(ctx, tw, sn, "", true, func(e Entry) error { got = append(got, e.Path); return nil })
			return got, err
		}},
	}
	for _, w := range walks {
		for _, tc := range []struct {
			name                   string
			conns                  int
			fail                   bool
			wantSingle, wantLevels int64
		}{
			{"local", 0, false, int64(dirs), 0},
			{"remote", 8, false, 1, 2},
			{"local, a tree fails", 0, true, -1, -1},
			{"remote, a tree fails", 8, true, -1, -1},
		} {
			t.Run(w.name+"/"+tc.name, func(t *testing.T) {
				cw := &countingWalker{treeWalker: r, conns: tc.conns}
				if tc.fail {
					cw.fail = failID
				}
				got, err := w.run(cw)
				if tc.fail {
					if !errors.Is(err, errRoleFault) || !strings.Contains(err.Error(), "d01/s02") {
						t.Fatalf("with d01/s02's tree failing: %v, want the fault naming the folder", err)
					}
					return
				}
				if err != nil || strings.Join(got, "\n") != strings.Join(want, "\n") {
					t.Fatalf("walked %v (%v), want %v", got, err, want)
				}
				if s, l := cw.single.Load(), cw.levels.Load(); s != tc.wantSingle || l != tc.wantLevels {
					t.Errorf("%d single tree loads and %d level loads, want %d and %d", s, l, tc.wantSingle, tc.wantLevels)
				}
			})
		}
	}
}

// failingSnapshots is Stats' source, failing to list snapshots.
type failingSnapshots struct{ statsSource }

func (failingSnapshots) Snapshots(context.Context) ([]*Snapshot, error) { return nil, errRoleFault }

// TestStatsThroughSource: stats counts what the index and the snapshots
// say, and a source whose snapshots cannot be listed is an error.
func TestStatsThroughSource(t *testing.T) {
	ctx := context.Background()
	r, _ := newTestRepo(t, false)
	dir := t.TempDir()
	writeDeepTree(t, dir)
	sn := backupDir(t, r, dir, "a")
	st, err := stats(ctx, r)
	blobs, packs := r.index().Count()
	if err != nil || st.Snapshots != 1 || st.LogicalBytes != sn.Summary.Bytes || st.Blobs != blobs || st.Packs != packs || st.PackBytes <= 0 {
		t.Fatalf("stats %+v %v; want 1 snapshot of %d bytes, %d blobs in %d packs", st, err, sn.Summary.Bytes, blobs, packs)
	}
	if _, err := stats(ctx, failingSnapshots{r}); !errors.Is(err, errRoleFault) {
		t.Fatalf("stats with the snapshots failing: %v", err)
	}
}

// TestWalkFiles: the entry at a path and, for a folder, everything below
// it, each regular file's content streamed byte-exact; a missing path is
// fs.ErrNotExist, and fn's own error comes back as it gave it.
func TestWalkFiles(t *testing.T) {
	ctx := context.Background()
	r, _ := newTestRepo(t, false)
	dir := t.TempDir()
	writeDeepTree(t, dir)
	sn := backupDir(t, r, dir, "a")
	walk := func(p string) (map[string]string, error) {
		got := map[string]string{} // path -> type, or the file's content's digest check
		err := r.WalkFiles(ctx, sn, p, func(e Entry, write func(io.Writer) error) error {
			if e.Type != "file" {
				if write != nil {
					t.Errorf("%s: a %s with content", e.Path, e.Type)
				}
				got[e.Path] = e.Type
				return nil
			}
			var buf bytes.Buffer
			if err := write(&buf); err != nil {
				return err
			}
			want, err := os.ReadFile(filepath.Join(dir, filepath.FromSlash(e.Path)))
			if err != nil || !bytes.Equal(buf.Bytes(), want) {
				t.Errorf("%s: %d bytes streamed, not the file's %d (%v)", e.Path, buf.Len(), len(want), err)
			}
			got[e.Path] = "file"
			return nil
		})
		return got, err
	}
	for _, tc := range []struct {
		p    string
		want int // entries
	}{
		{"d01/s02/f-01.bin", 1},
		{"d01", 1 + 3 + 3*2},
		{"", 4 + 4*3 + 4*3*2 + 2 + 2 + 2*2},
	} {
		got, err := walk(tc.p)
		if err != nil || len(got) != tc.want {
			t.Errorf("WalkFiles(%q): %d entries (%v), want %d", tc.p, len(got), err, tc.want)
		}
	}
	if _, err := walk("d01/nothing"); !errors.Is(err, fs.ErrNotExist) || !strings.Contains(err.Error(), "d01/nothing") {
		t.Errorf("WalkFiles of a missing path: %v", err)
	}
	stop := errors.New("stop here")
	err := r.WalkFiles(ctx, sn, "d02", func(Entry, func(io.Writer) error) error { return stop })
	if err != stop {
		t.Errorf("WalkFiles returned %v, want fn's error as it was", err)
	}
}

// newRecordedRepo makes a repository on a local folder through a Faulty
// that records every call; conns > 0 makes the backend report that many
// connections, as S3 does (a remote repository to the readers).
func newRecordedRepo(t *testing.T, conns int, packSize int64) (r *Repository, f *backendtest.Faulty, dir string) {
	t.Helper()
	be, dir := newBackend(t)
	f = backendtest.NewFaulty(be)
	var wrapped backend.Backend = f
	if conns > 0 {
		wrapped = withConns{f, conns}
	}
	r, err := Init(context.Background(), wrapped, InitOptions{Password: testPassword, kdfParams: cheapKDF, PackSize: packSize})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = r.Close() })
	return r, f, dir
}
