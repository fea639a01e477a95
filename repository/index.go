package repository

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"

	"github.com/custos-backup/custos/repository/backend"
	"github.com/klauspost/compress/zstd"
	"golang.org/x/sync/errgroup"
)

const (
	indexVersion       = 1
	indexPlain         = 0
	indexZstd          = 1
	maxIndexPlainBytes = 64 << 20
	maxBlobsPerIndex   = 200000 // a new index file is started after this many blobs
)

// indexFile is the decoded content of one object in index/.
type indexFile struct {
	// Supersedes lists index files whose content this one fully replaces
	// (written by prune). Readers ignore a superseded index file when its
	// superseder is present.
	Supersedes []ID
	Packs      []indexPack
}

// indexPack lists the blobs of one pack.
type indexPack struct {
	ID    ID
	Size  int64 // bytes of the whole pack as stored
	Blobs []packedBlob
}

func encodeIndexFile(f *indexFile) []byte {
	b := []byte{indexVersion}
	b = binary.AppendUvarint(b, uint64(len(f.Supersedes)))
	for _, id := range f.Supersedes {
		b = append(b, id[:]...)
	}
	b = binary.AppendUvarint(b, uint64(len(f.Packs)))
	for _, p := range f.Packs {
		b = append(b, p.ID[:]...)
		b = binary.AppendUvarint(b, uint64(p.Size))
		b = binary.AppendUvarint(b, uint64(len(p.Blobs)))
		for _, pb := range p.Blobs {
			b = append(b, byte(pb.Type), pb.Flags)
			b = binary.AppendUvarint(b, uint64(pb.Offset))
			b = binary.AppendUvarint(b, uint64(pb.Length))
			b = binary.AppendUvarint(b, uint64(pb.RawLength))
			b = append(b, pb.ID[:]...)
		}
	}
	return b
}

type byteReader struct {
	b   []byte
	err error
}

func (r *byteReader) uvarint(max uint64) uint64 {
	if r.err != nil {
		return 0
	}
	v, n := binary.Uvarint(r.b)
	if n <= 0 {
		r.err = errors.New("truncated or overlong varint")
		return 0
	}
	if v > max {
		r.err = fmt.Errorf("value %d exceeds %d", v, max)
		return 0
	}
	r.b = r.b[n:]
	return v
}

func (r *byteReader) bytes(n int) []byte {
	if r.err != nil {
		return nil
	}
	if len(r.b) < n {
		r.err = errors.New("truncated")
		return nil
	}
	v := r.b[:n]
	r.b = r.b[n:]
	return v
}

func (r *byteReader) id() (id ID) {
	copy(id[:], r.bytes(len(id)))
	return id
}

// decodeIndexFile parses the plaintext of an index file. overhead is the
// sealing overhead of a blob, for checking entries.
func decodeIndexFile(b []byte, overhead int) (*indexFile, error) {
	r := &byteReader{b: b}
	if v := r.bytes(1); r.err == nil && v[0] != indexVersion {
		return nil, fmt.Errorf("decode index: unsupported version %d", v[0])
	}
	f := &indexFile{}
	ns := r.uvarint(uint64(len(r.b) / 32))
	for range ns {
		f.Supersedes = append(f.Supersedes, r.id())
	}
	np := r.uvarint(uint64(len(r.b) / 34))
	if r.err == nil {
		f.Packs = make([]indexPack, 0, np)
	}
	for range np {
		if r.err != nil {
			break
		}
		p := indexPack{ID: r.id()}
		p.Size = int64(r.uvarint(1 << 40))
		nb := r.uvarint(uint64(len(r.b) / 37))
		if r.err == nil {
			p.Blobs = make([]packedBlob, 0, nb)
		}
		var end int64
		for range nb {
			if r.err != nil {
				break
			}
			tf := r.bytes(2)
			if r.err != nil {
				break
			}
			pb := packedBlob{Type: BlobType(tf[0]), Flags: tf[1]}
			pb.Offset = uint32(r.uvarint(1<<32 - 1))
			pb.Length = uint32(r.uvarint(1<<32 - 1))
			pb.RawLength = uint32(r.uvarint(1<<32 - 1))
			pb.ID = r.id()
			if r.err != nil {
				break
			}
			if err := pb.check(overhead); err != nil {
				return nil, fmt.Errorf("decode index: pack %s: %w", p.ID.Short(), err)
			}
			if int64(pb.Offset)+int64(pb.Length) > p.Size {
				return nil, fmt.Errorf("decode index: pack %s: blob %s lies beyond the pack's %d bytes", p.ID.Short(), pb.ID.Short(), p.Size)
			}
			end = max(end, int64(pb.Offset)+int64(pb.Length))
			p.Blobs = append(p.Blobs, pb)
		}
		f.Packs = append(f.Packs, p)
	}
	if r.err != nil {
		return nil, fmt.Errorf("decode index: %w", r.err)
	}
	if len(r.b) != 0 {
		return nil, fmt.Errorf("decode index: %d trailing bytes", len(r.b))
	}
	return f, nil
}

