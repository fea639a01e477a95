package metadata

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// chunkKeysOf counts the atom list chunks of backup id in etcd, named by
// a record or not.
func chunkKeysOf(t *testing.T, s *EtcdStore, id string) int {
	t.Helper()
	ns := s.k.p + nsDatasetAtom
	resp, err := s.cli.Get(context.Background(), ns, clientv3.WithPrefix(), clientv3.WithKeysOnly())
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, kv := range resp.Kvs {
		parts := strings.Split(string(kv.Key[len(ns):]), sep)
		if len(parts) == 4 && strings.HasSuffix(parts[1], "/"+id) {
			n++
		}
	}
	return n
}

// recordGen returns the gen the record of src/ds in backup id names.
func recordGen(t *testing.T, s *EtcdStore, id string, ts time.Time) string {
	t.Helper()
	resp, err := s.cli.Get(context.Background(), s.k.dataset("src", "ds", ts, id))
	if err != nil || len(resp.Kvs) != 1 {
		t.Fatalf("record of %s: %v, %d keys", id, err, len(resp.Kvs))
	}
	var rec datasetRecord
	if err := json.Unmarshal(resp.Kvs[0].Value, &rec); err != nil {
		t.Fatal(err)
	}
	return rec.Gen
}

// sweeper is another store on the same catalog (another agent, or
// `custos sync`), so that its transactions are not the writer's.
func sweeper(t *testing.T, s *EtcdStore) *EtcdStore {
	t.Helper()
	return newSharedStore(t, Options{Prefix: s.k.p, MaxTxnOps: s.opts.MaxTxnOps, PageSize: s.opts.PageSize})
}

