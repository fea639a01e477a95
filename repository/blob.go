package repository

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"

	"github.com/custos-backup/custos/repository/backend"
	"github.com/custos-backup/custos/repository/format"
)

// BlobError says which object a damaged or missing blob belongs to.
type BlobError struct {
	Blob ID
	Type BlobType // 0 when not known
	Pack ID       // zero when the blob is not in the index
	Err  error
}

func (e *BlobError) Error() string {
	what := "blob " + e.Blob.String()
	if e.Type != 0 {
		what = BlobHandle{Type: e.Type, ID: e.Blob}.String()
	}
	if e.Pack.IsNull() {
		return fmt.Sprintf("%s: %v", what, e.Err)
	}
	return fmt.Sprintf("%s in pack %s: %v", what, backend.Handle{Type: backend.PackFile, Name: e.Pack.String()}, e.Err)
}

func (e *BlobError) Unwrap() error { return e.Err }

// openBlob verifies and decodes one sealed blob as described by pb: AEAD tag
// (or checksum), decompression, plaintext length and SHA-256. sealed is
// overwritten. The plaintext is appended to dst[:0] when compressed, or
// returned inside sealed's memory when not.
func (r *Repository) openBlob(pb format.PackedBlob, sealed, dst []byte) ([]byte, error) {
	if len(sealed) != int(pb.Length) {
		return nil, fmt.Errorf("sealed length %d, header says %d", len(sealed), pb.Length)
	}
	pt, err := r.seal.OpenInPlace(sealed)
	if err != nil {
		return nil, err
	}
	if pb.Flags&format.FlagZstd != 0 {
		d := r.getDecoder()
		if cap(dst) < int(pb.RawLength) {
			dst = make([]byte, 0, pb.RawLength)
		}
		pt, err = d.DecodeAll(pt, dst[:0])
		r.putDecoder(d)
		if err != nil {
			return nil, fmt.Errorf("decompress: %w", err)
		}
	}
	if len(pt) != int(pb.RawLength) {
		return nil, fmt.Errorf("plaintext has %d bytes, index says %d", len(pt), pb.RawLength)
	}
	if sha256.Sum256(pt) != pb.ID {
		return nil, fmt.Errorf("plaintext does not match its SHA-256 id")
	}
	return pt, nil
}

// notInIndex is the error of a blob that no index entry locates.
func notInIndex(t BlobType, id ID) *BlobError {
	return &BlobError{Blob: id, Type: t, Err: fmt.Errorf("%s blob not in index", t)}
}

// loadBlob fetches one blob via the index and returns its verified
// plaintext. buf may be reused for the result.
func (r *Repository) loadBlob(ctx context.Context, t BlobType, id ID, buf []byte) ([]byte, error) {
	pack, pb, ok := r.index().Lookup(BlobHandle{Type: t, ID: id})
	if !ok {
		return nil, notInIndex(t, id)
	}
	pr := r.newPackReader(false)
	pr.plain = buf
	var out readBlob
	err := pr.read(ctx, pack, []format.PackedBlob{pb}, func(b readBlob) error { out = b; return nil })
	if err != nil {
		return nil, &BlobError{Blob: id, Type: t, Pack: pack, Err: err}
	}
	return out.Plain, out.Err
}

// isZero reports whether b is all zero bytes.
func isZero(b []byte) bool {
	const chunk = 4096
	var zero [chunk]byte
	for len(b) >= chunk {
		if !bytes.Equal(b[:chunk], zero[:]) {
			return false
		}
		b = b[chunk:]
	}
	return bytes.Equal(b, zero[:len(b)])
}
