package repository

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"time"

	"github.com/custos-backup/custos/repository/backend"
)

// BlobType says what a blob holds.
type BlobType uint8

// Blob types as stored in pack headers and index files.
const (
	DataBlob BlobType = 1 // file content
	TreeBlob BlobType = 2 // an encoded tree (directory listing)
)

func (t BlobType) String() string {
	switch t {
	case DataBlob:
		return "data"
	case TreeBlob:
		return "tree"
	}
	return fmt.Sprintf("blobtype(%d)", uint8(t))
}

// Blob flags in pack headers and index files.
const (
	flagZstd uint8 = 1 // the sealed plaintext is a zstd frame
)

const (
	packHeaderVersion  = 1
	packHeaderFixed    = 1 + 8 + 4        // version, created (unix seconds), count
	packEntrySize      = 1 + 1 + 4*3 + 32 // type, flags, offset, length, raw length, id
	packTrailerSize    = 4                // little-endian uint32: sealed header length
	maxBlobSize        = 64 << 20         // larger plaintexts are rejected on decode
	maxPackHeaderBytes = 16 << 20
)

// packedBlob is one entry of a pack header: where a sealed blob sits in its
// pack and how to turn it back into plaintext.
type packedBlob struct {
	Type      BlobType
	Flags     uint8
	ID        ID     // SHA-256 of the plaintext
	Offset    uint32 // of the sealed blob in the pack
	Length    uint32 // sealed length
	RawLength uint32 // plaintext length
}

// handle returns the blob's identity.
func (pb *packedBlob) handle() BlobHandle { return BlobHandle{Type: pb.Type, ID: pb.ID} }

// packHeader is the decoded header of a pack.
type packHeader struct {
	Created time.Time
	Blobs   []packedBlob
}

func encodePackHeader(created time.Time, blobs []packedBlob) []byte {
	b := make([]byte, packHeaderFixed, packHeaderFixed+len(blobs)*packEntrySize)
	b[0] = packHeaderVersion
	binary.LittleEndian.PutUint64(b[1:], uint64(created.Unix()))
	binary.LittleEndian.PutUint32(b[9:], uint32(len(blobs)))
	for _, pb := range blobs {
		b = append(b, byte(pb.Type), pb.Flags)
		b = binary.LittleEndian.AppendUint32(b, pb.Offset)
		b = binary.LittleEndian.AppendUint32(b, pb.Length)
		b = binary.LittleEndian.AppendUint32(b, pb.RawLength)
		b = append(b, pb.ID[:]...)
	}
	return b
}

// decodePackHeader parses the plaintext of a pack header and checks that the
// blobs it lists tile [0, dataEnd) exactly, in order, without gaps. overhead
// is the sealing overhead of one blob.
func decodePackHeader(b []byte, dataEnd int64, overhead int) (*packHeader, error) {
	if len(b) < packHeaderFixed {
		return nil, fmt.Errorf("pack header of %d bytes is too short", len(b))
	}
	if b[0] != packHeaderVersion {
		return nil, fmt.Errorf("unsupported pack header version %d", b[0])
	}
	created := int64(binary.LittleEndian.Uint64(b[1:]))
	count := binary.LittleEndian.Uint32(b[9:])
	if uint64(len(b)-packHeaderFixed) != uint64(count)*packEntrySize {
		return nil, fmt.Errorf("pack header lists %d blobs but has %d bytes", count, len(b))
	}
	h := &packHeader{Created: time.Unix(created, 0).UTC(), Blobs: make([]packedBlob, count)}
	var end int64
	p := b[packHeaderFixed:]
	for i := range h.Blobs {
		e := p[i*packEntrySize : (i+1)*packEntrySize]
		pb := packedBlob{
			Type:      BlobType(e[0]),
			Flags:     e[1],
			Offset:    binary.LittleEndian.Uint32(e[2:]),
			Length:    binary.LittleEndian.Uint32(e[6:]),
			RawLength: binary.LittleEndian.Uint32(e[10:]),
		}
		copy(pb.ID[:], e[14:])
		if err := pb.check(overhead); err != nil {
			return nil, fmt.Errorf("pack header entry %d: %w", i, err)
		}
		if int64(pb.Offset) != end {
			return nil, fmt.Errorf("pack header entry %d: offset %d, want %d", i, pb.Offset, end)
		}
		end += int64(pb.Length)
		h.Blobs[i] = pb
	}
	if end != dataEnd {
		return nil, fmt.Errorf("pack header covers %d bytes of blobs, pack has %d", end, dataEnd)
	}
	return h, nil
}

