package repository

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"slices"

	"github.com/custos-backup/custos/repository/backend"
	"github.com/custos-backup/custos/repository/format"
	"golang.org/x/sync/errgroup"
)

// Ranges of a pack closer than maxRangeGap are loaded with one request
// (skipping a little is cheaper than another round trip), up to
// maxRangeLen bytes per request.
const (
	maxRangeGap = 256 << 10
	maxRangeLen = 32 << 20
)

// readBlob is one blob handed to a packReader callback.
type readBlob struct {
	Index int               // position in the entries passed in
	Entry format.PackedBlob // the entry it was read by
	// Sealed is the blob as stored; set only when the reader keeps sealed
	// bytes (for copying them into another pack unchanged).
	Sealed []byte
	// Plain is the verified plaintext; valid only during the callback.
	Plain []byte
	// Err is set (a *BlobError naming pack and blob) when the blob could
	// not be read or failed verification; Plain is nil then.
	Err error
}

// packReader is the one way blobs are read out of packs: it loads the
// byte ranges that hold them, verifies each (seal, decompression,
// length, SHA-256 against its id: openBlob), and hands the plaintext to a
// callback. It reuses its buffers, so one packReader serves one goroutine.
type packReader struct {
	be     packLoader
	opener blobOpener
	// keepSealed opens each blob on a copy and passes the sealed bytes on.
	keepSealed bool

	sealed, plain, scratch []byte
	// whole holds a pack's tail, or a whole pack, for check.
	whole []byte
}

// packLoader is what the pack reader needs of a backend.
type packLoader interface {
	Load(ctx context.Context, h backend.Handle, length int, offset int64) (io.ReadCloser, error)
}

// blobOpener verifies and decodes one sealed blob (Repository.openBlob).
type blobOpener interface {
	openBlob(pb format.PackedBlob, sealed, dst []byte) ([]byte, error)
}

// packSource is what an operation needs to read packs: pack readers of one
// repository's packs, and how many requests to keep in flight on its
// storage. *Repository is one; a test wraps it to count or to fail reads.
type packSource interface {
	newPackReader(keepSealed bool) *packReader
	readers(local int) int
}

// newPackReader returns a pack reader of r's packs.
func (r *Repository) newPackReader(keepSealed bool) *packReader {
	return &packReader{be: r.be, opener: r, keepSealed: keepSealed}
}

// blobFunc receives each blob; an error it returns stops the read.
type blobFunc func(b readBlob) error

// rangeSplit returns the end (exclusive) of each run of entries, which
// must be sorted by offset, that one request loads.
func rangeSplit(entries []format.PackedBlob) []int {
	var ends []int
	var start, end int64
	for i, pb := range entries {
		s, e := int64(pb.Offset), int64(pb.Offset)+int64(pb.Length)
		if i > 0 && s >= end && s-end <= maxRangeGap && e-start <= maxRangeLen {
			end = e
			continue
		}
		if i > 0 {
			ends = append(ends, i)
		}
		start, end = s, e
	}
	if len(entries) > 0 {
		ends = append(ends, len(entries))
	}
	return ends
}

// read loads the blobs entries of pack from the backend, merging nearby
// ranges into one request each. Entries are visited by offset. A blob that
// cannot be loaded or verified reaches fn with Err set; read returns an
// error only when ctx ends or fn fails.
func (pr *packReader) read(ctx context.Context, pack ID, entries []format.PackedBlob, fn blobFunc) error {
	idx := make([]int, len(entries))
	for i := range idx {
		idx[i] = i
	}
	if !slices.IsSortedFunc(entries, byOffset) {
		slices.SortStableFunc(idx, func(a, b int) int { return byOffset(entries[a], entries[b]) })
		sorted := make([]format.PackedBlob, len(entries))
		for i, j := range idx {
			sorted[i] = entries[j]
		}
		entries = sorted
	}
	from := 0
	for _, to := range rangeSplit(entries) {
		if err := pr.readRange(ctx, pack, entries[from:to], idx[from:to], fn); err != nil {
			return err
		}
		from = to
	}
	return nil
}

// readPackSet reads the given entries of several packs of src: each pack
// with one pr.read, so that its nearby blobs share a request, and up to
// workers packs at a time, so that remote storage is not read one round
// trip after another. fn is called concurrently for different packs, and for the blobs
// of one pack in offset order; like read, readPackSet returns an error only
// when ctx ends or fn fails.
func readPackSet(ctx context.Context, src packSource, packs map[ID][]format.PackedBlob, workers int, fn func(pack ID, b readBlob) error) error {
	ids := make([]ID, 0, len(packs))
	for id := range packs {
		ids = append(ids, id)
	}
	slices.SortFunc(ids, func(a, b ID) int { return cmp.Compare(a.String(), b.String()) })
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(max(1, workers))
	for _, id := range ids {
		g.Go(func() error {
			pr := src.newPackReader(false)
			return pr.read(gctx, id, packs[id], func(b readBlob) error { return fn(id, b) })
		})
	}
	return g.Wait()
}

