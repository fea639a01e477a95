package format

import (
	"encoding/binary"
	"fmt"
	"time"
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
	FlagZstd uint8 = 1 // the sealed plaintext is a zstd frame
)

const (
	packHeaderVersion  = 1
	packHeaderFixed    = 1 + 8 + 4        // version, created (unix seconds), count
	packEntrySize      = 1 + 1 + 4*3 + 32 // type, flags, offset, length, raw length, id
	PackTrailerSize    = 4                // little-endian uint32: sealed header length
	MaxBlobSize        = 64 << 20         // larger plaintexts are rejected on decode
	maxPackHeaderBytes = 16 << 20
	// MaxPackHeaderBytes is the longest sealed header a pack may have: a
	// reader that keeps this much of a pack's end (plus the trailer) holds
	// its header.
	MaxPackHeaderBytes = maxPackHeaderBytes
)

// PackedBlob is one entry of a pack header: where a sealed blob sits in its
// pack and how to turn it back into plaintext.
type PackedBlob struct {
	Type      BlobType
	Flags     uint8
	ID        ID     // SHA-256 of the plaintext
	Offset    uint32 // of the sealed blob in the pack
	Length    uint32 // sealed length
	RawLength uint32 // plaintext length
}

// Handle returns the blob's identity.
func (pb *PackedBlob) Handle() BlobHandle { return BlobHandle{Type: pb.Type, ID: pb.ID} }

// PackHeader is the decoded header of a pack.
type PackHeader struct {
	Created time.Time
	Blobs   []PackedBlob
}

func EncodePackHeader(created time.Time, blobs []PackedBlob) []byte {
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

// DecodePackHeader parses the plaintext of a pack header and checks that the
// blobs it lists tile [0, dataEnd) exactly, in order, without gaps. overhead
// is the sealing overhead of one blob.
func decodePackHeader(b []byte, dataEnd int64, overhead int) (*PackHeader, error) {
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
	h := &PackHeader{Created: time.Unix(created, 0).UTC(), Blobs: make([]PackedBlob, count)}
	var end int64
	p := b[packHeaderFixed:]
	for i := range h.Blobs {
		e := p[i*packEntrySize : (i+1)*packEntrySize]
		pb := PackedBlob{
			Type:      BlobType(e[0]),
			Flags:     e[1],
			Offset:    binary.LittleEndian.Uint32(e[2:]),
			Length:    binary.LittleEndian.Uint32(e[6:]),
			RawLength: binary.LittleEndian.Uint32(e[10:]),
		}
		copy(pb.ID[:], e[14:])
		if err := pb.Check(overhead); err != nil {
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

// Check validates one entry on its own (also used for index entries).
func (pb *PackedBlob) Check(overhead int) error {
	if pb.Type != DataBlob && pb.Type != TreeBlob {
		return fmt.Errorf("blob %s: unknown type %d", pb.ID.Short(), pb.Type)
	}
	if pb.Flags&^FlagZstd != 0 {
		return fmt.Errorf("blob %s: unknown flags %#x", pb.ID.Short(), pb.Flags)
	}
	if int64(pb.Length) < int64(overhead) || pb.RawLength > MaxBlobSize || pb.Length > MaxBlobSize+1024 {
		return fmt.Errorf("blob %s: implausible length %d (raw %d)", pb.ID.Short(), pb.Length, pb.RawLength)
	}
	if pb.Flags&FlagZstd == 0 && int64(pb.RawLength) != int64(pb.Length)-int64(overhead) {
		return fmt.Errorf("blob %s: uncompressed blob with raw length %d and sealed length %d", pb.ID.Short(), pb.RawLength, pb.Length)
	}
	return nil
}

// ParsePackTail parses the sealed header and trailer found at the end of a
// pack of packSize bytes; tail holds the last len(tail) bytes of the pack.
// It returns errNeedMore with the number of tail bytes needed when tail is
// too short.
func ParsePackTail(s *Sealer, tail []byte, packSize int64) (*PackHeader, error) {
	if packSize < PackTrailerSize || int64(len(tail)) < PackTrailerSize || int64(len(tail)) > packSize {
		return nil, fmt.Errorf("pack of %d bytes is too small for a trailer", packSize)
	}
	hl := int64(binary.LittleEndian.Uint32(tail[len(tail)-PackTrailerSize:]))
	if hl < int64(s.Overhead()+packHeaderFixed) || hl > maxPackHeaderBytes || hl+PackTrailerSize > packSize {
		return nil, fmt.Errorf("pack header length %d is implausible for a pack of %d bytes", hl, packSize)
	}
	if int64(len(tail)) < hl+PackTrailerSize {
		return nil, &NeedMoreError{N: hl + PackTrailerSize}
	}
	sealed := tail[int64(len(tail))-PackTrailerSize-hl : len(tail)-PackTrailerSize]
	pt, err := s.Open(nil, sealed)
	if err != nil {
		return nil, fmt.Errorf("pack header: %w", err)
	}
	return decodePackHeader(pt, packSize-PackTrailerSize-hl, s.Overhead())
}

type NeedMoreError struct{ N int64 }

func (e *NeedMoreError) Error() string { return fmt.Sprintf("need the last %d bytes of the pack", e.N) }

// PackOverhead is how many bytes a pack of n blobs has besides the blobs:
// sealed header and trailer.
func PackOverhead(s *Sealer, n int) int64 {
	return int64(s.Overhead() + packHeaderFixed + n*packEntrySize + PackTrailerSize)
}