// check validates one entry on its own (also used for index entries).
func (pb *packedBlob) check(overhead int) error {
	if pb.Type != DataBlob && pb.Type != TreeBlob {
		return fmt.Errorf("blob %s: unknown type %d", pb.ID.Short(), pb.Type)
	}
	if pb.Flags&^flagZstd != 0 {
		return fmt.Errorf("blob %s: unknown flags %#x", pb.ID.Short(), pb.Flags)
	}
	if int64(pb.Length) < int64(overhead) || pb.RawLength > maxBlobSize || pb.Length > maxBlobSize+1024 {
		return fmt.Errorf("blob %s: implausible length %d (raw %d)", pb.ID.Short(), pb.Length, pb.RawLength)
	}
	if pb.Flags&flagZstd == 0 && int64(pb.RawLength) != int64(pb.Length)-int64(overhead) {
		return fmt.Errorf("blob %s: uncompressed blob with raw length %d and sealed length %d", pb.ID.Short(), pb.RawLength, pb.Length)
	}
	return nil
}

// parsePackTail parses the sealed header and trailer found at the end of a
// pack of packSize bytes; tail holds the last len(tail) bytes of the pack.
// It returns errNeedMore with the number of tail bytes needed when tail is
// too short.
func (r *Repository) parsePackTail(tail []byte, packSize int64) (*packHeader, error) {
	if packSize < packTrailerSize || int64(len(tail)) < packTrailerSize || int64(len(tail)) > packSize {
		return nil, fmt.Errorf("pack of %d bytes is too small for a trailer", packSize)
	}
	hl := int64(binary.LittleEndian.Uint32(tail[len(tail)-packTrailerSize:]))
	if hl < int64(r.seal.overhead()+packHeaderFixed) || hl > maxPackHeaderBytes || hl+packTrailerSize > packSize {
		return nil, fmt.Errorf("pack header length %d is implausible for a pack of %d bytes", hl, packSize)
	}
	if int64(len(tail)) < hl+packTrailerSize {
		return nil, &needMoreError{n: hl + packTrailerSize}
	}
	sealed := tail[int64(len(tail))-packTrailerSize-hl : len(tail)-packTrailerSize]
	pt, err := r.seal.open(nil, sealed)
	if err != nil {
		return nil, fmt.Errorf("pack header: %w", err)
	}
	return decodePackHeader(pt, packSize-packTrailerSize-hl, r.seal.overhead())
}

type needMoreError struct{ n int64 }

func (e *needMoreError) Error() string { return fmt.Sprintf("need the last %d bytes of the pack", e.n) }

// readPackHeader loads and verifies the header of a pack of packSize bytes
// (size as stored; use backend Stat or the index to learn it). It needs the
// key; it reads only the end of the pack.
func (r *Repository) readPackHeader(ctx context.Context, pack ID, packSize int64) (*packHeader, error) {
	h := backend.Handle{Type: backend.PackFile, Name: pack.String()}
	n := min(packSize, 64<<10)
	for range 2 {
		tail, err := loadRange(ctx, r.be, h, packSize-n, int(n))
		if err != nil {
			return nil, err
		}
		ph, err := r.parsePackTail(tail, packSize)
		var more *needMoreError
		if errors.As(err, &more) {
			n = more.n
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("pack %s: %w", h, err)
		}
		return ph, nil
	}
	return nil, fmt.Errorf("pack %s: header did not fit", h)
}

// loadRange reads exactly length bytes of h at offset.
func loadRange(ctx context.Context, be backend.Backend, h backend.Handle, offset int64, length int) ([]byte, error) {
	if length <= 0 {
		return nil, fmt.Errorf("load %s: empty range", h)
	}
	rd, err := be.Load(ctx, h, length, offset)
	if err != nil {
		return nil, err
	}
	defer func() { _ = rd.Close() }()
	buf := make([]byte, length)
	if _, err := io.ReadFull(rd, buf); err != nil {
		return nil, fmt.Errorf("load %s at %d+%d: %w", h, offset, length, err)
	}
	return buf, nil
}

// packBuilder assembles one pack, hashing it as it goes, so that every pack
// byte is hashed exactly once, right after it was copied (while it is still
// in the CPU cache). The bytes go to one of:
//
//   - a file the backend staged in the repository itself (commit != nil):
//     the pack is written once and renamed into place by commit;
//   - buf (the zero value; backups to other backends with pack sizes up to
//     maxInMemoryPackSize), then handed to backend.Save;
//   - an unlinked temp file (f != nil, commit == nil) for larger pack
//     sizes, so that packs waiting for upload do not occupy memory.
type packBuilder struct {
	f     *os.File    // temp-file packs
	w     flushWriter // where the bytes go unless in buf
	buf   []byte
	size  int64
	hash  hash.Hash
	blobs []packedBlob
	raw   int64 // plaintext bytes

	commit func(context.Context, backend.Handle) error // staged: rename into place
	abort  func()                                      // staged: remove the temp file
}

// packStager is a backend that can write an object into the repository
// before its name is known (local.Backend): see newStagedPackBuilder.
type packStager interface {
	Stage(ctx context.Context, t backend.FileType) (w io.Writer, commit func(context.Context, backend.Handle) error, abort func(), err error)
}

