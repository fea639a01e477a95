package repository

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"runtime"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/custos-backup/custos/repository/backend"
	"golang.org/x/sync/errgroup"
	"golang.org/x/sys/unix"
)

// RestoreOptions tune a restore.
type RestoreOptions struct {
	Include  []string // slash paths relative to the snapshot root; a directory includes its subtree; empty = all
	Progress func(Progress)
}

// RestoreStats counts what a restore wrote.
type RestoreStats struct{ Files, Dirs, Bytes int64 }

// restoreFile is one regular file being written.
type restoreFile struct {
	path string
	dir  *dirHandle
	name string // last element of path
	node *node

	mu        sync.Mutex
	f         *os.File
	remaining int
	errs      []error
}

// dirHandle is a directory of the restore target, opened once as an
// os.Root while files in it are written, so that each file costs one
// single-element openat instead of a walk from the target.
type dirHandle struct {
	path    string
	mu      sync.Mutex
	root    *os.Root
	err     error
	pending int // files not finished yet
	files   []*restoreFile
}

// blobUse is one place a blob's plaintext goes.
type blobUse struct {
	file   *restoreFile
	offset int64
}

// packBlob is one needed blob of a pack with all its destinations.
type packBlob struct {
	pb   packedBlob
	uses []blobUse
}

type restorer struct {
	r      *Repository
	root   *os.Root
	asRoot bool

	files   []*restoreFile
	dirs    []dirMeta
	handles map[string]*dirHandle
	links   [][2]string // hard links to make after the contents: {existing, new}
	packs   map[ID]map[ID]*packBlob
	zeroIDs map[uint32]ID

	errMu sync.Mutex
	errs  []error

	nFiles, nDirs, nBytes atomic.Int64
	current               atomic.Pointer[string]
}

type dirMeta struct {
	path string
	node *node
}

func (rs *restorer) fail(err error) {
	rs.errMu.Lock()
	rs.errs = append(rs.errs, err)
	rs.errMu.Unlock()
}

// includeFilter decides which nodes a restore writes.
type includeFilter struct {
	inc  []string
	used []bool
}

func newIncludeFilter(inc []string) (*includeFilter, error) {
	f := &includeFilter{}
	for _, p := range inc {
		c := path.Clean("/" + p)[1:]
		if c == "" {
			return &includeFilter{}, nil // the whole snapshot
		}
		f.inc = append(f.inc, c)
	}
	f.used = make([]bool, len(f.inc))
	return f, nil
}

// match reports whether p is included (itself or as part of an included
// subtree) and whether the walk must descend into p.
func (f *includeFilter) match(p string) (include, descend bool) {
	if len(f.inc) == 0 {
		return true, true
	}
	for i, inc := range f.inc {
		if inc == p || strings.HasPrefix(p, inc+"/") {
			f.used[i] = true
			return true, true
		}
		if strings.HasPrefix(inc, p+"/") {
			descend = true
		}
	}
	return false, descend
}

