package repository

import "github.com/custos-backup/custos/repository/format"

// The identity and record types of the format are part of this package's
// API; they are defined once, in package format.
type (
	// ID names a blob, pack, index file or snapshot: the SHA-256 of its bytes.
	ID = format.ID
	// BlobHandle identifies a blob by its type and id.
	BlobHandle = format.BlobHandle
	// BlobType says what a blob holds.
	BlobType = format.BlobType
	// Snapshot is the record of one dataset at one time.
	Snapshot = format.Snapshot
	// Summary holds the totals of one backup.
	Summary = format.Summary
)

// Blob types.
const (
	DataBlob = format.DataBlob
	TreeBlob = format.TreeBlob
)

// ParseID decodes 64 hex characters.
func ParseID(s string) (ID, error) { return format.ParseID(s) }
