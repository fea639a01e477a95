package repository

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/custos-backup/custos/repository/backend"
	"github.com/custos-backup/custos/repository/format"
	"golang.org/x/sync/errgroup"
)

// ErrLocked is wrapped by Lock when a conflicting live lock exists.
var ErrLocked = errors.New("repository is locked")

const (
	// lockRefreshInterval is how often a held lock is rewritten.
	lockRefreshInterval = 5 * time.Minute
	// LockStaleAfter is the age of a lock's last refresh after which other
	// processes treat it as abandoned.
	LockStaleAfter  = 30 * time.Minute
	maxLockFileSize = 64 << 10
)

// lockInfo is the content of a lock file.
type lockInfo struct {
	Version   int       `json:"version"`
	Exclusive bool      `json:"exclusive"`
	Created   time.Time `json:"created"`
	Refreshed time.Time `json:"refreshed"`
	Hostname  string    `json:"hostname"`
	PID       int       `json:"pid"`
	// Where PID means something and which process it was (see
	// processInfo); absent in locks written before they were recorded.
	BootID       string `json:"boot_id,omitempty"`
	PIDNamespace string `json:"pid_namespace,omitempty"`
	StartTicks   uint64 `json:"start_ticks,omitempty"`
}

// processInfo identifies a process across hosts and time: the host, its
// boot, the pid namespace, the pid and the process's start time (clock ticks
// after boot), which tells a reused pid from the process that wrote a lock.
type processInfo struct {
	Hostname     string
	PID          int
	BootID       string
	PIDNamespace string
	StartTicks   uint64
}

func (li *lockInfo) setProcess(p processInfo) {
	li.Hostname, li.PID, li.BootID, li.PIDNamespace, li.StartTicks = p.Hostname, p.PID, p.BootID, p.PIDNamespace, p.StartTicks
}

func decodeLockInfo(b []byte) (*lockInfo, error) {
	var li lockInfo
	if err := format.StrictUnmarshal(b, &li); err != nil {
		return nil, fmt.Errorf("decode lock: %w", err)
	}
	if li.Version != format.Version {
		return nil, fmt.Errorf("decode lock: unsupported version %d", li.Version)
	}
	if li.Refreshed.Before(li.Created) {
		return nil, errors.New("decode lock: refreshed before created")
	}
	return &li, nil
}

// stale reports whether the lock no longer protects anything: it was last
// refreshed too long ago (its holder, if alive, refuses to write index or
// snapshot, see Lock.Valid), or its process is gone (see deadHere). me is
// the process asking.
func (li *lockInfo) stale(now time.Time, me processInfo) bool {
	return now.Sub(li.Refreshed) > LockStaleAfter || li.deadHere(me)
}

// deadHere reports whether the lock was written by a process of this host,
// boot and pid namespace that no longer runs. A process killed with SIGKILL
// cannot remove its lock, but it cannot write anything more either, so its
// lock is stale at once instead of after LockStaleAfter. Locks of other
// hosts, other boots or other pid namespaces, and old locks that lack the
// boot id, are never judged by pid: a pid means nothing there.
func (li *lockInfo) deadHere(me processInfo) bool {
	if li.Hostname == "" || li.Hostname != me.Hostname || li.BootID != me.BootID || li.PIDNamespace != me.PIDNamespace {
		return false
	}
	if li.PID == me.PID && li.StartTicks == me.StartTicks {
		return false // this very process
	}
	return processGone(li.PID, li.StartTicks)
}

// lockEntry is one lock file as found in locks/.
type lockEntry struct {
	Name string
	Info *lockInfo // nil when the file could not be read or decoded
	Err  error
}

// listLocks loads every lock file.
func (r *Repository) listLocks(ctx context.Context) ([]lockEntry, error) {
	return r.listLocksExcept(ctx, "")
}

// maxLockLoads bounds the lock files loaded at once. Each concurrent
// backup holds one, so a bucket shared by many hosts has many, and loading
// them one after another would cost a round trip each.
const maxLockLoads = 8