// Restore writes the snapshot's tree below target, which is created if
// needed. It never writes outside target (os.Root). A file whose data is
// damaged or missing fails with an error naming the file and the object;
// the other files are still restored and the joined error is returned at
// the end. Owners are restored only when running as root.
func (r *Repository) Restore(ctx context.Context, snap *Snapshot, target string, opts RestoreOptions) (*RestoreStats, error) {
	if err := os.MkdirAll(target, 0o700); err != nil {
		return nil, fmt.Errorf("restore to %s: %w", target, err)
	}
	root, err := os.OpenRoot(target)
	if err != nil {
		return nil, fmt.Errorf("restore to %s: %w", target, err)
	}
	defer func() { _ = root.Close() }()
	filter, err := newIncludeFilter(opts.Include)
	if err != nil {
		return nil, err
	}
	if err := r.refreshIndex(ctx, false); err != nil {
		return nil, fmt.Errorf("restore snapshot %s: %w", snap.ID.Short(), err)
	}
	rs := &restorer{r: r, root: root, asRoot: os.Geteuid() == 0, packs: map[ID]map[ID]*packBlob{}, zeroIDs: map[uint32]ID{}, handles: map[string]*dirHandle{}}
	stop := rs.startProgress(opts.Progress)
	defer stop()

	links := map[[2]uint64]string{}
	err = r.walkTree(ctx, snap.Tree, func(p string, n *node) error {
		inc, desc := filter.match(p)
		if !inc && !(desc && n.Type == nodeDir) {
			return errSkipSubtree
		}
		return rs.create(p, n, links)
	})
	if err != nil {
		return nil, fmt.Errorf("restore snapshot %s to %s: %w", snap.ID.Short(), target, err)
	}
	for i, u := range filter.used {
		if !u {
			return nil, fmt.Errorf("restore snapshot %s: include %q matches nothing", snap.ID.Short(), filter.inc[i])
		}
	}
	if err := rs.createFiles(ctx); err != nil {
		return nil, fmt.Errorf("restore snapshot %s to %s: %w", snap.ID.Short(), target, err)
	}
	if err := rs.fetchAll(ctx); err != nil {
		rs.closeHandles()
		return nil, fmt.Errorf("restore snapshot %s to %s: %w", snap.ID.Short(), target, err)
	}
	rs.closeHandles()
	for _, l := range rs.links {
		rs.removeExisting(l[1])
		if err := rs.root.Link(l[0], l[1]); err != nil {
			rs.fail(fmt.Errorf("restore hard link %q to %q: %w", l[1], l[0], err))
			continue
		}
		rs.nFiles.Add(1)
	}
	// Directory metadata last, deepest first, so that creating children
	// does not change the restored mtimes.
	for i := len(rs.dirs) - 1; i >= 0; i-- {
		d := rs.dirs[i]
		if err := rs.setMeta(d.path, d.node); err != nil {
			rs.fail(fmt.Errorf("restore %q: %w", d.path, err))
		}
	}
	st := &RestoreStats{Files: rs.nFiles.Load(), Dirs: rs.nDirs.Load(), Bytes: rs.nBytes.Load()}
	if len(rs.errs) > 0 {
		return st, fmt.Errorf("restore snapshot %s to %s: %w", snap.ID.Short(), target, errors.Join(rs.errs...))
	}
	return st, nil
}

func (rs *restorer) startProgress(fn func(Progress)) func() {
	if fn == nil {
		return func() {}
	}
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	report := func() {
		p := Progress{Files: rs.nFiles.Load(), Bytes: rs.nBytes.Load()}
		if c := rs.current.Load(); c != nil {
			p.Current = *c
		}
		fn(p)
	}
	go func() {
		defer wg.Done()
		t := time.NewTicker(250 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				report()
			}
		}
	}()
	return func() { close(done); wg.Wait(); report() }
}

// removeExisting clears p for a new non-directory entry.
func (rs *restorer) removeExisting(p string) {
	if fi, err := rs.root.Lstat(p); err == nil && !fi.IsDir() {
		_ = rs.root.Remove(p)
	}
}

// create makes the entry for one node; file content is fetched later.
func (rs *restorer) create(p string, n *node, links map[[2]uint64]string) error {
	s := p
	rs.current.Store(&s)
	switch n.Type {
	case nodeDir:
		if err := rs.root.Mkdir(p, 0o700); err != nil {
			fi, serr := rs.root.Lstat(p)
			if serr != nil || !fi.IsDir() {
				return fmt.Errorf("create directory %q: %w", p, err)
			}
		}
		rs.dirs = append(rs.dirs, dirMeta{p, n})
		rs.nDirs.Add(1)
		return nil
	case nodeFile:
		if n.Links > 1 {
			key := [2]uint64{n.Device, n.Inode}
			if first, ok := links[key]; ok {
				rs.links = append(rs.links, [2]string{first, p})
				return nil
			}
			links[key] = p
		}
		dir, name := path.Split(p)
		h := rs.handles[dir]
		if h == nil {
			h = &dirHandle{path: dir}
			if dir == "" {
				h.path = "."
			}
			rs.handles[dir] = h
		}
		h.pending++
		rf := &restoreFile{path: p, dir: h, name: name, node: n}
		rs.files = append(rs.files, rf)
		h.files = append(h.files, rf)
		var off int64
		for _, id := range n.Content {
			pack, pb, ok := rs.r.index().lookup(id)
			if !ok || pb.Type != DataBlob {
				rf.errs = append(rf.errs, &BlobError{Blob: id, Err: errors.New("data blob not in index")})
				break
			}
			if rs.isZeroBlob(pb) {
				off += int64(pb.RawLength)
				continue
			}
			m := rs.packs[pack]
			if m == nil {
				m = map[ID]*packBlob{}
				rs.packs[pack] = m
			}
			u := m[id]
			if u == nil {
				u = &packBlob{pb: pb}
				m[id] = u
			}
			u.uses = append(u.uses, blobUse{file: rf, offset: off})
			rf.remaining++
			off += int64(pb.RawLength)
		}
		if off != int64(n.Size) && len(rf.errs) == 0 {
			rf.errs = append(rf.errs, fmt.Errorf("content blobs add up to %d bytes, node says %d", off, n.Size))
		}
		return nil
	case nodeSymlink:
		rs.removeExisting(p)
		if err := rs.root.Symlink(n.LinkTarget, p); err != nil {
			rs.fail(fmt.Errorf("restore symlink %q: %w", p, err))
			return nil
		}
		if err := rs.setMeta(p, n); err != nil {
			rs.fail(fmt.Errorf("restore symlink %q: %w", p, err))
		}
		rs.nFiles.Add(1)
		return nil
	case nodeFIFO, nodeChar, nodeBlock:
		if n.Type != nodeFIFO && !rs.asRoot {
			rs.fail(fmt.Errorf("restore %q: creating a %s needs root", p, n.Type))
			return nil
		}
		rs.removeExisting(p)
		mode := n.Mode & 0o777
		switch n.Type {
		case nodeFIFO:
			mode |= syscall.S_IFIFO
		case nodeChar:
			mode |= syscall.S_IFCHR
		case nodeBlock:
			mode |= syscall.S_IFBLK
		}
		err := rs.inParent(p, func(dirfd int, name string) error {
			return unix.Mknodat(dirfd, name, mode, int(n.Rdev))
		})
		if err == nil {
			err = rs.setMeta(p, n)
		}
		if err != nil {
			rs.fail(fmt.Errorf("restore %s %q: %w", n.Type, p, err))
			return nil
		}
		rs.nFiles.Add(1)
		return nil
	case nodeSocket:
		// A socket is only meaningful to the process that bound it.
		return nil
	}
	return fmt.Errorf("restore %q: unknown node type %d", p, n.Type)
}