func sweepNow(t *testing.T, s *EtcdStore) *SweepResult {
	t.Helper()
	res, err := s.SweepAtomSets(ctxT(t), SweepOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return res
}

func crashAt(step string) func(context.Context, string) error {
	return func(_ context.Context, got string) error {
		if got == step {
			return errCrash
		}
		return nil
	}
}

// TestSweepRemovesLeftovers crafts the leftovers that stay for good after
// a crash and checks that a sweep removes exactly them: what find and
// GetBackup report does not change, every named set stays whole, a key
// from before atom sets stays, and a second sweep removes nothing.
func TestSweepRemovesLeftovers(t *testing.T) {
	oldSet := atomNames("a", 0, 10)
	newSet := atomNames("a", 5, 25)
	for _, tc := range []struct {
		name string
		// leave crafts the leftovers in backup b1 (a version of src/ds
		// written with oldSet already exists).
		leave    func(t *testing.T, s *EtcdStore)
		wantSnap string
		wantSet  []string
		gens     int
	}{
		{"crashed before its switch, then retried", func(t *testing.T, s *EtcdStore) {
			s.testHook = crashAt(stepAtomsWritten)
			if err := s.AddDataset(ctxT(t), mkBackup("b1", "h1", t0), atomsDS("new", newSet...)); !errors.Is(err, errCrash) {
				t.Fatalf("crashed write: %v", err)
			}
			s.testHook = nil
			if err := s.AddDataset(ctxT(t), mkBackup("b1", "h1", t0), atomsDS("new", newSet...)); err != nil {
				t.Fatal(err)
			}
		}, "new", newSet, 1},
		{"crashed between switch and deletes", func(t *testing.T, s *EtcdStore) {
			s.testHook = crashAt(stepRecordSwitched)
			if err := s.AddDataset(ctxT(t), mkBackup("b1", "h1", t0), atomsDS("new", newSet...)); !errors.Is(err, errCrash) {
				t.Fatalf("crashed write: %v", err)
			}
			s.testHook = nil
		}, "new", newSet, 1},
		{"crashed twice, never retried", func(t *testing.T, s *EtcdStore) {
			s.testHook = crashAt(stepAtomsWritten)
			for range 2 {
				if err := s.AddDataset(ctxT(t), mkBackup("b1", "h1", t0), atomsDS("new", newSet...)); !errors.Is(err, errCrash) {
					t.Fatalf("crashed write: %v", err)
				}
			}
			s.testHook = nil
		}, "old", oldSet, 2},
		{"atom records left without their chunks", func(t *testing.T, s *EtcdStore) {
			s.testHook = crashAt(stepAtomsWritten)
			if err := s.AddDataset(ctxT(t), mkBackup("b1", "h1", t0), atomsDS("new", newSet...)); !errors.Is(err, errCrash) {
				t.Fatalf("crashed write: %v", err)
			}
			s.testHook = nil
			// A cleanup that stopped after its first transaction, the
			// one that deletes the chunks.
			named := recordGen(t, s, "b1", t0)
			ns := s.k.p + nsDatasetAtom
			resp, err := s.cli.Get(ctxT(t), ns, clientv3.WithPrefix(), clientv3.WithKeysOnly())
			if err != nil {
				t.Fatal(err)
			}
			for _, kv := range resp.Kvs {
				if !strings.Contains(string(kv.Key), sep+named+sep) {
					if _, err := s.cli.Delete(ctxT(t), string(kv.Key)); err != nil {
						t.Fatal(err)
					}
				}
			}
		}, "old", oldSet, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := ctxT(t)
			s := newSharedStore(t, Options{MaxTxnOps: 4, PageSize: 3})
			// Another dataset and backup, and the first write of a new
			// backup that crashed before its switch: no record names
			// its set at all.
			if err := s.AddDataset(ctx, mkBackup("b0", "h1", t0.Add(-time.Hour)), atomsDS("b0", atomNames("a", 0, 12)...)); err != nil {
				t.Fatal(err)
			}
			if err := s.AddDataset(ctx, mkBackup("b1", "h1", t0), atomsDS("old", oldSet...)); err != nil {
				t.Fatal(err)
			}
			s.testHook = crashAt(stepAtomsWritten)
			if err := s.AddDataset(ctx, mkBackup("b2", "h1", t0.Add(time.Hour)), atomsDS("b2", atomNames("a", 0, 9)...)); !errors.Is(err, errCrash) {
				t.Fatalf("crashed write of a new backup: %v", err)
			}
			s.testHook = nil
			tc.leave(t, s)
			// A stray key from before atom sets: not the sweep's to judge.
			legacy := s.k.atom("src/ds/zz", t0, "b9", "")
			if _, err := s.cli.Put(ctx, legacy, "{}"); err != nil {
				t.Fatal(err)
			}

			findBefore := findOf(t, s, "*", "b1")
			if !reflect.DeepEqual(findBefore, want(tc.wantSnap, tc.wantSet)) {
				t.Fatalf("find before the sweep = %q, want the %s set", findBefore, tc.wantSnap)
			}
			backupsBefore := map[string]*Backup{}
			for _, id := range []string{"b0", "b1"} {
				b, err := s.GetBackup(ctx, id)
				if err != nil {
					t.Fatal(err)
				}
				backupsBefore[id] = b
			}
			keysBefore := atomKeysOf(t, s, "b1") + chunkKeysOf(t, s, "b1") + atomKeysOf(t, s, "b2") + chunkKeysOf(t, s, "b2")

			res := sweepNow(t, sweeper(t, s))
			if res.Gens != tc.gens+1 || res.Changed != 0 || res.Young != 0 {
				t.Fatalf("sweep = %+v, want %d sets removed (b1's and b2's), none left", res, tc.gens+1)
			}
			// What stays: b1's named set, whole (its atoms and one chunk),
			// and nothing of b2.
			if n, c := atomKeysOf(t, s, "b1"), chunkKeysOf(t, s, "b1"); n != len(tc.wantSet) || c != 1 {
				t.Fatalf("after the sweep b1 has %d atom records and %d chunks, want %d and 1", n, c, len(tc.wantSet))
			}
			if n, c := atomKeysOf(t, s, "b2"), chunkKeysOf(t, s, "b2"); n != 0 || c != 0 {
				t.Fatalf("after the sweep b2 has %d atom records and %d chunks, want none", n, c)
			}
			if want := int64(keysBefore - len(tc.wantSet) - 1); res.Keys != want {
				t.Fatalf("sweep deleted %d keys, want %d", res.Keys, want)
			}
			if n := atomKeysOf(t, s, "b0"); n != 12 {
				t.Fatalf("b0 has %d atom records after the sweep, want 12", n)
			}
			if r, err := s.cli.Get(ctx, legacy); err != nil || len(r.Kvs) != 1 {
				t.Fatalf("the key from before atom sets is gone (%v)", err)
			}
			if got := findOf(t, s, "*", "b1"); !reflect.DeepEqual(got, findBefore) {
				t.Fatalf("find after the sweep = %q, want %q", got, findBefore)
			}
			for id, before := range backupsBefore {
				if got, err := s.GetBackup(ctx, id); err != nil || !reflect.DeepEqual(got, before) {
					t.Fatalf("GetBackup(%s) after the sweep = %+v, %v; want %+v", id, got, err, before)
				}
			}
			if got, err := s.FindAtoms(ctx, FindRequest{Pattern: "*"}); err != nil || len(flat(got)) == 0 {
				t.Fatalf("find * = %v, %v", flat(got), err)
			}

			if again := sweepNow(t, s); again.Gens != 0 || again.Keys != 0 || again.Changed != 0 {
				t.Fatalf("second sweep = %+v, want nothing removed", again)
			}
		})
	}
}

