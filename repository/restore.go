package repository

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"os"
	"path"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/custos-backup/custos/repository/format"
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

// Restore tuning. Fetch workers each hold at most one sealed blob and one
// plaintext buffer, so memory stays bounded; there are more of them than
// cores because they also wait on the backend and on file creation.
const (
	restoreFetchWorkers = 8
)

// restoreFile is one regular file being written.
type restoreFile struct {
	path string
	dir  *dirHandle
	name string // last element of path (validated by decodeTree)
	node *format.Node
	// trailingHole: the content ends with skipped all-zero blobs, so the
	// size must be set explicitly.
	trailingHole bool

	mu        sync.Mutex
	fd        int // -1 while not open
	remaining int
	errs      []error
}

// dirHandle is a directory of the restore target, opened once through the
// os.Root while files in it are written, so that each file costs one
// single-element openat relative to it.
type dirHandle struct {
	path    string
	mu      sync.Mutex
	f       *os.File // nil while closed
	fd      int      // -1 while closed
	err     error
	pending int            // files not finished yet
	files   []*restoreFile // files that need no data: created by writeContents
}

// blobUse is one place a blob's plaintext goes.
type blobUse struct {
	file   *restoreFile
	offset int64
}

// packBlob is one needed blob of a pack with all its destinations.
type packBlob struct {
	pb   format.PackedBlob
	uses []blobUse
}

// What restore reads of a repository, each role named where it is used,
// so that a test can hand the restorer a real repository wrapped to count
// or to fail in one of them.

// blobLocator says where a blob is stored: the repository's index.
type blobLocator interface {
	lookupBlob(h BlobHandle) (pack ID, pb format.PackedBlob, ok bool)
}

// treeLoader loads trees by pack, several packs at once
// (Repository.loadTrees).
type treeLoader interface {
	loadTrees(ctx context.Context, ids []ID, keepRaw bool) (map[ID]loadedTree, error)
}

// restoreSource is the repository as a restore reads it: the trees to
// plan from, where each data blob is, and the packs that hold them.
type restoreSource interface {
	blobLocator
	treeLoader
	packSource
}

type restorer struct {
	src    restoreSource
	root   *os.Root
	asRoot bool
	umask  int // -1 when unknown

	files   []*restoreFile // every planned regular file, in walk order
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
	path  string
	depth int
	node  *format.Node
}

func (rs *restorer) fail(err error) {
	rs.errMu.Lock()
	rs.errs = append(rs.errs, err)
	rs.errMu.Unlock()
}

// TreeError reports a directory whose tree blob could not be loaded or
// decoded. The directory itself is restored (empty); everything below it
// is missing. Everything else of the snapshot is still restored.
type TreeError struct {
	Tree ID     // the tree blob
	Path string // slash path of the directory relative to the snapshot root; "" is the root
	Err  error
}

func (e *TreeError) Error() string {
	dir := "the root directory"
	if e.Path != "" {
		dir = fmt.Sprintf("directory %q", e.Path)
	}
	return fmt.Sprintf("tree %s of %s is damaged, its contents are not restored: %v", e.Tree, dir, e.Err)
}

func (e *TreeError) Unwrap() error { return e.Err }

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

