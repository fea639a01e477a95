package repository

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"time"

	"github.com/custos-backup/custos/repository/backend"
	"github.com/custos-backup/custos/repository/format"
)

// DefaultMaxUnused is the MaxUnused the command line uses unless told
// otherwise: restic's default, which keeps prune from rewriting most packs
// after every forget for a few percent of space.
const DefaultMaxUnused = 0.05

// PruneOptions say how much unused data Prune may leave in partly used
// packs. The zero value rewrites every partly used pack.
type PruneOptions struct {
	// MaxUnused is the fraction of the blob bytes left after prune that
	// may be unreferenced blobs in kept packs. 0 rewrites every partly used
	// pack; 1 (or more) rewrites none, so only wholly unused packs go.
	MaxUnused float64
	// MaxRepackBytes bounds the bytes of referenced blobs copied into new
	// packs in one run; 0 means no limit. Packs that would exceed it are
	// kept for a later prune even if MaxUnused is then exceeded.
	MaxRepackBytes int64
}

func (o PruneOptions) validate() error {
	if math.IsNaN(o.MaxUnused) || o.MaxUnused < 0 {
		return fmt.Errorf("MaxUnused %v: want a fraction, 0 or more (1 or more: no limit)", o.MaxUnused)
	}
	if o.MaxRepackBytes < 0 {
		return fmt.Errorf("MaxRepackBytes %d: want 0 (no limit) or more", o.MaxRepackBytes)
	}
	return nil
}

// PruneStats says what Prune removed and what unused data it left.
type PruneStats struct {
	PacksDeleted   int   `json:"packs_deleted"`
	PacksRewritten int   `json:"packs_rewritten"`
	BytesFreed     int64 `json:"bytes_freed"`
	// BytesRepacked is the referenced blob data copied into new packs.
	BytesRepacked int64 `json:"bytes_repacked"`
	// PacksKeptPartlyUsed counts packs with unreferenced blobs that were
	// left as they are (by MaxUnused or MaxRepackBytes); UnusedBytesKept is
	// the size of those unreferenced blobs.
	PacksKeptPartlyUsed int   `json:"packs_kept_partly_used"`
	UnusedBytesKept     int64 `json:"unused_bytes_kept"`
}

// pruneGrace is G in FORMAT.md §12: an unindexed pack younger than this may
// belong to a backup still running and is left alone.
const pruneGrace = 2 * time.Hour

// Prune deletes data no snapshot references, under an exclusive lock and by
// the deletion rule of FORMAT.md §12: packs whose blobs are all unreferenced
// are deleted; of the packs with some unreferenced blobs, as many are
// rewritten (the used blobs copied, still sealed, into new packs) as it
// takes to meet opts.MaxUnused, within opts.MaxRepackBytes, and the rest
// are kept whole, still indexed with all their blobs; packs no index lists
// are deleted only when older than the grace period and than every live lock. New index
// files, the last of which supersedes all old ones, are durable before any
// pack is deleted; old index files are deleted last.
func (r *Repository) Prune(ctx context.Context, opts PruneOptions) (*PruneStats, error) {
	if err := opts.validate(); err != nil {
		return nil, fmt.Errorf("prune %s: %w", r.be.Location(), err)
	}
	lock, err := r.Lock(ctx, true)
	if err != nil {
		return nil, fmt.Errorf("prune: %w", err)
	}
	defer func() { _ = lock.Unlock(context.WithoutCancel(ctx)) }()
	// What crashed processes left behind goes first: nothing else cleans
	// their locks, and they would be listed by every later command.
	if _, err := r.RemoveStaleLocks(ctx); err != nil {
		return nil, fmt.Errorf("prune %s: %w", r.be.Location(), err)
	}
	tStart := time.Now()
	st, err := r.prune(ctx, lock, tStart, opts)
	if err != nil {
		return st, fmt.Errorf("prune %s: %w", r.be.Location(), err)
	}
	return st, nil
}

// unindexedCutoff is the creation time before which an unindexed pack may
// be deleted (FORMAT.md §12 rule 2): T_start − G, or earlier if a live lock
// other than own is older. Stale locks hold nothing back: their holders are
// gone or refuse to write index files (Lock.Valid), so no index will ever
// name their packs. An unreadable lock's age is unknown, so it holds back
// everything (the zero time).
func unindexedCutoff(locks []lockEntry, own string, tStart, now time.Time, me processInfo) time.Time {
	cutoff := tStart.Add(-pruneGrace)
	for _, l := range locks {
		switch {
		case l.Name == own:
		case l.Info == nil:
			return time.Time{}
		case l.Info.stale(now, me):
		case l.Info.Created.Before(cutoff):
			cutoff = l.Info.Created
		}
	}
	return cutoff
}

