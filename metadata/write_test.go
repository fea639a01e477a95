package metadata

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/custos-backup/custos/metadata/etcdserver"
)

// atomsDS is dataset src/ds with the given atoms, each in snapshot
// "<snap>-<atom>", so that a test can tell which write an atom came from.
func atomsDS(snap string, atoms ...string) *Dataset {
	d := &Dataset{ID: "b1/src/ds", Source: "src", Name: "ds", Handler: "pipe", Repository: "local"}
	for _, a := range atoms {
		d.Atoms = append(d.Atoms, Atom{Name: a, SnapshotID: snap + "-" + a})
	}
	d.AtomCount = len(d.Atoms)
	return d
}

func atomNames(prefix string, lo, hi int) []string {
	var out []string
	for i := lo; i < hi; i++ {
		out = append(out, fmt.Sprintf("%s%02d", prefix, i))
	}
	return out
}

// findOf returns the atoms FindAtoms reports for backup id under pattern,
// as "name@snapshot", sorted.
func findOf(t *testing.T, s *EtcdStore, pattern, id string) []string {
	t.Helper()
	got, err := s.FindAtoms(ctxT(t), FindRequest{Pattern: pattern, NumVersions: 10})
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, b := range got {
		if b.ID != id {
			continue
		}
		for _, d := range b.Datasets {
			for _, a := range d.Atoms {
				out = append(out, a.Name+"@"+a.SnapshotID)
			}
		}
	}
	sort.Strings(out)
	return out
}

func want(snap string, atoms []string) []string {
	var out []string
	for _, a := range atoms {
		out = append(out, a+"@"+snap+"-"+a)
	}
	sort.Strings(out)
	return out
}

// atomKeysOf counts the atom records of backup id in etcd, whether find
// would show them or not.
func atomKeysOf(t *testing.T, s *EtcdStore, id string) int {
	t.Helper()
	resp, err := s.cli.Get(context.Background(), s.k.atomNS(), clientv3.WithPrefix(), clientv3.WithKeysOnly())
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, kv := range resp.Kvs {
		if _, _, bid, _, err := s.k.parseAtomKey(string(kv.Key)); err == nil && bid == id {
			n++
		}
	}
	return n
}

