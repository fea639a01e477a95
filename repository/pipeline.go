package repository

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"math"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/custos-backup/custos/repository/backend"
	"golang.org/x/sync/errgroup"
)

// blobSaver is the write half of a repository: it deduplicates blobs against
// the index and against blobs already queued in this session, compresses and
// seals new ones in parallel, packs them, and uploads packs concurrently.
// Nothing it writes is reachable until flush has returned and the caller has
// saved an index file (saveIndex).
//
// Memory is bounded: every stage is connected by a small channel, chunk
// buffers come from a pool, and at most uploaders+1 pack buffers exist.
type blobSaver struct {
	r      *Repository
	ctx    context.Context
	g      *errgroup.Group
	toSeal chan *plainBlob
	toPack chan *sealedBlob
	toSave chan *packBuilder
	free   chan *packBuilder
	bufs   *bufPool

	mu      sync.Mutex
	pending map[ID]struct{} // queued in this session, not yet in the index
	packs   []indexPack     // uploaded in this session

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
	data []byte // from bufs; the saver returns it
}

type sealedBlob struct {
	t      BlobType
	id     ID
	flags  uint8
	rawLen int
	sealed []byte        // owned by the sealer until ack
	ack    chan struct{} // the packer signals when it has copied sealed
}

// newBlobSaver starts the pipeline goroutines in g. The caller must call
// flush (on success) or cancel ctx and wait for g (on failure).
func (r *Repository) newBlobSaver(ctx context.Context, g *errgroup.Group, bufs *bufPool) *blobSaver {
	n := runtime.GOMAXPROCS(0)
	uploaders := 2
	s := &blobSaver{
		r:       r,
		ctx:     ctx,
		g:       g,
		toSeal:  make(chan *plainBlob, n),
		toPack:  make(chan *sealedBlob),
		toSave:  make(chan *packBuilder),
		free:    make(chan *packBuilder, uploaders+1),
		bufs:    bufs,
		pending: make(map[ID]struct{}),
	}
	for range uploaders + 1 {
		s.free <- &packBuilder{}
	}
	s.sealWG.Add(n)
	for range n {
		g.Go(func() error { defer s.sealWG.Done(); return s.sealLoop() })
	}
	s.packWG.Add(1)
	g.Go(func() error { defer s.packWG.Done(); return s.packLoop() })
	s.saveWG.Add(uploaders)
	for range uploaders {
		g.Go(func() error { defer s.saveWG.Done(); return s.saveLoop() })
	}
	return s
}

