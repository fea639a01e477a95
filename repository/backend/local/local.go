// Package local stores a repository in a directory on a local (or mounted)
// file system.
//
// The layout mirrors backend.Handle.Path: a "config" file at the top and the
// folders keys, data, index, snapshots and locks; packs are fanned out over
// data/00 .. data/ff, created when first needed.
//
// Saves are crash-safe: the bytes go to a temp file in the destination folder,
// which is fsynced, renamed into place, and then the folder itself is fsynced
// so the new name survives a power loss. A reader therefore sees a whole
// object or none. Temp files left by a crash carry the prefix TempPrefix; List
// never reports them, and RemoveLeftovers (which only writers call) removes
// them once old enough.
//
// Saving over an existing object replaces it atomically (last writer wins).
//
// Stage lets a writer that learns an object's name only at the end (packs
// are named by their hash) write it straight into the repository folder.
package local

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/custos-backup/custos/repository/backend"
)

// TempPrefix starts the name of every temp file a Save writes. Objects never
// have such names, so List can tell leftovers of a crash from real objects.
const TempPrefix = ".custos-tmp-"

const (
	dirMode  = 0o700
	fileMode = 0o600
)

// layoutDirs are the folders a repository has from the start.
var layoutDirs = []backend.FileType{
	backend.KeyFile, backend.PackFile, backend.IndexFile, backend.SnapshotFile, backend.LockFile,
}

// Backend is a repository in a local directory. It is safe for concurrent use.
type Backend struct {
	dir string
	log *slog.Logger
	// syncDir fsyncs a directory and syncFile a file; fields so tests can
	// observe their order with the rename.
	syncDir  func(dir string) error
	syncFile func(f *os.File) error
	// directBufs holds the aligned buffers of finished staged objects for
	// the next ones (see directWriter).
	directBufs chan []byte
}

var _ backend.Backend = (*Backend)(nil)

// Create makes dir (and its parents) if needed, with the layout folders of a
// repository, and returns a backend for it. It does not care whether a
// repository already exists there: deciding that is the repository's job (it
// looks for the config object).
func Create(ctx context.Context, dir string) (*Backend, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	b, err := newBackend(dir)
	if err != nil {
		return nil, err
	}
	if err := b.mkdirAllSynced(b.dir); err != nil {
		return nil, fmt.Errorf("local: create repository folder %s: %w", b.dir, err)
	}
	for _, t := range layoutDirs {
		p := filepath.Join(b.dir, string(t))
		if err := b.mkdirAllSynced(p); err != nil {
			return nil, fmt.Errorf("local: create repository folder %s: %w", p, err)
		}
	}
	return b, nil
}

// Open returns a backend for an existing directory. A missing directory is an
// error wrapping backend.ErrNotExist; an existing directory without a
// repository in it is not an error here (Stat of config will say so).
func Open(ctx context.Context, dir string) (*Backend, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	b, err := newBackend(dir)
	if err != nil {
		return nil, err
	}
	fi, err := os.Stat(b.dir)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return nil, fmt.Errorf("local: open repository folder %s: %w", b.dir, backend.ErrNotExist)
	case err != nil:
		return nil, fmt.Errorf("local: open repository folder: %w", err)
	case !fi.IsDir():
		return nil, fmt.Errorf("local: open repository folder %s: not a directory", b.dir)
	}
	return b, nil
}

func newBackend(dir string) (*Backend, error) {
	if dir == "" {
		return nil, errors.New("local: empty repository path")
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("local: repository path %q: %w", dir, err)
	}
	return &Backend{dir: abs, log: slog.Default(), syncDir: syncDir, syncFile: (*os.File).Sync, directBufs: make(chan []byte, 8)}, nil
}

// Location returns "local:" and the absolute directory.
func (b *Backend) Location() string { return "local:" + filepath.ToSlash(b.dir) }

// Dir returns the absolute directory of the repository.
func (b *Backend) Dir() string { return b.dir }

// Close does nothing; a local backend holds no resources between calls.
func (b *Backend) Close() error { return nil }

// checkHandle rejects names that would escape their folder or collide with
// temp files. Config ignores the name: there is only one.
func checkHandle(h backend.Handle) error {
	if err := h.Valid(); err != nil {
		return err
	}
	if h.Type != backend.ConfigFile && strings.HasPrefix(h.Name, TempPrefix) {
		return fmt.Errorf("invalid %s object name %q: reserved temp-file prefix", h.Type, h.Name)
	}
	return nil
}

