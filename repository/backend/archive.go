package backend

import (
	"context"
	"time"
)

// Archiver is what a backend whose objects may sit in an archive storage
// class (S3 GLACIER, DEEP_ARCHIVE) offers beyond Backend: an archived
// object cannot be read until a restore request has made a temporary
// copy readable, which takes hours. A backend without archive classes
// does not implement it.
type Archiver interface {
	// ArchiveState reports the storage class of h and whether it can be
	// read now.
	ArchiveState(ctx context.Context, h Handle) (ArchiveState, error)
	// RequestRestore asks for a readable copy of an archived h, in the
	// backend's configured tier and for its configured days. Asking
	// again while a restore is under way is not an error.
	RequestRestore(ctx context.Context, h Handle) error
}

// RestoreState is where an archived object's restore stands.
type RestoreState int

// The restore states of an archived object.
const (
	RestoreNone    RestoreState = iota // never asked for, or expired
	RestoreOngoing                     // asked for, not readable yet
	RestoreDone                        // a readable copy exists until Expiry
)

func (s RestoreState) String() string {
	switch s {
	case RestoreOngoing:
		return "ongoing"
	case RestoreDone:
		return "done"
	}
	return "none"
}

// ArchiveState is the storage state of one object.
type ArchiveState struct {
	StorageClass string // as the server names it; "" means STANDARD
	// Archived: the class needs a restore before a read (not instant
	// retrieval classes such as GLACIER_IR).
	Archived bool
	Restore  RestoreState
	Expiry   time.Time // of the restored copy, when Restore is RestoreDone
}

// Readable reports whether the object can be loaded now.
func (s ArchiveState) Readable() bool { return !s.Archived || s.Restore == RestoreDone }

// AsArchiver finds the Archiver in be or in a backend it decorates.
func AsArchiver(be Backend) (Archiver, bool) { return As[Archiver](be) }

// As finds, in be or in the backends it decorates (a decorator offers
// Unwrap() Backend), the first that implements T: the optional abilities
// of a backend (archive classes, leftover clean-up, ...) stay reachable
// through wrappers such as the retry wrapper.
func As[T any](be Backend) (T, bool) {
	for be != nil {
		if t, ok := be.(T); ok {
			return t, true
		}
		u, ok := be.(interface{ Unwrap() Backend })
		if !ok {
			break
		}
		be = u.Unwrap()
	}
	var zero T
	return zero, false
}