// descends reports whether the walk must descend into the directory p,
// without counting p as a use of an include (match does).
func (f *includeFilter) descends(p string) bool {
	for _, inc := range f.inc {
		if inc == p || strings.HasPrefix(p, inc+"/") || strings.HasPrefix(inc, p+"/") {
			return true
		}
	}
	return len(f.inc) == 0
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
// a directory whose tree is damaged fails with a *TreeError naming the
// tree and the directory. Everything else is still restored and the joined
// error is returned at the end. Owners are restored only when running as
// root.
//
// Restore works in three phases: a depth-first walk over the trees (loaded
// ahead by a few workers) creates the directories, symlinks and special
// files and plans which blob goes where; then workers fetch the needed
// pack ranges concurrently, verify every blob and write it, creating each
// regular file with its final mode when its first blob arrives and
// closing it after the last; then hard links and directory metadata.
func (r *Repository) Restore(ctx context.Context, snap *Snapshot, target string, opts RestoreOptions) (*RestoreStats, error) {
	if err := os.MkdirAll(target, 0o700); err != nil {
		return nil, fmt.Errorf("restore to %s: %w", target, err)
	}
	root, err := os.OpenRoot(target)
	if err != nil {
		return nil, fmt.Errorf("restore to %s: %w", target, err)
	}
	defer func() { _ = root.Close() }()
	return r.RestoreRoot(ctx, snap, root, opts)
}

// RestoreRoot is Restore into a folder the caller has opened as root (and
// still owns). A caller that creates folders below its own target (the
// agent's source/dataset) opens them through its root and hands the
// result here, so that no component of the path, created or existing, is
// ever resolved outside that target. Messages name the folder by
// root.Name().
func (r *Repository) RestoreRoot(ctx context.Context, snap *Snapshot, root *os.Root, opts RestoreOptions) (*RestoreStats, error) {
	if err := r.refreshIndex(ctx, false); err != nil {
		return nil, fmt.Errorf("restore snapshot %s: %w", snap.ID.Short(), err)
	}
	return restoreRoot(ctx, r, snap, root, opts)
}

// restoreRoot is RestoreRoot reading from src, whose index is up to date.
func restoreRoot(ctx context.Context, src restoreSource, snap *Snapshot, root *os.Root, opts RestoreOptions) (*RestoreStats, error) {
	target := root.Name()
	filter, err := newIncludeFilter(opts.Include)
	if err != nil {
		return nil, err
	}
	rs := &restorer{src: src, root: root, asRoot: os.Geteuid() == 0, umask: readUmask(),
		packs: map[ID]map[ID]*packBlob{}, zeroIDs: map[uint32]ID{}, handles: map[string]*dirHandle{}}
	stop := rs.startProgress(opts.Progress)
	defer stop()

	if err := rs.plan(ctx, snap.Tree, filter); err != nil {
		return nil, fmt.Errorf("restore snapshot %s to %s: %w", snap.ID.Short(), target, err)
	}
	var treeErrs bool
	for _, e := range rs.errs {
		var te *TreeError
		treeErrs = treeErrs || errors.As(e, &te)
	}
	for i, u := range filter.used {
		// Under a damaged tree an include cannot be matched; the tree
		// error already says why.
		if !u && !treeErrs {
			return nil, fmt.Errorf("restore snapshot %s: include %q matches nothing", snap.ID.Short(), filter.inc[i])
		}
	}
	err = rs.writeContents(ctx)
	rs.closeAll()
	if err != nil {
		return nil, fmt.Errorf("restore snapshot %s to %s: %w", snap.ID.Short(), target, err)
	}
	for _, l := range rs.links {
		rs.removeExisting(l[1])
		if err := rs.root.Link(l[0], l[1]); err != nil {
			rs.fail(fmt.Errorf("restore hard link %q to %q: %w", l[1], l[0], err))
			continue
		}
		rs.nFiles.Add(1)
	}
	if err := rs.restoreDirMeta(ctx); err != nil {
		return nil, fmt.Errorf("restore snapshot %s to %s: %w", snap.ID.Short(), target, err)
	}
	st := &RestoreStats{Files: rs.nFiles.Load(), Dirs: rs.nDirs.Load(), Bytes: rs.nBytes.Load()}
	if len(rs.errs) > 0 {
		return st, fmt.Errorf("restore snapshot %s to %s: %w", snap.ID.Short(), target, errors.Join(rs.errs...))
	}
	return st, nil
}

// readUmask returns the process's umask from /proc (Linux ≥ 4.7), or -1.
// Reading it with umask(2) would briefly change it for every thread.
func readUmask() int {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return -1
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "Umask:"); ok {
			m, err := strconv.ParseUint(strings.TrimSpace(v), 8, 32)
			if err != nil {
				return -1
			}
			return int(m)
		}
	}
	return -1
}

func (rs *restorer) startProgress(fn func(Progress)) func() {
	return startProgress(fn, &rs.nFiles, &rs.nBytes, &rs.current)
}

// plan walks the snapshot depth-first (a directory before its children),
// creating directories, symlinks and special files and recording the
// regular files and where their blobs are. A damaged subtree is recorded
// as a *TreeError and skipped; only a damaged root tree, a cancelled
// context or an unusable node type stop the walk.
func (rs *restorer) plan(ctx context.Context, rootTree ID, filter *includeFilter) error {
	trees, made, err := rs.loadPlanTrees(ctx, rootTree, filter)
	if err != nil {
		return err
	}
	root := trees[rootTree]
	if root.err != nil {
		return &TreeError{Tree: rootTree, Err: root.err}
	}
	links := map[[2]uint64]string{}
	return rs.planTree(ctx, trees, made, "", root.t, filter, links)
}

