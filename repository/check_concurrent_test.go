package repository

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/custos-backup/custos/repository/backend"
	"github.com/custos-backup/custos/repository/backend/local"
	"github.com/custos-backup/custos/repository/format"
)

// hookBackend runs a hook before chosen calls of the wrapped backend, so
// that a test can put another process's whole operation at an exact point
// of a reader's sequence.
type hookBackend struct {
	backend.Backend
	mu    sync.Mutex
	lists map[backend.FileType]func() // before List of that type
	load  func()                      // before the Load of a pack
	every bool                        // keep hooks after they ran
	fired atomic.Int32
}

func (h *hookBackend) take(f *func()) func() {
	h.mu.Lock()
	defer h.mu.Unlock()
	fn := *f
	if !h.every {
		*f = nil
	}
	return fn
}

func (h *hookBackend) List(ctx context.Context, t backend.FileType, fn func(backend.FileInfo) error) error {
	h.mu.Lock()
	hook := h.lists[t]
	if !h.every {
		delete(h.lists, t)
	}
	h.mu.Unlock()
	if hook != nil {
		h.fired.Add(1)
		hook()
	}
	return h.Backend.List(ctx, t, fn)
}

func (h *hookBackend) Load(ctx context.Context, hd backend.Handle, length int, offset int64) (io.ReadCloser, error) {
	if hd.Type == backend.PackFile {
		if hook := h.take(&h.load); hook != nil {
			h.fired.Add(1)
			hook()
		}
	}
	return h.Backend.Load(ctx, hd, length, offset)
}

// openHooked opens the repository in dir through a hookBackend.
func openHooked(t *testing.T, dir, pw string) (*Repository, *hookBackend) {
	t.Helper()
	be, err := local.Open(context.Background(), dir)
	if err != nil {
		t.Fatal(err)
	}
	hb := &hookBackend{Backend: be, lists: map[backend.FileType]func(){}}
	r, err := Open(context.Background(), hb, []byte(pw))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = r.Close() })
	return r, hb
}

// concurrentFixture is a repository with a snapshot "keep" and a snapshot
// "gone" whose data nothing else uses, so that forgetting it and pruning
// deletes packs and index files.
type concurrentFixture struct {
	dir, pw string
	keep    *Snapshot
	gone    *Snapshot
	keepSrc string
	seed    atomic.Uint64
}

func newConcurrentFixture(t *testing.T) *concurrentFixture {
	t.Helper()
	r, dir := newSmallPackRepo(t, "pw")
	f := &concurrentFixture{dir: dir, pw: "pw", keepSrc: t.TempDir()}
	f.seed.Store(1000)
	writeTreeOfFiles(t, f.keepSrc, 2, 3, 100<<10, 1)
	f.keep = backupDir(t, r, f.keepSrc, "t/keep")
	goneSrc := t.TempDir()
	writeTreeOfFiles(t, goneSrc, 2, 3, 100<<10, 500)
	f.gone = backupDir(t, r, goneSrc, "t/gone")
	return f
}

// backup stores new data as another process would.
func (f *concurrentFixture) backup(t *testing.T) {
	src := t.TempDir()
	writeRandomFiles(t, src, "n", 3, 150<<10, f.seed.Add(10))
	backupDir(t, reopen(t, f.dir, f.pw), src, "t/new")
}

// forgetGone removes the snapshot "gone", as forget does.
func (f *concurrentFixture) forgetGone(t *testing.T) {
	r := reopen(t, f.dir, f.pw)
	h := backend.Handle{Type: backend.SnapshotFile, Name: f.gone.ID.String()}
	if err := r.be.Remove(context.Background(), h); err != nil {
		t.Error(err)
	}
}

// forgetAndPrune removes "gone" and prunes: packs and index files vanish.
func (f *concurrentFixture) forgetAndPrune(t *testing.T) {
	f.forgetGone(t)
	st, err := reopen(t, f.dir, f.pw).Prune(context.Background(), PruneOptions{})
	if err != nil {
		t.Error(err)
	} else if st.PacksDeleted == 0 {
		t.Error("test data: prune deleted no pack")
	}
}

