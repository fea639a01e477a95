package repository

import (
	"bytes"
	"context"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/custos-backup/custos/repository/format"
)

// CopyStats says what Copy sent.
type CopyStats struct {
	Snapshots   int64 `json:"snapshots"`    // snapshots written to the destination
	BlobsCopied int64 `json:"blobs_copied"` // blobs the destination lacked
	BytesCopied int64 `json:"bytes_copied"` // packed bytes written to the destination
	// Held lists every snapshot asked for with its id in the destination,
	// whether this call wrote it or the destination held it already, so
	// that a caller can record where each snapshot is held.
	Held []HeldSnapshot `json:"held"`
}

// HeldSnapshot pairs a snapshot of the source with its copy in the
// destination (ids differ: a copy's parent is the destination's).
type HeldSnapshot struct {
	Source  ID   `json:"source"`
	Dest    ID   `json:"dest"`
	Written bool `json:"written"` // written by this call
}

// copyCommitEvery is how many plaintext bytes Copy queues before it makes
// them durable (packs, then an index file), so that an interrupted copy
// resumes without sending them again.
const copyCommitEvery = 64 << 20

// Copy copies snaps from src into dst. Only blobs dst lacks are sent; they
// are re-sealed with dst's key (blob ids are plaintext hashes, so trees stay
// valid across keys and chunker polynomials). A snapshot that dst already
// holds with the same content is skipped, so copying again is a no-op.
//
// Trees are copied after everything below them, and index files are
// written every copyCommitEvery bytes, so that a tree present in dst always
// has its whole subtree present: an interrupted copy resumes by skipping
// what dst holds. progress may be nil.
func Copy(ctx context.Context, src, dst *Repository, snaps []*Snapshot, progress func(Progress)) (*CopyStats, error) {
	return copySnapshots(ctx, src, dst, snaps, progress, copyConfig{commitEvery: copyCommitEvery})
}

// copyConfig is what Copy fixes and tests vary.
type copyConfig struct {
	commitEvery int64 // tests use a small one
	// wrapSource and wrapDest, when set, stand between the copier and the
	// source or the destination's write session, so that a test can count
	// or fail what passes.
	wrapSource func(copySource) copySource
	wrapDest   func(copyDest) copyDest
}

// copySnapshots is Copy as configured by cfg.
func copySnapshots(ctx context.Context, src, dst *Repository, snaps []*Snapshot, progress func(Progress), cfg copyConfig) (*CopyStats, error) {
	st := &CopyStats{}
	srcLock, err := src.Lock(ctx, false)
	if err != nil {
		return st, fmt.Errorf("copy: source: %w", err)
	}
	defer func() { _ = srcLock.Unlock(context.WithoutCancel(ctx)) }()
	// dst may be a long-lived Repository (the agent keeps them open) while
	// an earlier, interrupted copy or another process added packs: the
	// session's fresh index keeps the copy from sending again what dst
	// holds.
	w, err := dst.beginWrite(ctx, false, nil)
	if err != nil {
		return st, fmt.Errorf("copy: destination: %w", err)
	}
	defer w.end()

	existing, err := dst.Snapshots(ctx)
	if err != nil {
		return st, fmt.Errorf("copy: destination: %w", err)
	}
	c := &copier{ctx: ctx, src: src, dst: w, st: st, seen: map[BlobHandle]bool{}, progress: progress, total: int64(len(snaps)), commitEvery: cfg.commitEvery}
	if cfg.wrapSource != nil {
		c.src = cfg.wrapSource(c.src)
	}
	if cfg.wrapDest != nil {
		c.dst = cfg.wrapDest(c.dst)
	}
	w.start()
	for i, sn := range snaps {
		c.current = sn.ID.Short()
		c.report(int64(i), false)
		if held, err := heldCopy(existing, sn); err != nil {
			return st, err
		} else if held != nil {
			st.Held = append(st.Held, HeldSnapshot{Source: sn.ID, Dest: held.ID})
			continue
		}
		if err := c.tree(sn.Tree); err != nil {
			return st, fmt.Errorf("copy snapshot %s: %w", sn.ID.Short(), err)
		}
		if err := c.commit(); err != nil {
			return st, fmt.Errorf("copy snapshot %s: %w", sn.ID.Short(), err)
		}
		out := *sn
		out.ID = ID{}
		out.Parent = nil
		if sn.Parent != nil {
			// Point at the copied parent if it is in dst; a dangling id would mislead.
			if p := findCopied(ctx, existing, sn.Parent, src); p != nil {
				out.Parent = p
			}
		}
		if err := w.saveSnapshot(&out); err != nil {
			return st, fmt.Errorf("copy snapshot %s: %w", sn.ID.Short(), err)
		}
		existing = append(existing, &out)
		st.Snapshots++
		st.Held = append(st.Held, HeldSnapshot{Source: sn.ID, Dest: out.ID, Written: true})
	}
	c.report(int64(len(snaps)), true)
	return st, nil
}

