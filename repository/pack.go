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
	"github.com/custos-backup/custos/repository/format"
)

// readPackHeader loads and verifies the header of a pack of packSize bytes
// (size as stored; use backend Stat or the index to learn it). It needs the
// key; it reads only the end of the pack.
func (r *Repository) readPackHeader(ctx context.Context, pack ID, packSize int64) (*format.PackHeader, error) {
	h := backend.Handle{Type: backend.PackFile, Name: pack.String()}
	n := min(packSize, 64<<10)
	for range 2 {
		tail, err := loadRange(ctx, r.be, h, packSize-n, int(n))
		if err != nil {
			return nil, err
		}
		ph, err := format.ParsePackTail(r.seal, tail, packSize)
		var more *format.NeedMoreError
		if errors.As(err, &more) {
			n = more.N
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
	blobs []format.PackedBlob
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

// startPack starts a pack where the blob saver would (packMode), for
// writers that fill one pack at a time.
func (r *Repository) startPack(ctx context.Context) (*packBuilder, error) {
	mode, st := r.packMode()
	switch mode {
	case packStaged:
		p, err := newStagedPackBuilder(ctx, st)
		if err != nil {
			return nil, fmt.Errorf("start a pack: %w", err)
		}
		return p, nil
	case packInMemory:
		return newPackBuilder(true), nil
	default:
		return newPackBuilder(false), nil
	}
}

// fits reports whether a blob of sealedLen bytes can join the pack without
// the whole pack, header and trailer included, growing beyond limit. An
// empty pack takes any blob, so that a blob larger than limit gets a pack
// of its own.
func (p *packBuilder) fits(s *format.Sealer, sealedLen int, limit int64) bool {
	return len(p.blobs) == 0 || p.size+int64(sealedLen)+format.PackOverhead(s, len(p.blobs)+1) <= limit
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
	p.blobs = append(p.blobs, format.PackedBlob{Type: t, Flags: flags, ID: id, Offset: uint32(p.size), Length: uint32(len(sealed)), RawLength: uint32(rawLen)})
	p.raw += int64(rawLen)
	if err := p.write(sealed); err != nil {
		return fmt.Errorf("write pack temp file: %w", err)
	}
	return nil
}

// finish appends the sealed header and the trailer and returns the pack id.
func (p *packBuilder) finish(s *format.Sealer, created time.Time) (ID, error) {
	sealed := s.Seal(nil, format.EncodePackHeader(created, p.blobs))
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