// listLocksExcept loads every lock file but the one named own, which the
// caller wrote and need not read back.
func (r *Repository) listLocksExcept(ctx context.Context, own string) ([]lockEntry, error) {
	var names []string
	if err := r.be.List(ctx, backend.LockFile, func(fi backend.FileInfo) error {
		if fi.Name != own {
			names = append(names, fi.Name)
		}
		return nil
	}); err != nil {
		return nil, fmt.Errorf("list locks: %w", err)
	}
	entries := make([]lockEntry, len(names))
	found := make([]bool, len(names))
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(maxLockLoads)
	for i, name := range names {
		g.Go(func() error {
			h := backend.Handle{Type: backend.LockFile, Name: name}
			b, err := loadSmall(gctx, r.be, h, maxLockFileSize)
			if errors.Is(err, backend.ErrNotExist) {
				return nil // released meanwhile
			}
			if ctx.Err() != nil {
				return ctx.Err()
			}
			e := lockEntry{Name: name}
			if err == nil {
				var pt []byte
				pt, err = r.seal.Open(nil, b)
				if err == nil {
					e.Info, err = decodeLockInfo(pt)
				}
			}
			if err != nil {
				e.Err = fmt.Errorf("lock %s: %w", h, err)
			}
			entries[i], found[i] = e, true
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return nil, fmt.Errorf("list locks: %w", err)
	}
	out := make([]lockEntry, 0, len(names))
	for i, e := range entries {
		if found[i] {
			out = append(out, e)
		}
	}
	return out, nil
}

// conflicts returns an error describing the first live lock that conflicts
// with a lock of the given kind. Unreadable lock files count as live
// exclusive locks for an exclusive request (safe side) and are ignored for a
// shared one.
func conflicts(locks []lockEntry, own string, exclusive bool, now time.Time, me processInfo) error {
	for _, l := range locks {
		if l.Name == own {
			continue
		}
		if l.Info == nil {
			if exclusive {
				return fmt.Errorf("%w: unreadable lock %s (%v); remove it if no process holds it", ErrLocked, l.Name, l.Err)
			}
			continue
		}
		if l.Info.stale(now, me) || !(exclusive || l.Info.Exclusive) {
			continue
		}
		kind := "shared"
		if l.Info.Exclusive {
			kind = "exclusive"
		}
		return fmt.Errorf("%w: %s lock %s held by %s pid %d since %s", ErrLocked, kind, l.Name, l.Info.Hostname, l.Info.PID, l.Info.Created.Format(time.RFC3339))
	}
	return nil
}

// Lock is a held repository lock. Its file is rewritten every few minutes
// until Unlock.
type Lock struct {
	r      *Repository
	name   string
	cancel context.CancelFunc
	done   chan struct{}

	mu          sync.Mutex
	info        lockInfo
	lastRefresh time.Time
	refreshErr  error
	// broken is set when the lock went unrefreshed for too long at some
	// point: others may have treated it as stale meanwhile (and pruned),
	// even if later refreshes succeeded.
	broken bool
}

// staleMargin is how much earlier than LockStaleAfter a holder gives up its
// claim, for clock differences between hosts.
const staleMargin = 2 * time.Minute

// Lock takes a shared (backup) or exclusive (prune) lock. It fails with an
// error wrapping ErrLocked if a live conflicting lock exists.
func (r *Repository) Lock(ctx context.Context, exclusive bool) (*Lock, error) {
	return r.lock(ctx, exclusive, lockRefreshInterval)
}

func (r *Repository) lock(ctx context.Context, exclusive bool, refresh time.Duration) (*Lock, error) {
	now := time.Now()
	me := thisProcess()
	// What makes locking safe is the look after writing (below). The look
	// before only spares a lock file that would be removed at once; a
	// shared lock, taken by every backup, skips it, which saves a round
	// trip per backup on remote storage and costs nothing but a short-lived
	// file while an exclusive lock is held.
	if exclusive {
		locks, err := r.listLocks(ctx)
		if err != nil {
			return nil, err
		}
		if err := conflicts(locks, "", exclusive, now, me); err != nil {
			return nil, err
		}
	}
	l := &Lock{
		r:    r,
		name: randomHex(32),
		info: lockInfo{Version: format.Version, Exclusive: exclusive, Created: now.UTC(), Refreshed: now.UTC()},
		done: make(chan struct{}),
	}
	l.info.setProcess(me)
	if err := l.write(ctx); err != nil {
		return nil, err
	}
	l.lastRefresh = now
	// Look again: a conflicting lock written at the same time as ours is
	// seen by at least one of the two writers, which backs off.
	locks, err := r.listLocksExcept(ctx, l.name)
	if err == nil {
		err = conflicts(locks, l.name, exclusive, time.Now(), me)
	}
	if err != nil {
		_ = r.be.Remove(context.WithoutCancel(ctx), backend.Handle{Type: backend.LockFile, Name: l.name})
		return nil, err
	}
	rctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	l.cancel = cancel
	go l.refreshLoop(rctx, refresh)
	return l, nil
}

func (l *Lock) write(ctx context.Context) error {
	l.mu.Lock()
	b, err := json.Marshal(&l.info)
	l.mu.Unlock()
	if err != nil {
		return err
	}
	return saveBytes(ctx, l.r.be, backend.Handle{Type: backend.LockFile, Name: l.name}, l.r.seal.Seal(nil, b))
}

func (l *Lock) refreshLoop(ctx context.Context, every time.Duration) {
	defer close(l.done)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		now := time.Now()
		l.mu.Lock()
		l.info.Refreshed = now.UTC()
		l.mu.Unlock()
		err := l.write(ctx)
		l.mu.Lock()
		if now.Sub(l.lastRefresh) > LockStaleAfter-staleMargin {
			l.broken = true
		}
		if err == nil {
			l.lastRefresh = now
			l.refreshErr = nil
		} else if ctx.Err() == nil {
			l.refreshErr = err
			l.r.log.Warn("refreshing repository lock failed", "lock", l.name, "err", err)
		}
		l.mu.Unlock()
	}
}

// Valid returns nil while other processes must still consider the lock
// live, i.e. its last successful refresh is recent enough. Writers check it
// before they make new data reachable (index, snapshot).
func (l *Lock) Valid() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.broken {
		return fmt.Errorf("lock %s went unrefreshed for longer than %s at some point (last error: %v)", l.name, LockStaleAfter-staleMargin, l.refreshErr)
	}
	if age := time.Since(l.lastRefresh); age > LockStaleAfter-staleMargin {
		return fmt.Errorf("lock %s was last refreshed %s ago and may be considered stale (last error: %v)", l.name, age.Round(time.Second), l.refreshErr)
	}
	return nil
}