func (b *Backend) filename(h backend.Handle) string {
	return filepath.Join(b.dir, filepath.FromSlash(h.Path()))
}

// Save writes the object via a synced temp file and an atomic rename.
func (b *Backend) Save(ctx context.Context, h backend.Handle, rd io.ReadSeeker, size int64) (err error) {
	if err := checkHandle(h); err != nil {
		return fmt.Errorf("local: save in %s: %w", b.dir, err)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("local: save %s in %s: %w", h, b.dir, err)
	}
	if size < 0 {
		return fmt.Errorf("local: save %s in %s: negative size %d", h, b.dir, size)
	}
	name := b.filename(h)
	folder := filepath.Dir(name)
	if err := b.mkdirAllSynced(folder); err != nil {
		return fmt.Errorf("local: save %s: %w", h, err)
	}
	f, err := os.CreateTemp(folder, TempPrefix+"*")
	if err != nil {
		return fmt.Errorf("local: save %s: %w", h, err)
	}
	tmp := f.Name()
	// Large objects (packs that copy or prune write) bypass the page cache
	// like staged packs; small ones (index, snapshots, keys) are read back
	// soon and are not worth a buffer.
	var dw *directWriter
	var dst io.Writer = f
	if size >= directBufSize {
		dw = newDirectWriter(f, b.directBufs)
		dst = dw
	}
	defer func() {
		if err != nil {
			if dw != nil {
				dw.release()
			}
			_ = f.Close()
			_ = os.Remove(tmp)
		}
	}()
	n, err := copyBody(ctx, dst, rd, size)
	if err == nil && dw != nil {
		err = dw.Flush()
	}
	if errors.Is(err, errTooLong) {
		return fmt.Errorf("local: save %s in %s: reader has more than the %d bytes announced", h, b.dir, size)
	}
	if err != nil {
		return fmt.Errorf("local: save %s in %s: write: %w", h, b.dir, err)
	}
	if n != size {
		return fmt.Errorf("local: save %s in %s: reader gave %d bytes, want %d", h, b.dir, n, size)
	}
	if extra, _ := rd.Read(make([]byte, 1)); extra != 0 {
		return fmt.Errorf("local: save %s in %s: reader has more than the %d bytes announced", h, b.dir, size)
	}
	if err := b.syncFile(f); err != nil {
		return fmt.Errorf("local: save %s: %w", h, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("local: save %s: %w", h, err)
	}
	// Last chance to give up without leaving a new object behind.
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("local: save %s in %s: %w", h, b.dir, err)
	}
	if err := os.Rename(tmp, name); err != nil {
		return fmt.Errorf("local: save %s: %w", h, err)
	}
	if err := b.syncDir(folder); err != nil {
		// The object is complete under its name; only its durability across
		// a power loss is in doubt. Report it: the caller must not assume
		// the data is safe.
		return fmt.Errorf("local: save %s: sync folder: %w", h, err)
	}
	return nil
}