// TestAddDatasetReplacesAtoms re-adds a dataset with another atom set and
// checks that find reports exactly the new set, that the atom records of
// the old set are gone and that GetBackup agrees, both when the whole
// write fits in one transaction and when it is split over several.
func TestAddDatasetReplacesAtoms(t *testing.T) {
	cases := []struct {
		name     string
		old, new []string
	}{
		{"more atoms", atomNames("a", 0, 6), atomNames("a", 0, 14)},
		{"fewer atoms", atomNames("a", 0, 14), atomNames("a", 0, 3)},
		{"same atoms", atomNames("a", 0, 9), atomNames("a", 0, 9)},
		{"disjoint atoms", atomNames("a", 0, 9), atomNames("z", 0, 11)},
		{"overlapping", atomNames("a", 0, 10), atomNames("a", 5, 15)},
		{"to one atom", atomNames("a", 0, 12), []string{"a07"}},
	}
	for _, mode := range []struct {
		name   string
		maxOps int
	}{{"one txn", 0}, {"split", 4}} {
		for _, tc := range cases {
			t.Run(mode.name+"/"+tc.name, func(t *testing.T) {
				ctx := ctxT(t)
				s := newSharedStore(t, Options{MaxTxnOps: mode.maxOps, PageSize: 5})
				b := mkBackup("b1", "h1", t0)
				if err := s.AddDataset(ctx, b, atomsDS("old", tc.old...)); err != nil {
					t.Fatal(err)
				}
				if got := findOf(t, s, "src/ds", "b1"); !reflect.DeepEqual(got, want("old", tc.old)) {
					t.Fatalf("after first add find = %q, want %q", got, want("old", tc.old))
				}
				// Twice: the replacement is idempotent too.
				for i := 0; i < 2; i++ {
					if err := s.AddDataset(ctx, b, atomsDS("new", tc.new...)); err != nil {
						t.Fatal(err)
					}
				}
				if got := findOf(t, s, "src/ds", "b1"); !reflect.DeepEqual(got, want("new", tc.new)) {
					t.Fatalf("after re-add find = %q, want %q", got, want("new", tc.new))
				}
				if n := atomKeysOf(t, s, "b1"); n != len(tc.new) {
					t.Fatalf("%d atom records of b1 in etcd, want %d (the old ones must be deleted)", n, len(tc.new))
				}
				for _, a := range tc.old {
					got, err := s.FindAtoms(ctx, FindRequest{Pattern: "src/ds/" + a})
					if err != nil {
						t.Fatal(err)
					}
					if f := flat(got); len(f) > 0 && !contains(tc.new, a) {
						t.Fatalf("find of removed atom %s = %q, want nothing", a, f)
					}
				}
				got, err := s.GetBackup(ctx, "b1")
				if err != nil {
					t.Fatal(err)
				}
				if len(got.Datasets) != 1 || !reflect.DeepEqual(got.Datasets[0], atomsDS("new", tc.new...)) {
					t.Fatalf("GetBackup = %+v, want the new record", got.Datasets)
				}
			})
		}
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

var errCrash = errors.New("simulated crash")

// TestAddDatasetCrashConsistency stops a re-add that is split over
// several transactions after each of its steps, as a crash would, and
// checks that readers see the old atom set or the new one, never a mix,
// and that an atom record the dataset record does not list hides no older
// version of the atom.
func TestAddDatasetCrashConsistency(t *testing.T) {
	oldSet := atomNames("a", 0, 10) // a00..a09
	newSet := atomNames("a", 5, 15) // a05..a14: a00..a04 go, a10..a14 come
	for _, tc := range []struct {
		step     string
		wantSnap string
		wantSet  []string
		keys     int // atom records of b1 in etcd after the crash
	}{
		// Every write has its own atom set: 10 old and 10 new records.
		{stepAtomsWritten, "old", oldSet, 20},
		{stepRecordSwitched, "new", newSet, 20},
	} {
		t.Run(tc.step, func(t *testing.T) {
			ctx := ctxT(t)
			s := newSharedStore(t, Options{MaxTxnOps: 4, PageSize: 3})
			// An older backup with an atom that leaves (a00) and one
			// that comes (a12): find must show these versions whenever
			// b1's record does not list the atom.
			if err := s.AddDataset(ctx, mkBackup("b0", "h1", t0.Add(-time.Hour)), atomsDS("b0", "a00", "a12")); err != nil {
				t.Fatal(err)
			}
			b := mkBackup("b1", "h1", t0)
			if err := s.AddDataset(ctx, b, atomsDS("old", oldSet...)); err != nil {
				t.Fatal(err)
			}
			s.testHook = func(_ context.Context, step string) error {
				if step == tc.step {
					return errCrash
				}
				return nil
			}
			if err := s.AddDataset(ctx, b, atomsDS("new", newSet...)); !errors.Is(err, errCrash) {
				t.Fatalf("AddDataset with a crash at %s: err = %v", tc.step, err)
			}
			s.testHook = nil
			if n := atomKeysOf(t, s, "b1"); n != tc.keys {
				t.Fatalf("%d atom records of b1 after the crash, want %d", n, tc.keys)
			}
			if got := findOf(t, s, "src/ds", "b1"); !reflect.DeepEqual(got, want(tc.wantSnap, tc.wantSet)) {
				t.Fatalf("after a crash at %s find = %q, want the %s set %q", tc.step, got, tc.wantSnap, want(tc.wantSnap, tc.wantSet))
			}
			// Newest version only: b1 where its record lists the atom,
			// else b0's.
			for _, a := range []string{"a00", "a12"} {
				got, err := s.FindAtoms(ctx, FindRequest{Pattern: "src/ds/" + a})
				if err != nil {
					t.Fatal(err)
				}
				wantID := "b0"
				if contains(tc.wantSet, a) {
					wantID = "b1"
				}
				if f := flat(got); !reflect.DeepEqual(f, []string{wantID + ":src/ds/" + a}) {
					t.Fatalf("find %s = %q, want the version of %s", a, f, wantID)
				}
			}
			if got, err := s.GetBackup(ctx, "b1"); err != nil || !reflect.DeepEqual(got.Datasets[0], atomsDS(tc.wantSnap, tc.wantSet...)) {
				t.Fatalf("GetBackup = %+v, %v; want the %s record", got, err, tc.wantSnap)
			}

			// The retry (as the spool would do it) ends with the new set.
			if err := s.AddDataset(ctx, b, atomsDS("new", newSet...)); err != nil {
				t.Fatal(err)
			}
			if got := findOf(t, s, "src/ds", "b1"); !reflect.DeepEqual(got, want("new", newSet)) {
				t.Fatalf("after the retry find = %q, want %q", got, want("new", newSet))
			}
			// After a crash at atoms-written the retry writes a third
			// set and deletes the old one: the crashed write's set stays.
			// After a crash at record-switched the retry finds its
			// record already there; the old set, no longer named by the
			// record, stays. Both stay invisible (checked above).
			wantKeys := tc.keys
			if n := atomKeysOf(t, s, "b1"); n != wantKeys {
				t.Fatalf("%d atom records of b1 after the retry, want %d", n, wantKeys)
			}
		})
	}
}

// TestAddDatasetCleanupGuard: the deletion of stale atom records stops when
// another write has switched the dataset record meanwhile, so it never
// deletes an atom record the newer record lists.
func TestAddDatasetCleanupGuard(t *testing.T) {
	ctx := ctxT(t)
	s := newSharedStore(t, Options{MaxTxnOps: 4})
	b := mkBackup("b1", "h1", t0)
	first := atomNames("a", 0, 10)
	if err := s.AddDataset(ctx, b, atomsDS("first", first...)); err != nil {
		t.Fatal(err)
	}
	second := atomNames("a", 8, 10) // drops a00..a07
	third := atomNames("a", 0, 10)  // brings them back
	var nested atomic.Bool
	s.testHook = func(_ context.Context, step string) error {
		if step == stepRecordSwitched && nested.CompareAndSwap(false, true) {
			// Between the second write's switch and its cleanup, a third
			// write replaces the record.
			if err := s.write(ctx, b, atomsDS("third", third...)); err != nil {
				return err
			}
		}
		return nil
	}
	if err := s.AddDataset(ctx, b, atomsDS("second", second...)); err != nil {
		t.Fatal(err)
	}
	if got := findOf(t, s, "src/ds", "b1"); !reflect.DeepEqual(got, want("third", third)) {
		t.Fatalf("find = %q, want the third set %q", got, want("third", third))
	}
}

// TestSpoolSkipsEtcdWhileDown: once a write finds etcd down, following
// writes go straight to the spool without trying etcd (counted, not
// timed); when etcd is back the flusher writes them all in order, and the
// next write goes to etcd directly.
func TestSpoolSkipsEtcdWhileDown(t *testing.T) {
	ctx := ctxT(t)
	dir := t.TempDir()
	srv, s := spoolingStore(t, dir, 0)
	spoolDir := filepath.Join(dir, "spool")
	if err := s.AddDataset(ctx, mkBackup("before", "h1", t0), mkDataset("files", "home", "bob")); err != nil {
		t.Fatal(err)
	}
	if tried, failed := s.directTried.Load(), s.directFailed.Load(); tried != 1 || failed != 0 {
		t.Fatalf("with etcd up: %d direct writes, %d failed; want 1, 0", tried, failed)
	}
	if err := srv.Close(); err != nil {
		t.Fatal(err)
	}

	const n = 8
	for i := range n {
		if err := s.AddDataset(ctx, mkBackup("b1", "h1", t0.Add(time.Hour)), mkDataset("src", fmt.Sprintf("ds%d", i), "x", "y")); err != nil {
			t.Fatalf("AddDataset %d during the outage: %v", i, err)
		}
	}
	// Only the first tried etcd and waited for it; the others went to
	// the spool at once.
	if tried, failed := s.directTried.Load(), s.directFailed.Load(); tried != 2 || failed != 1 {
		t.Fatalf("during the outage: %d direct writes, %d found etcd down; want 2, 1", tried, failed)
	}
	if d := s.SpoolDepth(); d != n {
		t.Fatalf("spool depth %d, want %d", d, n)
	}

	srv2, err := etcdserver.StartEmbedded(ctx, dir, etcdserver.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer srv2.Close()
	waitFor(t, "spool to drain", 60*time.Second, func() (bool, error) { return s.SpoolDepth() == 0, nil })
	if files, _ := os.ReadDir(spoolDir); len(files) != 0 {
		t.Fatalf("spool dir still holds %d files", len(files))
	}
	// In etcd in the order they were added: the dataset records' mod
	// revisions rise.
	var last int64
	for i := range n {
		resp, err := s.Client().Get(ctx, s.k.dataset("src", fmt.Sprintf("ds%d", i), t0.Add(time.Hour), "b1"))
		if err != nil {
			t.Fatal(err)
		}
		if len(resp.Kvs) != 1 {
			t.Fatalf("dataset ds%d not in etcd", i)
		}
		if rev := resp.Kvs[0].ModRevision; rev <= last {
			t.Fatalf("dataset ds%d written at revision %d, not after the one before (%d)", i, rev, last)
		} else {
			last = rev
		}
	}
	if got, err := s.GetBackup(ctx, "b1"); err != nil || len(got.Datasets) != n {
		t.Fatalf("GetBackup(b1) = %+v, %v; want %d datasets", got, err, n)
	}
	if _, up := s.etcdUp(); !up {
		t.Fatal("store still takes etcd as down after the flush")
	}

	// The first write after the recovery goes to etcd directly.
	if err := s.AddDataset(ctx, mkBackup("after", "h1", t0.Add(2*time.Hour)), mkDataset("files", "home", "bob")); err != nil {
		t.Fatal(err)
	}
	if tried, failed := s.directTried.Load(), s.directFailed.Load(); tried != 3 || failed != 1 {
		t.Fatalf("after the recovery: %d direct writes, %d failed; want 3, 1", tried, failed)
	}
	if d := s.SpoolDepth(); d != 0 {
		t.Fatalf("spool depth %d after a write with etcd up", d)
	}
	if _, err := s.GetBackup(ctx, "after"); err != nil {
		t.Fatal(err)
	}
}

// TestSpoolCancelsWritesInFlight: a direct write in flight when another
// write finds etcd down is cancelled and spooled at once instead of
// waiting for its own timeout.
func TestSpoolCancelsWritesInFlight(t *testing.T) {
	ctx := ctxT(t)
	dir := t.TempDir()
	srv, s := spoolingStore(t, dir, 4)

	// Write B is split over several transactions; it stops after its
	// first step until its context ends (only the first time: the
	// flusher writes it again later).
	inFlight := make(chan struct{})
	var once atomic.Bool
	s.testHook = func(ctx context.Context, step string) error {
		if step != stepAtomsWritten || !once.CompareAndSwap(false, true) {
			return nil
		}
		close(inFlight)
		select {
		case <-ctx.Done():
			return nil // the switch then fails on the cancelled context
		case <-time.After(30 * time.Second):
			return errors.New("write in flight was not cancelled")
		}
	}
	errB := make(chan error, 1)
	go func() {
		errB <- s.AddDataset(ctx, mkBackup("bB", "h1", t0), atomsDS("B", atomNames("a", 0, 10)...))
	}()
	<-inFlight
	if err := srv.Close(); err != nil {
		t.Fatal(err)
	}
	// Write A finds etcd down and waits for it; that cancels B.
	if err := s.AddDataset(ctx, mkBackup("bA", "h1", t0), mkDataset("files", "home", "bob")); err != nil {
		t.Fatal(err)
	}
	if err := <-errB; err != nil {
		t.Fatalf("write in flight: %v", err)
	}
	if tried, failed := s.directTried.Load(), s.directFailed.Load(); tried != 2 || failed != 1 {
		t.Fatalf("%d direct writes, %d found etcd down themselves; want 2, 1", tried, failed)
	}
	if d := s.SpoolDepth(); d != 2 {
		t.Fatalf("spool depth %d, want 2", d)
	}

	srv2, err := etcdserver.StartEmbedded(ctx, dir, etcdserver.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer srv2.Close()
	waitFor(t, "spool to drain", 60*time.Second, func() (bool, error) { return s.SpoolDepth() == 0, nil })
	if got := findOf(t, s, "src/ds", "bB"); !reflect.DeepEqual(got, want("B", atomNames("a", 0, 10))) {
		t.Fatalf("find bB = %q", got)
	}
	if _, err := s.GetBackup(ctx, "bA"); err != nil {
		t.Fatal(err)
	}
}

// TestDownStateWithEmptySpool: the store remembers that etcd is down even
// when the spool is empty (here because spooling the first record failed),
// so the next record is spooled without trying etcd again.
func TestDownStateWithEmptySpool(t *testing.T) {
	ctx := ctxT(t)
	dir := t.TempDir()
	srv, s := spoolingStore(t, dir, 0)
	spoolDir := filepath.Join(dir, "spool")
	if err := srv.Close(); err != nil {
		t.Fatal(err)
	}
	// A file where the spool directory was: spooling fails, even as root.
	if err := os.Rename(spoolDir, spoolDir+".away"); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(spoolDir, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := s.AddDataset(ctx, mkBackup("b1", "h1", t0), mkDataset("src", "ds1", "x")); err == nil {
		t.Fatal("AddDataset succeeded with neither etcd nor the spool")
	}
	if err := os.Remove(spoolDir); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(spoolDir+".away", spoolDir); err != nil {
		t.Fatal(err)
	}
	if err := s.AddDataset(ctx, mkBackup("b1", "h1", t0), mkDataset("src", "ds2", "x")); err != nil {
		t.Fatal(err)
	}
	if tried, failed, depth := s.directTried.Load(), s.directFailed.Load(), s.SpoolDepth(); tried != 1 || failed != 1 || depth != 1 {
		t.Fatalf("%d direct writes, %d failed, spool depth %d; want 1, 1, 1", tried, failed, depth)
	}
	srv2, err := etcdserver.StartEmbedded(ctx, dir, etcdserver.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer srv2.Close()
	waitFor(t, "spool to drain", 60*time.Second, func() (bool, error) { return s.SpoolDepth() == 0, nil })
	if got, err := s.GetBackup(ctx, "b1"); err != nil || len(got.Datasets) != 1 || got.Datasets[0].Name != "ds2" {
		t.Fatalf("GetBackup = %+v, %v; want ds2 only (ds1 was refused to its caller)", got, err)
	}
}

// spoolingStore starts an etcd server of the test's own (so that the test
// can stop it) and a store on it that spools under dir/spool, with short
// timeouts and backoffs; maxTxnOps 0 is the default.
func spoolingStore(t *testing.T, dir string, maxTxnOps int) (*etcdserver.Embedded, *EtcdStore) {
	t.Helper()
	srv := ownServer(t, dir)
	cli := newClient(t, srv.Endpoints()[0])
	t.Cleanup(func() { _ = cli.Close() })
	s, err := NewStore(cli, Options{
		SpoolDir: filepath.Join(dir, "spool"), Logger: testLogger(t), MaxTxnOps: maxTxnOps,
		WriteTimeout: 300 * time.Millisecond, MinBackoff: 50 * time.Millisecond, MaxBackoff: 200 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return srv, s
}
