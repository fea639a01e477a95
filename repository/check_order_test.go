package repository

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/custos-backup/custos/repository/backend"
	"github.com/custos-backup/custos/repository/backend/local"
)

// recordingBackend records when each List starts and returns, and counts
// the loads of each object.
type recordingBackend struct {
	backend.Backend
	mu     sync.Mutex
	events []string
	loads  map[backend.Handle]int
	// slowLists makes every List take a little while.
	slowLists bool
}

func (b *recordingBackend) event(e string) {
	b.mu.Lock()
	b.events = append(b.events, e)
	b.mu.Unlock()
}

func (b *recordingBackend) List(ctx context.Context, t backend.FileType, fn func(backend.FileInfo) error) error {
	b.event("start " + string(t))
	defer b.event("end " + string(t))
	if b.slowLists {
		// A listing that takes a while, as on remote storage, gives a
		// listing started too early the time to show up before this one
		// ends. Correct code passes however long it takes.
		time.Sleep(20 * time.Millisecond)
	}
	return b.Backend.List(ctx, t, fn)
}

func (b *recordingBackend) Load(ctx context.Context, h backend.Handle, length int, offset int64) (io.ReadCloser, error) {
	b.mu.Lock()
	b.loads[h]++
	b.mu.Unlock()
	return b.Backend.Load(ctx, h, length, offset)
}

// reset forgets what was recorded so far (the open).
func (b *recordingBackend) reset() {
	b.mu.Lock()
	b.events, b.loads = nil, map[backend.Handle]int{}
	b.mu.Unlock()
}

func openRecording(t *testing.T, dir, pw string) (*Repository, *recordingBackend) {
	t.Helper()
	be, err := local.Open(context.Background(), dir)
	if err != nil {
		t.Fatal(err)
	}
	rb := &recordingBackend{Backend: be, loads: map[backend.Handle]int{}}
	r, _, err := OpenTolerant(context.Background(), rb, []byte(pw))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = r.Close() })
	rb.reset()
	return r, rb
}

// TestCheckListsInWriteOrder: check loads snapshot and index files while
// the next listing runs, but each listing still starts only after the one
// before it has returned (snapshots, index files, packs: the reverse of the
// write order that keeps concurrent backups from looking like damage), and
// each snapshot and index file is loaded once.
func TestCheckListsInWriteOrder(t *testing.T) {
	f := newCorruptionFixture(t)
	for _, readData := range []bool{false, true} {
		r, rb := openRecording(t, f.dir, corruptPW)
		rb.slowLists = true
		mustCheckClean(t, r, readData)
		pos := func(e string) int {
			i := slices.Index(rb.events, e)
			if i < 0 {
				t.Fatalf("read-data=%v: check did not %s; events %v", readData, e, rb.events)
			}
			return i
		}
		if pos("end "+string(backend.SnapshotFile)) > pos("start "+string(backend.IndexFile)) ||
			pos("end "+string(backend.IndexFile)) > pos("start "+string(backend.PackFile)) {
			t.Errorf("read-data=%v: listings out of order: %v", readData, rb.events)
		}
		var snaps, indexes int
		for h, n := range rb.loads {
			switch h.Type {
			case backend.SnapshotFile:
				snaps++
			case backend.IndexFile:
				indexes++
			default:
				continue
			}
			if n != 1 {
				t.Errorf("read-data=%v: %s loaded %d times, want once", readData, h, n)
			}
		}
		if snaps != 2 || indexes < 2 {
			t.Errorf("read-data=%v: loaded %d snapshot and %d index files, want 2 and at least 2", readData, snaps, indexes)
		}
	}
}

// TestCheckReportsInStepOrder: damage found by the steps that now overlap
// (a snapshot file, an index file, a name in data/) is all reported, in the
// order of the steps.
func TestCheckReportsInStepOrder(t *testing.T) {
	f := newCorruptionFixture(t)
	snapObj := backend.Handle{Type: backend.SnapshotFile, Name: f.snapB.ID.String()}.Path()
	f.flip(t, snapObj, 40)
	ids := indexIDs(t, f.r)
	idxObj := backend.Handle{Type: backend.IndexFile, Name: ids[0].String()}.Path()
	f.flip(t, idxObj, 40)
	strayObj := backend.Handle{Type: backend.PackFile, Name: "not-a-pack"}.Path()
	if err := os.MkdirAll(filepath.Dir(filepath.Join(f.dir, strayObj)), 0o755); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(f.dir, strayObj), []byte("stray"), 0o644)

	be, err := local.Open(context.Background(), f.dir)
	if err != nil {
		t.Fatal(err)
	}
	r, err := OpenForCheck(context.Background(), be, []byte(corruptPW))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = r.Close() })
	res, err := r.Check(context.Background(), CheckOptions{ReadData: true})
	if err != nil {
		t.Fatal(err)
	}
	var order []string
	for _, p := range res.Problems {
		order = append(order, p.Object)
	}
	want := []string{snapObj, idxObj, strayObj}
	var got []string
	for _, o := range order {
		if slices.Contains(want, o) {
			got = append(got, o)
		}
	}
	if !slices.Equal(got, want) {
		t.Fatalf("problems %v, want %v in this order", order, want)
	}
}

// keyGate is a recordingBackend whose loads of key files wait until a
// listing of snapshots has started: a check that lists only once it holds
// the key then cannot open at all.
type keyGate struct {
	*recordingBackend
}

