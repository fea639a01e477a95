// Package cache keeps local copies of a remote repository's snapshot and
// index files, so that a command that lists and reads them all (every
// backup, to find its parent; every open, to build the index) fetches
// only the ones it has not seen before, as restic's and kopia's caches do.
//
// What it guarantees:
//
//   - It serves only what the storage holds now, as far as a listing can
//     tell: a copy is used for an object named in the wrapper's latest
//     complete listing of that type (or saved through it since), and
//     every other load goes to the storage.
//   - A copy is used only when the SHA-256 of its bytes is its name, which
//     for these objects is what the repository format names them by. A
//     copy that does not match is removed and the object fetched again;
//     an object whose stored bytes do not match its name is returned as
//     it is, for the repository to report, and never copied.
//   - A context marked with backend.Uncached reads from the storage: check
//     and fixity vouch for the stored bytes and must not be shown a copy.
//   - Copies are written to a temporary file and renamed, so processes
//     that share a cache folder (the agent's workers) never see half a
//     file. Copies of objects no longer listed are removed at the next
//     listing.
//
// Everything else (packs, keys, locks, the config, ranged reads) goes
// straight to the wrapped backend. The copies are the stored bytes,
// sealed as in the repository; the folder is created private (0700).
package cache

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/custos-backup/custos/repository/backend"
)

// cached are the object types that are named by the SHA-256 of their
// bytes and never change.
var cached = []backend.FileType{backend.SnapshotFile, backend.IndexFile}

func isCached(t backend.FileType) bool {
	for _, c := range cached {
		if t == c {
			return true
		}
	}
	return false
}

// tmpPrefix starts the name of a copy being written.
const tmpPrefix = ".tmp-"

// maxCopy bounds what is read into memory to be copied: an index file's
// limit in the format (larger objects are not the repository's).
const maxCopy = 1 << 30

// Backend is a backend whose snapshot and index files are kept in a local
// folder too.
type Backend struct {
	be      backend.Backend
	dir     string
	maxCopy int // maxCopy; tests lower it

	mu     sync.Mutex
	listed map[backend.FileType]map[string]bool // names of the latest complete listing
}

// New wraps be, keeping copies in a folder of root named after be's
// location. The folder is made when the first copy is written, so that a
// location only looked at leaves none.
func New(be backend.Backend, root string) (*Backend, error) {
	if root == "" {
		return nil, fmt.Errorf("cache for %s: no folder given", be.Location())
	}
	sum := sha256.Sum256([]byte(be.Location()))
	dir := filepath.Join(root, hex.EncodeToString(sum[:16]))
	return &Backend{be: be, dir: dir, maxCopy: maxCopy, listed: map[backend.FileType]map[string]bool{}}, nil
}

// Dir is the folder that holds this backend's copies.
func (b *Backend) Dir() string { return b.dir }

// Unwrap returns the wrapped backend (see backend.As).
func (b *Backend) Unwrap() backend.Backend { return b.be }

// Location is the wrapped backend's.
func (b *Backend) Location() string { return b.be.Location() }

// Close closes the wrapped backend.
func (b *Backend) Close() error { return b.be.Close() }

func (b *Backend) path(h backend.Handle) string {
	return filepath.Join(b.dir, string(h.Type), h.Name)
}

func nameMatches(h backend.Handle, data []byte) bool {
	sum := sha256.Sum256(data)
	return hex.EncodeToString(sum[:]) == h.Name
}

// Save stores the object and, for a cached type whose bytes match its
// name, keeps a copy.
func (b *Backend) Save(ctx context.Context, h backend.Handle, rd io.ReadSeeker, size int64) error {
	if !isCached(h.Type) || size > int64(b.maxCopy) {
		return b.be.Save(ctx, h, rd, size)
	}
	start, err := rd.Seek(0, io.SeekCurrent)
	if err != nil {
		return b.be.Save(ctx, h, rd, size)
	}
	data, err := io.ReadAll(io.LimitReader(rd, size))
	if err != nil {
		return fmt.Errorf("save %s: %w", h, err)
	}
	if _, err := rd.Seek(start, io.SeekStart); err != nil {
		return fmt.Errorf("save %s: %w", h, err)
	}
	if err := b.be.Save(ctx, h, rd, size); err != nil {
		return err
	}
	if int64(len(data)) == size && h.Valid() == nil && nameMatches(h, data) {
		b.keep(h, data)
		b.mu.Lock()
		if m := b.listed[h.Type]; m != nil {
			m[h.Name] = true
		}
		b.mu.Unlock()
	}
	return nil
}