// blobLoc is where the index says a blob is.
type blobLoc struct {
	pack      uint32 // index into index.packs
	offset    uint32
	length    uint32
	rawLength uint32
	typ       BlobType
	flags     uint8
}

// index is the in-memory map from blob id to its location. It holds one
// location per blob (the first seen); check/prune read the index files
// themselves when they need every copy.
type index struct {
	mu       sync.RWMutex
	blobs    map[ID]blobLoc
	packs    []ID
	packSize []int64
	packNum  map[ID]uint32
	files    map[ID]struct{} // index files loaded
	seen     map[ID]struct{} // every index file listed when this index was built
}

func newIndex() *index {
	return &index{blobs: make(map[ID]blobLoc), packNum: make(map[ID]uint32), files: make(map[ID]struct{})}
}

// addPack records the blobs of one pack.
func (x *index) addPack(p indexPack) {
	x.mu.Lock()
	defer x.mu.Unlock()
	x.addPackLocked(p)
}

func (x *index) addPackLocked(p indexPack) {
	n, ok := x.packNum[p.ID]
	if !ok {
		n = uint32(len(x.packs))
		x.packs = append(x.packs, p.ID)
		x.packSize = append(x.packSize, p.Size)
		x.packNum[p.ID] = n
	}
	for _, pb := range p.Blobs {
		if _, dup := x.blobs[pb.ID]; dup {
			continue
		}
		x.blobs[pb.ID] = blobLoc{pack: n, offset: pb.Offset, length: pb.Length, rawLength: pb.RawLength, typ: pb.Type, flags: pb.Flags}
	}
}

// has reports whether a blob is in the index.
func (x *index) has(id ID) bool {
	x.mu.RLock()
	_, ok := x.blobs[id]
	x.mu.RUnlock()
	return ok
}

// lookup returns where a blob is: its pack id and entry.
func (x *index) lookup(id ID) (ID, packedBlob, bool) {
	x.mu.RLock()
	defer x.mu.RUnlock()
	l, ok := x.blobs[id]
	if !ok {
		return ID{}, packedBlob{}, false
	}
	return x.packs[l.pack], packedBlob{Type: l.typ, Flags: l.flags, ID: id, Offset: l.offset, Length: l.length, RawLength: l.rawLength}, true
}

// count returns the number of blobs and packs known.
func (x *index) count() (blobs, packs int) {
	x.mu.RLock()
	defer x.mu.RUnlock()
	return len(x.blobs), len(x.packs)
}

// sealIndexFile encodes, compresses and seals an index file.
func (r *Repository) sealIndexFile(f *indexFile) []byte {
	plain := encodeIndexFile(f)
	body := make([]byte, 1, 1+len(plain)/2)
	body[0] = indexZstd
	enc := r.getEncoder()
	body = enc.EncodeAll(plain, body)
	r.putEncoder(enc)
	return r.seal.seal(nil, body)
}

// openIndexFile verifies, decrypts and decodes a stored index file.
func (r *Repository) openIndexFile(stored []byte) (*indexFile, error) {
	body, err := r.seal.open(nil, stored)
	if err != nil {
		return nil, err
	}
	if len(body) == 0 {
		return nil, errors.New("empty index file")
	}
	plain := body[1:]
	switch body[0] {
	case indexPlain:
	case indexZstd:
		dec, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxMemory(maxIndexPlainBytes), zstd.WithDecoderMaxWindow(8<<20))
		if err != nil {
			return nil, err
		}
		defer dec.Close()
		plain, err = dec.DecodeAll(body[1:], nil)
		if err != nil {
			return nil, fmt.Errorf("decompress index: %w", err)
		}
	default:
		return nil, fmt.Errorf("unknown index encoding %d", body[0])
	}
	return decodeIndexFile(plain, r.seal.overhead())
}

// saveIndexFile stores f and returns its id.
func (r *Repository) saveIndexFile(ctx context.Context, f *indexFile) (ID, error) {
	stored := r.sealIndexFile(f)
	id := hashID(stored)
	if err := saveBytes(ctx, r.be, backend.Handle{Type: backend.IndexFile, Name: id.String()}, stored); err != nil {
		return ID{}, err
	}
	return id, nil
}

// loadIndexFile loads and verifies one index file (name = SHA-256 of its bytes).
func (r *Repository) loadIndexFile(ctx context.Context, id ID) (*indexFile, error) {
	h := backend.Handle{Type: backend.IndexFile, Name: id.String()}
	b, err := loadSmall(ctx, r.be, h, maxIndexFileSize)
	if err != nil {
		return nil, err
	}
	if hashID(b) != id {
		return nil, fmt.Errorf("index %s: content does not match its name", h)
	}
	f, err := r.openIndexFile(b)
	if err != nil {
		return nil, fmt.Errorf("index %s: %w", h, err)
	}
	return f, nil
}