func (g keyGate) Load(ctx context.Context, h backend.Handle, length int, offset int64) (io.ReadCloser, error) {
	if h.Type == backend.KeyFile {
		for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(5 * time.Millisecond) {
			g.mu.Lock()
			started := slices.Contains(g.events, "start "+string(backend.SnapshotFile))
			g.mu.Unlock()
			if started {
				break
			}
			if time.Now().After(deadline) {
				return nil, fmt.Errorf("load %s: nothing was listed while the key was loaded", h)
			}
		}
	}
	return g.recordingBackend.Load(ctx, h, length, offset)
}

// TestOpenForCheckFetchesWhileKeyDerives: opened as the check command opens
// it, the first check's listings and loads run while the key is loaded and
// derived, still in the write-reverse order, and the check loads every
// snapshot and index file once, open included.
func TestOpenForCheckFetchesWhileKeyDerives(t *testing.T) {
	f := newCorruptionFixture(t)
	be, err := local.Open(context.Background(), f.dir)
	if err != nil {
		t.Fatal(err)
	}
	rb := &recordingBackend{Backend: be, loads: map[backend.Handle]int{}, slowLists: true}
	r, err := OpenForCheck(context.Background(), keyGate{rb}, []byte(corruptPW))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = r.Close() })
	mustCheckClean(t, r, true)
	rb.mu.Lock()
	defer rb.mu.Unlock()
	pos := func(e string) int {
		i := slices.Index(rb.events, e)
		if i < 0 {
			t.Fatalf("check did not %s; events %v", e, rb.events)
		}
		return i
	}
	if pos("end "+string(backend.SnapshotFile)) > pos("start "+string(backend.IndexFile)) ||
		pos("end "+string(backend.IndexFile)) > pos("start "+string(backend.PackFile)) {
		t.Errorf("listings out of order: %v", rb.events)
	}
	counts := map[backend.FileType]int{}
	for h, n := range rb.loads {
		if h.Type != backend.IndexFile && h.Type != backend.SnapshotFile {
			continue
		}
		counts[h.Type]++
		if n != 1 {
			t.Errorf("%s loaded %d times, want once", h, n)
		}
	}
	if want := len(indexIDs(t, f.r)); counts[backend.IndexFile] != want || counts[backend.SnapshotFile] != 2 {
		t.Errorf("loaded %d index files and %d snapshots, want all %d and 2", counts[backend.IndexFile], counts[backend.SnapshotFile], want)
	}
}

// inflightBackend counts the calls running on the wrapped backend (a
// loaded object until its reader is closed).
type inflightBackend struct {
	backend.Backend
	n atomic.Int64
	// holdIndexList makes listing index/ wait until its context ends.
	holdIndexList bool
}

func (b *inflightBackend) List(ctx context.Context, t backend.FileType, fn func(backend.FileInfo) error) error {
	b.n.Add(1)
	defer b.n.Add(-1)
	if b.holdIndexList && t == backend.IndexFile {
		<-ctx.Done()
		return ctx.Err()
	}
	return b.Backend.List(ctx, t, fn)
}

func (b *inflightBackend) Load(ctx context.Context, h backend.Handle, length int, offset int64) (io.ReadCloser, error) {
	b.n.Add(1)
	rc, err := b.Backend.Load(ctx, h, length, offset)
	if err != nil {
		b.n.Add(-1)
		return nil, err
	}
	return &countedCloser{ReadCloser: rc, n: &b.n}, nil
}

type countedCloser struct {
	io.ReadCloser
	n    *atomic.Int64
	once sync.Once
}

func (c *countedCloser) Close() error {
	c.once.Do(func() { c.n.Add(-1) })
	return c.ReadCloser.Close()
}

// TestOpenLoadsIndexOnceAndStops: Open lists the keys and loads the index
// files while it derives the key; it loads each index file once, and
// whether it succeeds or not (wrong password, with the index listing still
// running) nothing it started is still running on the backend when it
// returns.
func TestOpenLoadsIndexOnceAndStops(t *testing.T) {
	f := newCorruptionFixture(t)
	opens := []struct {
		name string
		open func(context.Context, backend.Backend, []byte) (*Repository, error)
	}{
		{"Open", Open},
		{"OpenTolerant", func(ctx context.Context, be backend.Backend, pw []byte) (*Repository, error) {
			r, _, err := OpenTolerant(ctx, be, pw)
			return r, err
		}},
	}
	for _, o := range opens {
		for _, pw := range []string{corruptPW, "wrong"} {
			t.Run(o.name+"/"+pw, func(t *testing.T) {
				be, err := local.Open(context.Background(), f.dir)
				if err != nil {
					t.Fatal(err)
				}
				rb := &recordingBackend{Backend: be, loads: map[backend.Handle]int{}}
				ib := &inflightBackend{Backend: rb, holdIndexList: pw != corruptPW}
				r, err := o.open(context.Background(), ib, []byte(pw))
				if n := ib.n.Load(); n != 0 {
					t.Errorf("%d backend calls still running after the open returned", n)
				}
				if pw != corruptPW {
					if !errors.Is(err, ErrWrongPassword) {
						t.Fatalf("open with a wrong password: %v, want ErrWrongPassword", err)
					}
					return
				}
				if err != nil {
					t.Fatal(err)
				}
				defer func() { _ = r.Close() }()
				ids := indexIDs(t, f.r)
				for _, id := range ids {
					if n := rb.loads[backend.Handle{Type: backend.IndexFile, Name: id.String()}]; n != 1 {
						t.Errorf("index file %s loaded %d times, want once", id.Short(), n)
					}
				}
				if got, _ := r.index().Count(); got == 0 {
					t.Fatal("the opened index is empty")
				}
				restoreAndCompare(t, r, f.snapA, f.srcA, nil)
			})
		}
	}
}