// pruneLeftovers removes the partial objects of interrupted saves by the
// rule of unindexed packs: every live writer's lock is older than what it
// is still writing. Their times come from the storage's clock, not the
// writer's, hence the margin. It runs before prune writes anything of its
// own.
func (r *Repository) pruneLeftovers(ctx context.Context, lock *Lock, tStart time.Time) error {
	locks, err := r.listLocks(ctx)
	if err != nil {
		return err
	}
	if cutoff := unindexedCutoff(locks, lock.Name(), tStart, time.Now(), thisProcess()); !cutoff.IsZero() {
		r.removeLeftovers(ctx, cutoff.Add(-LockStaleAfter))()
	}
	return nil
}

// repackCandidate is a partly used pack: used and unused are the sealed
// bytes of its referenced and unreferenced blobs.
type repackCandidate struct {
	id           ID
	used, unused int64
}

// chooseRepack picks which partly used packs to rewrite so that the unused
// bytes left are at most opts.MaxUnused of what the packs then hold
// (usedTotal, the referenced bytes of every indexed pack, plus the unused
// bytes left), spending at most opts.MaxRepackBytes on copies. Packs that
// free the most per byte copied go first, since the copying is the cost.
func chooseRepack(cands []repackCandidate, usedTotal int64, opts PruneOptions) map[ID]bool {
	var unusedLeft int64
	for _, c := range cands {
		unusedLeft += c.unused
	}
	within := func() bool {
		return float64(unusedLeft) <= opts.MaxUnused*float64(usedTotal+unusedLeft)
	}
	order := slices.Clone(cands)
	slices.SortFunc(order, func(a, b repackCandidate) int {
		// Compares a.unused/a.used with b.unused/b.used without dividing.
		lhs, rhs := float64(a.unused)*float64(b.used), float64(b.unused)*float64(a.used)
		switch {
		case lhs > rhs:
			return -1
		case lhs < rhs:
			return 1
		case a.unused != b.unused:
			return cmp.Compare(b.unused, a.unused)
		}
		return slices.Compare(a.id[:], b.id[:])
	})
	pick := map[ID]bool{}
	var copied int64
	for _, c := range order {
		if within() {
			break
		}
		if opts.MaxRepackBytes > 0 && copied+c.used > opts.MaxRepackBytes {
			continue // a cheaper pack further on may still fit
		}
		pick[c.id] = true
		copied += c.used
		unusedLeft -= c.unused
	}
	return pick
}

