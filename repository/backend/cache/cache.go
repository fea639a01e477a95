// Package cache keeps local copies of a remote repository's snapshot and
// index files, so that a command that lists and reads them all (every
// backup, to find its parent; every open, to build the index) fetches
// only the ones it has not seen before, as restic's and kopia's caches do;
// and whole copies of the packs the repository marks with
// backend.CachePacks (those holding only trees), so that a walk of a
// snapshot's folders (the parent of every backup, restore, find, ls)
// reads them from local disk instead of a round trip per level.
//
// What it guarantees:
//
//   - It serves only what the storage holds now, as far as a listing can
//     tell: a snapshot or index copy is used for an object named in the
//     wrapper's latest complete listing of that type (or saved through it
//     since), and every other load goes to the storage. Packs are not
//     listed by the commands that read trees; a pack copy is used when the
//     repository asks for that pack, which it does only for packs named by
//     the index files it listed, and the repository drops the copies of
//     packs its index no longer names (RetainPacks).
//   - A copy is used only when the SHA-256 of its bytes is its name, which
//     for these objects is what the repository format names them by (a
//     pack copy is hashed once per process, when first used). A copy that
//     does not match is removed and the object fetched again; an object
//     whose stored bytes do not match its name is returned as it is, for
//     the repository to report, and never copied.
//   - A context marked with backend.Uncached reads from the storage: check
//     and fixity vouch for the stored bytes and must not be shown a copy.
//   - Copies are written to a temporary file and renamed, so processes
//     that share a cache folder (the agent's workers) never see half a
//     file. Copies of objects no longer listed are removed at the next
//     listing.
//
// Everything else (data packs, keys, locks, the config, ranged reads of
// unmarked packs) goes straight to the wrapped backend. The copies are the
// stored bytes, sealed as in the repository; the folder is created
// private (0700).
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

	"golang.org/x/sync/singleflight"

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

// maxPackCopy bounds a pack kept whole. A tree pack stays within the
// repository's pack_size (16 MiB unless set); a larger pack is read by
// ranges, as without a cache.
const maxPackCopy = 64 << 20