// inParent runs fn with a descriptor of p's parent directory (opened through
// the root, so it lies inside target) and p's last element.
func (rs *restorer) inParent(p string, fn func(dirfd int, name string) error) error {
	dir, name := path.Split(p)
	if dir == "" {
		dir = "."
	}
	d, err := rs.root.OpenFile(dir, os.O_RDONLY|syscall.O_DIRECTORY, 0)
	if err != nil {
		return err
	}
	defer func() { _ = d.Close() }()
	return fn(int(d.Fd()), name)
}

// isZeroBlob reports whether a blob is all zeros (a hole of a sparse file),
// by comparing its id with the hash of zeros of its length; such blobs need
// neither fetching nor writing.
func (rs *restorer) isZeroBlob(pb packedBlob) bool {
	// All-zero data compresses to almost nothing; only such blobs are
	// worth hashing a zero buffer of their length for.
	if pb.RawLength < 64<<10 || pb.Flags&flagZstd == 0 || pb.Length > pb.RawLength/256 {
		return false
	}
	id, ok := rs.zeroIDs[pb.RawLength]
	if !ok {
		id = sha256.Sum256(make([]byte, pb.RawLength))
		rs.zeroIDs[pb.RawLength] = id
	}
	return id == pb.ID
}

// setMeta restores owner (as root), mode and mtime of p.
func (rs *restorer) setMeta(p string, n *node) error {
	var errs []error
	if rs.asRoot {
		if err := rs.root.Lchown(p, int(n.UID), int(n.GID)); err != nil {
			errs = append(errs, err)
		}
	}
	mt := time.Unix(0, n.MTime)
	if n.Type == nodeSymlink {
		err := rs.inParent(p, func(dirfd int, name string) error {
			ts := []unix.Timespec{unix.NsecToTimespec(n.MTime), unix.NsecToTimespec(n.MTime)}
			return unix.UtimesNanoAt(dirfd, name, ts, unix.AT_SYMLINK_NOFOLLOW)
		})
		if err != nil {
			errs = append(errs, err)
		}
		return errors.Join(errs...)
	}
	if err := rs.root.Chmod(p, fileMode(n.Mode)); err != nil {
		errs = append(errs, err)
	}
	if err := rs.root.Chtimes(p, mt, mt); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// dirRoot returns the open directory of h, opening it on first use.
func (rs *restorer) dirRoot(h *dirHandle) (*os.Root, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.root == nil && h.err == nil {
		h.root, h.err = rs.root.OpenRoot(h.path)
	}
	return h.root, h.err
}

// release notes that one file of h is finished; the last closes it.
func (rs *restorer) release(h *dirHandle) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.pending--
	if h.pending == 0 && h.root != nil {
		_ = h.root.Close()
		h.root = nil
	}
}