// flushWriter is a buffered writer: bufio.Writer, or a staged object that
// buffers itself.
type flushWriter interface {
	io.Writer
	Flush() error
}

// newStagedPackBuilder starts a pack in an object staged by the backend.
func newStagedPackBuilder(ctx context.Context, st packStager) (*packBuilder, error) {
	w, commit, abort, err := st.Stage(ctx, backend.PackFile)
	if err != nil {
		return nil, err
	}
	fw, ok := w.(flushWriter)
	if !ok {
		fw = bufio.NewWriterSize(w, stagedWriteBuffer)
	}
	return &packBuilder{hash: sha256.New(), w: fw, commit: commit, abort: abort}, nil
}

// stagedWriteBuffer batches the writes of small blobs into a staged pack
// whose writer does not buffer by itself.
const stagedWriteBuffer = 256 << 10

// newPackBuilder starts a pack backed by a temp file in os.TempDir(), or in
// memory when inMemory is set or no temp file can be made. The zero value
// is an in-memory builder too.
func newPackBuilder(inMemory bool) *packBuilder {
	p := &packBuilder{hash: sha256.New()}
	if !inMemory {
		if f, err := os.CreateTemp("", "custos-pack-"); err == nil {
			// Unlinked at once: a crash leaves nothing behind.
			_ = os.Remove(f.Name())
			p.f = f
			p.w = bufio.NewWriterSize(f, 64<<10)
		}
	}
	return p
}

// newPackBuilderBuf starts an in-memory pack that reuses buf's array (the
// caller sizes it for a whole pack, so that filling it never reallocates).
func newPackBuilderBuf(buf []byte) *packBuilder {
	return &packBuilder{hash: sha256.New(), buf: buf[:0]}
}

// packOverhead is how many bytes a pack of n blobs has besides the blobs:
// sealed header and trailer.
func packOverhead(s *sealer, n int) int64 {
	return int64(s.overhead() + packHeaderFixed + n*packEntrySize + packTrailerSize)
}

func (p *packBuilder) write(b []byte) error {
	if p.hash == nil {
		p.hash = sha256.New() // zero value: an in-memory builder
	}
	p.hash.Write(b)
	p.size += int64(len(b))
	if p.w == nil {
		p.buf = append(p.buf, b...)
		return nil
	}
	_, err := p.w.Write(b)
	return err
}

func (p *packBuilder) add(t BlobType, id ID, flags uint8, rawLen int, sealed []byte) error {
	p.blobs = append(p.blobs, packedBlob{Type: t, Flags: flags, ID: id, Offset: uint32(p.size), Length: uint32(len(sealed)), RawLength: uint32(rawLen)})
	p.raw += int64(rawLen)
	if err := p.write(sealed); err != nil {
		return fmt.Errorf("write pack temp file: %w", err)
	}
	return nil
}

// finish appends the sealed header and the trailer and returns the pack id.
func (p *packBuilder) finish(s *sealer, created time.Time) (ID, error) {
	sealed := s.seal(nil, encodePackHeader(created, p.blobs))
	err := p.write(sealed)
	if err == nil {
		err = p.write(binary.LittleEndian.AppendUint32(nil, uint32(len(sealed))))
	}
	if err == nil && p.w != nil {
		err = p.w.Flush()
	}
	if err != nil {
		return ID{}, fmt.Errorf("write pack temp file: %w", err)
	}
	return ID(p.hash.Sum(nil)), nil
}

// reader returns the finished pack's bytes from the start.
func (p *packBuilder) reader() (io.ReadSeeker, error) {
	if p.f == nil {
		return bytes.NewReader(p.buf), nil
	}
	if _, err := p.f.Seek(0, io.SeekStart); err != nil {
		return nil, err
	}
	return p.f, nil
}

// save stores the finished pack under the name id: a staged pack is
// committed (synced and renamed into place), any other is uploaded with
// backend.Save. Either way it is durable when save returns.
func (p *packBuilder) save(ctx context.Context, be backend.Backend, id ID) error {
	h := backend.Handle{Type: backend.PackFile, Name: id.String()}
	if p.commit != nil {
		err := p.commit(ctx, h)
		p.w, p.commit, p.abort = nil, nil, nil // closed (and on error removed) by commit
		if err != nil {
			return fmt.Errorf("save pack %s: %w", h, err)
		}
		return nil
	}
	rd, err := p.reader()
	if err == nil {
		err = be.Save(ctx, h, rd, p.size)
	}
	if err != nil {
		return fmt.Errorf("save pack %s: %w", h, err)
	}
	return nil
}

// close releases the temp file; an uncommitted staged pack is removed.
func (p *packBuilder) close() {
	if p.abort != nil {
		p.abort()
		p.w, p.commit, p.abort = nil, nil, nil
	}
	if p.f != nil {
		_ = p.f.Close()
		p.f = nil
	}
}