// Name is the lock file's name in locks/.
func (l *Lock) Name() string { return l.name }

// Unlock stops refreshing and removes the lock file.
func (l *Lock) Unlock(ctx context.Context) error {
	l.cancel()
	<-l.done
	err := l.r.be.Remove(ctx, backend.Handle{Type: backend.LockFile, Name: l.name})
	if err != nil && !errors.Is(err, backend.ErrNotExist) {
		return fmt.Errorf("unlock %s: %w", l.name, err)
	}
	return nil
}

// RemoveStaleLocks deletes the lock files that no longer protect anything:
// those last refreshed longer than LockStaleAfter ago and those whose
// process is gone from this host (see lockInfo.stale). Unreadable lock files
// are left alone. It returns how many it removed.
func (r *Repository) RemoveStaleLocks(ctx context.Context) (int, error) {
	return r.removeLocks(ctx, false)
}

// RemoveAllLocks deletes every lock file, live, stale or unreadable, and
// returns how many it removed. It is for an operator who knows that no
// process uses the repository: a live holder that loses its lock keeps
// running unprotected.
func (r *Repository) RemoveAllLocks(ctx context.Context) (int, error) {
	return r.removeLocks(ctx, true)
}

func (r *Repository) removeLocks(ctx context.Context, all bool) (int, error) {
	locks, err := r.listLocks(ctx)
	if err != nil {
		return 0, err
	}
	n := 0
	now := time.Now()
	me := thisProcess()
	for _, l := range locks {
		if !all && (l.Info == nil || !l.Info.stale(now, me)) {
			continue
		}
		if err := r.be.Remove(ctx, backend.Handle{Type: backend.LockFile, Name: l.Name}); err != nil {
			if errors.Is(err, backend.ErrNotExist) {
				continue
			}
			return n, fmt.Errorf("remove lock %s: %w", l.Name, err)
		}
		if l.Info != nil {
			r.log.Info("removed repository lock", "lock", l.Name, "host", l.Info.Hostname, "pid", l.Info.PID, "refreshed", l.Info.Refreshed)
		} else {
			r.log.Info("removed unreadable repository lock", "lock", l.Name)
		}
		n++
	}
	return n, nil
}

// removeOldLeftovers is removeLeftovers for a backup, which knows nothing
// of other writers: only what is older than backend.LeftoverAge.
func (r *Repository) removeOldLeftovers(ctx context.Context) (wait func()) {
	age := backend.LeftoverAge
	if r.leftoverAge != 0 {
		age = r.leftoverAge
	}
	return r.removeLeftovers(ctx, time.Now().Add(-age))
}

// removeLeftovers starts removing the partial objects of interrupted saves
// (backend.LeftoverRemover) made before the given time, and returns a
// function that waits for it to finish. Only writers holding a lock call
// it, so that read-only commands never change the repository. It runs
// beside the writer's own work, and its failure is only logged: nothing
// the writer does depends on it.
func (r *Repository) removeLeftovers(ctx context.Context, before time.Time) (wait func()) {
	lr, ok := backend.As[backend.LeftoverRemover](r.be)
	if !ok {
		return func() {}
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		n, size, err := lr.RemoveLeftovers(ctx, before)
		if err != nil && ctx.Err() == nil {
			r.log.Warn("cannot remove what interrupted saves left; a later backup or prune tries again", "repository", r.be.Location(), "removed", n, "err", err)
			return
		}
		if n > 0 {
			r.log.Info("removed what interrupted saves left", "repository", r.be.Location(), "objects", n, "bytes", size)
		}
	}()
	return func() { <-done }
}
