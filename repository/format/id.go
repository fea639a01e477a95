package format

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
)

// ID names a blob, pack, index file or snapshot: the SHA-256 of its bytes
// (plaintext for blobs, stored bytes for everything else).
type ID [32]byte

// ParseID decodes 64 hex characters.
func ParseID(s string) (ID, error) {
	var id ID
	if len(s) != 2*len(id) {
		return id, fmt.Errorf("invalid id %q: want %d hex characters", s, 2*len(id))
	}
	if _, err := hex.Decode(id[:], []byte(s)); err != nil {
		return ID{}, fmt.Errorf("invalid id %q: %w", s, err)
	}
	return id, nil
}

// String returns the 64 hex characters of id.
func (id ID) String() string { return hex.EncodeToString(id[:]) }

// Short returns the first 8 hex characters of id, for people.
func (id ID) Short() string { return hex.EncodeToString(id[:4]) }

// IsNull reports whether id is all zero (unset).
func (id ID) IsNull() bool { return id == ID{} }

// MarshalText encodes id as hex, so IDs are readable in JSON.
func (id ID) MarshalText() ([]byte, error) {
	b := make([]byte, 2*len(id))
	hex.Encode(b, id[:])
	return b, nil
}

// UnmarshalText decodes hex.
func (id *ID) UnmarshalText(b []byte) error {
	v, err := ParseID(string(b))
	if err != nil {
		return err
	}
	*id = v
	return nil
}

// HashID returns the SHA-256 of b.
func HashID(b []byte) ID { return sha256.Sum256(b) }

// BlobHandle identifies a blob: its type and the SHA-256 of its plaintext.
// The id alone is not enough: a file chunk whose bytes equal an encoded
// tree has the tree's id, and the two are different blobs that are stored,
// indexed, deduplicated and kept by prune separately (FORMAT.md §5).
type BlobHandle struct {
	Type BlobType
	ID   ID
}

// DataHandle and treeHandle name a data or a tree blob.
func DataHandle(id ID) BlobHandle { return BlobHandle{Type: DataBlob, ID: id} }
func TreeHandle(id ID) BlobHandle { return BlobHandle{Type: TreeBlob, ID: id} }

// String returns the type and the full id, e.g. "data blob 47dc…".
func (h BlobHandle) String() string { return h.Type.String() + " blob " + h.ID.String() }