func (r *Repository) prune(ctx context.Context, lock *Lock, tStart time.Time, opts PruneOptions) (*PruneStats, error) {
	st := &PruneStats{}
	if err := r.pruneLeftovers(ctx, lock, tStart); err != nil {
		return st, err
	}
	// A fresh view: other processes may have added index files since Open.
	if err := r.loadIndex(ctx); err != nil {
		return st, err
	}
	oldIndexes, err := r.listIDs(ctx, backend.IndexFile, nil)
	if err != nil {
		return st, err
	}
	snaps, damaged, err := r.ListSnapshots(ctx)
	if err != nil {
		return st, err
	}
	if len(damaged) > 0 {
		// What a damaged snapshot references is unknown, so no blob can
		// be proven unused.
		errs := make([]error, len(damaged))
		for i, d := range damaged {
			errs[i] = d.Err
		}
		return st, fmt.Errorf("refusing to prune: %d snapshot files cannot be read (repair or remove them first): %w", len(damaged), errors.Join(errs...))
	}
	used, err := usedBlobs(ctx, r, snaps)
	if err != nil {
		return st, err
	}

	// The indexed packs, each as the first index file that lists it does.
	var indexed []format.IndexPack
	seen := map[ID]bool{}
	err = r.forEachIndexFile(ctx, false, func(_ ID, f *format.IndexFile) error {
		for _, p := range f.Packs {
			if !seen[p.ID] {
				seen[p.ID] = true
				indexed = append(indexed, p)
			}
		}
		return nil
	})
	if err != nil {
		return st, err
	}
	x := r.index()
	plan := planPrune(indexed, func(h BlobHandle) (ID, bool) {
		p, _, ok := x.Lookup(h)
		return p, ok
	}, used, opts)
	st.PacksKeptPartlyUsed, st.UnusedBytesKept = plan.keptPartlyUsed, plan.unusedKept
	keepPacks, deletePacks := plan.keep, plan.delete

	// Rewrite: copy the used blobs, still sealed, into new packs.
	rp := r.newRepacker(ctx)
	defer rp.close()
	for _, rw := range plan.rewrite {
		id := rw.id
		h := backend.Handle{Type: backend.PackFile, Name: id.String()}
		pr := r.newPackReader(true)
		err := pr.read(ctx, id, rw.keep, func(b readBlob) error {
			if b.Err != nil {
				return fmt.Errorf("rewrite %s: %w; run check and repair before pruning", h, b.Err)
			}
			if err := rp.add(b.Entry, b.Sealed); err != nil {
				return fmt.Errorf("rewrite %s: %w", h, err)
			}
			return nil
		})
		if err != nil {
			return st, err
		}
		deletePacks[id] = rw.size
		st.PacksRewritten++
	}
	newPacks, err := rp.finish()
	if err != nil {
		return st, err
	}
	st.BytesRepacked = rp.bytes

	// Unindexed packs (crash leftovers, or a running backup's): FORMAT.md
	// §12 rule 2.
	stored := map[ID]int64{}
	if err := r.be.List(ctx, backend.PackFile, func(fi backend.FileInfo) error {
		if id, err := ParseID(fi.Name); err == nil {
			stored[id] = fi.Size
		}
		return nil
	}); err != nil {
		return st, fmt.Errorf("list packs: %w", err)
	}
	locks, err := r.listLocks(ctx)
	if err != nil {
		return st, err
	}
	cutoff := unindexedCutoff(locks, lock.Name(), tStart, time.Now(), thisProcess())
	written := map[ID]bool{}
	for _, np := range newPacks {
		written[np.ID] = true
	}
	for id, size := range stored {
		if seen[id] || written[id] {
			continue
		}
		if !cutoff.After(time.Time{}) {
			break
		}
		hdr, err := r.readPackHeader(ctx, id, size)
		if err != nil {
			if ctx.Err() != nil {
				return st, ctx.Err()
			}
			r.log.Warn("prune: leaving an unindexed pack whose header cannot be read", "pack", packPath(id), "err", err)
			continue
		}
		if hdr.Created.Before(cutoff) {
			deletePacks[id] = size
		}
	}

	if len(deletePacks) == 0 {
		return st, nil
	}

	// New index files first; the last one supersedes every old file, so a
	// crash before it leaves the old view intact (plus harmless duplicates).
	all := append(keepPacks, newPacks...)
	if err := lock.Valid(); err != nil {
		return st, err
	}
	if err := r.writeIndexes(ctx, all, oldIndexes); err != nil {
		return st, err
	}
	if err := lock.Valid(); err != nil {
		return st, err
	}
	for _, np := range newPacks {
		st.BytesFreed -= np.Size
	}
	packs := make([]backend.Handle, 0, len(deletePacks))
	sizes := make([]int64, 0, len(deletePacks))
	for id, size := range deletePacks {
		packs = append(packs, backend.Handle{Type: backend.PackFile, Name: id.String()})
		sizes = append(sizes, size)
	}
	if err := r.removeFiles(ctx, packs, func(i int) {
		st.PacksDeleted++
		st.BytesFreed += sizes[i]
	}); err != nil {
		return st, err
	}
	indexes := make([]backend.Handle, len(oldIndexes))
	for i, id := range oldIndexes {
		indexes[i] = backend.Handle{Type: backend.IndexFile, Name: id.String()}
	}
	if err := r.removeFiles(ctx, indexes, func(int) {}); err != nil {
		return st, err
	}
	return st, r.loadIndex(ctx)
}

// prunePlan is what prune does with the indexed packs.
type prunePlan struct {
	// keep stays indexed as listed, unused blobs too: a blob left out of
	// the index would still take space, yet no later prune could see it
	// to reclaim it.
	keep []format.IndexPack
	// rewrite has its used blobs copied into new packs; then it goes.
	rewrite []packRewrite
	// delete holds no used blob: it goes (pack id to size).
	delete map[ID]int64
	// keptPartlyUsed and unusedKept: the partly used packs kept whole.
	keptPartlyUsed int
	unusedKept     int64
}

// packRewrite is a pack to rewrite and the blobs to copy out of it.
type packRewrite struct {
	id   ID
	size int64
	keep []format.PackedBlob
}