func (rs *restorer) closeHandles() {
	for _, h := range rs.handles {
		h.mu.Lock()
		if h.root != nil {
			_ = h.root.Close()
			h.root = nil
		}
		h.mu.Unlock()
	}
}

// createFiles creates every planned file, directory by directory in
// parallel (file creation is the costliest part of restoring many small
// files, and creations in one directory contend for its lock). Files that
// need no data (empty, all holes, or already failed) are finished here.
func (rs *restorer) createFiles(ctx context.Context) error {
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(runtime.GOMAXPROCS(0))
	for _, h := range rs.handles {
		g.Go(func() error {
			if err := gctx.Err(); err != nil {
				return err
			}
			for _, rf := range h.files {
				if len(rf.errs) == 0 {
					f, err := rs.openFile(rf, true)
					if err != nil {
						rf.errs = append(rf.errs, err)
					} else if rf.remaining == 0 {
						rf.f = f
					} else {
						_ = f.Close()
					}
				}
				if rf.remaining == 0 {
					rs.finishFile(rf)
				}
			}
			h.files = nil
			// Reopened when data arrives: keeps open descriptors to the
			// directories being written, not all of them.
			h.mu.Lock()
			if h.root != nil {
				_ = h.root.Close()
				h.root = nil
			}
			h.mu.Unlock()
			return nil
		})
	}
	return g.Wait()
}

// openFile creates (or truncates) a regular file for writing, or with
// create false opens the file createFiles made. The name is
// one validated path element opened below its directory's root, without
// following a symlink there.
func (rs *restorer) openFile(rf *restoreFile, create bool) (*os.File, error) {
	d, err := rs.dirRoot(rf.dir)
	if err != nil {
		return nil, err
	}
	if !create {
		return d.OpenFile(rf.name, os.O_WRONLY|syscall.O_NOFOLLOW, 0)
	}
	flags := os.O_WRONLY | os.O_CREATE | os.O_TRUNC | syscall.O_NOFOLLOW
	f, err := d.OpenFile(rf.name, flags, 0o600)
	if err != nil {
		// Something else is in the way (a symlink, a fifo, ...): replace it.
		if fi, lerr := d.Lstat(rf.name); lerr == nil && !fi.IsDir() {
			if d.Remove(rf.name) == nil {
				f, err = d.OpenFile(rf.name, flags, 0o600)
			}
		}
		if err != nil {
			return nil, err
		}
	}
	// Sets the size and leaves holes where all-zero blobs were skipped.
	if len(rf.node.Content) != 1 || rf.remaining == 0 {
		if err := f.Truncate(int64(rf.node.Size)); err != nil {
			_ = f.Close()
			return nil, err
		}
	}
	return f, nil
}

// finishFile closes a file whose blobs are all written (or failed) and
// restores its metadata.
func (rs *restorer) finishFile(rf *restoreFile) {
	defer rs.release(rf.dir)
	if rf.f == nil && len(rf.errs) == 0 {
		rf.f, rf.errs = rs.openFileErr(rf)
	}
	var errs []error
	if rf.f != nil {
		if len(rf.errs) == 0 {
			errs = rs.setFileMeta(rf)
		}
		if err := rf.f.Close(); err != nil {
			errs = append(errs, err)
		}
		rf.f = nil
	}
	if len(rf.errs) > 0 {
		rs.fail(fmt.Errorf("restore file %q: %w", rf.path, errors.Join(rf.errs...)))
		return
	}
	if len(errs) > 0 {
		rs.fail(fmt.Errorf("restore file %q: %w", rf.path, errors.Join(errs...)))
		return
	}
	rs.nFiles.Add(1)
	rs.nBytes.Add(int64(rf.node.Size))
}

func (rs *restorer) openFileErr(rf *restoreFile) (*os.File, []error) {
	f, err := rs.openFile(rf, true)
	if err != nil {
		return nil, []error{err}
	}
	return f, nil
}

