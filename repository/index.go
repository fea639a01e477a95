package repository

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sort"
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
	flags     uint8
}

// index is the in-memory map from blob handle (type, id) to its location.
// It holds one location per blob (the first seen); check/prune read the
// index files themselves when they need every copy. Its fields and lock
// belong to its methods: other code asks it through them.
type index struct {
	mu       sync.RWMutex
	blobs    map[BlobHandle]blobLoc
	packs    []ID
	packSize []int64
	packNum  map[ID]uint32
	files    map[ID]struct{} // index files loaded (neither superseded nor damaged)
	// seen holds every index file listed when this index was built or last
	// refreshed, and those written through it: refreshIndex loads only
	// files outside it.
	seen map[ID]struct{}
	// damaged holds the listed index files that could not be loaded, with
	// the reason. Their blobs count as not stored.
	damaged map[ID]error
}

func newIndex() *index {
	return &index{blobs: make(map[BlobHandle]blobLoc), packNum: make(map[ID]uint32), files: make(map[ID]struct{}),
		seen: make(map[ID]struct{}), damaged: make(map[ID]error)}
}

// addPackLocked records the blobs of one pack; x.mu must be held (or x not
// shared yet).
func (x *index) addPackLocked(p indexPack) {
	n, ok := x.packNum[p.ID]
	if !ok {
		n = uint32(len(x.packs))
		x.packs = append(x.packs, p.ID)
		x.packSize = append(x.packSize, p.Size)
		x.packNum[p.ID] = n
	}
	for _, pb := range p.Blobs {
		h := pb.handle()
		if _, dup := x.blobs[h]; dup {
			continue
		}
		x.blobs[h] = blobLoc{pack: n, offset: pb.Offset, length: pb.Length, rawLength: pb.RawLength, flags: pb.Flags}
	}
}

// addFile records the packs of the index file id, written or loaded
// through this index.
func (x *index) addFile(id ID, packs []indexPack) {
	x.mu.Lock()
	defer x.mu.Unlock()
	for _, p := range packs {
		x.addPackLocked(p)
	}
	x.files[id] = struct{}{}
	x.seen[id] = struct{}{}
}

// has reports whether a blob is in the index.
func (x *index) has(h BlobHandle) bool {
	x.mu.RLock()
	_, ok := x.blobs[h]
	x.mu.RUnlock()
	return ok
}

// lookup returns where a blob is: its pack id and entry.
func (x *index) lookup(h BlobHandle) (ID, packedBlob, bool) {
	x.mu.RLock()
	defer x.mu.RUnlock()
	l, ok := x.blobs[h]
	if !ok {
		return ID{}, packedBlob{}, false
	}
	return x.packs[l.pack], packedBlob{Type: h.Type, Flags: l.flags, ID: h.ID, Offset: l.offset, Length: l.length, RawLength: l.rawLength}, true
}

// count returns the number of blobs (distinct handles) and packs known.
func (x *index) count() (blobs, packs int) {
	x.mu.RLock()
	defer x.mu.RUnlock()
	return len(x.blobs), len(x.packs)
}

// blobCount returns the number of blobs (distinct handles) known.
func (x *index) blobCount() int {
	n, _ := x.count()
	return n
}

// packBytes returns the summed size of the packs known.
func (x *index) packBytes() int64 {
	x.mu.RLock()
	defer x.mu.RUnlock()
	var n int64
	for _, s := range x.packSize {
		n += s
	}
	return n
}

// packIDs returns the packs known.
func (x *index) packIDs() []ID {
	x.mu.RLock()
	defer x.mu.RUnlock()
	return slices.Clone(x.packs)
}

// each calls fn for every blob with its pack, under the read lock (fn must
// not call back into x).
func (x *index) each(fn func(h BlobHandle, pack ID)) {
	x.mu.RLock()
	defer x.mu.RUnlock()
	for h, l := range x.blobs {
		fn(h, x.packs[l.pack])
	}
}

