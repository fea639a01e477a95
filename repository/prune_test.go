package repository

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/custos-backup/custos/repository/backend"
)

func indexedPacks(r *Repository) map[ID]bool {
	x := r.index()
	x.mu.RLock()
	defer x.mu.RUnlock()
	out := map[ID]bool{}
	for _, p := range x.packs {
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
	backupDir(t, r, src, "a")
	for i := range 3 {
		if err := os.Remove(filepath.Join(src, fmt.Sprintf("gone-%02d.bin", i))); err != nil {
			t.Fatal(err)
		}
	}
	s2 := backupDir(t, r, src, "a")
	other := t.TempDir()
	writeRandomFiles(t, other, "o", 3, 300<<10, 3)
	s3 := backupDir(t, r, other, "other")
	goneBlob := hashID(randBytes(100, 200<<10))
	if !r.index().has(goneBlob) {
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

	st, err := r.Prune(ctx)
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
	if r.index().has(goneBlob) {
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

	st, err = r2.Prune(ctx)
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
	pb.add(DataBlob, hashID(data), 0, len(data), r.seal.seal(nil, data))
	pb.finish(r.seal, created)
	id := hashID(pb.buf)
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

	// A stale lock from a backup that started four hours ago: its packs
	// could be as old as the lock, so the three-hour-old pack stays.
	li := lockInfo{Version: formatVersion, Created: now.Add(-4 * time.Hour), Refreshed: now.Add(-4 * time.Hour), Hostname: "gone", PID: 1}
	b, _ := json.Marshal(&li)
	lockH := backend.Handle{Type: backend.LockFile, Name: randomHex(32)}
	if err := saveBytes(ctx, r.be, lockH, r.seal.seal(nil, b)); err != nil {
		t.Fatal(err)
	}
	exists := func(id ID) bool {
		_, err := r.be.Stat(ctx, backend.Handle{Type: backend.PackFile, Name: id.String()})
		return err == nil
	}
	if _, err := r.Prune(ctx); err != nil {
		t.Fatal(err)
	}
	if !exists(old) || !exists(young) {
		t.Fatalf("prune deleted an unindexed pack younger than a lock (old %v, young %v)", exists(old), exists(young))
	}
	if err := r.be.Remove(ctx, lockH); err != nil {
		t.Fatal(err)
	}
	st, err := r.Prune(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if exists(old) || st.PacksDeleted != 1 {
		t.Errorf("an unindexed pack older than the grace period survived (stats %+v)", st)
	}
	if !exists(young) {
		t.Error("prune deleted an unindexed pack within the grace period")
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
	if _, err := r.Prune(ctx); !errors.Is(err, ErrLocked) {
		t.Fatalf("prune during a backup: err %v, want ErrLocked", err)
	}
	if err := l.Unlock(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Prune(ctx); err != nil {
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
		_, err := pr.Prune(ctx)
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
	if _, err := pr.Prune(ctx); err != nil {
		t.Fatal(err)
	}
	fresh := reopen(t, dir, "pw")
	mustCheckClean(t, fresh, true)
	restoreCompare(t, fresh, sn, src)
}