// setFileMeta restores owner (as root), mode and mtime of an open file.
func (rs *restorer) setFileMeta(rf *restoreFile) []error {
	var errs []error
	n := rf.node
	if rs.asRoot {
		if err := rf.f.Chown(int(n.UID), int(n.GID)); err != nil {
			errs = append(errs, err)
		}
	}
	if err := rf.f.Chmod(fileMode(n.Mode)); err != nil {
		errs = append(errs, err)
	}
	ts := []unix.Timespec{unix.NsecToTimespec(n.MTime), unix.NsecToTimespec(n.MTime)}
	if err := unix.UtimesNanoAt(int(rf.f.Fd()), "", ts, unix.AT_EMPTY_PATH); err != nil {
		// Kernels without AT_EMPTY_PATH for utimensat: by name instead.
		if d, derr := rs.dirRoot(rf.dir); derr == nil {
			mt := time.Unix(0, n.MTime)
			err = d.Chtimes(rf.name, mt, mt)
		}
		if err != nil {
			errs = append(errs, err)
		}
	}
	return errs
}

func fileMode(m uint32) fs.FileMode {
	mode := fs.FileMode(m & 0o777)
	if m&syscall.S_ISUID != 0 {
		mode |= fs.ModeSetuid
	}
	if m&syscall.S_ISGID != 0 {
		mode |= fs.ModeSetgid
	}
	if m&syscall.S_ISVTX != 0 {
		mode |= fs.ModeSticky
	}
	return mode
}

// deliver writes one verified blob (or its error) to every destination.
func (rs *restorer) deliver(b *packBlob, data []byte, berr error) {
	for _, u := range b.uses {
		rf := u.file
		rf.mu.Lock()
		if berr != nil {
			rf.errs = append(rf.errs, berr)
		} else if len(rf.errs) == 0 {
			if rf.f == nil {
				f, err := rs.openFile(rf, false)
				if err != nil {
					rf.errs = append(rf.errs, err)
				}
				rf.f = f
			}
			if rf.f != nil {
				if _, err := rf.f.WriteAt(data, u.offset); err != nil {
					rf.errs = append(rf.errs, err)
				}
			}
		}
		rf.remaining--
		done := rf.remaining == 0
		rf.mu.Unlock()
		if done {
			rs.finishFile(rf)
		}
	}
}

// packRange is a contiguous byte range of a pack holding needed blobs.
type packRange struct {
	pack  ID
	start int64
	end   int64
	blobs []*packBlob
}

// ranges groups the needed blobs of all packs into ranges that one Load
// each fetches; blobs separated by small gaps share a range.
func (rs *restorer) ranges() []packRange {
	const maxGap, maxRange = 256 << 10, 32 << 20
	var out []packRange
	ids := make([]ID, 0, len(rs.packs))
	for id := range rs.packs {
		ids = append(ids, id)
	}
	// Pack order of first use is what keeps few files open at once;
	// approximate it by the files' order.
	order := map[ID]int{}
	for i, f := range rs.files {
		for _, c := range f.node.Content {
			if p, _, ok := rs.r.index().lookup(c); ok {
				if _, seen := order[p]; !seen {
					order[p] = i
				}
			}
		}
	}
	sort.Slice(ids, func(i, j int) bool { return order[ids[i]] < order[ids[j]] })
	for _, pid := range ids {
		blobs := make([]*packBlob, 0, len(rs.packs[pid]))
		for _, b := range rs.packs[pid] {
			blobs = append(blobs, b)
		}
		sort.Slice(blobs, func(i, j int) bool { return blobs[i].pb.Offset < blobs[j].pb.Offset })
		var cur *packRange
		for _, b := range blobs {
			s, e := int64(b.pb.Offset), int64(b.pb.Offset)+int64(b.pb.Length)
			if cur != nil && s-cur.end <= maxGap && e-cur.start <= maxRange {
				cur.end = e
				cur.blobs = append(cur.blobs, b)
				continue
			}
			out = append(out, packRange{pack: pid, start: s, end: e, blobs: []*packBlob{b}})
			cur = &out[len(out)-1]
		}
	}
	return out
}

// fetchAll loads every needed range concurrently (restores from remote
// storage must not be latency bound) and delivers the verified blobs.
func (rs *restorer) fetchAll(ctx context.Context) error {
	rgs := rs.ranges()
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(max(8, 2*runtime.GOMAXPROCS(0)))
	var bufPool sync.Pool
	for _, rg := range rgs {
		g.Go(func() error {
			buf, _ := bufPool.Get().(*[]byte)
			if buf == nil {
				buf = new([]byte)
			}
			err := rs.fetchRange(gctx, rg, buf)
			bufPool.Put(buf)
			return err
		})
	}
	return g.Wait()
}

