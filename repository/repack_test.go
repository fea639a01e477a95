package repository

import (
	"bytes"
	"context"
	"testing"

	"github.com/custos-backup/custos/repository/format"
)

// TestRepackPackSizeCountsHeader fills the repacker with blobs whose sealed
// bytes alone add up to exactly pack_size: a limit that left out the
// header and trailer (as prune's own pack writer once did) would put them
// in one pack larger than pack_size. Every blob must also read back
// verified from where the new index entries say it is.
func TestRepackPackSizeCountsHeader(t *testing.T) {
	for _, staged := range []bool{true, false} {
		name := map[bool]string{true: "staged", false: "in-memory"}[staged]
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			r, _ := newTestRepo(t, false)
			r.packsInMemory = !staged
			var (
				plain [][]byte
				total int64
			)
			rp := r.newRepacker(ctx)
			defer rp.close()
			var sealed [][]byte
			for i := range 4 {
				data := randBytes(uint64(100+i), 16<<10)
				plain = append(plain, data)
				s := r.seal.Seal(nil, data)
				sealed = append(sealed, s)
				total += int64(len(s))
			}
			r.cfg.PackSize = total
			for i, data := range plain {
				pb := format.PackedBlob{Type: DataBlob, ID: format.HashID(data), RawLength: uint32(len(data))}
				if err := rp.add(pb, sealed[i]); err != nil {
					t.Fatal(err)
				}
			}
			packs, err := rp.finish()
			if err != nil {
				t.Fatal(err)
			}
			if len(packs) < 2 {
				t.Errorf("%d pack(s) for blobs that fill pack_size without a header, want 2 or more", len(packs))
			}
			found := 0
			for _, p := range packs {
				if p.Size > total {
					t.Errorf("pack %s has %d bytes, pack_size is %d", p.ID.Short(), p.Size, total)
				}
				pr := r.newPackReader(false)
				err := pr.read(ctx, p.ID, p.Blobs, func(b readBlob) error {
					if b.Err != nil {
						t.Errorf("blob %s: %v", b.Entry.ID.Short(), b.Err)
						return nil
					}
					for _, want := range plain {
						if bytes.Equal(b.Plain, want) {
							found++
						}
					}
					return nil
				})
				if err != nil {
					t.Fatal(err)
				}
			}
			if found != len(plain) {
				t.Errorf("read back %d of %d blobs", found, len(plain))
			}
		})
	}
}