// txnHookKV wraps the real KV and calls after once every transaction has
// committed, with its number (from 1): a sweep can run between any two
// transactions of a write.
type txnHookKV struct {
	clientv3.KV
	n     atomic.Int64
	after func(n int64)
}

func (k *txnHookKV) Txn(ctx context.Context) clientv3.Txn {
	return &hookTxn{Txn: k.KV.Txn(ctx), kv: k}
}

type hookTxn struct {
	clientv3.Txn
	kv *txnHookKV
}

func (t *hookTxn) If(cs ...clientv3.Cmp) clientv3.Txn   { t.Txn = t.Txn.If(cs...); return t }
func (t *hookTxn) Then(ops ...clientv3.Op) clientv3.Txn { t.Txn = t.Txn.Then(ops...); return t }
func (t *hookTxn) Else(ops ...clientv3.Op) clientv3.Txn { t.Txn = t.Txn.Else(ops...); return t }

func (t *hookTxn) Commit() (*clientv3.TxnResponse, error) {
	r, err := t.Txn.Commit()
	if t.kv.after != nil {
		t.kv.after(t.kv.n.Add(1))
	}
	return r, err
}

// TestSweepRacesWrite runs a sweep (without the age rule, so that it
// takes the write's new set for a leftover) after each transaction of a
// re-add split over many, in turn, and checks that the write always
// completes with its whole set findable, and that the sweep afterwards
// removes nothing: no record ever names a set the sweep took apart.
func TestSweepRacesWrite(t *testing.T) {
	oldSet := atomNames("a", 0, 10)
	newSet := atomNames("a", 5, 25)
	run := func(t *testing.T, ks ...int64) (txns int64, swept *SweepResult) {
		ctx := ctxT(t)
		s := newSharedStore(t, Options{MaxTxnOps: 4, PageSize: 3})
		b := mkBackup("b1", "h1", t0)
		if err := s.AddDataset(ctx, b, atomsDS("old", oldSet...)); err != nil {
			t.Fatal(err)
		}
		sw := sweeper(t, s)
		hk := &txnHookKV{KV: s.kv}
		hk.after = func(n int64) {
			if slices.Contains(ks, n) {
				r := sweepNow(t, sw)
				if swept == nil {
					swept = r
				}
			}
		}
		s.kv = hk
		if err := s.AddDataset(ctx, b, atomsDS("new", newSet...)); err != nil {
			t.Fatalf("write with a sweep after its transactions %v: %v", ks, err)
		}
		txns = hk.n.Load()
		hk.after = nil
		if got := findOf(t, s, "src/ds", "b1"); !reflect.DeepEqual(got, want("new", newSet)) {
			t.Fatalf("with a sweep after transactions %v find = %q, want the whole new set", ks, got)
		}
		if got, err := s.GetBackup(ctx, "b1"); err != nil || !reflect.DeepEqual(got.Datasets[0], atomsDS("new", newSet...)) {
			t.Fatalf("with a sweep after transactions %v GetBackup = %+v, %v", ks, got, err)
		}
		if again := sweepNow(t, sw); again.Gens != 0 || again.Keys != 0 || again.Changed != 0 {
			t.Fatalf("sweep after the write = %+v, want nothing removed", again)
		}
		if n := atomKeysOf(t, s, "b1"); n != len(newSet) {
			t.Fatalf("%d atom records of b1, want %d", n, len(newSet))
		}
		return txns, swept
	}
	var plain int64
	t.Run("no sweep", func(t *testing.T) { plain, _ = run(t) })
	if plain < 5 {
		t.Fatalf("the write took %d transactions; the test needs it split", plain)
	}
	disturbed := 0
	// The second sweep, past plain, falls in the attempt the first made
	// the write start again (if it did).
	for k := int64(1); k <= plain; k++ {
		t.Run(fmt.Sprintf("after txn %d", k), func(t *testing.T) {
			txns, res := run(t, k, k+plain)
			if res == nil {
				t.Fatalf("no sweep ran (the write took %d transactions)", txns)
			}
			if res.Gens > 0 && txns > plain {
				disturbed++
			}
		})
	}
	// The sweep did take the set apart under the write, several times.
	if disturbed < 3 {
		t.Fatalf("the sweep removed the write's set and made it start again %d times, want several", disturbed)
	}
}

