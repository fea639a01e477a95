package format

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/klauspost/compress/zstd"
)

const (
	indexVersion       = 1
	indexPlain         = 0
	indexZstd          = 1
	maxIndexPlainBytes = 64 << 20
	MaxBlobsPerIndex   = 200000 // a new index file is started after this many blobs
)

// IndexFile is the decoded content of one object in index/.
type IndexFile struct {
	// Supersedes lists index files whose content this one fully replaces
	// (written by prune). Readers ignore a superseded index file when its
	// superseder is present.
	Supersedes []ID
	Packs      []IndexPack
}

// IndexPack lists the blobs of one pack.
type IndexPack struct {
	ID    ID
	Size  int64 // bytes of the whole pack as stored
	Blobs []PackedBlob
}

func encodeIndexFile(f *IndexFile) []byte {
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

// DecodeIndexFile parses the plaintext of an index file. overhead is the
// sealing overhead of a blob, for checking entries.
func decodeIndexFile(b []byte, overhead int) (*IndexFile, error) {
	r := &byteReader{b: b}
	if v := r.bytes(1); r.err == nil && v[0] != indexVersion {
		return nil, fmt.Errorf("decode index: unsupported version %d", v[0])
	}
	f := &IndexFile{}
	ns := r.uvarint(uint64(len(r.b) / 32))
	for range ns {
		f.Supersedes = append(f.Supersedes, r.id())
	}
	np := r.uvarint(uint64(len(r.b) / 34))
	if r.err == nil {
		f.Packs = make([]IndexPack, 0, np)
	}
	for range np {
		if r.err != nil {
			break
		}
		p := IndexPack{ID: r.id()}
		p.Size = int64(r.uvarint(1 << 40))
		nb := r.uvarint(uint64(len(r.b) / 37))
		if r.err == nil {
			p.Blobs = make([]PackedBlob, 0, nb)
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
			pb := PackedBlob{Type: BlobType(tf[0]), Flags: tf[1]}
			pb.Offset = uint32(r.uvarint(1<<32 - 1))
			pb.Length = uint32(r.uvarint(1<<32 - 1))
			pb.RawLength = uint32(r.uvarint(1<<32 - 1))
			pb.ID = r.id()
			if r.err != nil {
				break
			}
			if err := pb.Check(overhead); err != nil {
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

// SealIndexFile encodes, compresses with enc and seals an index file.
func SealIndexFile(s *Sealer, enc *zstd.Encoder, f *IndexFile) []byte {
	plain := encodeIndexFile(f)
	body := make([]byte, 1, 1+len(plain)/2)
	body[0] = indexZstd
	body = enc.EncodeAll(plain, body)
	return s.Seal(nil, body)
}

// OpenIndexFile verifies, decrypts and decodes a stored index file.
func OpenIndexFile(s *Sealer, stored []byte) (*IndexFile, error) {
	body, err := s.Open(nil, stored)
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
	return decodeIndexFile(plain, s.Overhead())
}