func byOffset(a, b format.PackedBlob) int { return cmp.Compare(a.Offset, b.Offset) }

// readRange loads entries (sorted, non-overlapping) with one request and
// streams through it, so that memory stays at one blob however long the
// range.
func (pr *packReader) readRange(ctx context.Context, pack ID, entries []format.PackedBlob, idx []int, fn blobFunc) error {
	failFrom := func(from int, err error) error {
		if ctx.Err() != nil {
			return context.Cause(ctx)
		}
		for i := from; i < len(entries); i++ {
			if ferr := fn(readBlob{Index: idx[i], Entry: entries[i], Err: blobError(pack, entries[i], err)}); ferr != nil {
				return ferr
			}
		}
		return nil
	}
	start := int64(entries[0].Offset)
	last := entries[len(entries)-1]
	end := int64(last.Offset) + int64(last.Length)
	h := backend.Handle{Type: backend.PackFile, Name: pack.String()}
	rd, err := pr.be.Load(ctx, h, int(end-start), start)
	if err != nil {
		return failFrom(0, err)
	}
	defer func() { _ = rd.Close() }()
	pos := start
	for i, pb := range entries {
		if err := ctx.Err(); err != nil {
			return context.Cause(ctx)
		}
		if skip := int64(pb.Offset) - pos; skip > 0 {
			if _, err := io.CopyN(io.Discard, rd, skip); err != nil {
				return failFrom(i, fmt.Errorf("load %s at %d: %w", h, pos, shortBody(err)))
			}
		}
		if cap(pr.sealed) < int(pb.Length) {
			pr.sealed = make([]byte, pb.Length)
		}
		sealed := pr.sealed[:pb.Length]
		if _, err := io.ReadFull(rd, sealed); err != nil {
			return failFrom(i, fmt.Errorf("load %s at %d+%d: %w", h, pb.Offset, pb.Length, shortBody(err)))
		}
		pos = int64(pb.Offset) + int64(pb.Length)
		if err := fn(pr.open(pack, idx[i], pb, sealed)); err != nil {
			return err
		}
	}
	return nil
}

// shortBody turns io.EOF, met while reading a body that must hold more,
// into io.ErrUnexpectedEOF: a body that ends between two blobs is as short
// as one that ends inside a blob.
func shortBody(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}

// readBuffer verifies entries of pack from buf, the whole pack already in
// memory. Entries need not be sorted and may overlap (a damaged index):
// then each is opened on a copy, so that one cannot spoil the bytes
// another one is checked against.
func (pr *packReader) readBuffer(pack ID, buf []byte, entries []format.PackedBlob, fn blobFunc) error {
	overlap := entriesOverlap(entries)
	for i, pb := range entries {
		end := int64(pb.Offset) + int64(pb.Length)
		if end > int64(len(buf)) {
			if err := fn(readBlob{Index: i, Entry: pb, Err: blobError(pack, pb, errBeyondEnd)}); err != nil {
				return err
			}
			continue
		}
		sealed := buf[pb.Offset:end:end]
		if overlap && !pr.keepSealed {
			sealed = slices.Clone(sealed)
		}
		if err := fn(pr.open(pack, i, pb, sealed)); err != nil {
			return err
		}
	}
	return nil
}

// errBeyondEnd is the error of an entry that points past its pack's end.
var errBeyondEnd = errors.New("blob lies beyond the end of the pack")

// open verifies one blob. sealed is overwritten unless pr.keepSealed.
func (pr *packReader) open(pack ID, i int, pb format.PackedBlob, sealed []byte) readBlob {
	b := readBlob{Index: i, Entry: pb}
	if pr.keepSealed {
		// openBlob works in place: keep a copy of the stored bytes.
		b.Sealed = slices.Clone(sealed)
		pr.scratch = append(pr.scratch[:0], sealed...)
		sealed = pr.scratch
	}
	pt, err := pr.opener.openBlob(pb, sealed, pr.plain)
	if err != nil {
		b.Err = blobError(pack, pb, err)
		return b
	}
	if pb.Flags&format.FlagZstd != 0 {
		pr.plain = pt[:0]
	}
	b.Plain = pt
	return b
}

func blobError(pack ID, pb format.PackedBlob, err error) error {
	return &BlobError{Blob: pb.ID, Type: pb.Type, Pack: pack, Err: err}
}

// entriesOverlap reports whether the byte ranges of blobs overlap.
func entriesOverlap(blobs []format.PackedBlob) bool {
	sorted := slices.SortedFunc(slices.Values(blobs), byOffset)
	for i := 1; i < len(sorted); i++ {
		if int64(sorted[i-1].Offset)+int64(sorted[i-1].Length) > int64(sorted[i].Offset) {
			return true
		}
	}
	return false
}

// blobCause is what went wrong with a blob, without the names a
// *BlobError adds (for messages that name the pack and blob themselves).
func blobCause(err error) error {
	var be *BlobError
	if errors.As(err, &be) {
		return be.Err
	}
	return err
}