// TestSweepLargeWriteInFlight: a sweep between the atom batches and the
// switch of a dataset of 100,000 atoms. With the age rule it does not
// touch the set and the write goes through at once; without it, it
// removes the set, the write's switch fails, and the write puts the set
// again: either way the dataset ends up whole and findable, and a second
// sweep removes nothing.
func TestSweepLargeWriteInFlight(t *testing.T) {
	const n = 100_000
	for _, tc := range []struct {
		name      string
		opts      SweepOptions
		wantGens  int
		wantWrite int // times the write reaches the point before its switch
	}{
		{"age rule", SweepOptions{MinAge: DefaultSweepAge}, 0, 1},
		{"no age rule", SweepOptions{}, 1, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
			defer cancel()
			s := newSharedStore(t, Options{})
			sw := sweeper(t, s)
			if _, err := sw.SweepAtomSets(ctx, tc.opts); err != nil { // a first mark
				t.Fatal(err)
			}
			var res *SweepResult
			reached := 0
			s.testHook = func(ctx context.Context, step string) error {
				if step != stepAtomsWritten {
					return nil
				}
				reached++
				if res == nil {
					o := tc.opts
					o.Now = time.Now().Add(2 * DefaultSweepAge) // the first mark is old enough
					var err error
					res, err = sw.SweepAtomSets(ctx, o)
					return err
				}
				return nil
			}
			if err := s.AddDataset(ctx, mkBackup("b1", "h1", t0), mailDataset("mail", "spool", n)); err != nil {
				t.Fatal(err)
			}
			if res == nil || res.Gens != tc.wantGens || reached != tc.wantWrite {
				t.Fatalf("sweep in flight = %+v; write reached its switch %d times; want %d sets removed, %d times", res, reached, tc.wantGens, tc.wantWrite)
			}
			if tc.wantGens > 0 && res.Keys < n {
				t.Fatalf("sweep in flight deleted %d keys, want the whole set (over %d)", res.Keys, n)
			}
			got, err := s.FindAtoms(ctx, FindRequest{Pattern: "mail/spool/*", NumVersions: 1})
			if err != nil {
				t.Fatal(err)
			}
			if f := flat(got); len(f) != n {
				t.Fatalf("find after the write: %d atoms, want %d", len(f), n)
			}
			if b, err := s.GetBackup(ctx, "b1"); err != nil || len(b.Datasets[0].Atoms) != n {
				t.Fatalf("GetBackup: %v", err)
			}
			again, err := sw.SweepAtomSets(ctx, SweepOptions{})
			if err != nil || again.Gens != 0 || again.Keys != 0 {
				t.Fatalf("second sweep = %+v, %v; want nothing removed", again, err)
			}
		})
	}
}

