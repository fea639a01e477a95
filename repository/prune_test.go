package repository

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/custos-backup/custos/repository/backend"
	"github.com/custos-backup/custos/repository/backend/backendtest"
	"github.com/custos-backup/custos/repository/format"
)

func indexedPacks(r *Repository) map[ID]bool {
	out := map[ID]bool{}
	for _, p := range r.index().PackIDs() {
		out[p] = true
	}
	return out
}

func TestPrune(t *testing.T) {
	ctx := context.Background()
	r, dir := newSmallPackRepo(t, "pw")
	src := t.TempDir()
	writeRandomFiles(t, src, "keep", 3, 200<<10, 1)
	writeRandomFiles(t, src, "gone", 3, 200<<10, 100)
	// One packer, so that kept and forgotten blobs share a pack (six
	// 200 KiB blobs fill the first 1 MiB pack) and prune has a pack to
	// rewrite; with two, the blobs of each kind could land in packs of
	// their own, as they did once under -race.
	procs := runtime.GOMAXPROCS(1)
	backupDir(t, r, src, "a")
	runtime.GOMAXPROCS(procs)
	for i := range 3 {
		if err := os.Remove(filepath.Join(src, fmt.Sprintf("gone-%02d.bin", i))); err != nil {
			t.Fatal(err)
		}
	}
	s2 := backupDir(t, r, src, "a")
	other := t.TempDir()
	writeRandomFiles(t, other, "o", 3, 300<<10, 3)
	s3 := backupDir(t, r, other, "other")
	goneBlob := format.HashID(randBytes(100, 200<<10))
	if !r.index().Has(format.DataHandle(goneBlob)) {
		t.Fatal("test data: gone-00.bin's blob is not indexed")
	}

	_, removed, err := r.Forget(ctx, RetentionPolicy{Last: 1}, false)
	if err != nil || len(removed) != 1 {
		t.Fatalf("forget: removed %d, %v", len(removed), err)
	}
	if err := r.be.Remove(ctx, backend.Handle{Type: backend.SnapshotFile, Name: s3.ID.String()}); err != nil {
		t.Fatal(err)
	}
	before := storedPacks(t, r)
	oldIndexes, _ := r.listIDs(ctx, backend.IndexFile, nil)

	st, err := r.Prune(ctx, PruneOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if st.PacksRewritten < 1 || st.PacksDeleted <= st.PacksRewritten || st.BytesFreed < 3*200<<10 {
		t.Errorf("prune stats %+v: want rewritten and wholly unused packs deleted, ≥ 600 KiB freed", st)
	}
	after := storedPacks(t, r)
	var bb, ab int64
	for _, n := range before {
		bb += n
	}
	for _, n := range after {
		ab += n
	}
	if bb-ab != st.BytesFreed {
		t.Errorf("stored bytes went from %d to %d, prune says it freed %d", bb, ab, st.BytesFreed)
	}
	if r.index().Has(format.DataHandle(goneBlob)) {
		t.Error("a blob of a forgotten file is still indexed")
	}

	idx := indexedPacks(r)
	for id := range after {
		if !idx[id] {
			t.Errorf("pack %s is stored but not indexed after prune", id.Short())
		}
	}
	for _, id := range oldIndexes {
		if _, err := r.be.Stat(ctx, backend.Handle{Type: backend.IndexFile, Name: id.String()}); !errors.Is(err, backend.ErrNotExist) {
			t.Errorf("old index file %s survived prune (%v)", id.Short(), err)
		}
	}
	r2 := reopen(t, dir, "pw")
	mustCheckClean(t, r2, true)
	restoreCompare(t, r2, s2, src)

	st, err = r2.Prune(ctx, PruneOptions{})
	if err != nil || st.PacksDeleted != 0 || st.PacksRewritten != 0 {
		t.Errorf("second prune: %+v, %v; want nothing to do", st, err)
	}
}

// savePack stores an unindexed pack holding one random blob, with the given
// creation time in its header.
func savePack(t *testing.T, r *Repository, created time.Time, seed uint64) ID {
	t.Helper()
	data := randBytes(seed, 1000)
	var pb packBuilder
	pb.add(DataBlob, format.HashID(data), 0, len(data), r.seal.Seal(nil, data))
	pb.finish(r.seal, created)
	id := format.HashID(pb.buf)
	if err := saveBytes(context.Background(), r.be, backend.Handle{Type: backend.PackFile, Name: id.String()}, pb.buf); err != nil {
		t.Fatal(err)
	}
	return id
}

func TestPruneUnindexedPacks(t *testing.T) {
	ctx := context.Background()
	r, _ := newSmallPackRepo(t, "pw")
	if _, err := r.BackupStream(ctx, "x", bytes.NewReader(randBytes(1, 5000)), BackupOptions{Dataset: "d"}); err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	old := savePack(t, r, now.Add(-3*time.Hour), 10)
	young := savePack(t, r, now.Add(-10*time.Minute), 11)

	// Locks of backups that started four hours ago and are gone: one not
	// refreshed for hours, one of a killed process of this host refreshed
	// a moment ago. Neither can ever index its packs, so neither holds
	// the three-hour-old pack back, and prune removes both.
	dead := deadProcess(t)
	stale := lockInfo{Version: format.Version, Created: now.Add(-4 * time.Hour), Refreshed: now.Add(-4 * time.Hour), Hostname: "gone", PID: 1}
	killed := lockInfo{Version: format.Version, Created: now.Add(-4 * time.Hour), Refreshed: now}
	killed.setProcess(dead)
	for _, li := range []lockInfo{stale, killed} {
		writeLockFile(t, r, randomHex(32), li)
	}
	exists := func(id ID) bool {
		_, err := r.be.Stat(ctx, backend.Handle{Type: backend.PackFile, Name: id.String()})
		return err == nil
	}
	st, err := r.Prune(ctx, PruneOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if exists(old) || st.PacksDeleted != 1 {
		t.Errorf("an unindexed pack older than the grace period survived stale locks (stats %+v)", st)
	}
	if !exists(young) {
		t.Error("prune deleted an unindexed pack within the grace period")
	}
	if locks, err := r.listLocks(ctx); err != nil || len(locks) != 0 {
		t.Errorf("prune left locks %v (%v), want the stale ones removed", locks, err)
	}
	mustCheckClean(t, r, true)
}

func TestPruneRefusesWhileBackupHoldsLock(t *testing.T) {
	ctx := context.Background()
	r, dir := newSmallPackRepo(t, "pw")
	other := reopen(t, dir, "pw")
	l, err := other.Lock(ctx, false)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.Prune(ctx, PruneOptions{}); !errors.Is(err, ErrLocked) {
		t.Fatalf("prune during a backup: err %v, want ErrLocked", err)
	}
	if err := l.Unlock(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Prune(ctx, PruneOptions{}); err != nil {
		t.Fatalf("prune after the backup: %v", err)
	}
}

// TestPruneConcurrentWithBackup runs prune over and over while a backup
// runs in another handle; the backup's snapshot must check clean.
func TestPruneConcurrentWithBackup(t *testing.T) {
	ctx := context.Background()
	r, dir := newSmallPackRepo(t, "pw")
	src := t.TempDir()
	writeTreeOfFiles(t, src, 8, 8, 400<<10, 30)
	// Something for prune to delete.
	old := t.TempDir()
	writeRandomFiles(t, old, "old", 3, 300<<10, 31)
	so := backupDir(t, r, old, "old")
	if err := r.be.Remove(ctx, backend.Handle{Type: backend.SnapshotFile, Name: so.ID.String()}); err != nil {
		t.Fatal(err)
	}

	pr := reopen(t, dir, "pw")
	var (
		wg      sync.WaitGroup
		sn      *Snapshot
		bErr    error
		done    = make(chan struct{})
		prunes  int
		lockErr int
	)
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer close(done)
		sn, bErr = r.Backup(ctx, src, nil, BackupOptions{Dataset: "new", Host: "h"})
	}()
	for running := true; running; {
		select {
		case <-done:
			running = false
		default:
		}
		_, err := pr.Prune(ctx, PruneOptions{})
		switch {
		case errors.Is(err, ErrLocked):
			lockErr++
			time.Sleep(2 * time.Millisecond) // pace the retries
		case err != nil:
			t.Fatalf("prune: %v", err)
		default:
			prunes++
		}
	}
	wg.Wait()
	if bErr != nil && !errors.Is(bErr, ErrLocked) {
		t.Fatalf("backup: %v", bErr)
	}
	if bErr != nil {
		// Prune held the lock when the backup started; run it again.
		sn = backupDir(t, r, src, "new")
	}
	t.Logf("%d prunes ran, %d were refused by the backup's lock", prunes, lockErr)
	if _, err := pr.Prune(ctx, PruneOptions{}); err != nil {
		t.Fatal(err)
	}
	fresh := reopen(t, dir, "pw")
	mustCheckClean(t, fresh, true)
	restoreCompare(t, fresh, sn, src)
}

func TestChooseRepack(t *testing.T) {
	id := func(b byte) ID { return ID{b} }
	// Ratios unused/used: A 9, B 1, C 0.11, D 0.1.
	a := repackCandidate{id: id('A'), used: 100, unused: 900}
	b := repackCandidate{id: id('B'), used: 500, unused: 500}
	c := repackCandidate{id: id('C'), used: 900, unused: 100}
	d := repackCandidate{id: id('D'), used: 50, unused: 5}
	abc := []repackCandidate{c, a, b}
	const usedABC = 10000 // 1500 in A, B, C, the rest in wholly used packs
	e := repackCandidate{id: id('E'), used: 100, unused: 100}
	f := repackCandidate{id: id('F'), used: 200, unused: 200}
	for _, tc := range []struct {
		name  string
		cands []repackCandidate
		used  int64
		opts  PruneOptions
		want  []ID
	}{
		{"0% rewrites all", abc, usedABC, PruneOptions{}, []ID{a.id, b.id, c.id}},
		{"100% rewrites none", abc, usedABC, PruneOptions{MaxUnused: 1}, nil},
		{"above 100% rewrites none", abc, usedABC, PruneOptions{MaxUnused: 7}, nil},
		// 1500 unused of 11500: A leaves 600 of 10600 (5.7%), B 100 of 10100.
		{"5% needs two", abc, usedABC, PruneOptions{MaxUnused: 0.05}, []ID{a.id, b.id}},
		{"6% needs one", abc, usedABC, PruneOptions{MaxUnused: 0.06}, []ID{a.id}},
		{"15% needs none", abc, usedABC, PruneOptions{MaxUnused: 0.15}, nil},
		{"budget fits the best two", abc, usedABC, PruneOptions{MaxRepackBytes: 600}, []ID{a.id, b.id}},
		{"budget below every pack", abc, usedABC, PruneOptions{MaxRepackBytes: 50}, nil},
		{"a pack over budget is skipped, a cheaper one still fits", append(abc, d), usedABC + d.used, PruneOptions{MaxRepackBytes: 700}, []ID{a.id, b.id, d.id}},
		// Equal ratios: the pack with more unused bytes frees more.
		{"tie goes to more unused", []repackCandidate{e, f}, 300, PruneOptions{MaxUnused: 0.4}, []ID{f.id}},
		{"no candidates", nil, 100, PruneOptions{}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := chooseRepack(tc.cands, tc.used, tc.opts)
			want := map[ID]bool{}
			for _, id := range tc.want {
				want[id] = true
			}
			if len(got) != len(want) {
				t.Fatalf("picked %v, want %v", got, want)
			}
			for id := range want {
				if !got[id] {
					t.Fatalf("picked %v, want %v", got, want)
				}
			}
		})
	}
}

// pruneUsage measures the indexed packs as prune does: a blob counts as
// used only in the pack the index resolves it to.
func pruneUsage(t *testing.T, r *Repository) (packs map[ID]repackCandidate, usedTotal int64) {
	t.Helper()
	ctx := context.Background()
	snaps, damaged, err := r.ListSnapshots(ctx)
	if err != nil || len(damaged) > 0 {
		t.Fatalf("list snapshots: %v, %d damaged", err, len(damaged))
	}
	used, err := usedBlobs(ctx, r, snaps)
	if err != nil {
		t.Fatal(err)
	}
	packs = map[ID]repackCandidate{}
	x := r.index()
	err = r.forEachIndexFile(ctx, false, func(_ ID, f *format.IndexFile) error {
		for _, p := range f.Packs {
			if _, dup := packs[p.ID]; dup {
				continue
			}
			c := repackCandidate{id: p.ID}
			for _, pb := range p.Blobs {
				if canon, _, ok := x.Lookup(pb.Handle()); ok && canon == p.ID && used[pb.Handle()] {
					c.used += int64(pb.Length)
				} else {
					c.unused += int64(pb.Length)
				}
			}
			packs[p.ID] = c
			usedTotal += c.used
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return packs, usedTotal
}

// indexEntries returns the blobs the index files list for each pack.
func indexEntries(t *testing.T, r *Repository) map[ID]map[ID]format.PackedBlob {
	t.Helper()
	out := map[ID]map[ID]format.PackedBlob{}
	err := r.forEachIndexFile(context.Background(), false, func(_ ID, f *format.IndexFile) error {
		for _, p := range f.Packs {
			if out[p.ID] == nil {
				out[p.ID] = map[ID]format.PackedBlob{}
			}
			for _, pb := range p.Blobs {
				out[p.ID][pb.ID] = pb
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func ratio(c repackCandidate) float64 { return float64(c.unused) / float64(c.used) }

// TestPruneMaxUnused runs prune with different limits on a repository with
// wholly unused packs and several partly used ones, and checks which packs
// go, which stay (fully indexed), the stats, and that every remaining
// snapshot restores and the repository checks clean.
func TestPruneMaxUnused(t *testing.T) {
	lowest := func(cs []repackCandidate) repackCandidate {
		return slices.MinFunc(cs, func(a, b repackCandidate) int { return cmp.Compare(ratio(a), ratio(b)) })
	}
	highest := func(cs []repackCandidate) repackCandidate {
		return slices.MaxFunc(cs, func(a, b repackCandidate) int { return cmp.Compare(ratio(a), ratio(b)) })
	}
	all := func(cs []repackCandidate) map[ID]bool {
		m := map[ID]bool{}
		for _, c := range cs {
			m[c.id] = true
		}
		return m
	}
	for _, tc := range []struct {
		name string
		// opts and keep (the partly used packs prune must leave) are
		// worked out from the packs before prune.
		opts func(partly []repackCandidate, used int64) PruneOptions
		keep func(partly []repackCandidate) map[ID]bool
		// again: a second prune with the same options has nothing to do.
		again bool
	}{{
		name:  "0% rewrites every partly used pack",
		opts:  func([]repackCandidate, int64) PruneOptions { return PruneOptions{} },
		keep:  func([]repackCandidate) map[ID]bool { return nil },
		again: true,
	}, {
		name:  "unlimited only deletes wholly unused packs",
		opts:  func([]repackCandidate, int64) PruneOptions { return PruneOptions{MaxUnused: 1} },
		keep:  all,
		again: true,
	}, {
		// Just enough room for the unused bytes of the pack that frees
		// the least per byte copied, and not for any two packs.
		name: "threshold keeps the least rewarding pack",
		opts: func(p []repackCandidate, used int64) PruneOptions {
			l := lowest(p)
			return PruneOptions{MaxUnused: (float64(l.unused) + 0.5) / float64(used+l.unused)}
		},
		keep:  func(p []repackCandidate) map[ID]bool { return map[ID]bool{lowest(p).id: true} },
		again: true,
	}, {
		name:  "repack budget below every pack keeps them all",
		opts:  func([]repackCandidate, int64) PruneOptions { return PruneOptions{MaxRepackBytes: 1} },
		keep:  all,
		again: true,
	}, {
		name: "repack budget for one pack rewrites the most rewarding",
		opts: func(p []repackCandidate, _ int64) PruneOptions {
			return PruneOptions{MaxRepackBytes: highest(p).used}
		},
		keep: func(p []repackCandidate) map[ID]bool {
			m := all(p)
			delete(m, highest(p).id)
			return m
		},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			r, dir := newSmallPackRepo(t, "pw")
			// Files of growing size; the odd ones are deleted before the
			// second backup, so the packs of the first end up with
			// different shares of unused data.
			// Many small files make several packs, each with both kinds,
			// however the backup's workers interleave them.
			src := t.TempDir()
			for i := range 40 {
				writeFile(t, filepath.Join(src, fmt.Sprintf("f-%02d.bin", i)), randBytes(uint64(500+i), (16+4*i)<<10), 0o644)
			}
			backupDir(t, r, src, "a")
			for i := 1; i < 40; i += 2 {
				if err := os.Remove(filepath.Join(src, fmt.Sprintf("f-%02d.bin", i))); err != nil {
					t.Fatal(err)
				}
			}
			s2 := backupDir(t, r, src, "a")
			other := t.TempDir()
			writeRandomFiles(t, other, "o", 3, 200<<10, 600)
			so := backupDir(t, r, other, "other")
			gone := t.TempDir()
			writeRandomFiles(t, gone, "g", 3, 200<<10, 700)
			sg := backupDir(t, r, gone, "gone")
			if err := r.be.Remove(ctx, backend.Handle{Type: backend.SnapshotFile, Name: sg.ID.String()}); err != nil {
				t.Fatal(err)
			}
			if _, removed, err := r.Forget(ctx, RetentionPolicy{Last: 1}, false); err != nil || len(removed) != 1 {
				t.Fatalf("forget: removed %d, %v", len(removed), err)
			}

			usage, usedTotal := pruneUsage(t, r)
			var partly []repackCandidate
			full := map[ID]bool{}
			for id, c := range usage {
				switch {
				case c.used == 0:
					full[id] = true
				case c.unused > 0:
					partly = append(partly, c)
				}
			}
			if len(full) == 0 || len(partly) < 2 {
				t.Fatalf("test data: %d wholly unused and %d partly used packs, want ≥ 1 and ≥ 2", len(full), len(partly))
			}
			t.Logf("%d wholly unused packs, %d partly used, %d bytes used", len(full), len(partly), usedTotal)
			opts := tc.opts(partly, usedTotal)
			keep := tc.keep(partly)
			var want PruneStats
			for _, c := range partly {
				if keep[c.id] {
					want.PacksKeptPartlyUsed++
					want.UnusedBytesKept += c.unused
				} else {
					want.PacksRewritten++
					want.BytesRepacked += c.used
				}
			}
			want.PacksDeleted = len(full) + want.PacksRewritten

			before := storedPacks(t, r)
			st, err := r.Prune(ctx, opts)
			if err != nil {
				t.Fatal(err)
			}
			after := storedPacks(t, r)
			var bb, ab int64
			for _, n := range before {
				bb += n
			}
			for _, n := range after {
				ab += n
			}
			want.BytesFreed = bb - ab
			if *st != want {
				t.Errorf("prune stats\n %+v, want\n %+v", *st, want)
			}
			for id := range full {
				if _, ok := after[id]; ok {
					t.Errorf("wholly unused pack %s survived", id.Short())
				}
			}
			for _, c := range partly {
				if _, ok := after[c.id]; ok != keep[c.id] {
					t.Errorf("partly used pack %s (%d used, %d unused): stored %v after prune, want %v", c.id.Short(), c.used, c.unused, ok, keep[c.id])
				}
			}

			// Every stored pack is indexed, a kept one with every blob its
			// header lists (unused ones too); the unused bytes left are
			// what prune says and within the limit.
			entries := indexEntries(t, r)
			var indexedBytes int64
			for id, size := range after {
				ents, ok := entries[id]
				if !ok {
					t.Errorf("pack %s is stored but not indexed after prune", id.Short())
					continue
				}
				hdr, err := r.readPackHeader(ctx, id, size)
				if err != nil {
					t.Fatal(err)
				}
				if len(hdr.Blobs) != len(ents) {
					t.Errorf("pack %s: header lists %d blobs, index %d", id.Short(), len(hdr.Blobs), len(ents))
				}
				for _, pb := range hdr.Blobs {
					if ents[pb.ID] != pb {
						t.Errorf("pack %s: blob %s is in the header but not indexed as such", id.Short(), pb.ID.Short())
					}
					indexedBytes += int64(pb.Length)
				}
			}
			usage2, _ := pruneUsage(t, r)
			var unused2 int64
			for _, c := range usage2 {
				unused2 += c.unused
			}
			if unused2 != st.UnusedBytesKept {
				t.Errorf("%d unused bytes are left in the packs, prune says %d", unused2, st.UnusedBytesKept)
			}
			if opts.MaxRepackBytes == 0 && float64(unused2) > opts.MaxUnused*float64(indexedBytes) {
				t.Errorf("%d unused of %d bytes left: above MaxUnused %v", unused2, indexedBytes, opts.MaxUnused)
			}

			r2 := reopen(t, dir, "pw")
			mustCheckClean(t, r2, true)
			restoreCompare(t, r2, s2, src)
			restoreCompare(t, r2, so, other)

			if tc.again {
				st2, err := r2.Prune(ctx, opts)
				if err != nil {
					t.Fatal(err)
				}
				if st2.PacksDeleted != 0 || st2.PacksRewritten != 0 || st2.PacksKeptPartlyUsed != st.PacksKeptPartlyUsed || st2.UnusedBytesKept != st.UnusedBytesKept {
					t.Errorf("second prune: %+v; want nothing to do and the same packs kept as %+v", st2, st)
				}
			}
		})
	}
}

func TestPruneBadOptions(t *testing.T) {
	ctx := context.Background()
	r, _ := newSmallPackRepo(t, "pw")
	for _, o := range []PruneOptions{{MaxUnused: -0.01}, {MaxUnused: math.NaN()}, {MaxRepackBytes: -1}} {
		if _, err := r.Prune(ctx, o); err == nil || !strings.Contains(err.Error(), "Max") {
			t.Errorf("Prune(%+v): %v, want an error naming the option", o, err)
		}
	}
	// Refused before locking: nothing is left behind.
	l, err := r.Lock(ctx, true)
	if err != nil {
		t.Fatalf("lock after refused prunes: %v", err)
	}
	_ = l.Unlock(ctx)
}

// TestPruneRemovesSeveralAtOnce: prune removes the packs it frees several
// at a time (on S3 each removal is a round trip or two, and a prune after
// a large forget frees thousands), counts exactly those it removed, and a
// removal that fails stops it with an error naming the pack.
func TestPruneRemovesSeveralAtOnce(t *testing.T) {
	cases := []struct {
		name string
		fail bool
	}{
		{"all removed", false},
		{"one removal fails", true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			r, f := newFaultyRepo(t)
			keep, gone := t.TempDir(), t.TempDir()
			writeRandomFiles(t, keep, "k", 3, 300<<10, 1)
			writeRandomFiles(t, gone, "g", 8, 300<<10, 50)
			kept := backupDir(t, r, keep, "keep")
			forgotten := backupDir(t, r, gone, "gone")
			if err := r.RemoveSnapshots(ctx, forgotten.ID); err != nil {
				t.Fatal(err)
			}
			before := storedPacks(t, r)
			if tc.fail {
				f.Add(&backendtest.Rule{Op: backendtest.OpRemove, Type: backend.PackFile, Skip: 1, Times: 1, Before: backendtest.Fail("refused")})
			} else {
				// The first two removals run at once.
				f.Add(&backendtest.Rule{Op: backendtest.OpRemove, Type: backend.PackFile, Times: 2, Before: together(2)})
			}
			st, err := r.Prune(ctx, PruneOptions{})
			after := storedPacks(t, r)
			if removed := len(before) - len(after); st.PacksDeleted != removed {
				t.Errorf("prune says it deleted %d packs; %d are gone", st.PacksDeleted, removed)
			}
			if tc.fail {
				if !errors.Is(err, backendtest.ErrInjected) || !strings.Contains(err.Error(), "data/") {
					t.Fatalf("prune with a pack removal failing: %v, want the fault naming the pack", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if st.PacksDeleted < 3 {
				t.Errorf("prune deleted %d packs, want the forgotten backup's (at least 3)", st.PacksDeleted)
			}
			mustCheckClean(t, r, true)
			restoreCompare(t, r, kept, keep)
		})
	}
}

// mixedPacks returns the indexed packs that hold trees and data.
func mixedPacks(r *Repository) []ID {
	kinds := map[ID]map[BlobType]bool{}
	r.index().Each(func(h format.BlobHandle, pack ID) {
		if kinds[pack] == nil {
			kinds[pack] = map[BlobType]bool{}
		}
		kinds[pack][h.Type] = true
	})
	var out []ID
	for pack, k := range kinds {
		if k[TreeBlob] && k[DataBlob] {
			out = append(out, pack)
		}
	}
	return out
}

// TestPruneKeepsTreesApart: when prune rewrites a partly used pack of
// trees and one of data in the same run, trees and data still land in
// packs of their own, as a backup writes them: walks of a snapshot read a
// level of folders from a few ranges of one pack, and a cache keeps only
// packs of trees.
func TestPruneKeepsTreesApart(t *testing.T) {
	ctx := context.Background()
	r, _ := newSmallPackRepo(t, "pw")
	src := t.TempDir()
	writeRandomFiles(t, filepath.Join(src, "keep"), "k", 2, 200<<10, 1)
	writeRandomFiles(t, filepath.Join(src, "gone"), "g", 2, 200<<10, 2)
	// One packer: kept and forgotten data share a pack.
	procs := runtime.GOMAXPROCS(1)
	backupDir(t, r, src, "a")
	runtime.GOMAXPROCS(procs)
	if err := os.RemoveAll(filepath.Join(src, "gone")); err != nil {
		t.Fatal(err)
	}
	s2 := backupDir(t, r, src, "a")
	if _, removed, err := r.Forget(ctx, RetentionPolicy{Last: 1}, false); err != nil || len(removed) != 1 {
		t.Fatalf("forget: removed %d, %v", len(removed), err)
	}
	st, err := r.Prune(ctx, PruneOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if st.PacksRewritten < 2 {
		t.Fatalf("prune rewrote %d packs, want a pack of trees and one of data", st.PacksRewritten)
	}
	if m := mixedPacks(r); len(m) != 0 {
		t.Errorf("%d packs hold trees and data after prune", len(m))
	}
	mustCheckClean(t, r, true)
	restoreCompare(t, r, s2, src)
}
