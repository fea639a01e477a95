package repository

import (
	"context"
	"crypto/sha256"
	"fmt"
	"math"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/custos-backup/custos/repository/format"
	"golang.org/x/sync/errgroup"
	"golang.org/x/sync/semaphore"
)

// blobSaver is the write half of a repository: it deduplicates blobs against
// the index and against blobs already queued in this session, compresses and
// seals new ones in parallel, packs them, and uploads packs concurrently.
// Nothing it writes is reachable until flush has returned and the caller has
// written index files for the packs (commitPacks).
//
// Memory is bounded: blob buffers come from a pool and their bytes between
// save and the packers are limited by inflight. Packs go straight into the
// repository when the backend can stage objects (local directories), else
// they are assembled in memory (or, for pack sizes above
// maxInMemoryPackSize, in unlinked temp files). packTokens holds one token
// per pack that may exist at a time (one per packer and one per uploader).
type blobSaver struct {
	r      *Repository
	ctx    context.Context
	g      *errgroup.Group
	toSeal chan *plainBlob
	toPack chan *sealedBlob
	toSave chan *finishedPack
	bufs   *bufPool

	// packTokens holds the free pack buffers of in-memory packs (nil until
	// first used; always nil in the other modes). A packer takes one to
	// start a pack, the uploader returns it after the upload.
	packTokens  chan []byte
	packMode    packMode
	stager      packStager
	packersLeft atomic.Int32

	mu        sync.Mutex
	pending   map[BlobHandle]struct{} // queued in this session, not yet in the index
	packs     []format.IndexPack      // uploaded in this session, not yet committed
	packBlobs int                     // blobs in packs

	// commit, when set, makes uploaded packs reachable while the saver
	// runs: once they hold commitEvery blobs, they get an index file (the
	// write session's commitPacks, which checks the lock first), enter
	// the in-memory index, and leave pending and packs. Without it, a
	// backup of a million small files held every new blob twice (pending
	// and the pack entries) until its end: 130 MiB of its 350.
	commit      func([]format.IndexPack) error
	commitEvery int
	commitMu    sync.Mutex

	// inflight bounds the bytes of blob buffers between the callers of save
	// and the packer. Bounding bytes rather than items lets thousands of
	// small files flow through deep channels without a goroutine hand-off
	// per blob, while large chunks still cannot pile up.
	inflight *semaphore.Weighted

	bytesAdded atomic.Int64
	blobsAdded atomic.Int64

	sealWG sync.WaitGroup
	packWG sync.WaitGroup
	saveWG sync.WaitGroup
	closed bool
}

type plainBlob struct {
	t    BlobType
	id   ID
	full []byte // from newBuf: headroom, then the plaintext
	n    int    // plaintext length
	w    int64  // weight held in blobSaver.inflight
}

type sealedBlob struct {
	t      BlobType
	id     ID
	flags  uint8
	rawLen int
	sealed []byte // inside buf
	buf    []byte // pooled; the packer returns it after copying sealed
	w      int64  // weight held in blobSaver.inflight
}

// newBlobSaver starts the pipeline goroutines in g. The caller must call
// flush (on success) or cancel ctx and wait for g (on failure).
func (r *Repository) newBlobSaver(ctx context.Context, g *errgroup.Group, bufs *bufPool) *blobSaver {
	n := runtime.GOMAXPROCS(0)
	mode, stager := r.packMode()
	// Staged and temp-file packs cost no memory while they wait, so there
	// can be more of them; in memory, one uploader writes while the other
	// waits for fsync (or the network). Staged packs are written by the
	// packers themselves, so there is one per core.
	packers, uploaders := 1, 4
	switch mode {
	case packStaged:
		packers = n
	case packInMemory:
		// On remote storage more uploads in flight hide the round trips,
		// at a pack buffer each.
		uploaders = min(4, r.readers(2))
	}
	s := &blobSaver{
		r:          r,
		ctx:        ctx,
		g:          g,
		toSeal:     make(chan *plainBlob, 256),
		toPack:     make(chan *sealedBlob, 256),
		inflight:   semaphore.NewWeighted(inflightBytes),
		toSave:     make(chan *finishedPack),
		bufs:       bufs,
		pending:    make(map[BlobHandle]struct{}),
		packTokens: make(chan []byte, packers+uploaders),
		packMode:   mode,
		stager:     stager,
	}
	for range cap(s.packTokens) {
		s.packTokens <- nil
	}
	s.sealWG.Add(n)
	for range n {
		g.Go(func() error { defer s.sealWG.Done(); return s.sealLoop() })
	}
	s.packWG.Add(packers)
	s.packersLeft.Store(int32(packers))
	for range packers {
		g.Go(func() error {
			defer s.packWG.Done()
			defer func() {
				if s.packersLeft.Add(-1) == 0 {
					close(s.toSave)
				}
			}()
			return s.packLoop()
		})
	}
	s.saveWG.Add(uploaders)
	for range uploaders {
		g.Go(func() error { defer s.saveWG.Done(); return s.saveLoop() })
	}
	return s
}

