package repository

import (
	"context"

	"github.com/custos-backup/custos/repository/format"
	"golang.org/x/sync/errgroup"
)

// writeSession is the one way an operation adds blobs and snapshots to a
// repository (backup, stream backup, copy): it holds a shared lock, starts
// from a strictly refreshed index, runs a blob saver, and makes what the
// saver wrote visible in the only safe order — packs durable, lock still
// valid, index files, then the snapshot. A reader that lists snapshots,
// then index files, then packs never meets a reference to something not
// yet written.
//
// A session may run several savers one after another (start, then
// commit or abort); copy commits every few MiB so that an interrupted copy
// resumes where it stopped.
type writeSession struct {
	r      *Repository
	parent context.Context
	lock   *Lock
	// leftovers waits for the removal of old partial uploads started at
	// begin (nil when not asked for).
	leftovers func()

	// The current saver and the goroutines it (and the caller's workers)
	// run in; nil between commit and the next start.
	g      *errgroup.Group
	ctx    context.Context // g's context: cancelled when any of them fails
	cancel context.CancelCauseFunc
	saver  *blobSaver
	bufs   *bufPool
	// commitAsYouGo lets savers commit packs while they run (see
	// blobSaver.commit): backups set it; copy commits on its own terms.
	commitAsYouGo bool
}

// beginWrite takes a shared lock and refreshes the index strictly, so that
// deduplication sees every blob another process has committed. With
// leftovers, it also starts removing old partial uploads. alongside, if
// not nil, runs at the same time as the refresh, under the lock (a backup
// lists the snapshots there to find its parent): on remote storage each is
// a round trip, and neither needs the other. The caller must call end.
func (r *Repository) beginWrite(ctx context.Context, leftovers bool, alongside func(context.Context) error) (*writeSession, error) {
	lock, err := r.Lock(ctx, false)
	if err != nil {
		return nil, err
	}
	w := &writeSession{r: r, parent: ctx, lock: lock}
	if leftovers {
		w.leftovers = r.removeOldLeftovers(ctx)
	}
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return r.refreshIndex(gctx, true) })
	if alongside != nil {
		g.Go(func() error { return alongside(gctx) })
	}
	if err := g.Wait(); err != nil {
		w.end()
		return nil, err
	}
	return w, nil
}

// start runs a new blob saver. Workers that feed it should run in w.g and
// watch w.ctx, so that a failure on either side stops both.
func (w *writeSession) start() {
	cctx, cancel := context.WithCancelCause(w.parent)
	w.cancel = cancel
	w.g, w.ctx = errgroup.WithContext(cctx)
	w.bufs = &bufPool{}
	w.saver = w.r.newBlobSaver(w.ctx, w.g, w.bufs)
	if w.commitAsYouGo {
		w.saver.commit, w.saver.commitEvery = w.commitPacks, commitEvery
		if w.r.commitEvery > 0 {
			w.saver.commitEvery = w.r.commitEvery
		}
	}
}

// stop cancels the current saver with cause; flush then returns it.
func (w *writeSession) stop(cause error) {
	if w.cancel != nil {
		w.cancel(cause)
	}
}

// flush closes the current saver and waits for it and every goroutine of
// w.g. It returns the packs written and not yet committed, all durable but
// not yet reachable.
func (w *writeSession) flush() ([]format.IndexPack, error) {
	packs, err := w.saver.flush()
	if gerr := w.g.Wait(); err == nil {
		err = gerr
	}
	w.cancel(nil)
	w.saver, w.g, w.cancel = nil, nil, nil
	if err != nil {
		return nil, err
	}
	return packs, nil
}

// commitPacks makes packs (returned by flush) reachable: it checks that the
// lock was held throughout, then writes index files for them.
func (w *writeSession) commitPacks(packs []format.IndexPack) error {
	if err := w.lock.Valid(); err != nil {
		return err
	}
	return w.r.commitPacks(w.parent, packs)
}

// commit is flush then commitPacks.
func (w *writeSession) commit() ([]format.IndexPack, error) {
	packs, err := w.flush()
	if err != nil {
		return nil, err
	}
	if err := w.commitPacks(packs); err != nil {
		return nil, err
	}
	return packs, nil
}

// saveVerified hands the current saver a blob already verified against id.
func (w *writeSession) saveVerified(t BlobType, id ID, data []byte) error {
	return w.saver.saveVerified(t, id, data)
}

// hasBlob reports whether the repository's index lists h: the session
// started from a strictly refreshed one, so that writers dedup against
// every committed blob.
func (w *writeSession) hasBlob(h BlobHandle) bool { return w.r.hasBlob(h) }

// saveSnapshot records sn, whose blobs must all be committed.
func (w *writeSession) saveSnapshot(sn *Snapshot) error {
	if err := w.lock.Valid(); err != nil {
		return err
	}
	return w.r.saveSnapshot(w.parent, sn)
}

// abort stops a saver that was not flushed; what it uploaded stays
// unreferenced until prune removes it.
func (w *writeSession) abort() {
	if w.saver == nil {
		return
	}
	w.stop(context.Canceled)
	_, _ = w.flush()
}

// end aborts an unflushed saver, waits for the leftover removal and
// releases the lock.
func (w *writeSession) end() {
	w.abort()
	if w.leftovers != nil {
		w.leftovers()
	}
	_ = w.lock.Unlock(context.WithoutCancel(w.parent))
}
