package repository

import (
	"context"
	"time"

	"github.com/custos-backup/custos/repository/format"
)

// repacker writes blobs that are already sealed with this repository's key
// (prune's rewrite, heal) into new packs, unchanged, through the same pack
// builder as the blob saver and with the same limit: a pack, header
// included, stays within pack_size unless one blob alone is larger. Every
// pack is durable when add or finish returns; none is indexed: the caller
// writes the index files (after checking its lock), then removes what they
// supersede.
type repacker struct {
	r     *Repository
	ctx   context.Context
	cur   *packBuilder
	packs []format.IndexPack
	bytes int64 // sealed blob bytes added
}

func (r *Repository) newRepacker(ctx context.Context) *repacker {
	return &repacker{r: r, ctx: ctx}
}

// add appends one sealed blob described by pb (its offset is ignored).
func (rp *repacker) add(pb format.PackedBlob, sealed []byte) error {
	if rp.cur != nil && !rp.cur.fits(rp.r.seal, len(sealed), rp.r.cfg.PackSize) {
		if err := rp.flush(); err != nil {
			return err
		}
	}
	if rp.cur == nil {
		p, err := rp.r.startPack(rp.ctx)
		if err != nil {
			return err
		}
		rp.cur = p
	}
	rp.bytes += int64(len(sealed))
	return rp.cur.add(pb.Type, pb.ID, pb.Flags, int(pb.RawLength), sealed)
}

func (rp *repacker) flush() error {
	p := rp.cur
	if p == nil {
		return nil
	}
	rp.cur = nil
	defer p.close()
	if len(p.blobs) == 0 {
		return nil
	}
	id, err := p.finish(rp.r.seal, time.Now())
	if err != nil {
		return err
	}
	if err := p.save(rp.ctx, rp.r.be, id); err != nil {
		return err
	}
	rp.packs = append(rp.packs, format.IndexPack{ID: id, Size: p.size, Blobs: p.blobs})
	return nil
}

// finish writes the last pack and returns every pack written.
func (rp *repacker) finish() ([]format.IndexPack, error) {
	if err := rp.flush(); err != nil {
		return nil, err
	}
	return rp.packs, nil
}

// close removes an unfinished pack (after an error).
func (rp *repacker) close() {
	if rp.cur != nil {
		rp.cur.close()
		rp.cur = nil
	}
}
