// Package backend defines the small storage interface that a repository sits
// on, and the object layout that every backend shares. Implementations live in
// the local and s3 subpackages; backendtest holds the conformance suite that
// both must pass.
package backend

import (
	"context"
	"errors"
	"fmt"
	"io"
	"path"
	"strings"
	"time"
)

// FileType is the kind of object a repository stores. It is also the name of
// the top-level folder (or key prefix) that holds objects of that kind.
type FileType string

// The object kinds of a repository. ConfigFile is a single object named
// "config" at the top; the others are folders.
const (
	ConfigFile   FileType = "config"
	KeyFile      FileType = "keys"
	PackFile     FileType = "data"
	IndexFile    FileType = "index"
	SnapshotFile FileType = "snapshots"
	LockFile     FileType = "locks"
)

// Handle names one object.
type Handle struct {
	Type FileType
	Name string
}

func (h Handle) String() string { return h.Path() }

// Path is the object's path relative to the repository root. Packs are fanned
// out over 256 folders by the first two characters of their name, so that no
// single folder grows past what file systems and S3 listings handle well.
func (h Handle) Path() string {
	switch {
	case h.Type == ConfigFile:
		return "config"
	case h.Type == PackFile && len(h.Name) >= 2:
		return path.Join(string(h.Type), h.Name[:2], h.Name)
	default:
		return path.Join(string(h.Type), h.Name)
	}
}

// Valid rejects unknown types and names that would escape their folder.
// The config object ignores its name: there is only one.
func (h Handle) Valid() error {
	switch h.Type {
	case ConfigFile:
		return nil
	case KeyFile, PackFile, IndexFile, SnapshotFile, LockFile:
	default:
		return fmt.Errorf("invalid object type %q", h.Type)
	}
	switch {
	case h.Name == "", h.Name == ".", h.Name == "..":
		return fmt.Errorf("invalid %s object name %q", h.Type, h.Name)
	case strings.ContainsAny(h.Name, `/\`) || strings.ContainsRune(h.Name, 0):
		return fmt.Errorf("invalid %s object name %q: contains a path separator", h.Type, h.Name)
	}
	return nil
}

// FileInfo describes a stored object.
type FileInfo struct {
	Name string
	Size int64
}

// ErrNotExist is wrapped by every backend error that means "no such object".
// Test with errors.Is.
var ErrNotExist = errors.New("object does not exist")

// uncachedKey marks a context whose loads must reach the storage itself.
type uncachedKey struct{}

// Uncached returns ctx marked so that a caching wrapper
// (repository/backend/cache) loads every object from the storage: check
// and fixity vouch for the stored bytes and must not be shown a local copy.
func Uncached(ctx context.Context) context.Context {
	return context.WithValue(ctx, uncachedKey{}, true)
}

// IsUncached reports whether ctx was marked by Uncached.
func IsUncached(ctx context.Context) bool {
	v, _ := ctx.Value(uncachedKey{}).(bool)
	return v
}

// cachePacksKey marks a context whose loads and saves of some packs are
// of packs read again and again.
type cachePacksKey struct{}

// CachePacks returns ctx marked so that a caching wrapper
// (repository/backend/cache) may keep a whole copy of each pack loaded or
// saved with it whose name keep accepts, and serve later ranged loads of
// that pack from the copy. The repository marks the packs that hold only
// trees: every backup reads its parent's trees, and every restore, find
// and listing reads trees, a level of folders at a time, each level a
// round trip on remote storage; a pack that also holds file data is not
// worth a local copy.
func CachePacks(ctx context.Context, keep func(name string) bool) context.Context {
	return context.WithValue(ctx, cachePacksKey{}, keep)
}

// CachesPack reports whether ctx marks the pack name for a cache to keep
// (CachePacks).
func CachesPack(ctx context.Context, name string) bool {
	keep, _ := ctx.Value(cachePacksKey{}).(func(string) bool)
	return keep != nil && keep(name)
}

// ErrArchived is returned (wrapped) by Load of an object kept in an archive
// storage class (S3 GLACIER, DEEP_ARCHIVE) that has not been restored.
var ErrArchived = errors.New("object is archived")

// Backend stores named objects. Implementations must be safe for concurrent
// use. Errors name the object they are about; errors caused by a cancelled
// context wrap ctx.Err(). The conformance suite in backendtest pins these
// semantics down.
type Backend interface {
	// Location is a human-readable URL of the backend, without secrets.
	Location() string
	// Save stores size bytes from rd under h. It is atomic: a reader either
	// sees the whole object or nothing, even if the process dies midway.
	// The object is the size bytes that follow rd's current position; a
	// reader with fewer or more bytes than size is an error and stores
	// nothing. rd may be rewound with Seek to retry. Saving over an existing
	// object replaces it (last writer wins). For ConfigFile the handle's
	// Name is ignored.
	Save(ctx context.Context, h Handle, rd io.ReadSeeker, size int64) error
	// Load returns a reader over length bytes of h starting at offset.
	// length 0 means up to the end. A missing object yields an error that
	// wraps ErrNotExist. A range that runs past the end of the object is an
	// error (from Load or from reading), never silently short data; offset
	// equal to the size with length 0 gives an empty reader.
	Load(ctx context.Context, h Handle, length int, offset int64) (io.ReadCloser, error)
	// Stat returns the object's size, or an error wrapping ErrNotExist.
	Stat(ctx context.Context, h Handle) (FileInfo, error)
	// List calls fn for every object of type t, in no particular order.
	// For PackFile it walks all fan-out folders. For ConfigFile it reports
	// the config object, if any, with the name "config". An error from fn
	// stops the listing and is returned.
	List(ctx context.Context, t FileType, fn func(FileInfo) error) error
	// Remove deletes h. Removing a missing object succeeds or wraps
	// ErrNotExist: a store that could tell only with a request more (S3,
	// whose DELETE of a missing key succeeds) need not.
	Remove(ctx context.Context, h Handle) error
	// Close releases resources.
	Close() error
}

// LeftoverRemover is implemented by backends whose interrupted Saves leave
// partial objects that List never reports: the local backend's temp files,
// S3's incomplete multipart uploads. Nothing reads them, but they take
// space (and, on S3, are billed). Only commands that write call it, while
// they hold a repository lock, so that a read-only command never changes
// the repository.
type LeftoverRemover interface {
	// RemoveLeftovers removes the partial objects of Saves started (local:
	// last written) before the given time, and returns how many it removed
	// and their size in bytes as far as it is known.
	RemoveLeftovers(ctx context.Context, before time.Time) (n int, bytes int64, err error)
}

// LeftoverAge is how old a partial object must be before a backup removes
// it: a Save in progress, possibly of another process on another machine,
// must never lose its object, and a day leaves room for slow uploads and
// for clocks that differ by minutes. Prune, which knows the repository's
// locks, may remove younger ones.
const LeftoverAge = 24 * time.Hour

// Connections returns how many requests to keep in flight on be, as its
// backend reports it through a Connections() int method (S3 does: its
// Options.Connections), looking through wrappers that expose what they wrap
// with Unwrap() Backend. 0 means be says nothing: a local folder, whose
// readers size their concurrency by the CPUs and disks instead.
//
// Remote storage is latency bound: each request waits a round trip before
// its first byte, so readers keep this many requests going at once.
func Connections(be Backend) int {
	if c, ok := As[interface{ Connections() int }](be); ok {
		return c.Connections()
	}
	return 0
}