// reserve reports whether the blob h is neither stored nor queued, and
// queues it if so. A blob of the other type with the same id does not
// count: it is a different blob.
func (s *blobSaver) reserve(h BlobHandle) bool {
	if s.r.index().Has(h) {
		return false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.pending[h]; ok {
		return false
	}
	s.pending[h] = struct{}{}
	return true
}

// newBuf returns a pooled buffer for a blob of n bytes: full is what save
// takes, data (len n) is where the plaintext goes. The buffer has room for
// sealing in place (nonce in front, tag behind), so stored blobs are never
// copied between reading and packing.
func (s *blobSaver) newBuf(n int) (full, data []byte) {
	h := s.r.seal.Headroom()
	full = s.bufs.get(h + n + format.TagSize)
	return full, full[h : h+n]
}

// save queues a blob whose id is already computed. full must come from
// newBuf with the plaintext's n bytes in place; save takes ownership.
// It reports whether the blob was new.
func (s *blobSaver) save(t BlobType, id ID, full []byte, n int) (bool, error) {
	if !s.reserve(BlobHandle{Type: t, ID: id}) {
		s.bufs.put(full)
		return false, nil
	}
	w := min(int64(cap(full)), inflightBytes)
	if err := s.inflight.Acquire(s.ctx, w); err != nil {
		s.bufs.put(full)
		return false, context.Cause(s.ctx)
	}
	select {
	case s.toSeal <- &plainBlob{t: t, id: id, full: full, n: n, w: w}:
		return true, nil
	case <-s.ctx.Done():
		s.bufs.put(full)
		return false, context.Cause(s.ctx)
	}
}

// saveCopy is save for data the caller keeps.
func (s *blobSaver) saveCopy(t BlobType, data []byte) (ID, error) {
	id := ID(sha256.Sum256(data))
	return id, s.saveVerified(t, id, data)
}

// saveVerified is saveCopy for data just verified to hash to id (a blob
// read from a repository), which is not hashed a second time.
func (s *blobSaver) saveVerified(t BlobType, id ID, data []byte) error {
	if s.r.index().Has(BlobHandle{Type: t, ID: id}) {
		return nil
	}
	full, b := s.newBuf(len(data))
	copy(b, data)
	_, err := s.save(t, id, full, len(data))
	return err
}

// packMode says where a backup assembles its packs.
type packMode int

const (
	packStaged   packMode = iota // in a file the backend staged in the repository
	packInMemory                 // in memory, then backend.Save
	packTempFile                 // in an unlinked temp file, then backend.Save
)

func (r *Repository) packMode() (packMode, packStager) {
	if st, ok := r.be.(packStager); ok && !r.packsInMemory {
		return packStaged, st
	}
	if r.packsInMemory || r.cfg.PackSize <= maxInMemoryPackSize {
		return packInMemory, nil
	}
	return packTempFile, nil
}

// maxInMemoryPackSize is the largest pack size (config pack_size) whose
// packs a backup assembles in memory when the backend cannot stage them.
// Memory keeps every pack byte from being written and read twice (temp
// file, then backend); the limit keeps repositories with huge packs from
// needing gigabytes of RAM.
const maxInMemoryPackSize = 32 << 20

// inflightBytes is the budget of blob buffers queued between save and the
// packer.
const inflightBytes = 8 << 20

func (s *blobSaver) sealLoop() error {
	enc := s.r.getEncoder()
	defer s.r.putEncoder(enc)
	compress := s.r.cfg.Compression == format.CompressionZstd
	head := s.r.seal.Headroom()
	for pb := range s.toSeal {
		n := pb.n
		data := pb.full[head : head+n]
		out, buf := pb.full[:head+n], pb.full // sealed in place unless compression helps
		var flags uint8
		if compress && compressible(data) {
			scratch := s.bufs.get(head + n + format.TagSize)
			// Output that would not fit is useless (the blob would not
			// shrink); EncodeAll then reallocates and the result is dropped.
			c := enc.EncodeAll(data, scratch[:head])
			if len(c)-head < n && cap(c)-len(c) >= format.TagSize && &c[:1][0] == &scratch[:1][0] {
				out, buf, flags = c, scratch, format.FlagZstd
				s.bufs.put(pb.full)
			} else {
				s.bufs.put(scratch)
			}
		}
		sealed := s.r.seal.SealInPlace(out)
		select {
		case s.toPack <- &sealedBlob{t: pb.t, id: pb.id, flags: flags, rawLen: n, sealed: sealed, buf: buf, w: pb.w}:
		case <-s.ctx.Done():
			return context.Cause(s.ctx)
		}
	}
	return nil
}

// compressible guesses cheaply whether zstd can shrink b, so that random
// (already compressed or encrypted) data does not pay for a compression
// attempt: it estimates the byte entropy of a few sampled 4 KiB windows.
// Random data sits near 8 bits per byte in every window.
func compressible(b []byte) bool {
	if len(b) < 512 {
		return true
	}
	const win = 4096
	// Small blobs are mostly whole small files, which are rarely mixed:
	// sampling their start and end is enough, and cheaper than four
	// windows that would cover half of a 32 KiB file.
	samples := 4
	switch {
	case len(b) < 4*win:
		samples = 1
	case len(b) < 64*win:
		samples = 2
	}
	step := (len(b) - min(len(b), win)) / max(1, samples-1)
	for i := range samples {
		off := i * step
		w := b[off:min(len(b), off+win)]
		var hist [256]uint16
		for _, c := range w {
			hist[c]++
		}
		if entropyBelow(hist[:], len(w), 7.2) {
			return true
		}
	}
	return false
}

type finishedPack struct {
	id ID
	p  *packBuilder
	// token: the pack holds one of packTokens, which its upload returns.
	token bool
	trees bool // a pack of trees
}

// packLoop packs sealed blobs. Trees go into packs of their own, as
// restic's do: readers of trees (restore, check, copy, prune) then find a
// level of a snapshot's directories in a few nearby ranges of one pack,
// instead of one small range in each of many data packs, which costs a
// request each. A tree pack takes no pack token: it is small, and a packer
// holding two tokens could wait for a token that only packers hold.
func (s *blobSaver) packLoop() error {
	var cur, trees *packBuilder
	defer func() {
		for _, p := range []*packBuilder{cur, trees} {
			if p != nil {
				p.close()
			}
		}
	}()
	limit := s.r.cfg.PackSize
	flush := func(pp **packBuilder, token bool) error {
		p := *pp
		if p == nil || len(p.blobs) == 0 {
			return nil
		}
		id, err := p.finish(s.r.seal, time.Now())
		if err != nil {
			return err
		}
		select {
		case s.toSave <- &finishedPack{id: id, p: p, token: token, trees: pp == &trees}:
			*pp = nil
			return nil
		case <-s.ctx.Done():
			return context.Cause(s.ctx)
		}
	}
	for sb := range s.toPack {
		pp, token := &cur, true
		if sb.t == TreeBlob {
			pp, token = &trees, false
		}
		// The whole pack, header included, stays within pack_size (unless a
		// single blob is larger), so an in-memory pack never outgrows its
		// buffer.
		if *pp != nil && !(*pp).fits(s.r.seal, len(sb.sealed), limit) {
			if err := flush(pp, token); err != nil {
				return err
			}
		}
		if *pp == nil {
			p, err := s.startPack(token, limit)
			if err != nil {
				return err
			}
			*pp = p
		}
		err := (*pp).add(sb.t, sb.id, sb.flags, sb.rawLen, sb.sealed)
		s.bufs.put(sb.buf)
		s.inflight.Release(sb.w)
		if err != nil {
			return err
		}
	}
	if err := flush(&cur, true); err != nil {
		return err
	}
	return flush(&trees, false)
}

// startPack starts a pack in the saver's pack mode; with token, an
// in-memory pack waits for a pack token and fills its buffer, while
// without one it grows as it fills.
func (s *blobSaver) startPack(token bool, limit int64) (*packBuilder, error) {
	var buf []byte
	if token {
		select {
		case buf = <-s.packTokens:
		case <-s.ctx.Done():
			return nil, context.Cause(s.ctx)
		}
	}
	switch s.packMode {
	case packStaged:
		p, err := newStagedPackBuilder(s.ctx, s.stager)
		if err != nil {
			return nil, fmt.Errorf("start a pack: %w", err)
		}
		return p, nil
	case packInMemory:
		if !token {
			return newPackBuilder(true), nil
		}
		if buf == nil {
			buf = make([]byte, 0, limit)
		}
		return newPackBuilderBuf(buf), nil
	default:
		return newPackBuilder(false), nil
	}
}

func (s *blobSaver) saveLoop() error {
	for fp := range s.toSave {
		err := s.savePack(fp)
		fp.p.close()
		if err != nil {
			return err
		}
		if fp.token {
			// Never blocks: there are as many slots as tokens.
			s.packTokens <- fp.p.buf[:0]
		}
		fp.p.buf = nil
	}
	return nil
}

func (s *blobSaver) savePack(fp *finishedPack) error {
	p := fp.p
	ctx := s.ctx
	if fp.trees {
		// Read again by every walk of a snapshot: a cache keeps it.
		ctx = savingTreePack(ctx)
	}
	if err := p.save(ctx, s.r.be, fp.id); err != nil {
		return err
	}
	ip := format.IndexPack{ID: fp.id, Size: p.size, Blobs: p.blobs}
	s.mu.Lock()
	s.packs = append(s.packs, ip)
	s.packBlobs += len(ip.Blobs)
	var batch []format.IndexPack
	if s.commit != nil && s.packBlobs >= s.commitEvery {
		batch, s.packs, s.packBlobs = s.packs, nil, 0
	}
	s.mu.Unlock()
	s.bytesAdded.Add(p.size)
	s.blobsAdded.Add(int64(len(p.blobs)))
	if batch != nil {
		return s.commitBatch(batch)
	}
	return nil
}

// commitEvery is how many blobs of uploaded packs a backup holds before it
// writes an index file for them (a quarter of an index file's limit).
const commitEvery = format.MaxBlobsPerIndex / 4

// commitBatch commits durable packs while the saver runs, then forgets
// their blobs from pending: the index answers for them from now on.
func (s *blobSaver) commitBatch(batch []format.IndexPack) error {
	s.commitMu.Lock()
	defer s.commitMu.Unlock()
	if err := s.commit(batch); err != nil {
		return err
	}
	done := make(map[BlobHandle]struct{})
	for i := range batch {
		for j := range batch[i].Blobs {
			done[batch[i].Blobs[j].Handle()] = struct{}{}
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	// A new map: Go's maps never give back the room of deleted entries.
	left := make(map[BlobHandle]struct{}, max(len(s.pending)-len(done), 0))
	for h := range s.pending {
		if _, ok := done[h]; !ok {
			left[h] = struct{}{}
		}
	}
	s.pending = left
	return nil
}

// added returns the packed bytes and the blobs written so far.
func (s *blobSaver) added() (bytes, blobs int64) {
	return s.bytesAdded.Load(), s.blobsAdded.Load()
}

// flush closes the pipeline and waits until every queued blob is in a
// durable pack. It returns the packs written in this session that were not
// committed on the way (see commit).
func (s *blobSaver) flush() ([]format.IndexPack, error) {
	if !s.closed {
		s.closed = true
		close(s.toSeal)
	}
	s.sealWG.Wait()
	close(s.toPack)
	s.packWG.Wait()
	s.saveWG.Wait()
	if err := s.ctx.Err(); err != nil {
		return nil, context.Cause(s.ctx)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.packs, nil
}

// commitPacks writes index files for packs (durable already) and adds them
// to the in-memory index. Only after this are the blobs reachable.
func (r *Repository) commitPacks(ctx context.Context, packs []format.IndexPack) error {
	for len(packs) > 0 {
		f := &format.IndexFile{}
		n := 0
		for len(packs) > 0 && (n == 0 || n+len(packs[0].Blobs) <= format.MaxBlobsPerIndex) {
			n += len(packs[0].Blobs)
			f.Packs = append(f.Packs, packs[0])
			packs = packs[1:]
		}
		id, err := r.saveIndexFile(ctx, f)
		if err != nil {
			return err
		}
		r.index().AddFile(id, f.Packs)
	}
	return nil
}

// entropyBelow reports whether the byte histogram of n samples has a
// Shannon entropy below limit bits per byte. It uses n·log2(n) − Σ c·log2(c)
// with a table of c·log2(c), since this runs for every blob.
func entropyBelow(hist []uint16, n int, limit float64) bool {
	if n > len(clog2c)-1 {
		return true
	}
	var sum float64
	for _, c := range hist {
		sum += clog2c[c]
	}
	h := (clog2c[n] - sum) / float64(n)
	return h < limit
}

// clog2c[c] = c·log2(c), for the sample sizes compressible uses.
var clog2c = func() [4097]float64 {
	var t [4097]float64
	for c := 1; c < len(t); c++ {
		t[c] = float64(c) * math.Log2(float64(c))
	}
	return t
}()