// TestSweepAgeRule: with MinAge a sweep removes only sets all of whose
// keys were written before the revision of a sweep at least MinAge ago;
// the first sweep removes nothing, and two sweeps in a row remove nothing
// the second time.
func TestSweepAgeRule(t *testing.T) {
	ctx := ctxT(t)
	s := newSharedStore(t, Options{MaxTxnOps: 4, PageSize: 3})
	sw := sweeper(t, s)
	leave := func(id string, ts time.Time) {
		s.testHook = crashAt(stepAtomsWritten)
		if err := s.AddDataset(ctx, mkBackup(id, "h1", ts), atomsDS(id, atomNames("a", 0, 10)...)); !errors.Is(err, errCrash) {
			t.Fatalf("crashed write: %v", err)
		}
		s.testHook = nil
	}
	now := time.Date(2026, 1, 1, 3, 0, 0, 0, time.UTC)
	sweepAt := func(at time.Time) *SweepResult {
		t.Helper()
		res, err := sw.SweepAtomSets(ctx, SweepOptions{MinAge: time.Hour, Now: at})
		if err != nil {
			t.Fatal(err)
		}
		return res
	}
	leave("l1", t0)
	for i, step := range []struct {
		at          time.Duration
		leave       string // a leftover crafted before this sweep
		gens, young int
	}{
		{0, "", 0, 1},                // no earlier sweep: records its mark only
		{30 * time.Minute, "", 0, 1}, // the mark is too young
		{2 * time.Hour, "l2", 1, 1},  // l1 predates the first mark, l2 does not
		{2 * time.Hour, "", 0, 1},    // the same cutoff: nothing more
		{2*time.Hour + time.Minute, "", 0, 1},
		{5 * time.Hour, "", 1, 0}, // the sweep at 2h is old enough now: l2 goes
		{5 * time.Hour, "", 0, 0},
	} {
		if step.leave != "" {
			leave(step.leave, t0.Add(time.Duration(i)*time.Hour))
		}
		res := sweepAt(now.Add(step.at))
		if res.Gens != step.gens || res.Young != step.young || res.Changed != 0 {
			t.Fatalf("sweep %d at +%s = %+v, want %d removed, %d too young", i, step.at, res, step.gens, step.young)
		}
	}
	for _, id := range []string{"l1", "l2"} {
		if n := atomKeysOf(t, s, id) + chunkKeysOf(t, s, id); n != 0 {
			t.Fatalf("%d keys of %s left", n, id)
		}
	}
}

// TestTrimMarks: the marks kept are the newest one old enough and the
// newer ones, at most maxSweepMarks.
func TestTrimMarks(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	var marks []sweepMark
	for i := range 100 {
		marks = append(marks, sweepMark{Revision: int64(i + 1), Time: now.Add(time.Duration(i-99) * time.Minute)})
	}
	for _, tc := range []struct {
		minAge      time.Duration
		first, last int64
		n           int
	}{
		{0, 100, 100, 1},
		{10 * time.Minute, 90, 100, 11},
		{time.Hour, 40, 100, 61},
		{2 * time.Hour, 1, 100, maxSweepMarks}, // none old enough: the oldest stays
	} {
		got := trimMarks(append([]sweepMark(nil), marks...), now, tc.minAge)
		if len(got) != tc.n || got[0].Revision != tc.first || got[len(got)-1].Revision != tc.last {
			t.Fatalf("trimMarks(minAge %s): %d marks, %d..%d; want %d, %d..%d", tc.minAge, len(got), got[0].Revision, got[len(got)-1].Revision, tc.n, tc.first, tc.last)
		}
	}
}