// loadPlanTrees loads every tree the walk will enter, a level of the
// snapshot at a time, each level with one loadTrees (restores from remote
// storage must not wait a round trip per directory). The plan keeps the
// nodes of every file anyway, so holding the trees costs little more.
//
// The directories of a level are created while their trees load: creating
// thousands of directories is kernel work that would otherwise wait for
// the walk, and the walk's round trips leave the cores idle. The result
// made says which directories exist (true) or failed (false); the walk
// does not descend into one that failed.
func (rs *restorer) loadPlanTrees(ctx context.Context, rootTree ID, filter *includeFilter) (trees map[ID]loadedTree, made map[string]bool, err error) {
	trees = map[ID]loadedTree{}
	made = map[string]bool{}
	level := []planDir{{"", rootTree, nil}}
	for depth := -1; len(level) > 0; depth++ {
		var ids []ID
		for _, d := range level {
			if _, ok := trees[d.id]; !ok {
				ids = append(ids, d.id)
			}
		}
		var got map[ID]loadedTree
		g, gctx := errgroup.WithContext(ctx)
		g.Go(func() error {
			var err error
			got, err = rs.src.loadTrees(gctx, ids, false)
			return err
		})
		ok := make([]bool, len(level))
		if depth >= 0 {
			rs.mkdirAll(gctx, g, level, ok)
		}
		if err := g.Wait(); err != nil {
			return nil, nil, err
		}
		if depth >= 0 {
			for i, d := range level {
				if ok[i] {
					rs.dirs = append(rs.dirs, dirMeta{path: d.path, depth: depth, node: d.node})
				}
			}
		}
		maps.Copy(trees, got)
		var next []planDir
		for i, d := range level {
			if depth >= 0 {
				made[d.path] = ok[i]
				if !ok[i] {
					continue
				}
			}
			t := trees[d.id].t
			if t == nil {
				continue
			}
			for i := range t.Nodes {
				n := &t.Nodes[i]
				if n.Type != format.NodeDir {
					continue
				}
				p := joinPath(d.path, n.Name)
				// A subtree seen before is entered again here: the
				// include filter may reach other paths below it.
				if filter.descends(p) {
					next = append(next, planDir{p, n.Subtree, n})
				}
			}
		}
		level = next
	}
	return trees, made, nil
}

// planDir is a directory the plan enters: its path, tree and node.
type planDir struct {
	path string
	id   ID
	node *format.Node
}

// mkdirAll creates the directories dirs (whose parents exist) with a few
// goroutines of g, and sets ok[i] when dirs[i] exists afterwards.
func (rs *restorer) mkdirAll(ctx context.Context, g *errgroup.Group, dirs []planDir, ok []bool) {
	var next atomic.Int64
	for range min(len(dirs), max(2, runtime.GOMAXPROCS(0))) {
		g.Go(func() error {
			for {
				i := int(next.Add(1) - 1)
				if i >= len(dirs) {
					return nil
				}
				if err := ctx.Err(); err != nil {
					return context.Cause(ctx)
				}
				ok[i] = rs.mkdir(dirs[i].path)
			}
		})
	}
}

func joinPath(prefix, name string) string {
	if prefix == "" {
		return name
	}
	return prefix + "/" + name
}

func (rs *restorer) planTree(ctx context.Context, trees map[ID]loadedTree, made map[string]bool, prefix string, t *format.Tree, filter *includeFilter, links map[[2]uint64]string) error {
	for i := range t.Nodes {
		if err := ctx.Err(); err != nil {
			return context.Cause(ctx)
		}
		n := &t.Nodes[i]
		p := joinPath(prefix, n.Name)
		inc, desc := filter.match(p)
		if !inc && !(desc && n.Type == format.NodeDir) {
			continue
		}
		if n.Type != format.NodeDir {
			rs.create(p, n, links)
			continue
		}
		ok, tried := made[p]
		if !tried {
			return fmt.Errorf("directory %q was not created", p) // loadPlanTrees missed it: a bug
		}
		if !ok {
			continue
		}
		sub := trees[n.Subtree]
		if sub.err != nil {
			rs.fail(&TreeError{Tree: n.Subtree, Path: p, Err: sub.err})
			continue
		}
		if sub.t == nil {
			return fmt.Errorf("tree %s of %q was not loaded", n.Subtree, p) // loadPlanTrees missed it: a bug
		}
		if err := rs.planTree(ctx, trees, made, p, sub.t, filter, links); err != nil {
			return err
		}
	}
	return nil
}