// sameContent is a snapshot's encoding without the fields that differ
// between repositories (its id and its parent's id).
func sameContent(s *Snapshot) ([]byte, error) {
	c := *s
	c.ID = ID{}
	c.Parent = nil
	return format.EncodeSnapshot(&c)
}

// heldCopy returns the snapshot of existing with sn's content, or nil.
func heldCopy(existing []*Snapshot, sn *Snapshot) (*Snapshot, error) {
	want, err := sameContent(sn)
	if err != nil {
		return nil, err
	}
	for _, e := range existing {
		if e.Tree != sn.Tree || !e.Time.Equal(sn.Time) {
			continue
		}
		got, err := sameContent(e)
		if err != nil {
			return nil, err
		}
		if bytes.Equal(got, want) {
			return e, nil
		}
	}
	return nil, nil
}

// findCopied returns the id in dst of the copy of src's snapshot parent.
func findCopied(ctx context.Context, existing []*Snapshot, parent *ID, src *Repository) *ID {
	ps, err := src.LoadSnapshot(ctx, *parent)
	if err != nil {
		return nil
	}
	want, err := sameContent(ps)
	if err != nil {
		return nil
	}
	for _, e := range existing {
		if e.Tree != ps.Tree {
			continue
		}
		if got, err := sameContent(e); err == nil && bytes.Equal(got, want) {
			id := e.ID
			return &id
		}
	}
	return nil
}

// copySource is the source as the copier reads it: trees a level at a
// time, where each blob is, and the packs that hold them.
type copySource interface {
	blobLocator
	treeLoader
	packSource
}

// copyDest is the destination as the copier writes it: whether it holds a
// blob already, and its write session's saver, committed every few MiB
// (commit, then start a new saver). *writeSession is one.
type copyDest interface {
	hasBlob(h BlobHandle) bool
	saveVerified(t BlobType, id ID, data []byte) error
	commit() ([]format.IndexPack, error)
	start()
}

// copier moves blobs from src to dst through dst's blob saver.
type copier struct {
	ctx      context.Context
	src      copySource
	dst      copyDest // the destination's write session
	st       *CopyStats
	seen     map[BlobHandle]bool // queued in this run
	progress func(Progress)
	current  string
	total    int64
	done     int64
	lastRep  time.Time

	commitEvery int64

	queued atomic.Int64 // plaintext bytes queued since the last commit
	bytes  atomic.Int64 // plaintext bytes copied (progress)

	// The data blobs to read next, and the trees (in the order they are
	// to be saved, each after its subtree) that wait for them.
	batch      []BlobHandle
	batchBytes int64
	trees      []copyTree
}

type copyTree struct {
	id  ID
	raw []byte
}

// copyBatchBytes is how much data the copier gathers before it reads it:
// enough for the blobs to come from few, merged ranges of few packs.
const copyBatchBytes = 32 << 20

// commit makes everything queued durable and indexed in dst, then starts a
// new saver.
func (c *copier) commit() error {
	packs, err := c.dst.commit()
	if err != nil {
		return err
	}
	for _, p := range packs {
		c.st.BlobsCopied += int64(len(p.Blobs))
		c.st.BytesCopied += p.Size
	}
	c.queued.Store(0)
	c.dst.start()
	return nil
}

func (c *copier) report(done int64, final bool) {
	c.done = done
	if c.progress == nil {
		return
	}
	now := time.Now()
	if !final && now.Sub(c.lastRep) < 250*time.Millisecond {
		return
	}
	c.lastRep = now
	c.progress(Progress{Files: c.done, TotalFiles: c.total, Bytes: c.bytes.Load(), Current: c.current})
}

// has reports whether h is queued in this run or held by dst.
func (c *copier) has(h BlobHandle) bool {
	return c.seen[h] || c.dst.hasBlob(h)
}