// known reports whether id is stored or queued, and queues it if not.
func (s *blobSaver) reserve(id ID) bool {
	if s.r.index().has(id) {
		return false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.pending[id]; ok {
		return false
	}
	s.pending[id] = struct{}{}
	return true
}

// save queues a blob whose id is already computed. data must come from
// s.bufs; save takes ownership. It reports whether the blob was new.
func (s *blobSaver) save(t BlobType, id ID, data []byte) (bool, error) {
	if !s.reserve(id) {
		s.bufs.put(data)
		return false, nil
	}
	select {
	case s.toSeal <- &plainBlob{t: t, id: id, data: data}:
		return true, nil
	case <-s.ctx.Done():
		s.bufs.put(data)
		return false, context.Cause(s.ctx)
	}
}

// saveCopy is save for data the caller keeps.
func (s *blobSaver) saveCopy(t BlobType, data []byte) (ID, error) {
	id := ID(sha256.Sum256(data))
	if s.r.index().has(id) {
		return id, nil
	}
	b := s.bufs.get(len(data))
	copy(b, data)
	_, err := s.save(t, id, b)
	return id, err
}

func (s *blobSaver) sealLoop() error {
	enc := s.r.getEncoder()
	defer s.r.putEncoder(enc)
	compress := s.r.cfg.Compression == compressionZstd
	head := s.r.seal.headroom()
	// The sealed form goes to a scratch buffer owned by this sealer; the
	// packer copies it into the pack and acknowledges, so sealed blobs
	// never need pooled buffers of their own.
	var scratch []byte
	ack := make(chan struct{})
	for pb := range s.toSeal {
		n := len(pb.data)
		if need := head + n + tagSize; cap(scratch) < need {
			scratch = make([]byte, 0, need+need/8)
		}
		out := scratch[:head]
		var flags uint8
		if compress && compressible(pb.data) {
			// Output that would not fit is useless (the blob would not
			// shrink); EncodeAll then reallocates and the result is dropped.
			c := enc.EncodeAll(pb.data, out)
			if len(c)-head < n && cap(c)-len(c) >= tagSize && &c[:1][0] == &out[:1][0] {
				out, flags = c, flagZstd
			}
		}
		if flags == 0 {
			out = append(out[:head], pb.data...)
		}
		s.bufs.put(pb.data)
		sealed := s.r.seal.sealInPlace(out)
		sb := &sealedBlob{t: pb.t, id: pb.id, flags: flags, rawLen: n, sealed: sealed, ack: ack}
		select {
		case s.toPack <- sb:
		case <-s.ctx.Done():
			return context.Cause(s.ctx)
		}
		select {
		case <-ack:
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
	samples := 4
	if len(b) < samples*win {
		samples = 1
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

func (s *blobSaver) packLoop() error {
	defer close(s.toSave)
	var cur *packBuilder
	limit := int(s.r.cfg.PackSize)
	flush := func() error {
		if cur == nil || len(cur.blobs) == 0 {
			return nil
		}
		cur.finish(s.r.seal, time.Now())
		select {
		case s.toSave <- cur:
			cur = nil
			return nil
		case <-s.ctx.Done():
			return context.Cause(s.ctx)
		}
	}
	for sb := range s.toPack {
		if cur != nil && len(cur.buf) > 0 && len(cur.buf)+len(sb.sealed) > limit {
			if err := flush(); err != nil {
				return err
			}
		}
		if cur == nil {
			select {
			case cur = <-s.free:
			case <-s.ctx.Done():
				return context.Cause(s.ctx)
			}
			if cap(cur.buf) < limit+limit/16 {
				cur.buf = make([]byte, 0, limit+limit/16)
			}
			cur.buf, cur.blobs, cur.raw = cur.buf[:0], cur.blobs[:0], 0
		}
		cur.add(sb.t, sb.id, sb.flags, sb.rawLen, sb.sealed)
		sb.ack <- struct{}{}
	}
	return flush()
}

func (s *blobSaver) saveLoop() error {
	for p := range s.toSave {
		id := ID(sha256.Sum256(p.buf))
		h := backend.Handle{Type: backend.PackFile, Name: id.String()}
		if err := s.r.be.Save(s.ctx, h, bytes.NewReader(p.buf), int64(len(p.buf))); err != nil {
			return fmt.Errorf("save pack %s: %w", h, err)
		}
		ip := indexPack{ID: id, Size: int64(len(p.buf)), Blobs: append([]packedBlob(nil), p.blobs...)}
		s.mu.Lock()
		s.packs = append(s.packs, ip)
		s.mu.Unlock()
		s.bytesAdded.Add(int64(len(p.buf)))
		s.blobsAdded.Add(int64(len(p.blobs)))
		s.free <- p
	}
	return nil
}

// flush closes the pipeline and waits until every queued blob is in a
// durable pack. It returns the packs written in this session.
func (s *blobSaver) flush() ([]indexPack, error) {
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
func (r *Repository) commitPacks(ctx context.Context, packs []indexPack) error {
	for len(packs) > 0 {
		f := &indexFile{}
		n := 0
		for len(packs) > 0 && (n == 0 || n+len(packs[0].Blobs) <= maxBlobsPerIndex) {
			n += len(packs[0].Blobs)
			f.Packs = append(f.Packs, packs[0])
			packs = packs[1:]
		}
		id, err := r.saveIndexFile(ctx, f)
		if err != nil {
			return err
		}
		x := r.index()
		x.mu.Lock()
		for _, p := range f.Packs {
			x.addPackLocked(p)
		}
		x.files[id] = struct{}{}
		x.mu.Unlock()
	}
	return nil
}

// entropyBelow reports whether the byte histogram of n samples has a
// Shannon entropy below limit bits per byte.
func entropyBelow(hist []uint16, n int, limit float64) bool {
	var h float64
	fn := float64(n)
	for _, c := range hist {
		if c != 0 {
			p := float64(c) / fn
			h -= p * math.Log2(p)
		}
	}
	return h < limit
}