// removeExisting clears p for a new non-directory entry.
func (rs *restorer) removeExisting(p string) {
	if fi, err := rs.root.Lstat(p); err == nil && !fi.IsDir() {
		_ = rs.root.Remove(p)
	}
}

// mkdir creates the directory p and reports whether the walk can descend
// into it.
func (rs *restorer) mkdir(p string) bool {
	s := p
	rs.current.Store(&s)
	if err := rs.root.Mkdir(p, 0o700); err != nil {
		fi, serr := rs.root.Lstat(p)
		switch {
		case serr == nil && fi.Mode()&fs.ModeSymlink != 0:
			// Never followed: it could lead anywhere.
			rs.fail(fmt.Errorf("create directory %q: %q is a symbolic link in the target; refusing to restore through it", p, p))
			return false
		case serr != nil || !fi.IsDir():
			rs.fail(fmt.Errorf("create directory %q: %w", p, err))
			return false
		}
	}
	rs.nDirs.Add(1)
	return true
}

// create makes the entry for one non-directory node; file content is
// written later.
func (rs *restorer) create(p string, n *format.Node, links map[[2]uint64]string) {
	s := p
	rs.current.Store(&s)
	switch n.Type {
	case format.NodeFile:
		rs.planFile(p, n, links)
	case format.NodeSymlink:
		rs.removeExisting(p)
		if err := rs.root.Symlink(n.LinkTarget, p); err != nil {
			rs.fail(fmt.Errorf("restore symlink %q: %w", p, err))
			return
		}
		if err := rs.setMeta(p, n); err != nil {
			rs.fail(fmt.Errorf("restore symlink %q: %w", p, err))
		}
		rs.nFiles.Add(1)
	case format.NodeFIFO, format.NodeChar, format.NodeBlock:
		if n.Type != format.NodeFIFO && !rs.asRoot {
			rs.fail(fmt.Errorf("restore %q: creating a %s needs root", p, n.Type))
			return
		}
		rs.removeExisting(p)
		mode := n.Mode & 0o777
		switch n.Type {
		case format.NodeFIFO:
			mode |= syscall.S_IFIFO
		case format.NodeChar:
			mode |= syscall.S_IFCHR
		case format.NodeBlock:
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
			return
		}
		rs.nFiles.Add(1)
	case format.NodeSocket:
		// A socket is only meaningful to the process that bound it.
	default:
		rs.fail(fmt.Errorf("restore %q: unknown node type %d", p, n.Type))
	}
}