// damagedFiles returns a copy of the damaged index files with their reasons.
func (x *index) damagedFiles() map[ID]error {
	x.mu.RLock()
	defer x.mu.RUnlock()
	return maps.Clone(x.damaged)
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

// indexDamageError is a load failure caused by an index file's content (it
// does not hash to its name, open or decode), as opposed to failing to read
// it: reading again cannot help, so readers leave the file out instead of
// failing, while a read error may pass and stays an error.
type indexDamageError struct {
	h   backend.Handle
	err error
}

func (e *indexDamageError) Error() string { return fmt.Sprintf("index %s: %v", e.h, e.err) }
func (e *indexDamageError) Unwrap() error { return e.err }

// isIndexDamage reports whether err says that an index file's content is
// damaged.
func isIndexDamage(err error) bool {
	var d *indexDamageError
	return errors.As(err, &d)
}

// loadIndexFile loads and verifies one index file (name = SHA-256 of its bytes).
func (r *Repository) loadIndexFile(ctx context.Context, id ID) (*indexFile, error) {
	r.indexLoads.Add(1)
	h := backend.Handle{Type: backend.IndexFile, Name: id.String()}
	b, err := loadSmall(ctx, r.be, h, maxIndexFileSize)
	if err != nil {
		return nil, err
	}
	if hashID(b) != id {
		return nil, &indexDamageError{h, errors.New("content does not match its name")}
	}
	f, err := r.openIndexFile(b)
	if err != nil {
		return nil, &indexDamageError{h, err}
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
	var superseded map[ID]bool
	if !all {
		superseded = supersededFiles(ids, files)
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

// supersededFiles returns the files among ids that a loaded file (files[i]
// not nil) supersedes; FORMAT.md §7 leaves them out of the index. A file
// that could not be loaded supersedes nothing, since what it lists is
// unknown.
func supersededFiles(ids []ID, files []*indexFile) map[ID]bool {
	present := make(map[ID]bool, len(ids))
	for i, id := range ids {
		if files[i] != nil {
			present[id] = true
		}
	}
	superseded := make(map[ID]bool)
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

// buildIndex builds a new in-memory index from every index file. A file
// that fails to load with an error tolerate accepts is recorded in the
// index's damaged set instead of failing the build; a nil tolerate accepts
// none.
func (r *Repository) buildIndex(ctx context.Context, tolerate func(error) bool) (*index, error) {
	ids, err := r.listIDs(ctx, backend.IndexFile, func(name string) {
		r.log.Warn("ignoring index object with an invalid name", "name", name)
	})
	if err != nil {
		return nil, err
	}
	fatal := func(gctx context.Context, err error) bool {
		return tolerate == nil || gctx.Err() != nil || !tolerate(err)
	}
	files, errs, err := loadAll(ctx, ids, 8, r.loadIndexFile, fatal)
	if err != nil {
		return nil, err
	}
	x := newIndex() // not shared yet: its fields are set directly
	for i, id := range ids {
		x.seen[id] = struct{}{}
		if errs[i] != nil {
			x.damaged[id] = errs[i]
		}
	}
	var stored map[ID]bool
	if len(x.damaged) > 0 {
		// A damaged file may be the one a prune wrote to supersede all
		// others before it deleted packs (a prune that stopped before
		// deleting the old files leaves both). The old files then list
		// packs that are gone, and a backup must not deduplicate against
		// them: use only packs that exist. The packs are listed after the
		// index files, so every pack those files list is durable already.
		if stored, err = r.storedPackSet(ctx); err != nil {
			return nil, err
		}
	}
	superseded := supersededFiles(ids, files)
	for i, f := range files {
		if f == nil || superseded[ids[i]] {
			continue
		}
		for _, p := range f.Packs {
			if stored == nil || stored[p.ID] {
				x.addPackLocked(p) // x is not shared yet
			}
		}
		x.files[ids[i]] = struct{}{}
	}
	return x, nil
}

// storedPackSet lists the packs in data/.
func (r *Repository) storedPackSet(ctx context.Context) (map[ID]bool, error) {
	ids, err := r.listIDs(ctx, backend.PackFile, nil)
	if err != nil {
		return nil, err
	}
	set := make(map[ID]bool, len(ids))
	for _, id := range ids {
		set[id] = true
	}
	return set, nil
}

func (r *Repository) setIndex(x *index) {
	r.idxMu.Lock()
	r.idx = x
	r.idxMu.Unlock()
}

// loadIndex rebuilds the in-memory index from every index file and fails
// if any of them cannot be loaded: prune, which deletes what the index does
// not list, must see all of them.
func (r *Repository) loadIndex(ctx context.Context) error {
	r.refreshMu.Lock()
	defer r.refreshMu.Unlock()
	x, err := r.buildIndex(ctx, nil)
	if err != nil {
		return err
	}
	r.setIndex(x)
	return nil
}

// loadIndexSkipDamaged rebuilds the in-memory index for reading and
// backing up: a damaged index file is left out (a backup then stores its
// blobs again, and check names it), while failing to read one is an error,
// since that may pass.
func (r *Repository) loadIndexSkipDamaged(ctx context.Context) error {
	r.refreshMu.Lock()
	defer r.refreshMu.Unlock()
	x, err := r.buildIndex(ctx, isIndexDamage)
	if err != nil {
		return err
	}
	r.logDamaged(x, nil)
	r.setIndex(x)
	return nil
}

// logDamaged logs the damaged index files of x (not shared yet) that old
// did not know.
func (r *Repository) logDamaged(x, old *index) {
	var known map[ID]error
	if old != nil {
		known = old.damagedFiles()
	}
	for id, err := range x.damagedFiles() {
		if _, ok := known[id]; ok {
			continue
		}
		r.log.Warn("index file cannot be used; blobs listed only there count as not stored (run check)",
			"file", backend.Handle{Type: backend.IndexFile, Name: id.String()}.Path(), "err", err)
	}
}

// refreshIndex brings the in-memory index up to date with index/: another
// process may have added index files (new backups) or replaced them
// (prune). A long-lived Repository would otherwise dedup against blobs
// whose packs prune has since deleted.
//
// While every file the index loaded is still listed, only the files it has
// not seen are loaded and added. Adding is safe then: prune deletes packs
// only after writing a file that supersedes the ones listing them, and
// deletes those files last, so a pack still listed by a present,
// unsuperseded file exists. A new file that supersedes a loaded one, a
// loaded file that disappeared, or a new file that is damaged (it may be
// such a superseder) makes it rebuild the index from every file instead.
// Damaged files are left out either way.
//
// Writers call it after taking their lock, with strict set: then failing
// to read an index file is an error. Readers pass strict false: such a
// failure keeps the current index, and the next call tries again; reads
// through a location in a deleted pack fail loudly, so a stale view costs
// readers nothing silent.
func (r *Repository) refreshIndex(ctx context.Context, strict bool) error {
	r.refreshMu.Lock()
	defer r.refreshMu.Unlock()
	ids, err := r.listIDs(ctx, backend.IndexFile, nil)
	if err != nil {
		return err
	}
	x := r.index()
	added, gone := x.compare(ids)
	if !gone {
		if len(added) == 0 {
			return nil
		}
		rebuild, err := r.addIndexFiles(ctx, x, added)
		if err != nil {
			if strict {
				return err
			}
			r.log.Warn("index files changed but cannot be loaded; using the index loaded before", "err", err)
			return nil
		}
		if !rebuild {
			return nil
		}
	}
	nx, err := r.buildIndex(ctx, isIndexDamage)
	if err != nil {
		if strict {
			return err
		}
		// x is left as it was (it still lists the vanished files it
		// loaded, or lacks the new ones), so the next call, and every
		// writer's, sees the change and tries again.
		r.log.Warn("index files changed but cannot be reloaded; using the index loaded before", "err", err)
		return nil
	}
	r.logDamaged(nx, x)
	r.setIndex(nx)
	return nil
}

// compare matches the listed index files against x: added are those x has
// not seen, gone reports that a file x loaded is no longer listed. Seen
// files that were not loaded (superseded or damaged) and are no longer
// listed are forgotten, so that a damaged file someone removed stops being
// reported.
func (x *index) compare(ids []ID) (added []ID, gone bool) {
	listed := make(map[ID]struct{}, len(ids))
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

// addIndexFiles loads the index files added (not seen by x yet) and adds
// their packs to x. It adds nothing and returns rebuild true when x must be
// rebuilt from every file instead: a new file is damaged, or supersedes a
// file x has loaded. A file that cannot be read is an error.
func (r *Repository) addIndexFiles(ctx context.Context, x *index, added []ID) (rebuild bool, err error) {
	files, errs, err := loadAll(ctx, added, 8, r.loadIndexFile, cancelled)
	if err != nil {
		return false, err
	}
	for _, err := range errs {
		if err != nil && !isIndexDamage(err) {
			return false, err
		}
	}
	for _, err := range errs {
		if err != nil {
			return true, nil
		}
	}
	return x.addFiles(added, files), nil
}

// addFiles adds the packs of index files loaded by refreshIndex (ids
// not seen before, files loaded in the same order). It adds nothing and
// returns rebuild true when one of them supersedes a file x has loaded.
func (x *index) addFiles(ids []ID, files []*indexFile) (rebuild bool) {
	// Files added together may supersede one another (when x had loaded
	// none of the files a prune replaced): leave those out as a rebuild
	// would.
	superseded := supersededFiles(ids, files)
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

// indexDamageWarnings returns one warning per index file the in-memory
// index left out as damaged, for a backup to record in its snapshot: blobs
// listed only there count as not stored, so the backup stored them again.
func (r *Repository) indexDamageWarnings() []string {
	damaged := r.index().damagedFiles()
	out := make([]string, 0, len(damaged))
	for id, err := range damaged {
		reason := err
		var d *indexDamageError
		if errors.As(err, &d) {
			reason = d.err
		}
		out = append(out, fmt.Sprintf("damaged index file %s left out (%v): blobs listed only there count as not stored, and this backup stored again those it needed; run check",
			backend.Handle{Type: backend.IndexFile, Name: id.String()}.Path(), reason))
	}
	sort.Strings(out)
	return out
}

// index returns the current in-memory index.
func (r *Repository) index() *index {
	r.idxMu.RLock()
	defer r.idxMu.RUnlock()
	return r.idx
}