// Stage starts an object of type t whose name is not known until all of it
// is written (a pack, named by the hash of its bytes). It returns a writer
// for a temp file in the type's folder, so that the bytes go to the disk
// once instead of being staged elsewhere and copied by Save; on Linux they
// bypass the page cache (see directWriter). Exactly one of commit and abort
// must be called. commit syncs and closes the file and renames it to h
// (which must have type t) with the same guarantees as Save: a reader sees
// the whole object or none, and it is durable when commit returns. abort
// closes and removes the temp file. A temp file orphaned by a crash is
// cleaned up by List like Save's.
func (b *Backend) Stage(ctx context.Context, t backend.FileType) (w io.Writer, commit func(ctx context.Context, h backend.Handle) error, abort func(), err error) {
	if err := ctx.Err(); err != nil {
		return nil, nil, nil, fmt.Errorf("local: stage %s in %s: %w", t, b.dir, err)
	}
	if t == backend.ConfigFile || checkHandle(backend.Handle{Type: t, Name: "x"}) != nil {
		return nil, nil, nil, fmt.Errorf("local: stage in %s: invalid object type %q", b.dir, t)
	}
	folder := filepath.Join(b.dir, string(t))
	if err := b.mkdirAllSynced(folder); err != nil {
		return nil, nil, nil, fmt.Errorf("local: stage %s: %w", t, err)
	}
	f, err := os.CreateTemp(folder, TempPrefix+"*")
	if err != nil {
		return nil, nil, nil, fmt.Errorf("local: stage %s: %w", t, err)
	}
	dw := newDirectWriter(f, b.directBufs)
	tmp := f.Name()
	done := false
	abort = func() {
		if !done {
			done = true
			dw.release()
			_ = f.Close()
			_ = os.Remove(tmp)
		}
	}
	commit = func(ctx context.Context, h backend.Handle) (err error) {
		if done {
			return fmt.Errorf("local: commit %s in %s: staged object already committed or aborted", h, b.dir)
		}
		defer func() {
			if err != nil {
				abort()
			}
		}()
		if err := checkHandle(h); err != nil || h.Type != t {
			return fmt.Errorf("local: commit %s in %s: handle does not fit a staged %s object (%v)", h, b.dir, t, err)
		}
		if err := dw.Flush(); err != nil {
			return fmt.Errorf("local: commit %s: write: %w", h, err)
		}
		if err := b.syncFile(f); err != nil {
			return fmt.Errorf("local: commit %s: %w", h, err)
		}
		name := b.filename(h)
		dest := filepath.Dir(name)
		if err := b.mkdirAllSynced(dest); err != nil {
			return fmt.Errorf("local: commit %s: %w", h, err)
		}
		// Last chance to give up without leaving a new object behind.
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("local: commit %s in %s: %w", h, b.dir, err)
		}
		if err := f.Close(); err != nil {
			return fmt.Errorf("local: commit %s: %w", h, err)
		}
		if err := os.Rename(tmp, name); err != nil {
			_ = os.Remove(tmp)
			done = true
			return fmt.Errorf("local: commit %s: %w", h, err)
		}
		done = true
		if err := b.syncDir(dest); err != nil {
			return fmt.Errorf("local: commit %s: sync folder: %w", h, err)
		}
		return nil
	}
	return dw, commit, abort, nil
}

// mkdirAllSynced creates dir and any missing parents, fsyncing the parent of
// each folder it creates so that the new entries are durable.
func (b *Backend) mkdirAllSynced(dir string) error {
	fi, err := os.Stat(dir)
	if err == nil {
		if !fi.IsDir() {
			return fmt.Errorf("%s: not a directory", dir)
		}
		return nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	parent := filepath.Dir(dir)
	if parent != dir {
		if err := b.mkdirAllSynced(parent); err != nil {
			return err
		}
	}
	if err := os.Mkdir(dir, dirMode); err != nil && !errors.Is(err, fs.ErrExist) {
		return err
	}
	// Also when another goroutine won the race to create it: that one may not
	// have synced the parent yet, and our object will live in this folder.
	if err := b.syncDir(parent); err != nil {
		return fmt.Errorf("sync folder: %w", err)
	}
	return nil
}

// syncDir fsyncs a directory so that renames and creations inside it are
// durable. File systems that cannot sync directories are tolerated.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	cerr := d.Close()
	if err != nil {
		if errors.Is(err, syscall.EINVAL) || errors.Is(err, syscall.ENOTSUP) || errors.Is(err, errors.ErrUnsupported) {
			return cerr
		}
		return err
	}
	return cerr
}

// Load opens h and returns a reader over the requested range. A range that
// runs past the end of the object is an error here, never a short read.
func (b *Backend) Load(ctx context.Context, h backend.Handle, length int, offset int64) (io.ReadCloser, error) {
	if err := checkHandle(h); err != nil {
		return nil, fmt.Errorf("local: load in %s: %w", b.dir, err)
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("local: load %s in %s: %w", h, b.dir, err)
	}
	if length < 0 || offset < 0 {
		return nil, fmt.Errorf("local: load %s in %s: invalid range offset %d length %d", h, b.dir, offset, length)
	}
	f, err := os.Open(b.filename(h))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("local: load %s in %s: %w", h, b.dir, backend.ErrNotExist)
	}
	if err != nil {
		return nil, fmt.Errorf("local: load %s: %w", h, err)
	}
	// Objects are replaced by rename, never written in place, so the size of
	// the open file cannot change under us.
	fi, err := f.Stat()
	if err != nil {
		_ = f.Close()
		return nil, fmt.Errorf("local: load %s: %w", h, err)
	}
	size := fi.Size()
	n := int64(length)
	if length == 0 {
		n = size - offset
	}
	if offset > size || offset+n > size {
		_ = f.Close()
		return nil, fmt.Errorf("local: load %s in %s: range offset %d length %d is beyond the object size %d",
			h, b.dir, offset, length, size)
	}
	return &fileRange{SectionReader: io.NewSectionReader(f, offset, n), f: f}, nil
}