// planFile records a regular file and the blobs it needs.
func (rs *restorer) planFile(p string, n *format.Node, links map[[2]uint64]string) {
	if n.Links > 1 {
		key := [2]uint64{n.Device, n.Inode}
		if first, ok := links[key]; ok {
			rs.links = append(rs.links, [2]string{first, p})
			return
		}
		links[key] = p
	}
	dir, name := path.Split(p)
	h := rs.handles[dir]
	if h == nil {
		h = &dirHandle{path: dir, fd: -1}
		if dir == "" {
			h.path = "."
		}
		rs.handles[dir] = h
	}
	h.pending++
	rf := &restoreFile{path: p, dir: h, name: name, node: n, fd: -1}
	rs.files = append(rs.files, rf)
	type located struct {
		pack ID
		pb   format.PackedBlob
		off  int64
	}
	var (
		off  int64
		locs = make([]located, 0, len(n.Content))
	)
	for _, id := range n.Content {
		pack, pb, ok := rs.src.lookupBlob(format.DataHandle(id))
		if !ok {
			rf.errs = append(rf.errs, notInIndex(DataBlob, id))
			break
		}
		if rs.isZeroBlob(pb) {
			rf.trailingHole = true
		} else {
			rf.trailingHole = false
			locs = append(locs, located{pack, pb, off})
		}
		off += int64(pb.RawLength)
	}
	if off != int64(n.Size) && len(rf.errs) == 0 {
		rf.errs = append(rf.errs, fmt.Errorf("content blobs add up to %d bytes, node says %d", off, n.Size))
	}
	if len(rf.errs) == 0 {
		for _, l := range locs {
			m := rs.packs[l.pack]
			if m == nil {
				m = map[ID]*packBlob{}
				rs.packs[l.pack] = m
			}
			u := m[l.pb.ID]
			if u == nil {
				u = &packBlob{pb: l.pb}
				m[l.pb.ID] = u
			}
			u.uses = append(u.uses, blobUse{file: rf, offset: l.off})
			rf.remaining++
		}
	}
	if rf.remaining == 0 {
		h.files = append(h.files, rf)
	}
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
func (rs *restorer) isZeroBlob(pb format.PackedBlob) bool {
	// All-zero data compresses to almost nothing; only such blobs are
	// worth hashing a zero buffer of their length for.
	if pb.RawLength < 64<<10 || pb.Flags&format.FlagZstd == 0 || pb.Length > pb.RawLength/256 {
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
func (rs *restorer) setMeta(p string, n *format.Node) error {
	var errs []error
	if rs.asRoot {
		if err := rs.root.Lchown(p, int(n.UID), int(n.GID)); err != nil {
			errs = append(errs, err)
		}
	}
	mt := time.Unix(0, n.MTime)
	if n.Type == format.NodeSymlink {
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

// restoreDirMeta sets the directories' metadata after all their contents
// exist, so that creating entries does not change the restored mtimes.
// Deepest directories go first (a directory restored without search
// permission would block its children); directories of one depth go in
// parallel.
func (rs *restorer) restoreDirMeta(ctx context.Context) error {
	byDepth := map[int][]dirMeta{}
	maxDepth := -1
	for _, d := range rs.dirs {
		byDepth[d.depth] = append(byDepth[d.depth], d)
		maxDepth = max(maxDepth, d.depth)
	}
	for depth := maxDepth; depth >= 0; depth-- {
		g, gctx := errgroup.WithContext(ctx)
		g.SetLimit(runtime.GOMAXPROCS(0))
		for _, d := range byDepth[depth] {
			g.Go(func() error {
				if err := gctx.Err(); err != nil {
					return err
				}
				if err := rs.setMeta(d.path, d.node); err != nil {
					rs.fail(fmt.Errorf("restore %q: %w", d.path, err))
				}
				return nil
			})
		}
		if err := g.Wait(); err != nil {
			return err
		}
	}
	return nil
}

// dirFD returns a descriptor of h's directory, opening it through the root
// on first use.
func (rs *restorer) dirFD(h *dirHandle) (int, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.f == nil && h.err == nil {
		h.f, h.err = rs.root.OpenFile(h.path, os.O_RDONLY|syscall.O_DIRECTORY, 0)
		if h.err == nil {
			h.fd = int(h.f.Fd())
		}
	}
	return h.fd, h.err
}

// release notes that one file of h is finished; the last closes it.
func (rs *restorer) release(h *dirHandle) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.pending--
	if h.pending == 0 && h.f != nil {
		_ = h.f.Close()
		h.f, h.fd = nil, -1
	}
}

// closeAll closes what a cancelled restore left open.
func (rs *restorer) closeAll() {
	for _, rf := range rs.files {
		rf.mu.Lock()
		if rf.fd >= 0 {
			_ = unix.Close(rf.fd)
			rf.fd = -1
		}
		rf.mu.Unlock()
	}
	for _, h := range rs.handles {
		h.mu.Lock()
		if h.f != nil {
			_ = h.f.Close()
			h.f, h.fd = nil, -1
		}
		h.mu.Unlock()
	}
}

// createFile creates a regular file for writing, with its final
// permission bits (so that usually no chmod is needed). The name is one
// path element validated by decodeTree, created relative to a directory
// opened through the root; O_EXCL never follows a symlink, so the file
// lies inside the target. Something already in the way (an older file, a
// symlink, a fifo) is replaced; a directory in the way is an error.
func (rs *restorer) createFile(rf *restoreFile) (int, error) {
	dfd, err := rs.dirFD(rf.dir)
	if err != nil {
		return -1, err
	}
	const flags = unix.O_WRONLY | unix.O_CREAT | unix.O_EXCL | unix.O_NOFOLLOW | unix.O_CLOEXEC
	perm := rf.node.Mode & 0o777
	for replaced := false; ; {
		fd, err := unix.Openat(dfd, rf.name, flags, perm)
		switch {
		case err == nil:
			return fd, nil
		case errors.Is(err, unix.EINTR):
			continue
		case errors.Is(err, unix.EEXIST) && !replaced:
			if err := unix.Unlinkat(dfd, rf.name, 0); err != nil && !errors.Is(err, unix.ENOENT) {
				return -1, fmt.Errorf("replace existing entry: %w", err)
			}
			replaced = true
			continue
		}
		return -1, fmt.Errorf("create: %w", err)
	}
}

// needsChmod reports whether a file created with mode's permission bits
// ends up with other bits than mode: the umask took some away, or mode has
// setuid/setgid/sticky (which open ignores and chown clears).
func (rs *restorer) needsChmod(mode uint32) bool {
	return rs.umask < 0 || mode&0o7000 != 0 || int(mode&0o777)&rs.umask != 0
}

// finishFile sets size and metadata of a file whose blobs are all written
// (or failed) and closes it. A file that needs no data is created here.
func (rs *restorer) finishFile(rf *restoreFile) {
	defer rs.release(rf.dir)
	if rf.fd < 0 && len(rf.errs) == 0 {
		fd, err := rs.createFile(rf)
		if err != nil {
			rf.errs = append(rf.errs, err)
		}
		rf.fd = fd
	}
	var errs []error
	if rf.fd >= 0 {
		if len(rf.errs) == 0 {
			errs = rs.setFileMeta(rf)
		}
		if err := unix.Close(rf.fd); err != nil {
			errs = append(errs, fmt.Errorf("close: %w", err))
		}
		rf.fd = -1
	}
	if len(rf.errs) > 0 {
		rs.fail(fmt.Errorf("restore file %q: %w", rf.path, errors.Join(rf.errs...)))
		return
	}
	if len(errs) > 0 {
		rs.fail(fmt.Errorf("restore file %q: %w", rf.path, errors.Join(errs...)))
		return
	}
	rs.current.Store(&rf.path)
	rs.nFiles.Add(1)
	rs.nBytes.Add(int64(rf.node.Size))
}

// setFileMeta sets the size where the content ends in a hole, and restores
// owner (as root), mode and mtime of an open file.
func (rs *restorer) setFileMeta(rf *restoreFile) []error {
	var errs []error
	n := rf.node
	if rf.trailingHole {
		if err := unix.Ftruncate(rf.fd, int64(n.Size)); err != nil {
			errs = append(errs, fmt.Errorf("set size: %w", err))
		}
	}
	if rs.asRoot {
		if err := unix.Fchown(rf.fd, int(n.UID), int(n.GID)); err != nil {
			errs = append(errs, fmt.Errorf("chown: %w", err))
		}
	}
	// After chown, which clears setuid and setgid.
	if rs.needsChmod(n.Mode) {
		if err := unix.Fchmod(rf.fd, n.Mode&0o7777); err != nil {
			errs = append(errs, fmt.Errorf("chmod: %w", err))
		}
	}
	ts := []unix.Timespec{unix.NsecToTimespec(n.MTime), unix.NsecToTimespec(n.MTime)}
	if err := unix.UtimesNanoAt(rf.fd, "", ts, unix.AT_EMPTY_PATH); err != nil {
		// Kernels without AT_EMPTY_PATH for utimensat: by name instead.
		if dfd, derr := rs.dirFD(rf.dir); derr == nil {
			err = unix.UtimesNanoAt(dfd, rf.name, ts, unix.AT_SYMLINK_NOFOLLOW)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("set times: %w", err))
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

// pwriteAll writes b at off, retrying short writes and EINTR.
func pwriteAll(fd int, b []byte, off int64) error {
	for len(b) > 0 {
		n, err := unix.Pwrite(fd, b, off)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return fmt.Errorf("write: %w", err)
		}
		if n == 0 {
			return fmt.Errorf("write: %w", io.ErrShortWrite)
		}
		b, off = b[n:], off+int64(n)
	}
	return nil
}

// deliver writes one verified blob (or its error) to every destination.
func (rs *restorer) deliver(b *packBlob, data []byte, berr error) {
	for _, u := range b.uses {
		rf := u.file
		rf.mu.Lock()
		if berr != nil {
			rf.errs = append(rf.errs, berr)
		} else if len(rf.errs) == 0 {
			if rf.fd < 0 {
				fd, err := rs.createFile(rf)
				if err != nil {
					rf.errs = append(rf.errs, err)
				}
				rf.fd = fd
			}
			if rf.fd >= 0 {
				if err := pwriteAll(rf.fd, data, u.offset); err != nil {
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

// packRange is a contiguous byte range of a pack holding needed blobs,
// which one request loads.
type packRange struct {
	pack    ID
	blobs   []*packBlob
	entries []format.PackedBlob // of blobs
}

// ranges groups the needed blobs of all packs into ranges that one Load
// each fetches; blobs separated by small gaps share a range.
func (rs *restorer) ranges() []packRange {
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
			if p, _, ok := rs.src.lookupBlob(format.DataHandle(c)); ok {
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
		entries := make([]format.PackedBlob, len(blobs))
		for i, b := range blobs {
			entries[i] = b.pb
		}
		from := 0
		for _, to := range rangeSplit(entries) {
			out = append(out, packRange{pack: pid, blobs: blobs[from:to], entries: entries[from:to]})
			from = to
		}
	}
	return out
}

// writeContents creates and writes every planned regular file: first the
// files that need no data (empty, all holes, or already failed), then the
// needed pack ranges, fetched concurrently (restores from remote storage
// must not be latency bound, and creating many small files is kernel
// work that runs on every core). Every blob is verified before any of its
// bytes is written.
func (rs *restorer) writeContents(ctx context.Context) error {
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(rs.src.readers(max(restoreFetchWorkers, 2*runtime.GOMAXPROCS(0))))
	for _, h := range rs.handles {
		if len(h.files) == 0 {
			continue
		}
		files := h.files
		h.files = nil
		g.Go(func() error {
			for _, rf := range files {
				if err := gctx.Err(); err != nil {
					return err
				}
				rs.finishFile(rf)
			}
			return nil
		})
	}
	// One reader per worker, whose buffers are reused.
	var pool sync.Pool
	for _, rg := range rs.ranges() {
		g.Go(func() error {
			pr, _ := pool.Get().(*packReader)
			if pr == nil {
				pr = rs.src.newPackReader(false)
			}
			err := pr.read(gctx, rg.pack, rg.entries, func(b readBlob) error {
				rs.deliver(rg.blobs[b.Index], b.Plain, b.Err)
				return nil
			})
			pool.Put(pr)
			return err
		})
	}
	return g.Wait()
}

// RestoreFile streams one regular file (slash path relative to the
// snapshot root) to w. Blobs are fetched a few at a time ahead of the
// writer and each is verified before it is written.
func (r *Repository) RestoreFile(ctx context.Context, snap *Snapshot, p string, w io.Writer) error {
	if err := r.refreshIndex(ctx, false); err != nil {
		return fmt.Errorf("restore %q from snapshot %s: %w", p, snap.ID.Short(), err)
	}
	return restoreFileFrom(ctx, r, snap, p, w)
}

// treeGetter loads, verifies and decodes one tree (Repository.loadTree).
type treeGetter interface {
	loadTree(ctx context.Context, id ID) (*format.Tree, error)
}

// blobLoader loads one blob and verifies it (Repository.loadBlob).
type blobLoader interface {
	loadBlob(ctx context.Context, t BlobType, id ID, buf []byte) ([]byte, error)
}

// fileSource is the repository as RestoreFile reads it: the trees down to
// the file, then its blobs one by one.
type fileSource interface {
	treeGetter
	blobLoader
}

// restoreFileFrom is RestoreFile reading from src, whose index is up to date.
func restoreFileFrom(ctx context.Context, src fileSource, snap *Snapshot, p string, w io.Writer) error {
	n, err := findNode(ctx, src, snap.Tree, p)
	if err != nil {
		return fmt.Errorf("restore %q from snapshot %s: %w", p, snap.ID.Short(), err)
	}
	return writeFileNode(ctx, src, snap, p, n, w)
}

// WalkFiles calls fn for the entry at p in snap and, when it is a folder,
// for every entry below it, depth first, a folder before what it holds.
// For a regular file write streams its content to a writer, as
// RestoreFile does (each blob verified, the whole against the file's
// digest); for anything else write is nil. It refreshes the index once and
// reads a remote repository's trees a level at a time: where RestoreFile
// per file would walk from the root (and list the index) for every file,
// this reads each tree once. fn returning an error ends the walk with it.
func (r *Repository) WalkFiles(ctx context.Context, snap *Snapshot, p string, fn func(e Entry, write func(io.Writer) error) error) error {
	if err := r.refreshIndex(ctx, false); err != nil {
		return fmt.Errorf("snapshot %s: %w", snap.ID.Short(), err)
	}
	p = path.Clean("/" + p)[1:]
	var fnErr error // returned as fn gave it, not as the walk's
	visit := func(q string, n *format.Node) error {
		var write func(io.Writer) error
		if n.Type == format.NodeFile {
			write = func(w io.Writer) error { return writeFileNode(ctx, r, snap, q, n, w) }
		}
		fnErr = fn(entryOf(q, n), write)
		return fnErr
	}
	sub := snap.Tree
	if p != "" {
		n, err := findNode(ctx, r, snap.Tree, p)
		if err != nil {
			return fmt.Errorf("snapshot %s: %w", snap.ID.Short(), err)
		}
		if err := visit(p, n); err != nil || n.Type != format.NodeDir {
			return err
		}
		sub = n.Subtree
	}
	err := walkWholeTreeAt(ctx, r, p, sub, visit)
	if err != nil && err != fnErr && ctx.Err() == nil {
		return fmt.Errorf("snapshot %s: %w", snap.ID.Short(), err)
	}
	return err
}

// digestVerifier is a writer that checks the SHA-256 of everything
// written to it against a digest of its own once the file is complete,
// and fails the file otherwise (a BagIt bag's payload file).
type digestVerifier interface {
	VerifiesSHA256() [32]byte
}

// writeFileNode writes the content of the file n (at p in snap) to w,
// verifying each blob and the whole against n's digest. The whole is
// hashed only when nothing else checks it: a file of one blob whose digest
// is that blob's id (most files) is checked by loading the blob, which
// compares its bytes with its id; and a writer that verifies n's digest
// itself (digestVerifier: an export into a bag) checks what it is given.
func writeFileNode(ctx context.Context, src blobLoader, snap *Snapshot, p string, n *format.Node, w io.Writer) error {
	if n.Type != format.NodeFile {
		return fmt.Errorf("restore %q from snapshot %s: is a %s, not a regular file", p, snap.ID.Short(), n.Type)
	}
	checked := len(n.Content) == 1 && n.Content[0] == n.Digest
	if dv, ok := w.(digestVerifier); ok && ID(dv.VerifiesSHA256()) == n.Digest {
		checked = true
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
				b, err := src.loadBlob(ctx, DataBlob, id, nil)
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
		if !checked {
			digest.Write(res.data)
		}
		if _, err := w.Write(res.data); err != nil {
			return fmt.Errorf("restore %q: write: %w", p, err)
		}
	}
	if !checked && ID(digest.Sum(nil)) != n.Digest {
		return fmt.Errorf("restore %q from snapshot %s: content does not match the file digest", p, snap.ID.Short())
	}
	return nil
}

// findNode resolves a slash path in a tree.
func findNode(ctx context.Context, trees treeGetter, treeID ID, p string) (*format.Node, error) {
	c := path.Clean("/" + p)[1:]
	if c == "" {
		return nil, errors.New("empty path")
	}
	els := strings.Split(c, "/")
	id := treeID
	for i, el := range els {
		t, err := trees.loadTree(ctx, id)
		if err != nil {
			return nil, err
		}
		n := t.Find(el)
		if n == nil {
			return nil, fmt.Errorf("%q: %w", strings.Join(els[:i+1], "/"), fs.ErrNotExist)
		}
		if i == len(els)-1 {
			return n, nil
		}
		if n.Type != format.NodeDir {
			return nil, fmt.Errorf("%q is not a directory", strings.Join(els[:i+1], "/"))
		}
		id = n.Subtree
	}
	return nil, errors.New("unreachable")
}