// Backend is a backend whose snapshot and index files, and marked packs,
// are kept in a local folder too.
type Backend struct {
	be          backend.Backend
	dir         string
	maxCopy     int // maxCopy; tests lower it
	maxPackCopy int // maxPackCopy; tests lower it
	fetches     singleflight.Group

	mu     sync.Mutex
	listed map[backend.FileType]map[string]bool // names of the latest complete listing
	// verified holds the pack copies whose bytes this process has hashed,
	// and tooLarge the marked packs over maxPackCopy, read by ranges.
	verified, tooLarge map[string]bool
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
	return &Backend{be: be, dir: dir, maxCopy: maxCopy, maxPackCopy: maxPackCopy, listed: map[backend.FileType]map[string]bool{},
		verified: map[string]bool{}, tooLarge: map[string]bool{}}, nil
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

// copyLimit is the largest object of h's type that Save and Load keep a
// copy of with ctx, or 0 for none.
func (b *Backend) copyLimit(ctx context.Context, h backend.Handle) int {
	switch {
	case isCached(h.Type):
		return b.maxCopy
	case h.Type == backend.PackFile && backend.CachesPack(ctx, h.Name):
		return b.maxPackCopy
	}
	return 0
}

// Save stores the object and, for a cached type or a marked pack whose
// bytes match its name, keeps a copy.
func (b *Backend) Save(ctx context.Context, h backend.Handle, rd io.ReadSeeker, size int64) error {
	if limit := b.copyLimit(ctx, h); limit == 0 || size > int64(limit) {
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
		if h.Type == backend.PackFile {
			b.verified[h.Name] = true
		} else if m := b.listed[h.Type]; m != nil {
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
	if h.Type == backend.PackFile && backend.CachesPack(ctx, h.Name) && !backend.IsUncached(ctx) && h.Valid() == nil {
		return b.loadPack(ctx, h, length, offset)
	}
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

// loadPack serves a range of a marked pack from its copy; without one, it
// copies the whole pack into the folder (once, however many loads ask for
// it at the same time) and serves the range from the copy.
func (b *Backend) loadPack(ctx context.Context, h backend.Handle, length int, offset int64) (io.ReadCloser, error) {
	if rc, ok := b.packCopy(h, length, offset); ok {
		return rc, nil
	}
	b.mu.Lock()
	large := b.tooLarge[h.Name]
	b.mu.Unlock()
	if !large {
		_, err, _ := b.fetches.Do(h.Name, func() (any, error) { return nil, b.fetchPack(ctx, h) })
		if err == nil {
			if rc, ok := b.packCopy(h, length, offset); ok {
				return rc, nil
			}
		} else if ctx.Err() != nil {
			return nil, err
		}
		// No copy: the pack is over the limit or its stored bytes do not
		// match its name, the folder cannot be written, or another load's
		// fetch failed (its context ended, say). The storage answers
		// this load as it would without a cache.
	}
	return b.be.Load(ctx, h, length, offset)
}

// fetchPack copies a whole pack into the folder, hashing it on the way,
// so that memory holds none of it. The copy is kept only when its bytes
// match its name; a pack over the limit is remembered as such.
func (b *Backend) fetchPack(ctx context.Context, h backend.Handle) error {
	rd, err := b.be.Load(ctx, h, 0, 0)
	if err != nil {
		return err
	}
	defer rd.Close()
	folder := filepath.Join(b.dir, string(h.Type))
	if err := os.MkdirAll(folder, 0o700); err != nil {
		return err
	}
	f, err := os.CreateTemp(folder, tmpPrefix)
	if err != nil {
		return err
	}
	defer os.Remove(f.Name()) // fails once renamed
	hash := sha256.New()
	n, err := io.Copy(io.MultiWriter(f, hash), io.LimitReader(rd, int64(b.maxPackCopy)+1))
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	switch {
	case err != nil:
		return fmt.Errorf("load %s: %w", h, err)
	case n > int64(b.maxPackCopy):
		b.mu.Lock()
		b.tooLarge[h.Name] = true
		b.mu.Unlock()
		return fmt.Errorf("%s: larger than %d bytes, read by ranges", h, b.maxPackCopy)
	case hex.EncodeToString(hash.Sum(nil)) != h.Name:
		return fmt.Errorf("%s: the stored bytes do not match the name", h)
	}
	if err := os.Rename(f.Name(), b.path(h)); err != nil {
		return err
	}
	b.mu.Lock()
	b.verified[h.Name] = true
	b.mu.Unlock()
	return nil
}

// packCopy opens the range of h's copy, if there is a copy that matches
// its name and holds the range.
func (b *Backend) packCopy(h backend.Handle, length int, offset int64) (io.ReadCloser, bool) {
	f, err := os.Open(b.path(h))
	if err != nil {
		return nil, false
	}
	fi, err := f.Stat()
	if err != nil {
		_ = f.Close()
		return nil, false
	}
	b.mu.Lock()
	verified := b.verified[h.Name]
	b.mu.Unlock()
	if !verified {
		hash := sha256.New()
		if _, err := io.Copy(hash, f); err != nil || hex.EncodeToString(hash.Sum(nil)) != h.Name {
			_ = f.Close()
			if err == nil {
				_ = os.Remove(b.path(h))
			}
			return nil, false
		}
		b.mu.Lock()
		b.verified[h.Name] = true
		b.mu.Unlock()
	}
	end := fi.Size()
	if length > 0 {
		end = offset + int64(length)
	}
	if offset < 0 || offset > fi.Size() || end > fi.Size() {
		_ = f.Close()
		return nil, false
	}
	return struct {
		io.Reader
		io.Closer
	}{io.NewSectionReader(f, offset, end-offset), f}, true
}

// RetainPacks removes the pack copies whose names keep does not accept:
// the repository passes the packs its index names, so that copies of
// packs pruned since (by any host) do not pile up on a host that only
// backs up and never lists packs. It returns how many it removed.
func (b *Backend) RetainPacks(keep func(name string) bool) int {
	return b.removeCopies(backend.PackFile, keep)
}

// removeCopies removes the copies of type t whose names keep does not
// accept. Another process's copy being written is left alone; one of a
// process that died before its rename goes after an hour.
func (b *Backend) removeCopies(t backend.FileType, keep func(name string) bool) int {
	ents, err := os.ReadDir(filepath.Join(b.dir, string(t)))
	if err != nil {
		return 0
	}
	n := 0
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), tmpPrefix) {
			if fi, err := e.Info(); err != nil || time.Since(fi.ModTime()) < time.Hour {
				continue
			}
		} else if keep(e.Name()) {
			continue
		}
		if os.Remove(filepath.Join(b.dir, string(t), e.Name())) == nil {
			n++
		}
		if t == backend.PackFile {
			b.mu.Lock()
			delete(b.verified, e.Name())
			b.mu.Unlock()
		}
	}
	return n
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
// names are the ones whose copies may be used; after one of any type that
// has copies (packs too), copies of objects it does not name are removed.
// A listing of packs keeps only the names of the copies in memory, not
// those of every pack.
func (b *Backend) List(ctx context.Context, t backend.FileType, fn func(backend.FileInfo) error) error {
	if isCached(t) {
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
		b.removeCopies(t, func(name string) bool { return names[name] })
		return nil
	}
	if t != backend.PackFile {
		return b.be.List(ctx, t, fn)
	}
	ents, _ := os.ReadDir(filepath.Join(b.dir, string(t)))
	if len(ents) == 0 {
		return b.be.List(ctx, t, fn)
	}
	copies := make(map[string]bool, len(ents)) // name -> listed
	for _, e := range ents {
		copies[e.Name()] = false
	}
	err := b.be.List(ctx, t, func(fi backend.FileInfo) error {
		if _, ok := copies[fi.Name]; ok {
			copies[fi.Name] = true
		}
		return fn(fi)
	})
	if err != nil {
		return err
	}
	b.removeCopies(t, func(name string) bool { return copies[name] })
	return nil
}

// Remove removes the object and its copy.
func (b *Backend) Remove(ctx context.Context, h backend.Handle) error {
	if (isCached(h.Type) || h.Type == backend.PackFile) && h.Valid() == nil {
		b.mu.Lock()
		delete(b.listed[h.Type], h.Name)
		delete(b.verified, h.Name)
		b.mu.Unlock()
		if err := os.Remove(b.path(h)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("remove the cached copy of %s: %w", h, err)
		}
	}
	return b.be.Remove(ctx, h)
}