type fileRange struct {
	*io.SectionReader
	f *os.File
}

func (r *fileRange) Close() error { return r.f.Close() }

// Stat returns the size of h.
func (b *Backend) Stat(ctx context.Context, h backend.Handle) (backend.FileInfo, error) {
	if err := checkHandle(h); err != nil {
		return backend.FileInfo{}, fmt.Errorf("local: stat in %s: %w", b.dir, err)
	}
	if err := ctx.Err(); err != nil {
		return backend.FileInfo{}, fmt.Errorf("local: stat %s in %s: %w", h, b.dir, err)
	}
	fi, err := os.Stat(b.filename(h))
	if errors.Is(err, fs.ErrNotExist) {
		return backend.FileInfo{}, fmt.Errorf("local: stat %s in %s: %w", h, b.dir, backend.ErrNotExist)
	}
	if err != nil {
		return backend.FileInfo{}, fmt.Errorf("local: stat %s: %w", h, err)
	}
	if !fi.Mode().IsRegular() {
		return backend.FileInfo{}, fmt.Errorf("local: stat %s in %s: not a regular file", h, b.dir)
	}
	return backend.FileInfo{Name: nameOf(h), Size: fi.Size()}, nil
}

func nameOf(h backend.Handle) string {
	if h.Type == backend.ConfigFile {
		return string(backend.ConfigFile)
	}
	return h.Name
}

// List reports the objects of type t. For ConfigFile it reports the single
// config object, if there is one, with the name "config".
func (b *Backend) List(ctx context.Context, t backend.FileType, fn func(backend.FileInfo) error) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("local: list %s in %s: %w", t, b.dir, err)
	}
	switch t {
	case backend.ConfigFile:
		fi, err := b.Stat(ctx, backend.Handle{Type: backend.ConfigFile})
		if errors.Is(err, backend.ErrNotExist) {
			return nil
		}
		if err != nil {
			return err
		}
		return fn(fi)
	case backend.PackFile:
		return b.listDir(ctx, filepath.Join(b.dir, string(t)), true, fn)
	case backend.KeyFile, backend.IndexFile, backend.SnapshotFile, backend.LockFile:
		return b.listDir(ctx, filepath.Join(b.dir, string(t)), false, fn)
	default:
		return fmt.Errorf("local: list in %s: invalid object type %q", b.dir, t)
	}
}

// listDir reports the regular files in dir, and, if descend is set, those of
// its subfolders (the pack fan-out). A missing folder has no objects.
func (b *Backend) listDir(ctx context.Context, dir string, descend bool, fn func(backend.FileInfo) error) error {
	entries, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("local: list: %w", err)
	}
	for _, e := range entries {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("local: list %s: %w", dir, err)
		}
		name := e.Name()
		if e.IsDir() {
			if descend {
				if err := b.listDir(ctx, filepath.Join(dir, name), false, fn); err != nil {
					return err
				}
			}
			continue
		}
		if !e.Type().IsRegular() {
			continue
		}
		fi, err := e.Info()
		if errors.Is(err, fs.ErrNotExist) {
			continue // removed since ReadDir
		}
		if err != nil {
			return fmt.Errorf("local: list: %w", err)
		}
		if strings.HasPrefix(name, TempPrefix) {
			continue
		}
		if err := fn(backend.FileInfo{Name: name, Size: fi.Size()}); err != nil {
			return err
		}
	}
	return nil
}

var _ backend.LeftoverRemover = (*Backend)(nil)

