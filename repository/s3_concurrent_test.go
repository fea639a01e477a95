package repository

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/custos-backup/custos/internal/s3server"
	"github.com/custos-backup/custos/repository/backend"
	"github.com/custos-backup/custos/repository/backend/backendtest"
	"github.com/custos-backup/custos/repository/backend/location"
	"github.com/custos-backup/custos/repository/format"
)

// s3Fixture is a repository on a real S3 server (versitygw) that several
// "processes" (each its own Repository on its own backend) use at once.
// It remembers which source folder each dataset was backed up from.
type s3Fixture struct {
	url, pw string
	root    string // source folders live here, for the whole test
	cache   string // one cache folder for all "processes", as an agent's workers share work_dir/cache
	mu      sync.Mutex
	srcs    map[string]string // dataset -> source folder of its only snapshot
	victims []*Snapshot       // snapshots forget may remove
	n       int
}

func (f *s3Fixture) open(t *testing.T, wrap func(backend.Backend) backend.Backend) *Repository {
	t.Helper()
	be, err := location.Open(context.Background(), f.url, location.Options{CacheDir: f.cache})
	if err != nil {
		t.Fatal(err)
	}
	if wrap != nil {
		be = wrap(be)
	}
	r, err := Open(context.Background(), be, []byte(f.pw))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = r.Close() })
	return r
}

// next returns a fresh dataset name and a source folder with new data.
func (f *s3Fixture) next(t *testing.T, kind string) (string, string) {
	f.mu.Lock()
	f.n++
	n := f.n
	f.mu.Unlock()
	src, err := os.MkdirTemp(f.root, kind)
	if err != nil {
		t.Fatal(err)
	}
	writeRandomFiles(t, src, "f", 3, 90<<10, uint64(n)*100)
	return fmt.Sprintf("t/%s-%d", kind, n), src
}

func (f *s3Fixture) remember(dataset, src string) {
	f.mu.Lock()
	f.srcs[dataset] = src
	f.mu.Unlock()
}

// retryLocked runs op until it does not fail for a lock held by another
// writer: refusing is the lock's job, and the operation is then retried
// as an operator's next run would.
func retryLocked(t *testing.T, what string, op func() error) {
	t.Helper()
	for {
		err := op()
		if !errors.Is(err, ErrLocked) {
			if err != nil {
				t.Errorf("%s: %v", what, err)
			}
			return
		}
		time.Sleep(20 * time.Millisecond) // let the holder finish
	}
}

func (f *s3Fixture) backup(t *testing.T, r *Repository) {
	ds, src := f.next(t, "backup")
	retryLocked(t, "backup "+ds, func() error {
		_, err := r.Backup(context.Background(), src, nil, BackupOptions{Dataset: ds, Host: "h"})
		return err
	})
	f.remember(ds, src)
}

func (f *s3Fixture) copyIn(t *testing.T, r *Repository) {
	ds, src := f.next(t, "copy")
	local, _ := newSmallPackRepo(t, "local")
	sn := backupDir(t, local, src, ds)
	retryLocked(t, "copy "+ds, func() error {
		_, err := Copy(context.Background(), local, r, []*Snapshot{sn}, nil)
		return err
	})
	f.remember(ds, src)
}

func (f *s3Fixture) forget(t *testing.T, r *Repository) {
	f.mu.Lock()
	if len(f.victims) == 0 {
		f.mu.Unlock()
		t.Error("test data: no snapshot left to forget")
		return
	}
	v := f.victims[0]
	f.victims = f.victims[1:]
	delete(f.srcs, v.Dataset)
	f.mu.Unlock()
	retryLocked(t, "forget "+v.Dataset, func() error { return r.RemoveSnapshots(context.Background(), v.ID) })
}

func (f *s3Fixture) prune(t *testing.T, r *Repository) {
	retryLocked(t, "prune", func() error {
		_, err := r.Prune(context.Background(), PruneOptions{})
		return err
	})
}

func (f *s3Fixture) check(t *testing.T, r *Repository) {
	res, err := r.Check(context.Background(), CheckOptions{ReadData: true})
	if err != nil {
		t.Errorf("check: %v", err)
		return
	}
	for _, p := range res.Problems {
		t.Errorf("check reported a problem in an intact repository: %+v", p)
	}
}

