// Package index is the in-memory index of a repository: where each blob,
// known by its (type, id) handle, is stored, and which index files that
// knowledge came from.
//
// It holds one location per blob (the first seen). An Index is safe for
// concurrent use; its map and lock are reached only through its methods.
// It does no I/O: the repository loads index files and hands them in
// (Build, AddFile, AddFiles), and asks Compare which files a fresh listing
// adds or removes.
package index

import (
	"maps"
	"slices"
	"sync"

	"github.com/custos-backup/custos/repository/format"
)

// blobLoc is where the index says a blob is.
type blobLoc struct {
	pack      uint32 // index into Index.packs
	offset    uint32
	length    uint32
	rawLength uint32
	flags     uint8
}

// Index is the in-memory map from blob handle (type, id) to its location.
// It holds one location per blob (the first seen); check/prune read the
// index files themselves when they need every copy. Its fields and lock
// belong to its methods: other code asks it through them.
type Index struct {
	mu       sync.RWMutex
	blobs    map[format.BlobHandle]blobLoc
	packs    []format.ID
	packSize []int64
	mixed    []bool // the pack holds a blob that is not a tree
	packNum  map[format.ID]uint32
	files    map[format.ID]struct{} // index files loaded (neither superseded nor damaged)
	// seen holds every index file listed when this index was built or last
	// refreshed, and those written through it: refreshIndex loads only
	// files outside it.
	seen map[format.ID]struct{}
	// damaged holds the listed index files that could not be loaded, with
	// the reason. Their blobs count as not stored.
	damaged map[format.ID]error
}

// New returns an empty index.
func New() *Index {
	return &Index{blobs: make(map[format.BlobHandle]blobLoc), packNum: make(map[format.ID]uint32), files: make(map[format.ID]struct{}),
		seen: make(map[format.ID]struct{}), damaged: make(map[format.ID]error)}
}

// addPackLocked records the blobs of one pack; x.mu must be held (or x not
// shared yet).
func (x *Index) addPackLocked(p format.IndexPack) {
	n, ok := x.packNum[p.ID]
	if !ok {
		n = uint32(len(x.packs))
		x.packs = append(x.packs, p.ID)
		x.packSize = append(x.packSize, p.Size)
		x.mixed = append(x.mixed, false)
		x.packNum[p.ID] = n
	}
	for _, pb := range p.Blobs {
		if pb.Type != format.TreeBlob {
			x.mixed[n] = true
		}
		h := pb.Handle()
		if _, dup := x.blobs[h]; dup {
			continue
		}
		x.blobs[h] = blobLoc{pack: n, offset: pb.Offset, length: pb.Length, rawLength: pb.RawLength, flags: pb.Flags}
	}
}

// AddFile records the packs of the index file id, written or loaded
// through this index.
func (x *Index) AddFile(id format.ID, packs []format.IndexPack) {
	x.mu.Lock()
	defer x.mu.Unlock()
	for _, p := range packs {
		x.addPackLocked(p)
	}
	x.files[id] = struct{}{}
	x.seen[id] = struct{}{}
}

// Has reports whether a blob is in the index.
func (x *Index) Has(h format.BlobHandle) bool {
	x.mu.RLock()
	_, ok := x.blobs[h]
	x.mu.RUnlock()
	return ok
}

// Lookup returns where a blob is: its pack id and entry.
func (x *Index) Lookup(h format.BlobHandle) (format.ID, format.PackedBlob, bool) {
	x.mu.RLock()
	defer x.mu.RUnlock()
	l, ok := x.blobs[h]
	if !ok {
		return format.ID{}, format.PackedBlob{}, false
	}
	return x.packs[l.pack], format.PackedBlob{Type: h.Type, Flags: l.flags, ID: h.ID, Offset: l.offset, Length: l.length, RawLength: l.rawLength}, true
}

// Count returns the number of blobs (distinct handles) and packs known.
func (x *Index) Count() (blobs, packs int) {
	x.mu.RLock()
	defer x.mu.RUnlock()
	return len(x.blobs), len(x.packs)
}

// BlobCount returns the number of blobs (distinct handles) known.
func (x *Index) BlobCount() int {
	n, _ := x.Count()
	return n
}

// PackBytes returns the summed size of the packs known.
func (x *Index) PackBytes() int64 {
	x.mu.RLock()
	defer x.mu.RUnlock()
	var n int64
	for _, s := range x.packSize {
		n += s
	}
	return n
}

// PackIDs returns the packs known.
func (x *Index) PackIDs() []format.ID {
	x.mu.RLock()
	defer x.mu.RUnlock()
	return slices.Clone(x.packs)
}

// TreesOnly reports whether the index knows the pack id and every blob it
// lists in it is a tree.
func (x *Index) TreesOnly(id format.ID) bool {
	x.mu.RLock()
	defer x.mu.RUnlock()
	n, ok := x.packNum[id]
	return ok && !x.mixed[n]
}