// loadAll loads the objects named by ids, at most limit at once, and returns
// each result or error at its id's position. An error for which fatal
// returns true stops the others and is returned as the third value.
func loadAll[T any](ctx context.Context, ids []ID, limit int, load func(context.Context, ID) (T, error), fatal func(ctx context.Context, err error) bool) ([]T, []error, error) {
	out := make([]T, len(ids))
	errs := make([]error, len(ids))
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(limit)
	for i, id := range ids {
		g.Go(func() error {
			v, err := load(gctx, id)
			if err != nil && fatal(gctx, err) {
				return err
			}
			out[i], errs[i] = v, err
			return nil
		})
	}
	return out, errs, g.Wait()
}

// anyError is the fatal function of loadAll callers that stop at the first error.
func anyError(context.Context, error) bool { return true }

// listIDs lists the objects of type t whose names are valid ids. Other
// names are reported through bad (may be nil).
func (r *Repository) listIDs(ctx context.Context, t backend.FileType, bad func(name string)) ([]ID, error) {
	var ids []ID
	err := r.be.List(ctx, t, func(fi backend.FileInfo) error {
		id, err := ParseID(fi.Name)
		if err != nil {
			if bad != nil {
				bad(fi.Name)
			}
			return nil
		}
		ids = append(ids, id)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", t, err)
	}
	return ids, nil
}

// forEachIndexFile loads every index file concurrently and calls fn for
// each (serialised). Files superseded by another present file are skipped
// unless all is true.
func (r *Repository) forEachIndexFile(ctx context.Context, all bool, fn func(id ID, f *indexFile) error) error {
	_, err := r.forEachIndexFileIDs(ctx, all, fn)
	return err
}

// forEachIndexFileIDs is forEachIndexFile that also returns every index
// file id it listed.
func (r *Repository) forEachIndexFileIDs(ctx context.Context, all bool, fn func(id ID, f *indexFile) error) ([]ID, error) {
	ids, err := r.listIDs(ctx, backend.IndexFile, func(name string) {
		r.log.Warn("ignoring index object with an invalid name", "name", name)
	})
	if err != nil {
		return nil, err
	}
	files, _, err := loadAll(ctx, ids, 8, r.loadIndexFile, anyError)
	if err != nil {
		return nil, err
	}
	superseded := make(map[ID]bool)
	if !all {
		present := make(map[ID]bool, len(ids))
		for _, id := range ids {
			present[id] = true
		}
		for _, f := range files {
			for _, s := range f.Supersedes {
				if present[s] {
					superseded[s] = true
				}
			}
		}
	}
	for i, id := range ids {
		if superseded[id] {
			continue
		}
		if err := fn(id, files[i]); err != nil {
			return nil, err
		}
	}
	return ids, nil
}

// loadIndex (re)builds the in-memory index from every index file.
func (r *Repository) loadIndex(ctx context.Context) error {
	x := newIndex()
	ids, err := r.forEachIndexFileIDs(ctx, false, func(id ID, f *indexFile) error {
		x.mu.Lock()
		defer x.mu.Unlock()
		for _, p := range f.Packs {
			x.addPackLocked(p)
		}
		x.files[id] = struct{}{}
		return nil
	})
	if err != nil {
		return err
	}
	x.seen = make(map[ID]struct{}, len(ids))
	for _, id := range ids {
		x.seen[id] = struct{}{}
	}
	r.idxMu.Lock()
	r.idx = x
	r.idxMu.Unlock()
	return nil
}

// refreshIndex reloads the in-memory index when the set of index files
// differs from the one it was built from: another process may have added
// index files (new backups) or replaced them (prune). A long-lived
// Repository would otherwise dedup against blobs whose packs prune has
// since deleted. Writers call it after taking their lock, with strict set:
// then a failed reload is an error. Readers pass strict false: a failed
// reload (e.g. a damaged index file in a repository opened with
// OpenTolerant) keeps the current index, and is not retried until the set
// of index files changes again.
func (r *Repository) refreshIndex(ctx context.Context, strict bool) error {
	ids, err := r.listIDs(ctx, backend.IndexFile, nil)
	if err != nil {
		return err
	}
	x := r.index()
	x.mu.RLock()
	same := sameIDs(ids, x.seen) || sameIDs(ids, x.files)
	x.mu.RUnlock()
	if same {
		return nil
	}
	err = r.loadIndex(ctx)
	if err == nil || strict {
		return err
	}
	r.log.Warn("index files changed but cannot be reloaded; using the index loaded before", "err", err)
	x.mu.Lock()
	x.seen = make(map[ID]struct{}, len(ids))
	for _, id := range ids {
		x.seen[id] = struct{}{}
	}
	x.mu.Unlock()
	return nil
}

func sameIDs(ids []ID, set map[ID]struct{}) bool {
	if len(ids) != len(set) {
		return false
	}
	for _, id := range ids {
		if _, ok := set[id]; !ok {
			return false
		}
	}
	return true
}

// index returns the current in-memory index.
func (r *Repository) index() *index {
	r.idxMu.RLock()
	defer r.idxMu.RUnlock()
	return r.idx
}
