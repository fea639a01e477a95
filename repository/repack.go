package repository

import (
	"context"
	"time"

	"github.com/custos-backup/custos/repository/format"
)

// repacker writes blobs that are already sealed with this repository's key
// (prune's rewrite, heal) into new packs, unchanged, through the same pack
// builder as the blob saver and with the same limit: a pack, header
// included, stays within pack_size unless one blob alone is larger. Trees
// go into packs of their own, as the blob saver puts them, so that walks
// of a snapshot still read a level of folders from a few nearby ranges
// after a prune, and a cache (backend.CachePacks) still keeps those packs.
// Every pack is durable when add or finish returns; none is indexed: the
// caller writes the index files (after checking its lock), then removes
// what they supersede.
type repacker struct {
	r     *Repository
	ctx   context.Context
	data  *packBuilder
	trees *packBuilder
	packs []format.IndexPack
	bytes int64 // sealed blob bytes added
}

func (r *Repository) newRepacker(ctx context.Context) *repacker {
	return &repacker{r: r, ctx: ctx}
}

// add appends one sealed blob described by pb (its offset is ignored).
func (rp *repacker) add(pb format.PackedBlob, sealed []byte) error {
	cur := &rp.data
	if pb.Type == format.TreeBlob {
		cur = &rp.trees
	}
	if *cur != nil && !(*cur).fits(rp.r.seal, len(sealed), rp.r.cfg.PackSize) {
		if err := rp.flush(cur); err != nil {
			return err
		}
	}
	if *cur == nil {
		p, err := rp.r.startPack(rp.ctx)
		if err != nil {
			return err
		}
		*cur = p
	}
	rp.bytes += int64(len(sealed))
	return (*cur).add(pb.Type, pb.ID, pb.Flags, int(pb.RawLength), sealed)
}

// flush writes the pack *cur, if it holds anything, and starts none.
func (rp *repacker) flush(cur **packBuilder) error {
	p := *cur
	if p == nil {
		return nil
	}
	*cur = nil
	defer p.close()
	if len(p.blobs) == 0 {
		return nil
	}
	id, err := p.finish(rp.r.seal, time.Now())
	if err != nil {
		return err
	}
	ctx := rp.ctx
	if cur == &rp.trees {
		ctx = savingTreePack(ctx)
	}
	if err := p.save(ctx, rp.r.be, id); err != nil {
		return err
	}
	rp.packs = append(rp.packs, format.IndexPack{ID: id, Size: p.size, Blobs: p.blobs})
	return nil
}

// finish writes the last packs and returns every pack written.
func (rp *repacker) finish() ([]format.IndexPack, error) {
	if err := rp.flush(&rp.data); err != nil {
		return nil, err
	}
	if err := rp.flush(&rp.trees); err != nil {
		return nil, err
	}
	return rp.packs, nil
}

// close removes unfinished packs (after an error).
func (rp *repacker) close() {
	for _, cur := range []**packBuilder{&rp.data, &rp.trees} {
		if *cur != nil {
			(*cur).close()
			*cur = nil
		}
	}
}