// copyIn copies a snapshot of another repository into this one.
func (f *concurrentFixture) copyIn(t *testing.T) {
	ctx := context.Background()
	other, _ := newSmallPackRepo(t, "other")
	src := t.TempDir()
	writeRandomFiles(t, src, "c", 3, 120<<10, f.seed.Add(10))
	sn := backupDir(t, other, src, "t/copied")
	if _, err := Copy(ctx, other, reopen(t, f.dir, f.pw), []*Snapshot{sn}, nil); err != nil {
		t.Error(err)
	}
}

// TestCheckDuringWriters puts a whole backup, copy, forget or prune at each
// point between the steps of a check: after it listed the snapshots, after
// it loaded the index, and while it reads trees. Check must report nothing
// (the repository is intact at every moment), and must not fail either.
func TestCheckDuringWriters(t *testing.T) {
	writers := []struct {
		name string
		run  func(*concurrentFixture, *testing.T)
	}{
		{"backup", (*concurrentFixture).backup},
		{"copy", (*concurrentFixture).copyIn},
		{"forget", (*concurrentFixture).forgetGone},
		{"forget and prune", (*concurrentFixture).forgetAndPrune},
	}
	points := []struct {
		name string
		set  func(h *hookBackend, fn func())
	}{
		{"before listing index files", func(h *hookBackend, fn func()) { h.lists[backend.IndexFile] = fn }},
		{"before listing packs", func(h *hookBackend, fn func()) { h.lists[backend.PackFile] = fn }},
		{"while reading trees", func(h *hookBackend, fn func()) { h.load = fn }},
	}
	for _, w := range writers {
		for _, p := range points {
			for _, readData := range []bool{false, true} {
				t.Run(fmt.Sprintf("%s/%s/read-data=%v", w.name, p.name, readData), func(t *testing.T) {
					f := newConcurrentFixture(t)
					r, hb := openHooked(t, f.dir, f.pw)
					p.set(hb, func() { w.run(f, t) })
					res, err := r.Check(context.Background(), CheckOptions{ReadData: readData})
					if hb.fired.Load() != 1 {
						t.Fatalf("the writer ran %d times during check, want once", hb.fired.Load())
					}
					if err != nil {
						t.Fatalf("check failed: %v", err)
					}
					if len(res.Problems) > 0 {
						t.Fatalf("check reported problems in an intact repository: %+v", res.Problems)
					}
					mustCheckClean(t, reopen(t, f.dir, f.pw), true)
				})
			}
		}
	}
}

// TestCheckDuringWritersStillFindsDamage: a pack deleted before the check
// starts is reported although a backup or a forget runs during the check.
func TestCheckDuringWritersStillFindsDamage(t *testing.T) {
	for _, forget := range []bool{false, true} {
		t.Run(fmt.Sprintf("forget=%v", forget), func(t *testing.T) {
			f := newConcurrentFixture(t)
			r0 := reopen(t, f.dir, f.pw)
			tr, err := r0.loadTree(context.Background(), f.keep.Tree)
			if err != nil {
				t.Fatal(err)
			}
			d := tr.Find("d00")
			dt, err := r0.loadTree(context.Background(), d.Subtree)
			if err != nil {
				t.Fatal(err)
			}
			pack, _, ok := r0.index().Lookup(format.DataHandle(dt.Nodes[0].Content[0]))
			if !ok {
				t.Fatal("test data: blob not indexed")
			}
			object := packPath(pack)
			if err := os.Remove(filepath.Join(f.dir, object)); err != nil {
				t.Fatal(err)
			}
			r, hb := openHooked(t, f.dir, f.pw)
			if forget {
				hb.lists[backend.PackFile] = func() { f.forgetGone(t) }
			} else {
				hb.lists[backend.PackFile] = func() { f.backup(t) }
			}
			res, err := r.Check(context.Background(), CheckOptions{ReadData: true})
			if err != nil {
				t.Fatal(err)
			}
			p := findProblem(t, res, object)
			if !slices.Contains(p.Snapshots, f.keep.ID.String()) || len(p.Paths) == 0 {
				t.Errorf("problem does not name snapshot keep and its paths: %+v", p)
			}
		})
	}
}

