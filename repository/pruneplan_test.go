package repository

import (
	"slices"
	"testing"

	"github.com/custos-backup/custos/repository/format"
)

// TestPlanPrune decides packs from hand-made index entries: what is used,
// where the index finds each blob, and the options; no repository.
func TestPlanPrune(t *testing.T) {
	id := func(b byte) ID { return ID{b} }
	blob := func(t BlobType, b byte, n uint32) format.PackedBlob {
		return format.PackedBlob{Type: t, ID: id(b), Length: n}
	}
	pack := func(b byte, blobs ...format.PackedBlob) format.IndexPack {
		var size int64
		for _, pb := range blobs {
			size += int64(pb.Length)
		}
		return format.IndexPack{ID: id(0x80 + b), Size: size + 100, Blobs: blobs}
	}
	// The index finds each blob in the first pack that lists it.
	canonicalIn := func(packs []format.IndexPack) func(BlobHandle) (ID, bool) {
		at := map[BlobHandle]ID{}
		for _, p := range packs {
			for _, pb := range p.Blobs {
				if _, ok := at[pb.Handle()]; !ok {
					at[pb.Handle()] = p.ID
				}
			}
		}
		return func(h BlobHandle) (ID, bool) { p, ok := at[h]; return p, ok }
	}
	uses := func(hs ...BlobHandle) map[BlobHandle]bool {
		m := map[BlobHandle]bool{}
		for _, h := range hs {
			m[h] = true
		}
		return m
	}
	data := func(b byte) BlobHandle { return format.DataHandle(id(b)) }
	mixed := pack(1, blob(DataBlob, 1, 1000), blob(DataBlob, 2, 3000))
	type want struct {
		keep, del, rewrite []ID
		rewriteBlobs       [][]ID // the blobs copied out of each rewritten pack
		partly             int
		unusedKept         int64
	}
	cases := []struct {
		name  string
		packs []format.IndexPack
		index []format.IndexPack // where canonical finds blobs (default: packs)
		used  map[BlobHandle]bool
		opts  PruneOptions
		want  want
	}{
		{"all used", []format.IndexPack{mixed}, nil, uses(data(1), data(2)), PruneOptions{},
			want{keep: []ID{mixed.ID}}},
		{"none used", []format.IndexPack{mixed}, nil, uses(), PruneOptions{},
			want{del: []ID{mixed.ID}}},
		{"partly used, rewrite all", []format.IndexPack{mixed}, nil, uses(data(1)), PruneOptions{MaxUnused: 0},
			want{rewrite: []ID{mixed.ID}, rewriteBlobs: [][]ID{{id(1)}}}},
		{"partly used, unused allowed", []format.IndexPack{mixed}, nil, uses(data(1)), PruneOptions{MaxUnused: 1},
			want{keep: []ID{mixed.ID}, partly: 1, unusedKept: 3000}},
		{"over the repack budget", []format.IndexPack{mixed}, nil, uses(data(2)), PruneOptions{MaxRepackBytes: 2000},
			want{keep: []ID{mixed.ID}, partly: 1, unusedKept: 1000}},
		{"a duplicate copy is unused where the index does not find it",
			[]format.IndexPack{pack(2, blob(DataBlob, 3, 500)), pack(3, blob(DataBlob, 3, 500))}, nil,
			uses(data(3)), PruneOptions{},
			want{keep: []ID{id(0x82)}, del: []ID{id(0x83)}}},
		{"a tree with a used data blob's id is unused",
			[]format.IndexPack{pack(4, blob(TreeBlob, 5, 500), blob(DataBlob, 6, 500))}, nil,
			uses(data(5), data(6)), PruneOptions{},
			want{rewrite: []ID{id(0x84)}, rewriteBlobs: [][]ID{{id(6)}}}},
		{"a blob the index does not know is unused",
			[]format.IndexPack{pack(5, blob(DataBlob, 7, 500))}, []format.IndexPack{},
			uses(data(7)), PruneOptions{},
			want{del: []ID{id(0x85)}}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			index := tc.index
			if index == nil {
				index = tc.packs
			}
			plan := planPrune(tc.packs, canonicalIn(index), tc.used, tc.opts)
			var keep, del, rw []ID
			var rwBlobs [][]ID
			for _, p := range plan.keep {
				keep = append(keep, p.ID)
			}
			for id := range plan.delete {
				del = append(del, id)
			}
			for _, r := range plan.rewrite {
				rw = append(rw, r.id)
				var ids []ID
				for _, pb := range r.keep {
					ids = append(ids, pb.ID)
				}
				rwBlobs = append(rwBlobs, ids)
			}
			if !slices.Equal(keep, tc.want.keep) || !slices.Equal(del, tc.want.del) || !slices.Equal(rw, tc.want.rewrite) {
				t.Fatalf("keep %v, delete %v, rewrite %v; want %v, %v, %v", keep, del, rw, tc.want.keep, tc.want.del, tc.want.rewrite)
			}
			if !slices.EqualFunc(rwBlobs, tc.want.rewriteBlobs, slices.Equal) {
				t.Errorf("rewritten blobs %v, want %v", rwBlobs, tc.want.rewriteBlobs)
			}
			if plan.keptPartlyUsed != tc.want.partly || plan.unusedKept != tc.want.unusedKept {
				t.Errorf("partly used kept %d (%d unused bytes), want %d (%d)", plan.keptPartlyUsed, plan.unusedKept, tc.want.partly, tc.want.unusedKept)
			}
			for id, size := range plan.delete {
				for _, p := range tc.packs {
					if p.ID == id && p.Size != size {
						t.Errorf("pack %s deleted with size %d, its size is %d", id.Short(), size, p.Size)
					}
				}
			}
		})
	}
}