// TestSweepStopsWhenSetRewritten: a write whose set a sweep has begun to
// delete starts again and puts the set again, chunk 000000 first; from
// then on the sweep deletes nothing of it, so the write's switch finds
// every key it put.
func TestSweepStopsWhenSetRewritten(t *testing.T) {
	ctx := ctxT(t)
	s := newSharedStore(t, Options{MaxTxnOps: 4, PageSize: 3})
	s.testHook = crashAt(stepAtomsWritten)
	if err := s.AddDataset(ctx, mkBackup("b2", "h1", t0), atomsDS("b2", atomNames("a", 0, 10)...)); !errors.Is(err, errCrash) {
		t.Fatalf("crashed write: %v", err)
	}
	s.testHook = nil
	set, err := s.cli.Get(ctx, s.k.p, clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	if len(set.Kvs) != 11 {
		t.Fatalf("%d keys after the crashed write, want 10 atom records and a chunk", len(set.Kvs))
	}
	sw := sweeper(t, s)
	hk := &txnHookKV{KV: sw.kv}
	hk.after = func(n int64) {
		if n == 1 {
			// The write again, in its order, after the sweep's first
			// delete.
			for _, kv := range set.Kvs {
				if _, err := s.cli.Put(ctx, string(kv.Key), string(kv.Value)); err != nil {
					t.Error(err)
				}
			}
		}
	}
	sw.kv = hk
	res := sweepNow(t, sw)
	if res.Gens != 0 || res.Changed != 1 || res.Keys != 4 {
		t.Fatalf("sweep = %+v, want one set left partly removed after its first transaction (4 keys)", res)
	}
	if n, c := atomKeysOf(t, s, "b2"), chunkKeysOf(t, s, "b2"); n != 10 || c != 1 {
		t.Fatalf("after the sweep b2 has %d atom records and %d chunks, want all 10 and 1", n, c)
	}
	hk.after = nil
	if again := sweepNow(t, sw); again.Gens != 1 || again.Keys != 11 {
		t.Fatalf("next sweep = %+v, want the set (still named by no record) removed", again)
	}
}

// getHookKV wraps the real KV and calls before ahead of every range read.
type getHookKV struct {
	clientv3.KV
	before func(key string)
}

func (k *getHookKV) Get(ctx context.Context, key string, opts ...clientv3.OpOption) (*clientv3.GetResponse, error) {
	k.before(key)
	return k.KV.Get(ctx, key, opts...)
}

// TestSweepLeavesSetWhenRecordChanges: a dataset record rewritten between
// the sweep's read and its deletes makes the sweep leave that version's
// leftover for the next sweep (its guard on the record's mod revision),
// which removes it; find shows the rewritten record throughout.
func TestSweepLeavesSetWhenRecordChanges(t *testing.T) {
	ctx := ctxT(t)
	s := newSharedStore(t, Options{MaxTxnOps: 4, PageSize: 3})
	b := mkBackup("b1", "h1", t0)
	if err := s.AddDataset(ctx, b, atomsDS("old", atomNames("a", 0, 10)...)); err != nil {
		t.Fatal(err)
	}
	s.testHook = crashAt(stepAtomsWritten)
	if err := s.AddDataset(ctx, b, atomsDS("crashed", atomNames("a", 0, 12)...)); !errors.Is(err, errCrash) {
		t.Fatalf("crashed write: %v", err)
	}
	s.testHook = nil
	third := atomNames("a", 3, 9)
	sw := sweeper(t, s)
	rewritten := false
	sw.kv = &getHookKV{KV: sw.kv, before: func(key string) {
		if strings.HasPrefix(key, s.k.atomNS()) && !rewritten {
			rewritten = true
			if err := s.AddDataset(ctx, b, atomsDS("third", third...)); err != nil {
				t.Error(err)
			}
		}
	}}
	res := sweepNow(t, sw)
	if !rewritten || res.Gens != 0 || res.Changed != 1 || res.Keys != 0 {
		t.Fatalf("sweep with the record rewritten meanwhile = %+v, want the leftover left untouched", res)
	}
	if n := atomKeysOf(t, s, "b1"); n != 12+len(third) {
		t.Fatalf("%d atom records of b1, want the crashed write's 12 and the third set's %d", n, len(third))
	}
	if got := findOf(t, s, "src/ds", "b1"); !reflect.DeepEqual(got, want("third", third)) {
		t.Fatalf("find = %q, want the third set", got)
	}
	if again := sweepNow(t, sw); again.Gens != 1 || again.Keys != 13 {
		t.Fatalf("next sweep = %+v, want the crashed write's set (12 atoms, 1 chunk) removed", again)
	}
	if n := atomKeysOf(t, s, "b1"); n != len(third) {
		t.Fatalf("%d atom records of b1, want the third set's %d", n, len(third))
	}
	if got := findOf(t, s, "src/ds", "b1"); !reflect.DeepEqual(got, want("third", third)) {
		t.Fatalf("find = %q, want the third set", got)
	}
}