// verify restores every snapshot byte-exact, checks that exactly the
// expected datasets survive and that check --read-data is clean.
func (f *s3Fixture) verify(t *testing.T) {
	t.Helper()
	r := f.open(t, nil)
	snaps, err := r.Snapshots(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, sn := range snaps {
		src, ok := f.srcs[sn.Dataset]
		if !ok {
			t.Errorf("snapshot %s of %s survives, but it was forgotten or never finished", sn.ID.Short(), sn.Dataset)
			continue
		}
		seen[sn.Dataset] = true
		restoreCompare(t, r, sn, src)
	}
	for ds := range f.srcs {
		if !seen[ds] {
			t.Errorf("dataset %s has no snapshot", ds)
		}
	}
	mustCheckClean(t, r, true)
}

// TestConcurrentWritersS3 runs backup, copy, forget, prune and check in
// every pairing against one repository on S3, each side as its own
// process would (its own Repository and backend), and a prune and a check
// while a backup has uploaded its packs but not yet its index. After all,
// every surviving snapshot restores byte-exact and check --read-data is
// clean; no check on the way reports a problem.
func TestConcurrentWritersS3(t *testing.T) {
	ctx := context.Background()
	srv := s3server.Start(t)
	srv.CreateBucket(t, "custos")
	srv.SetEnv(t)
	f := &s3Fixture{url: srv.URL("custos", "conc"), pw: "s3 pw", root: t.TempDir(), cache: t.TempDir(), srcs: map[string]string{}}
	be, err := location.Create(ctx, f.url, location.Options{CacheDir: f.cache})
	if err != nil {
		t.Fatal(err)
	}
	r0, err := Init(ctx, be, InitOptions{Password: []byte(f.pw), kdfParams: cheapKDF, PackSize: format.MinPackSize})
	if err != nil {
		t.Fatal(err)
	}
	ops := []struct {
		name string
		run  func(*s3Fixture, *testing.T, *Repository)
	}{
		{"backup", (*s3Fixture).backup},
		{"copy", (*s3Fixture).copyIn},
		{"forget", (*s3Fixture).forget},
		{"prune", (*s3Fixture).prune},
		{"check", (*s3Fixture).check},
	}
	// One victim per forget in the pairings below (forget pairs with
	// each op once, and with itself).
	for range len(ops) + 1 {
		ds, src := f.next(t, "victim")
		f.victims = append(f.victims, backupDir(t, r0, src, ds))
		f.srcs[ds] = src
	}
	for i, a := range ops {
		for _, b := range ops[i:] {
			t.Run(a.name+"+"+b.name, func(t *testing.T) {
				ra, rb := f.open(t, nil), f.open(t, nil)
				var wg sync.WaitGroup
				wg.Go(func() { a.run(f, t, ra) })
				wg.Go(func() { b.run(f, t, rb) })
				wg.Wait()
			})
		}
	}

	t.Run("prune and check while a backup's index is not written", func(t *testing.T) {
		f.pausedBackup(t, false)
	})
	// The same, with the backup's lock made to look stale (as when its
	// process was stopped for longer than LockStaleAfter): prune is no
	// longer refused, and the grace period alone keeps the packs.
	t.Run("prune while a paused backup's lock looks stale", func(t *testing.T) {
		f.pausedBackup(t, true)
	})
	f.verify(t)
}

// pausedBackup holds a backup after it uploaded its packs, before its index
// is saved, and runs prune and check meanwhile; staleLock first rewrites
// the backup's lock as last refreshed long ago. The backup, released, must
// complete and restore (f.verify).
func (f *s3Fixture) pausedBackup(t *testing.T, staleLock bool) {
	ctx := context.Background()
	reached, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	var fb *backendtest.Faulty
	rb := f.open(t, func(be backend.Backend) backend.Backend {
		fb = backendtest.NewFaulty(be)
		return fb
	})
	fb.Add(&backendtest.Rule{Op: backendtest.OpSave, Type: backend.IndexFile, Times: 1,
		Before: func(ctx context.Context, _ backend.Handle) error {
			once.Do(func() { close(reached) })
			select {
			case <-release:
				return nil
			case <-ctx.Done():
				return context.Cause(ctx)
			}
		}})
	ds, src := f.next(t, "paused")
	done := make(chan error, 1)
	go func() {
		_, err := rb.Backup(ctx, src, nil, BackupOptions{Dataset: ds, Host: "h"})
		done <- err
	}()
	select {
	case <-reached:
	case err := <-done:
		t.Fatalf("the backup ended before its index save: %v", err)
	}
	var packs []backend.Handle
	for _, c := range fb.Calls() {
		if c.Op == backendtest.OpSave && c.Handle.Type == backend.PackFile && c.Err == nil {
			packs = append(packs, c.Handle)
		}
	}
	if len(packs) == 0 {
		t.Fatal("test data: the paused backup uploaded no pack")
	}
	pr := f.open(t, nil)
	if staleLock {
		locks, err := pr.listLocks(ctx)
		if err != nil {
			t.Fatal(err)
		}
		forged := 0
		for _, l := range locks {
			if l.Info == nil || l.Info.Exclusive {
				continue
			}
			info := *l.Info
			info.Created = time.Now().Add(-3 * LockStaleAfter).UTC()
			info.Refreshed = time.Now().Add(-2 * LockStaleAfter).UTC()
			if !info.stale(time.Now(), thisProcess()) {
				t.Fatal("the rewritten lock does not look stale")
			}
			b, err := json.Marshal(&info)
			if err != nil {
				t.Fatal(err)
			}
			if err := saveBytes(ctx, pr.be, backend.Handle{Type: backend.LockFile, Name: l.Name}, pr.seal.Seal(nil, b)); err != nil {
				t.Fatal(err)
			}
			forged++
		}
		if forged != 1 {
			t.Fatalf("found %d shared locks to make stale, want the paused backup's one", forged)
		}
		// Nothing refuses prune now: it must run, and leave the young
		// unindexed packs alone.
		if _, err := pr.Prune(ctx, PruneOptions{}); err != nil {
			t.Fatalf("prune with only a stale lock: %v", err)
		}
		for _, h := range packs {
			if _, err := pr.be.Stat(ctx, h); err != nil {
				t.Errorf("prune removed pack %s of the paused backup: %v", h.Name, err)
			}
		}
	} else if _, err := pr.Prune(ctx, PruneOptions{}); err != nil && !errors.Is(err, ErrLocked) {
		// The backup's shared lock makes prune refuse; if prune ran
		// anyway, it must leave the backup's packs alone.
		t.Errorf("prune during the paused backup: %v", err)
	}
	f.check(t, f.open(t, nil))
	close(release)
	if err := <-done; err != nil {
		t.Fatalf("the paused backup, released: %v", err)
	}
	f.remember(ds, src)
	f.prune(t, f.open(t, nil))
}