// RemoveLeftovers removes the temp files, in every folder, that were last
// written before the given time: what a Save or Stage killed midway left.
func (b *Backend) RemoveLeftovers(ctx context.Context, before time.Time) (n int, bytes int64, err error) {
	var dirs []string
	for _, t := range layoutDirs {
		dirs = append(dirs, filepath.Join(b.dir, string(t)))
	}
	fan, err := os.ReadDir(filepath.Join(b.dir, string(backend.PackFile)))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return 0, 0, fmt.Errorf("local: remove leftovers in %s: %w", b.dir, err)
	}
	for _, e := range fan {
		if e.IsDir() {
			dirs = append(dirs, filepath.Join(b.dir, string(backend.PackFile), e.Name()))
		}
	}
	for _, dir := range dirs {
		entries, err := os.ReadDir(dir)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return n, bytes, fmt.Errorf("local: remove leftovers: %w", err)
		}
		for _, e := range entries {
			if err := ctx.Err(); err != nil {
				return n, bytes, fmt.Errorf("local: remove leftovers in %s: %w", dir, err)
			}
			if !strings.HasPrefix(e.Name(), TempPrefix) || !e.Type().IsRegular() {
				continue
			}
			fi, err := e.Info()
			if err != nil || !fi.ModTime().Before(before) {
				continue // gone meanwhile, or maybe a save in progress
			}
			p := filepath.Join(dir, e.Name())
			if err := os.Remove(p); err != nil {
				if errors.Is(err, fs.ErrNotExist) {
					continue
				}
				return n, bytes, fmt.Errorf("local: remove leftover %s: %w", p, err)
			}
			b.log.Info("removed temp file left by an interrupted save", "path", p, "size", fi.Size(), "modified", fi.ModTime())
			n++
			bytes += fi.Size()
		}
	}
	return n, bytes, nil
}

// Remove deletes h and syncs its folder so the removal is durable.
func (b *Backend) Remove(ctx context.Context, h backend.Handle) error {
	if err := checkHandle(h); err != nil {
		return fmt.Errorf("local: remove in %s: %w", b.dir, err)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("local: remove %s in %s: %w", h, b.dir, err)
	}
	name := b.filename(h)
	err := os.Remove(name)
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("local: remove %s in %s: %w", h, b.dir, backend.ErrNotExist)
	}
	if err != nil {
		return fmt.Errorf("local: remove %s: %w", h, err)
	}
	if err := b.syncDir(filepath.Dir(name)); err != nil {
		return fmt.Errorf("local: remove %s: sync folder: %w", h, err)
	}
	return nil
}

// copyStep is how many bytes copyBody moves between checks of the context.
// Large steps keep the number of syscalls per object small (a 16 MiB pack
// is two writes), while a cancelled Save still stops within a few
// milliseconds.
const copyStep = 8 << 20

// errTooLong reports a reader that has more bytes than the size announced.
var errTooLong = errors.New("reader has more bytes than announced")

// copyBody copies size bytes of rd to w with as few copies and syscalls as
// the reader allows: an *os.File source to an *os.File is copied inside the kernel
// (copy_file_range, via os.File.ReadFrom), a source that can write itself
// out (bytes.Reader, strings.Reader) hands its memory to write(2) directly,
// and anything else goes through one large buffer. It returns errTooLong
// when rd is an io.WriterTo that offers more than size bytes.
func copyBody(ctx context.Context, w io.Writer, rd io.Reader, size int64) (int64, error) {
	f, toFile := w.(*os.File)
	switch src := rd.(type) {
	case *os.File:
		if !toFile {
			break
		}
		var n int64
		for n < size {
			if err := ctx.Err(); err != nil {
				return n, err
			}
			m, err := io.Copy(f, io.LimitReader(src, min(copyStep, size-n)))
			n += m
			if err != nil {
				return n, err
			}
			if m == 0 {
				break // short source
			}
		}
		return n, nil
	case io.WriterTo:
		lw := &limitWriter{ctx: ctx, w: w, left: size}
		_, err := src.WriteTo(lw)
		return size - lw.left, err
	}
	buf := make([]byte, max(1, min(size, 1<<20)))
	return io.CopyBuffer(onlyWriter{w}, io.LimitReader(ctxReader{ctx, rd}, size), buf)
}

// limitWriter writes at most left bytes to f, in steps of copyStep with a
// context check before each.
type limitWriter struct {
	ctx  context.Context
	w    io.Writer
	left int64
}

func (w *limitWriter) Write(p []byte) (int, error) {
	var n int
	for len(p) > 0 {
		if err := w.ctx.Err(); err != nil {
			return n, err
		}
		if w.left == 0 {
			return n, errTooLong
		}
		step := p[:min(int64(len(p)), w.left, copyStep)]
		m, err := w.w.Write(step)
		n += m
		w.left -= int64(m)
		p = p[m:]
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

// onlyWriter hides os.File.ReadFrom, so that io.CopyBuffer uses the given
// buffer for readers the kernel cannot copy from.
type onlyWriter struct{ w io.Writer }

func (o onlyWriter) Write(p []byte) (int, error) { return o.w.Write(p) }

// ctxReader stops a long copy soon after ctx is cancelled.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}