// TestCheckGivesUpOnEndlessChange: when objects keep vanishing during every
// pass while damage is present, check cannot tell damage from change; it
// fails saying so instead of reporting damage it could not confirm.
func TestCheckGivesUpOnEndlessChange(t *testing.T) {
	f := newConcurrentFixture(t)
	// Real damage, so that every pass has something to confirm.
	if err := os.Remove(filepath.Join(f.dir, packPath(mustAnyPack(t, reopen(t, f.dir, f.pw), f.keep)))); err != nil {
		t.Fatal(err)
	}
	w := reopen(t, f.dir, f.pw)
	ephemeral := func() *Snapshot {
		src := t.TempDir()
		writeRandomFiles(t, src, "e", 1, 10<<10, f.seed.Add(1))
		return backupDir(t, w, src, "t/ephemeral")
	}
	cur := ephemeral()
	r, hb := openHooked(t, f.dir, f.pw)
	hb.every = true
	// After each pass listed the snapshots, the one it listed vanishes and
	// another appears: each pass's look again finds an object gone.
	hb.lists[backend.IndexFile] = func() {
		_ = w.be.Remove(context.Background(), backend.Handle{Type: backend.SnapshotFile, Name: cur.ID.String()})
		cur = ephemeral()
	}
	res, err := r.Check(context.Background(), CheckOptions{})
	if err == nil || !strings.Contains(err.Error(), "changed while it was read") {
		t.Fatalf("check under endless change: result %+v, err %v; want an error saying the repository kept changing", res, err)
	}
}

// mustAnyPack returns a pack holding a data blob of sn.
func mustAnyPack(t *testing.T, r *Repository, sn *Snapshot) ID {
	t.Helper()
	var pack ID
	err := r.walkTree(context.Background(), sn.Tree, func(_ string, n *format.Node) error {
		if n.Type == format.NodeFile && len(n.Content) > 0 && pack.IsNull() {
			pack, _, _ = r.index().Lookup(format.DataHandle(n.Content[0]))
		}
		return nil
	})
	if err != nil || pack.IsNull() {
		t.Fatalf("no pack found: %v", err)
	}
	return pack
}

// TestCheckLoopDuringBackupsAndPrune runs checks back to back, on their own
// handle as another process would, while two writers back up several
// times, and then while a forget and a prune run. No check may report a
// problem or fail.
func TestCheckLoopDuringBackupsAndPrune(t *testing.T) {
	f := newConcurrentFixture(t)
	checker := reopen(t, f.dir, f.pw)
	var checks, alarms atomic.Int32
	loop := func(done <-chan struct{}) <-chan struct{} {
		out := make(chan struct{})
		go func() {
			defer close(out)
			for {
				res, err := checker.Check(context.Background(), CheckOptions{})
				checks.Add(1)
				if err != nil {
					t.Errorf("check %d failed: %v", checks.Load(), err)
					alarms.Add(1)
				} else if len(res.Problems) > 0 {
					t.Errorf("check %d reported problems in an intact repository: %+v", checks.Load(), res.Problems)
					alarms.Add(1)
				}
				select {
				case <-done:
					return
				default:
				}
			}
		}()
		return out
	}

	done := make(chan struct{})
	stopped := loop(done)
	var wg sync.WaitGroup
	for range 2 {
		wg.Go(func() {
			for range 4 {
				f.backup(t)
			}
		})
	}
	wg.Wait()
	close(done)
	<-stopped

	done = make(chan struct{})
	stopped = loop(done)
	f.forgetAndPrune(t)
	f.backup(t)
	close(done)
	<-stopped
	t.Logf("%d checks, %d false alarms", checks.Load(), alarms.Load())
	mustCheckClean(t, reopen(t, f.dir, f.pw), true)
}