// HasPack reports whether the index knows the pack id.
func (x *Index) HasPack(id format.ID) bool {
	x.mu.RLock()
	defer x.mu.RUnlock()
	_, ok := x.packNum[id]
	return ok
}

// Each calls fn for every blob with its pack, under the read lock (fn must
// not call back into x).
func (x *Index) Each(fn func(h format.BlobHandle, pack format.ID)) {
	x.mu.RLock()
	defer x.mu.RUnlock()
	for h, l := range x.blobs {
		fn(h, x.packs[l.pack])
	}
}

// DamagedFiles returns a copy of the damaged index files with their reasons.
func (x *Index) DamagedFiles() map[format.ID]error {
	x.mu.RLock()
	defer x.mu.RUnlock()
	return maps.Clone(x.damaged)
}

// Compare matches the listed index files against x: added are those x has
// not seen, gone reports that a file x loaded is no longer listed. Seen
// files that were not loaded (superseded or damaged) and are no longer
// listed are forgotten, so that a damaged file someone removed stops being
// reported.
func (x *Index) Compare(ids []format.ID) (added []format.ID, gone bool) {
	listed := make(map[format.ID]struct{}, len(ids))
	x.mu.Lock()
	defer x.mu.Unlock()
	for _, id := range ids {
		listed[id] = struct{}{}
		if _, ok := x.seen[id]; !ok {
			added = append(added, id)
		}
	}
	for id := range x.files {
		if _, ok := listed[id]; !ok {
			gone = true
		}
	}
	for id := range x.seen {
		if _, ok := listed[id]; ok {
			continue
		}
		if _, loaded := x.files[id]; !loaded {
			delete(x.seen, id)
			delete(x.damaged, id)
		}
	}
	return added, gone
}

// AddFiles adds the packs of index files loaded by refreshIndex (ids
// not seen before, files loaded in the same order). It adds nothing and
// returns rebuild true when one of them supersedes a file x has loaded.
func (x *Index) AddFiles(ids []format.ID, files []*format.IndexFile) (rebuild bool) {
	// Files added together may supersede one another (when x had loaded
	// none of the files a prune replaced): leave those out as a rebuild
	// would.
	superseded := Superseded(ids, files)
	x.mu.Lock()
	defer x.mu.Unlock()
	for _, f := range files {
		for _, s := range f.Supersedes {
			if _, loaded := x.files[s]; loaded {
				return true
			}
		}
	}
	for i, f := range files {
		id := ids[i]
		x.seen[id] = struct{}{}
		if superseded[id] {
			continue
		}
		for _, p := range f.Packs {
			x.addPackLocked(p)
		}
		x.files[id] = struct{}{}
	}
	return false
}

// Superseded returns the files among ids that a loaded file (files[i]
// not nil) supersedes; FORMAT.md §7 leaves them out of the index. A file
// that could not be loaded supersedes nothing, since what it lists is
// unknown.
func Superseded(ids []format.ID, files []*format.IndexFile) map[format.ID]bool {
	present := make(map[format.ID]bool, len(ids))
	for i, id := range ids {
		if files[i] != nil {
			present[id] = true
		}
	}
	superseded := make(map[format.ID]bool)
	for _, f := range files {
		if f == nil {
			continue
		}
		for _, s := range f.Supersedes {
			if present[s] {
				superseded[s] = true
			}
		}
	}
	return superseded
}

// Packs returns every pack known with its size.
func (x *Index) Packs() []Pack {
	x.mu.RLock()
	defer x.mu.RUnlock()
	out := make([]Pack, len(x.packs))
	for i, id := range x.packs {
		out[i] = Pack{ID: id, Size: x.packSize[i]}
	}
	return out
}

// Pack is a pack the index knows, with its size as stored.
type Pack struct {
	ID   format.ID
	Size int64
}

// Build returns a new index of the index files ids, loaded as files (nil
// where loading failed, with the reason in errs). A failed file is recorded
// as damaged and its blobs count as not stored; files another loaded file
// supersedes are left out (FORMAT.md §7). When stored is not nil, only
// packs in it are added.
func Build(ids []format.ID, files []*format.IndexFile, errs []error, stored map[format.ID]bool) *Index {
	x := New() // not shared yet: its fields are set directly
	for i, id := range ids {
		x.seen[id] = struct{}{}
		if errs[i] != nil {
			x.damaged[id] = errs[i]
		}
	}
	superseded := Superseded(ids, files)
	for i, f := range files {
		if f == nil || superseded[ids[i]] {
			continue
		}
		for _, p := range f.Packs {
			if stored == nil || stored[p.ID] {
				x.addPackLocked(p)
			}
		}
		x.files[ids[i]] = struct{}{}
	}
	return x
}