// planPrune decides what happens to each of the indexed packs, given the
// blobs the snapshots use and canonical, the pack where the index finds a
// blob. A blob is kept only at its canonical location; other copies count
// as unused. Of the partly used packs, chooseRepack picks which to
// rewrite. It reads nothing: the plan follows from its arguments alone.
func planPrune(packs []format.IndexPack, canonical func(BlobHandle) (ID, bool), used map[BlobHandle]bool, opts PruneOptions) *prunePlan {
	type packUse struct {
		keep         []format.PackedBlob
		used, unused int64 // sealed bytes of the used and unused blobs
	}
	uses := make([]packUse, len(packs))
	var (
		cands     []repackCandidate
		usedTotal int64
	)
	for i, p := range packs {
		pu := &uses[i]
		for _, pb := range p.Blobs {
			if at, ok := canonical(pb.Handle()); ok && at == p.ID && used[pb.Handle()] {
				pu.keep = append(pu.keep, pb)
				pu.used += int64(pb.Length)
			} else {
				pu.unused += int64(pb.Length)
			}
		}
		usedTotal += pu.used
		if len(pu.keep) > 0 && len(pu.keep) < len(p.Blobs) {
			cands = append(cands, repackCandidate{id: p.ID, used: pu.used, unused: pu.unused})
		}
	}
	rewrite := chooseRepack(cands, usedTotal, opts)
	plan := &prunePlan{delete: map[ID]int64{}}
	for i, p := range packs {
		pu := uses[i]
		partly := len(pu.keep) < len(p.Blobs)
		switch {
		case len(pu.keep) == 0:
			plan.delete[p.ID] = p.Size
		case !partly || !rewrite[p.ID]:
			plan.keep = append(plan.keep, p)
			if partly {
				plan.keptPartlyUsed++
				plan.unusedKept += pu.unused
			}
		default:
			plan.rewrite = append(plan.rewrite, packRewrite{id: p.ID, size: p.Size, keep: pu.keep})
		}
	}
	return plan
}

// writeIndexes stores packs in index files of at most maxBlobsPerIndex
// blobs; the last one written lists supersedes.
func (r *Repository) writeIndexes(ctx context.Context, packs []format.IndexPack, supersedes []ID) error {
	var files []*format.IndexFile
	cur := &format.IndexFile{}
	n := 0
	for _, p := range packs {
		if n > 0 && n+len(p.Blobs) > format.MaxBlobsPerIndex {
			files = append(files, cur)
			cur, n = &format.IndexFile{}, 0
		}
		cur.Packs = append(cur.Packs, p)
		n += len(p.Blobs)
	}
	files = append(files, cur)
	files[len(files)-1].Supersedes = supersedes
	for _, f := range files {
		if _, err := r.saveIndexFile(ctx, f); err != nil {
			return err
		}
	}
	return nil
}

// usedBlobs returns every blob (trees and data) reachable from snaps. A
// data blob whose id equals a tree's keeps neither the tree nor what lies
// below it: they are different blobs. Trees are loaded a level at a time
// (one round trip per level on remote storage, not one per directory), as
// restore plans.
func usedBlobs(ctx context.Context, trees treeLoader, snaps []*Snapshot) (map[BlobHandle]bool, error) {
	used := map[BlobHandle]bool{}
	// root names, for each tree of the current level, a snapshot that
	// reaches it, so that an error says which snapshot depends on it.
	root := map[ID]*Snapshot{}
	var level []ID
	for _, sn := range snaps {
		if h := format.TreeHandle(sn.Tree); !used[h] {
			used[h] = true
			root[sn.Tree] = sn
			level = append(level, sn.Tree)
		}
	}
	for len(level) > 0 {
		loaded, err := trees.loadTrees(ctx, level, false)
		if err != nil {
			return nil, err
		}
		var next []ID
		nextRoot := map[ID]*Snapshot{}
		for _, id := range level {
			lt := loaded[id]
			if lt.err != nil {
				return nil, fmt.Errorf("snapshot %s: %w (run check; prune refuses to guess what a damaged tree references)", root[id].ID.Short(), lt.err)
			}
			for i := range lt.t.Nodes {
				n := &lt.t.Nodes[i]
				switch n.Type {
				case format.NodeDir:
					if h := format.TreeHandle(n.Subtree); !used[h] {
						used[h] = true
						nextRoot[n.Subtree] = root[id]
						next = append(next, n.Subtree)
					}
				case format.NodeFile:
					for _, b := range n.Content {
						used[format.DataHandle(b)] = true
					}
				}
			}
		}
		level, root = next, nextRoot
	}
	return used, nil
}
