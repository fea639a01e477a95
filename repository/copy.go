package repository

import (
	"bytes"
	"context"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/custos-backup/custos/repository/format"
	"golang.org/x/sync/errgroup"
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
	return copySnapshots(ctx, src, dst, snaps, progress, copyCommitEvery)
}

// copySnapshots is Copy with the commit interval as a parameter (tests use
// a small one).
func copySnapshots(ctx context.Context, src, dst *Repository, snaps []*Snapshot, progress func(Progress), commitEvery int64) (*CopyStats, error) {
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
	w, err := dst.beginWrite(ctx, false)
	if err != nil {
		return st, fmt.Errorf("copy: destination: %w", err)
	}
	defer w.end()

	existing, err := dst.Snapshots(ctx)
	if err != nil {
		return st, fmt.Errorf("copy: destination: %w", err)
	}
	c := &copier{ctx: ctx, src: src, dst: dst, w: w, st: st, seen: map[BlobHandle]bool{}, progress: progress, total: int64(len(snaps)), commitEvery: commitEvery}
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

// blobLoader returns the verified plaintext of a blob
// (Repository.loadBlob).
type blobLoader interface {
	loadBlob(ctx context.Context, t BlobType, id ID, buf []byte) ([]byte, error)
}

// copier moves blobs from src to dst through dst's blob saver.
type copier struct {
	ctx      context.Context
	src      blobLoader
	dst      *Repository
	st       *CopyStats
	seen     map[BlobHandle]bool // queued in this run
	progress func(Progress)
	current  string
	total    int64
	done     int64
	lastRep  time.Time

	commitEvery int64

	w      *writeSession // its saver is the destination's
	queued atomic.Int64  // plaintext bytes queued since the last commit
	bytes  atomic.Int64  // plaintext bytes copied (progress)
}

// commit makes everything queued durable and indexed in dst, then starts a
// new saver.
func (c *copier) commit() error {
	packs, err := c.w.commit()
	if err != nil {
		return err
	}
	for _, p := range packs {
		c.st.BlobsCopied += int64(len(p.Blobs))
		c.st.BytesCopied += p.Size
	}
	c.queued.Store(0)
	c.w.start()
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

// tree copies the tree id and everything below it that dst lacks, the
// tree blob itself last.
func (c *copier) tree(id ID) error {
	if c.seen[format.TreeHandle(id)] || c.dst.index().Has(format.TreeHandle(id)) {
		return nil
	}
	raw, err := c.src.loadBlob(c.ctx, TreeBlob, id, nil)
	if err != nil {
		return fmt.Errorf("source tree: %w", err)
	}
	t, err := format.DecodeTree(raw)
	if err != nil {
		return fmt.Errorf("source tree %s: %w", id, err)
	}
	// File contents of this directory, a few blobs at a time.
	g, gctx := errgroup.WithContext(c.ctx)
	g.SetLimit(4)
	for i := range t.Nodes {
		n := &t.Nodes[i]
		if n.Type != format.NodeFile {
			continue
		}
		for _, b := range n.Content {
			h := format.DataHandle(b)
			skip := c.seen[h]
			c.seen[h] = true
			if skip || c.dst.index().Has(h) {
				continue
			}
			g.Go(func() error { return c.blob(gctx, DataBlob, b) })
		}
	}
	if err := g.Wait(); err != nil {
		return err
	}
	for i := range t.Nodes {
		if n := &t.Nodes[i]; n.Type == format.NodeDir {
			if err := c.tree(n.Subtree); err != nil {
				return err
			}
		}
	}
	// loadBlob verified raw against id.
	if err := c.w.saver.saveVerified(TreeBlob, id, raw); err != nil {
		return err
	}
	c.seen[format.TreeHandle(id)] = true
	c.report(c.done, false)
	if c.queued.Add(int64(len(raw))) >= c.commitEvery {
		return c.commit()
	}
	return nil
}

func (c *copier) blob(ctx context.Context, t BlobType, id ID) error {
	data, err := c.src.loadBlob(ctx, t, id, nil)
	if err != nil {
		return fmt.Errorf("source: %w", err)
	}
	// loadBlob verified data against id.
	if err := c.w.saver.saveVerified(t, id, data); err != nil {
		return err
	}
	c.queued.Add(int64(len(data)))
	c.bytes.Add(int64(len(data)))
	return nil
}