func (rs *restorer) fetchRange(ctx context.Context, rg packRange, buf *[]byte) error {
	h := backend.Handle{Type: backend.PackFile, Name: rg.pack.String()}
	failAll := func(from int, err error) {
		for _, b := range rg.blobs[from:] {
			rs.deliver(b, nil, &BlobError{Blob: b.pb.ID, Pack: rg.pack, Err: err})
		}
	}
	rd, err := rs.r.be.Load(ctx, h, int(rg.end-rg.start), rg.start)
	if err != nil {
		if ctx.Err() != nil {
			return context.Cause(ctx)
		}
		failAll(0, err)
		return nil
	}
	defer func() { _ = rd.Close() }()
	pos := rg.start
	var plain []byte
	for i, b := range rg.blobs {
		if skip := int64(b.pb.Offset) - pos; skip > 0 {
			if _, err := io.CopyN(io.Discard, rd, skip); err != nil {
				failAll(i, err)
				return nil
			}
		}
		if cap(*buf) < int(b.pb.Length) {
			*buf = make([]byte, b.pb.Length)
		}
		sealed := (*buf)[:b.pb.Length]
		if _, err := io.ReadFull(rd, sealed); err != nil {
			if ctx.Err() != nil {
				return context.Cause(ctx)
			}
			failAll(i, err)
			return nil
		}
		pos = int64(b.pb.Offset) + int64(b.pb.Length)
		pt, err := rs.r.openBlob(b.pb, sealed, plain)
		if err != nil {
			rs.deliver(b, nil, &BlobError{Blob: b.pb.ID, Pack: rg.pack, Err: err})
			continue
		}
		if b.pb.Flags&flagZstd != 0 {
			plain = pt
		}
		rs.deliver(b, pt, nil)
	}
	return nil
}

// RestoreFile streams one regular file (slash path relative to the
// snapshot root) to w. Blobs are fetched a few at a time ahead of the
// writer and each is verified before it is written.
func (r *Repository) RestoreFile(ctx context.Context, snap *Snapshot, p string, w io.Writer) error {
	if err := r.refreshIndex(ctx, false); err != nil {
		return fmt.Errorf("restore %q from snapshot %s: %w", p, snap.ID.Short(), err)
	}
	n, err := r.findNode(ctx, snap.Tree, p)
	if err != nil {
		return fmt.Errorf("restore %q from snapshot %s: %w", p, snap.ID.Short(), err)
	}
	if n.Type != nodeFile {
		return fmt.Errorf("restore %q from snapshot %s: is a %s, not a regular file", p, snap.ID.Short(), n.Type)
	}
	const ahead = 4
	type result struct {
		data []byte
		err  error
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	results := make([]chan result, len(n.Content))
	for i := range results {
		results[i] = make(chan result, 1)
	}
	sem := make(chan struct{}, ahead)
	go func() {
		for i, id := range n.Content {
			select {
			case sem <- struct{}{}:
			case <-ctx.Done():
				return
			}
			go func() {
				b, err := r.loadBlob(ctx, DataBlob, id, nil)
				results[i] <- result{b, err}
			}()
		}
	}()
	digest := sha256.New()
	for i := range n.Content {
		var res result
		select {
		case res = <-results[i]:
		case <-ctx.Done():
			return ctx.Err()
		}
		<-sem
		if res.err != nil {
			return fmt.Errorf("restore %q from snapshot %s: %w", p, snap.ID.Short(), res.err)
		}
		digest.Write(res.data)
		if _, err := w.Write(res.data); err != nil {
			return fmt.Errorf("restore %q: write: %w", p, err)
		}
	}
	if ID(digest.Sum(nil)) != n.Digest {
		return fmt.Errorf("restore %q from snapshot %s: content does not match the file digest", p, snap.ID.Short())
	}
	return nil
}

// findNode resolves a slash path in a tree.
func (r *Repository) findNode(ctx context.Context, treeID ID, p string) (*node, error) {
	c := path.Clean("/" + p)[1:]
	if c == "" {
		return nil, errors.New("empty path")
	}
	els := strings.Split(c, "/")
	id := treeID
	for i, el := range els {
		t, err := r.loadTree(ctx, id)
		if err != nil {
			return nil, err
		}
		n := t.find(el)
		if n == nil {
			return nil, fmt.Errorf("%q: %w", strings.Join(els[:i+1], "/"), fs.ErrNotExist)
		}
		if i == len(els)-1 {
			return n, nil
		}
		if n.Type != nodeDir {
			return nil, fmt.Errorf("%q is not a directory", strings.Join(els[:i+1], "/"))
		}
		id = n.Subtree
	}
	return nil, errors.New("unreachable")
}