// tree copies the tree id and everything below it that dst lacks. A tree
// dst holds has its whole subtree there (see Copy), so the walk stops
// there. The trees are read a level at a time (loadTrees), the data in
// batches by pack (flush); each tree is queued after the blobs and trees
// below it.
func (c *copier) tree(root ID) error {
	if c.has(format.TreeHandle(root)) {
		return nil
	}
	trees, err := c.loadTrees(root)
	if err != nil {
		return err
	}
	var walk func(id ID) error
	walk = func(id ID) error {
		if c.has(format.TreeHandle(id)) {
			return nil
		}
		lt := trees[id]
		if lt.err != nil {
			return fmt.Errorf("source tree: %w", lt.err)
		}
		for i := range lt.t.Nodes {
			n := &lt.t.Nodes[i]
			switch n.Type {
			case format.NodeFile:
				for _, b := range n.Content {
					if err := c.want(format.DataHandle(b)); err != nil {
						return err
					}
				}
			case format.NodeDir:
				if err := walk(n.Subtree); err != nil {
					return err
				}
			}
		}
		c.seen[format.TreeHandle(id)] = true
		c.trees = append(c.trees, copyTree{id: id, raw: lt.raw})
		if c.batchBytes >= min(copyBatchBytes, c.commitEvery) {
			return c.flush()
		}
		return nil
	}
	if err := walk(root); err != nil {
		return err
	}
	return c.flush()
}

// loadTrees reads the trees below root that dst lacks, a level at a time.
func (c *copier) loadTrees(root ID) (map[ID]loadedTree, error) {
	trees := map[ID]loadedTree{}
	level := []ID{root}
	for len(level) > 0 {
		got, err := c.src.loadTrees(c.ctx, level, true)
		if err != nil {
			return nil, err
		}
		var next []ID
		queued := map[ID]bool{}
		for id, lt := range got {
			trees[id] = lt
			if lt.t == nil {
				continue
			}
			for i := range lt.t.Nodes {
				n := &lt.t.Nodes[i]
				if n.Type != format.NodeDir || c.has(format.TreeHandle(n.Subtree)) {
					continue
				}
				if _, ok := trees[n.Subtree]; !ok && !queued[n.Subtree] {
					queued[n.Subtree] = true
					next = append(next, n.Subtree)
				}
			}
		}
		level = next
	}
	return trees, nil
}

// want adds a data blob dst lacks to the batch.
func (c *copier) want(h BlobHandle) error {
	if c.has(h) {
		return nil
	}
	_, pb, ok := c.src.lookupBlob(h)
	if !ok {
		return fmt.Errorf("source: %w", notInIndex(h.Type, h.ID))
	}
	c.seen[h] = true
	c.batch = append(c.batch, h)
	c.batchBytes += int64(pb.RawLength)
	return nil
}

// flush reads the batch, the blobs of each source pack with as few
// requests as their offsets allow and several packs at once, queues every
// blob (verified against its id by the pack reader) and then the waiting
// trees, and commits when enough is queued.
func (c *copier) flush() error {
	want := map[ID][]format.PackedBlob{}
	for _, h := range c.batch {
		pack, pb, ok := c.src.lookupBlob(h)
		if !ok {
			return fmt.Errorf("source: %w", notInIndex(h.Type, h.ID))
		}
		want[pack] = append(want[pack], pb)
	}
	// A local source is read fast enough by two; remote storage gets its
	// connections.
	err := readPackSet(c.ctx, c.src, want, c.src.readers(2), func(_ ID, b readBlob) error {
		if b.Err != nil {
			return fmt.Errorf("source: %w", b.Err)
		}
		if err := c.dst.saveVerified(b.Entry.Type, b.Entry.ID, b.Plain); err != nil {
			return err
		}
		c.queued.Add(int64(len(b.Plain)))
		c.bytes.Add(int64(len(b.Plain)))
		return nil
	})
	if err != nil {
		return err
	}
	for _, t := range c.trees {
		// The pack reader verified t.raw against t.id.
		if err := c.dst.saveVerified(TreeBlob, t.id, t.raw); err != nil {
			return err
		}
		c.queued.Add(int64(len(t.raw)))
	}
	c.batch, c.batchBytes, c.trees = c.batch[:0], 0, c.trees[:0]
	c.report(c.done, false)
	if c.queued.Load() >= c.commitEvery {
		return c.commit()
	}
	return nil
}