// Load serves a whole cached-type object from its copy when the latest
// listing names it and the copy matches its name; otherwise it loads the
// object from the storage and keeps a copy.
func (b *Backend) Load(ctx context.Context, h backend.Handle, length int, offset int64) (io.ReadCloser, error) {
	if !isCached(h.Type) || length != 0 || offset != 0 || h.Valid() != nil {
		return b.be.Load(ctx, h, length, offset)
	}
	if !backend.IsUncached(ctx) && b.wasListed(h) {
		if data, err := os.ReadFile(b.path(h)); err == nil {
			if nameMatches(h, data) {
				return io.NopCloser(bytes.NewReader(data)), nil
			}
			_ = os.Remove(b.path(h))
		}
	}
	rd, err := b.be.Load(ctx, h, 0, 0)
	if err != nil {
		return nil, err
	}
	data, err := io.ReadAll(io.LimitReader(rd, int64(b.maxCopy)+1))
	if err != nil {
		_ = rd.Close()
		return nil, fmt.Errorf("load %s: %w", h, err)
	}
	if len(data) > b.maxCopy {
		// Not the repository's: passed on whole, never copied.
		return struct {
			io.Reader
			io.Closer
		}{io.MultiReader(bytes.NewReader(data), rd), rd}, nil
	}
	_ = rd.Close()
	if nameMatches(h, data) {
		b.keep(h, data)
	}
	return io.NopCloser(bytes.NewReader(data)), nil
}

func (b *Backend) wasListed(h backend.Handle) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.listed[h.Type][h.Name]
}

// keep writes a copy. A copy that cannot be written is not an error: the
// object is fetched again next time.
func (b *Backend) keep(h backend.Handle, data []byte) {
	folder := filepath.Join(b.dir, string(h.Type))
	if err := os.MkdirAll(folder, 0o700); err != nil {
		return
	}
	f, err := os.CreateTemp(folder, tmpPrefix)
	if err != nil {
		return
	}
	_, werr := f.Write(data)
	cerr := f.Close()
	if werr != nil || cerr != nil || os.Rename(f.Name(), b.path(h)) != nil {
		_ = os.Remove(f.Name())
	}
}

// Stat asks the storage.
func (b *Backend) Stat(ctx context.Context, h backend.Handle) (backend.FileInfo, error) {
	return b.be.Stat(ctx, h)
}

// List lists the storage. After a complete listing of a cached type, its
// names are the ones whose copies may be used, and copies of objects it
// does not name are removed.
func (b *Backend) List(ctx context.Context, t backend.FileType, fn func(backend.FileInfo) error) error {
	if !isCached(t) {
		return b.be.List(ctx, t, fn)
	}
	names := map[string]bool{}
	err := b.be.List(ctx, t, func(fi backend.FileInfo) error {
		names[fi.Name] = true
		return fn(fi)
	})
	if err != nil {
		return err
	}
	b.mu.Lock()
	b.listed[t] = names
	b.mu.Unlock()
	ents, err := os.ReadDir(filepath.Join(b.dir, string(t)))
	if err != nil {
		return nil
	}
	for _, e := range ents {
		if names[e.Name()] {
			continue
		}
		// Another process's copy being written is left alone; one of a
		// process that died before its rename goes after an hour.
		if strings.HasPrefix(e.Name(), tmpPrefix) {
			if fi, err := e.Info(); err != nil || time.Since(fi.ModTime()) < time.Hour {
				continue
			}
		}
		_ = os.Remove(filepath.Join(b.dir, string(t), e.Name()))
	}
	return nil
}

// Remove removes the object and its copy.
func (b *Backend) Remove(ctx context.Context, h backend.Handle) error {
	if isCached(h.Type) && h.Valid() == nil {
		b.mu.Lock()
		delete(b.listed[h.Type], h.Name)
		b.mu.Unlock()
		if err := os.Remove(b.path(h)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("remove the cached copy of %s: %w", h, err)
		}
	}
	return b.be.Remove(ctx, h)
}
