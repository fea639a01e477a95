package repository

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"github.com/custos-backup/custos/repository/format"
	"golang.org/x/sync/errgroup"
	"golang.org/x/sys/unix"
)

// Progress reports how far a backup or restore is.
type Progress struct {
	Files, Bytes           int64 // done so far
	TotalFiles, TotalBytes int64 // 0 when unknown
	Current                string
}

// BackupOptions tune one backup.
type BackupOptions struct {
	Dataset, Host string
	Tags          []string
	BackupID      string
	Time          time.Time // zero: now
	Parent        *Snapshot // nil: latest snapshot with same Dataset and Host, if any
	NoParent      bool      // read every file
	Excludes      []string  // patterns on slash paths relative to root (path.Match per element; a pattern without "/" matches any base name)
	Progress      func(Progress)
}

// maxRereads is how often a file that changed while being read is read
// again before it is stored as read, with a warning.
const maxRereads = 2

// blobSink is what backup needs of the blob saver: buffers to read into,
// and a place to put blobs, deduplicated against the index and each other.
type blobSink interface {
	newBuf(n int) (full, data []byte)
	save(t BlobType, id ID, full []byte, n int) (bool, error)
	saveCopy(t BlobType, data []byte) (ID, error)
	added() (bytes, blobs int64)
}

// backupState is the shared state of one Backup run.
type backupState struct {
	r     *Repository
	ctx   context.Context
	saver blobSink
	bufs  *bufPool
	opts  *BackupOptions

	files chan *fileJob

	warnMu   sync.Mutex
	warnings []string

	nFiles, nDirs, nNew, nChanged, nUnmod atomic.Int64
	nSkipped                              atomic.Int64
	bytes, bytesRead                      atomic.Int64
	current                               atomic.Pointer[string]

	rootDone chan ID
	chunkers chan *chunkState // free chunkers (nil: not made yet)

	// Directories are walked by up to cap(walkers) goroutines at once
	// (the first walker included), started in the write session's group
	// so that a failure stops the others. On a cold page cache each
	// readdir, lstat and parent-tree read waits for the disk; one walker
	// would wait for them one at a time.
	g       *errgroup.Group
	walkers chan struct{}
	walkWG  sync.WaitGroup

	// loadParent loads a tree of the parent snapshot: on remote storage
	// from trees read ahead of the walkers (loadAhead).
	loadParent treeLoadFunc
}

func (b *backupState) warn(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	b.r.log.Warn("backup: " + msg)
	b.warnMu.Lock()
	b.warnings = append(b.warnings, msg)
	b.warnMu.Unlock()
}

// skip warns about a file or folder that could not be read and counts it.
func (b *backupState) skip(format string, args ...any) {
	b.nSkipped.Add(1)
	b.warn(format, args...)
}

// dirState collects the nodes of one directory until all of them are known.
type dirState struct {
	nodes     []format.Node
	pending   atomic.Int64
	parent    *dirState
	parentIdx int
	oldID     ID // the directory's subtree id in the parent snapshot
}

// fileJob asks a worker to read one regular file into nodes[idx] of dir.
type fileJob struct {
	dir  *dirState
	idx  int
	path string
	rel  string
	st   syscall.Stat_t
	old  *format.Node // same file in the parent snapshot, if any
}

// Backup saves root/paths as a new snapshot. See BackupOptions.
func (r *Repository) Backup(ctx context.Context, root string, paths []string, opts BackupOptions) (*Snapshot, error) {
	start := time.Now()
	absRoot, err := filepath.Abs(root)
	if err != nil {
		return nil, fmt.Errorf("backup %s: %w", root, err)
	}
	if fi, err := os.Stat(absRoot); err != nil {
		return nil, fmt.Errorf("backup %s: %w", absRoot, err)
	} else if !fi.IsDir() {
		return nil, fmt.Errorf("backup %s: the root is not a directory", absRoot)
	}
	sel, err := newSelection(paths)
	if err != nil {
		return nil, fmt.Errorf("backup %s: %w", absRoot, err)
	}
	for _, p := range paths {
		if _, err := os.Lstat(filepath.Join(absRoot, filepath.FromSlash(path.Clean(p)))); err != nil {
			return nil, fmt.Errorf("backup %s: %w", absRoot, err)
		}
	}
	if err := checkExcludes(opts.Excludes); err != nil {
		return nil, fmt.Errorf("backup %s: %w", absRoot, err)
	}
	var parent *Snapshot
	w, err := r.beginWrite(ctx, true, func(ctx context.Context) (err error) {
		parent, err = r.findParent(ctx, &opts)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("backup %s: %w", absRoot, err)
	}
	defer w.end()
	w.commitAsYouGo = true
	parentTree := r.parentTree(ctx, parent)
	if parentTree == nil {
		parent = nil
	}

	w.start()
	g, gctx := w.g, w.ctx
	b := &backupState{
		r:        r,
		ctx:      gctx,
		saver:    w.saver,
		bufs:     w.bufs,
		opts:     &opts,
		files:    make(chan *fileJob, 64),
		rootDone: make(chan ID, 1),
		chunkers: make(chan *chunkState, 2*runtime.GOMAXPROCS(0)),
		g:        g,
		walkers:  make(chan struct{}, maxWalkers),
	}
	for range cap(b.chunkers) {
		b.chunkers <- nil // made when first needed
	}
	b.loadParent = r.loadTree
	if parentTree != nil {
		// On remote storage a tree per folder would cost a round trip
		// each (a no-change backup of the bench dataset over S3 at 30 ms
		// took 6 s, 0.4 s on a local disk).
		var stop func()
		b.loadParent, stop = loadAhead(gctx, r, parentTree)
		defer stop()
	}
	for _, msg := range r.indexDamageWarnings() {
		b.warn("%s", msg)
	}
	stopProgress := b.startProgress()
	// Two readers per core: while one waits for the disk (or for pages
	// the kernel dropped from the cache), the other keeps the core busy.
	// So two chunkers per core too (b.chunkers, which hold the large
	// buffers): with one per core, a large file's reads, which go to the
	// disk without the kernel's read-ahead, left its core idle while it
	// waited (a cold first backup of the bench dataset: 5.7-6.6 s with
	// one per core, 5.7-6.2 with two, 3-4 MiB more RSS; no slower warm).
	workers := 2 * runtime.GOMAXPROCS(0)
	var workWG sync.WaitGroup
	workWG.Add(workers)
	for range workers {
		g.Go(func() error { defer workWG.Done(); return b.fileWorker() })
	}
	walkErr := make(chan error, 1)
	go func() {
		err := b.walkRoot(absRoot, sel, parentTree)
		close(b.files)
		walkErr <- err
	}()
	var rootID ID
	err = <-walkErr
	workWG.Wait()
	if err == nil {
		select {
		case rootID = <-b.rootDone:
		default:
			err = context.Cause(gctx)
			if err == nil {
				err = errors.New("internal error: root tree not completed")
			}
		}
	}
	packs, ferr := w.flush()
	if err == nil {
		err = ferr
	}
	stopProgress()
	if err != nil {
		return nil, fmt.Errorf("backup %s: %w", absRoot, err)
	}
	if err := w.commitPacks(packs); err != nil {
		return nil, fmt.Errorf("backup %s: %w", absRoot, err)
	}
	sn := b.snapshot(opts, rootID, start)
	sn.Root = absRoot
	sn.Paths = append([]string(nil), paths...)
	if parent != nil {
		pid := parent.ID
		sn.Parent = &pid
	}
	if err := w.saveSnapshot(sn); err != nil {
		return nil, fmt.Errorf("backup %s: %w", absRoot, err)
	}
	return sn, nil
}

func (b *backupState) snapshot(opts BackupOptions, rootID ID, start time.Time) *Snapshot {
	t := opts.Time
	if t.IsZero() {
		t = start
	}
	sort.Strings(b.warnings)
	bytesAdded, blobsAdded := b.saver.added()
	return &Snapshot{
		Time:     t.UTC(),
		Dataset:  opts.Dataset,
		Host:     opts.Host,
		Tags:     append([]string(nil), opts.Tags...),
		BackupID: opts.BackupID,
		Tree:     rootID,
		Warnings: b.warnings,
		Summary: Summary{
			Files: b.nFiles.Load(), Dirs: b.nDirs.Load(),
			FilesNew: b.nNew.Load(), FilesChanged: b.nChanged.Load(), FilesUnmodified: b.nUnmod.Load(),
			Bytes: b.bytes.Load(), BytesRead: b.bytesRead.Load(),
			BytesAdded: bytesAdded, BlobsAdded: blobsAdded,
			Duration: time.Since(start), Skipped: b.nSkipped.Load(),
		},
	}
}

// findParent picks the parent snapshot: the one given, else the latest of
// the dataset from this host.
func (r *Repository) findParent(ctx context.Context, opts *BackupOptions) (*Snapshot, error) {
	if opts.NoParent {
		return nil, nil
	}
	if opts.Parent != nil {
		return opts.Parent, nil
	}
	snaps, err := r.Snapshots(ctx)
	if err != nil {
		return nil, err
	}
	var parent *Snapshot
	for _, sn := range snaps {
		if sn.Dataset == opts.Dataset && sn.Host == opts.Host {
			parent = sn
		}
	}
	return parent, nil
}

// parentTree loads the root tree of parent, if there is one. A parent
// whose tree cannot be loaded is no parent: every file is read.
func (r *Repository) parentTree(ctx context.Context, parent *Snapshot) *format.Tree {
	if parent == nil {
		return nil
	}
	t, err := r.loadTree(ctx, parent.Tree)
	if err != nil {
		r.log.Warn("backup: cannot load the parent snapshot's tree; reading every file", "parent", parent.ID.Short(), "err", err)
		return nil
	}
	return t
}

func (b *backupState) startProgress() (stop func()) {
	return startProgress(b.opts.Progress, &b.nFiles, &b.bytes, &b.current)
}

// startProgress calls fn with the counters every 250 ms until stop, and
// once more at stop, so that the caller's last report is the final one.
func startProgress(fn func(Progress), files, bytes *atomic.Int64, current *atomic.Pointer[string]) (stop func()) {
	if fn == nil {
		return func() {}
	}
	report := func() {
		p := Progress{Files: files.Load(), Bytes: bytes.Load()}
		if c := current.Load(); c != nil {
			p.Current = *c
		}
		fn(p)
	}
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
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
	})
	return func() {
		close(done)
		wg.Wait()
		report()
	}
}

// selection is the set of paths given to Backup, as a trie.
type selection struct {
	all      bool
	children map[string]*selection
}

func newSelection(paths []string) (*selection, error) {
	s := &selection{children: map[string]*selection{}}
	if len(paths) == 0 {
		s.all = true
		return s, nil
	}
	for _, p := range paths {
		c := path.Clean(filepath.ToSlash(p))
		if path.IsAbs(c) || c == ".." || strings.HasPrefix(c, "../") {
			return nil, fmt.Errorf("path %q is not relative to the root", p)
		}
		if c == "." {
			s.all = true
			continue
		}
		cur := s
		for _, el := range strings.Split(c, "/") {
			next := cur.children[el]
			if next == nil {
				next = &selection{children: map[string]*selection{}}
				cur.children[el] = next
			}
			cur = next
		}
		cur.all = true
	}
	return s, nil
}

func checkExcludes(patterns []string) error {
	for _, p := range patterns {
		for _, el := range strings.Split(strings.TrimPrefix(p, "/"), "/") {
			if _, err := path.Match(el, ""); err != nil {
				return fmt.Errorf("exclude pattern %q: %w", p, err)
			}
		}
	}
	return nil
}

// excluded reports whether the slash path rel (relative to the root)
// matches an exclude pattern.
func excluded(patterns []string, rel string) bool {
	if len(patterns) == 0 {
		return false
	}
	base := path.Base(rel)
	els := strings.Split(rel, "/")
	for _, p := range patterns {
		if !strings.Contains(p, "/") {
			if ok, _ := path.Match(p, base); ok {
				return true
			}
			continue
		}
		pe := strings.Split(strings.TrimPrefix(p, "/"), "/")
		if len(pe) != len(els) {
			continue
		}
		match := true
		for i := range pe {
			if ok, _ := path.Match(pe[i], els[i]); !ok {
				match = false
				break
			}
		}
		if match {
			return true
		}
	}
	return false
}

// maxWalkers bounds the directories listed at once: enough requests in
// flight to keep a disk's queue busy on a cold cache.
const maxWalkers = 8

func (b *backupState) walkRoot(absRoot string, sel *selection, parentTree *format.Tree) error {
	root := &dirState{}
	root.pending.Store(1)
	b.walkers <- struct{}{} // this walker's own slot
	err := b.walkDir(absRoot, "", root, sel, parentTree)
	<-b.walkers
	if err == nil {
		err = b.finish(root)
	}
	// The directories handed to other walkers finish before the file
	// queue may be closed; a walker that failed has cancelled b.ctx.
	b.walkWG.Wait()
	if err == nil && b.ctx.Err() != nil {
		err = context.Cause(b.ctx)
	}
	return err
}

// walkSub walks one subdirectory: in a walker of its own when one is free,
// else in this one.
func (b *backupState) walkSub(parent *dirState, idx int, sel *selection, oldID ID, hasOld bool, p, rel string) error {
	sd := &dirState{parent: parent, parentIdx: idx, oldID: oldID}
	sd.pending.Store(1)
	walk := func() error {
		var old *format.Tree
		if hasOld {
			t, err := b.loadParent(b.ctx, oldID)
			if err != nil {
				b.warn("cannot load the parent snapshot's tree for %q, reading it anew: %v", displayPath(rel), err)
			} else {
				old = t
			}
		}
		if err := b.walkDir(p, rel, sd, sel, old); err != nil {
			return err
		}
		return b.finish(sd)
	}
	select {
	case b.walkers <- struct{}{}:
		b.walkWG.Add(1)
		b.g.Go(func() error {
			defer b.walkWG.Done()
			defer func() { <-b.walkers }()
			return walk()
		})
		return nil
	default:
		return walk()
	}
}

// lstat returns the stat of p.
func lstat(p string) (syscall.Stat_t, error) {
	var st syscall.Stat_t
	for {
		err := syscall.Lstat(p, &st)
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			return st, &fs.PathError{Op: "lstat", Path: p, Err: err}
		}
		return st, nil
	}
}

// nodeFromStat fills the metadata of a node.
func nodeFromStat(name string, st *syscall.Stat_t) format.Node {
	n := format.Node{
		Name:   name,
		Mode:   st.Mode & 0o7777,
		UID:    st.Uid,
		GID:    st.Gid,
		MTime:  st.Mtim.Sec*1e9 + st.Mtim.Nsec,
		CTime:  st.Ctim.Sec*1e9 + st.Ctim.Nsec,
		Inode:  st.Ino,
		Device: uint64(st.Dev),
		Links:  uint64(st.Nlink),
	}
	switch st.Mode & syscall.S_IFMT {
	case syscall.S_IFREG:
		n.Type = format.NodeFile
		n.Size = uint64(st.Size)
	case syscall.S_IFDIR:
		n.Type = format.NodeDir
	case syscall.S_IFLNK:
		n.Type = format.NodeSymlink
	case syscall.S_IFIFO:
		n.Type = format.NodeFIFO
	case syscall.S_IFCHR:
		n.Type = format.NodeChar
		n.Rdev = uint64(st.Rdev)
	case syscall.S_IFBLK:
		n.Type = format.NodeBlock
		n.Rdev = uint64(st.Rdev)
	case syscall.S_IFSOCK:
		n.Type = format.NodeSocket
	}
	return n
}

// walkDir lists the directory dirPath into d (whose pending count already
// includes one hold for this walk) and queues its files. Subdirectories are
// walked depth-first here; files are read by workers in parallel.
func (b *backupState) walkDir(dirPath, rel string, d *dirState, sel *selection, old *format.Tree) error {
	if err := b.ctx.Err(); err != nil {
		return context.Cause(b.ctx)
	}
	var names []string
	if sel.all {
		f, err := os.Open(dirPath)
		if err == nil {
			names, err = f.Readdirnames(-1)
			_ = f.Close()
		}
		if err != nil {
			b.skip("cannot list directory %q: %v", displayPath(rel), err)
		}
	} else {
		for name := range sel.children {
			names = append(names, name)
		}
	}
	sort.Strings(names)
	d.nodes = make([]format.Node, 0, len(names))
	type sub struct {
		idx    int
		sel    *selection
		oldID  ID
		hasOld bool
		path   string
		rel    string
	}
	var subs []sub
	var jobs []*fileJob
	for _, name := range names {
		p := filepath.Join(dirPath, name)
		r := name
		if rel != "" {
			r = rel + "/" + name
		}
		if excluded(b.opts.Excludes, r) {
			continue
		}
		if err := format.CheckName(name); err != nil {
			b.skip("skipping %q: %v", displayPath(r), err)
			continue
		}
		st, err := lstat(p)
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				b.skip("skipping %q: vanished during backup", displayPath(r))
			} else {
				b.skip("skipping %q: %v", displayPath(r), err)
			}
			continue
		}
		n := nodeFromStat(name, &st)
		if n.Type == 0 {
			b.warn("skipping %q: unsupported file type %#o", displayPath(r), st.Mode&syscall.S_IFMT)
			continue
		}
		childSel := sel
		if !sel.all {
			childSel = sel.children[name]
			if !childSel.all && n.Type != format.NodeDir {
				// An intermediate path element must be a directory.
				b.skip("skipping %q: not a directory", displayPath(r))
				continue
			}
		}
		var oldNode *format.Node
		if old != nil {
			oldNode = old.Find(name)
		}
		idx := len(d.nodes)
		switch n.Type {
		case format.NodeSymlink:
			target, err := os.Readlink(p)
			if err != nil || target == "" {
				b.skip("skipping symlink %q: %v", displayPath(r), err)
				continue
			}
			n.LinkTarget = target
		case format.NodeDir:
			s := sub{idx: idx, sel: childSel, path: p, rel: r}
			if oldNode != nil && oldNode.Type == format.NodeDir {
				s.oldID, s.hasOld = oldNode.Subtree, true
			}
			subs = append(subs, s)
			b.nDirs.Add(1)
		case format.NodeFile:
			b.nFiles.Add(1)
			b.bytes.Add(int64(n.Size))
			if oldNode != nil && b.unchanged(oldNode, &n) {
				n.Content = oldNode.Content
				n.Digest = oldNode.Digest
				b.nUnmod.Add(1)
			} else {
				jobs = append(jobs, &fileJob{dir: d, idx: idx, path: p, rel: r, st: st, old: oldNode})
			}
		}
		d.nodes = append(d.nodes, n)
	}
	d.pending.Add(int64(len(subs) + len(jobs)))
	for _, j := range jobs {
		select {
		case b.files <- j:
		case <-b.ctx.Done():
			return context.Cause(b.ctx)
		}
	}
	for _, s := range subs {
		if err := b.walkSub(d, s.idx, s.sel, s.oldID, s.hasOld, s.path, s.rel); err != nil {
			return err
		}
	}
	return nil
}

func displayPath(rel string) string {
	if rel == "" {
		return "."
	}
	return rel
}

// unchanged reports whether the file n can reuse the content of the parent
// snapshot's node old without being read.
func (b *backupState) unchanged(old, n *format.Node) bool {
	if old.Type != format.NodeFile || old.Size != n.Size || old.MTime != n.MTime || old.CTime != n.CTime || old.Inode != n.Inode {
		return false
	}
	x := b.r.index()
	for _, id := range old.Content {
		if !x.Has(format.DataHandle(id)) {
			return false
		}
	}
	return true
}

// finish releases one hold on d; the last release completes the directory:
// its tree blob is encoded and saved, and the parent is released in turn.
func (b *backupState) finish(d *dirState) error {
	for d != nil {
		if d.pending.Add(-1) != 0 {
			return nil
		}
		nodes := d.nodes[:0]
		for _, n := range d.nodes {
			if n.Type != 0 {
				nodes = append(nodes, n)
			}
		}
		enc := format.EncodeTree(&format.Tree{Nodes: nodes})
		id := ID(sha256.Sum256(enc))
		if id != d.oldID || !b.r.index().Has(format.TreeHandle(id)) {
			full, buf := b.saver.newBuf(len(enc))
			copy(buf, enc)
			if _, err := b.saver.save(TreeBlob, id, full, len(enc)); err != nil {
				return err
			}
		}
		if d.parent == nil {
			b.rootDone <- id
			return nil
		}
		d.parent.nodes[d.parentIdx].Subtree = id
		d = d.parent
	}
	return nil
}

func (b *backupState) fileWorker() error {
	w := &chunkWorker{b: b, zeroIDs: map[int]ID{}}
	for j := range b.files {
		s := j.rel
		b.current.Store(&s)
		if err := w.backupFile(j); err != nil {
			return err
		}
		if err := b.finish(j.dir); err != nil {
			return err
		}
	}
	return nil
}

// chunkWorker reads files and cuts them into blobs.
type chunkWorker struct {
	b       *backupState
	zeroIDs map[int]ID // ids of all-zero chunks by length (sparse files)
}

// chunkState is a chunker with its digest. A worker borrows one from
// backupState.chunkers for each file larger than chunk_min.
type chunkState struct {
	ch     format.Chunker
	digest hash.Hash
}

// backupFile reads one file into its node. Read errors of the source become
// warnings (the file is left out); repository errors are returned.
func (w *chunkWorker) backupFile(j *fileJob) error {
	b := w.b
	n := &j.dir.nodes[j.idx]
	before := j.st
	for attempt := 0; ; attempt++ {
		res, err := w.readFile(j.path, &before, j.old)
		if err != nil {
			if b.ctx.Err() != nil || isRepoError(err) {
				return err
			}
			b.skip("skipping %q: %v", j.rel, err)
			n.Type = 0 // dropped from the tree
			b.nFiles.Add(-1)
			b.bytes.Add(-int64(n.Size))
			return nil
		}
		b.bytesRead.Add(res.size)
		same := res.after.Size == before.Size && res.after.Mtim == before.Mtim && res.after.Ctim == before.Ctim && res.size == before.Size
		if !same && attempt < maxRereads {
			before = res.after
			continue
		}
		nn := nodeFromStat(n.Name, &before)
		nn.Size = uint64(res.size)
		nn.Content = res.content
		nn.Digest = res.digest
		if !same {
			// Keep the pre-read times: the next backup then sees a change
			// and reads the file again.
			b.warn("file changed while being read, stored as read (its digest matches the stored content): %q", j.rel)
		} else if attempt > 0 {
			b.warn("file changed while being read, read again: %q", j.rel)
		}
		b.bytes.Add(int64(nn.Size) - int64(n.Size))
		*n = nn
		if j.old != nil && j.old.Type == format.NodeFile {
			b.nChanged.Add(1)
		} else {
			b.nNew.Add(1)
		}
		return nil
	}
}

// repoError marks errors of the repository side (not of the source).
type repoError struct{ err error }

func (e *repoError) Error() string { return e.err.Error() }
func (e *repoError) Unwrap() error { return e.err }

func isRepoError(err error) bool {
	var re *repoError
	return errors.As(err, &re)
}

type readResult struct {
	size    int64
	content []ID
	digest  ID
	after   syscall.Stat_t
}

// readFile reads, chunks and queues one file. want is the stat the walker
// saw; when the opened file is a different one it is replaced by the opened
// file's stat, so that the caller compares like with like. old is the
// file's node in the parent snapshot, if any: the chunks the file still
// begins with are recognised without the chunker (reusableChunks).
func (w *chunkWorker) readFile(p string, want *syscall.Stat_t, old *format.Node) (*readResult, error) {
	b := w.b
	f, err := os.OpenFile(p, os.O_RDONLY|syscall.O_NOFOLLOW, 0)
	if err != nil {
		return nil, err
	}
	defer func() { _ = f.Close() }()
	var st syscall.Stat_t
	if err := syscall.Fstat(int(f.Fd()), &st); err != nil {
		return nil, fmt.Errorf("fstat: %w", err)
	}
	if st.Mode&syscall.S_IFMT != syscall.S_IFREG {
		return nil, errors.New("no longer a regular file")
	}
	if st.Ino != want.Ino || st.Dev != want.Dev {
		*want = st
	}
	res := &readResult{}
	minChunk := int(b.r.cfg.MinChunk)
	// Small files (the common case) are read whole into one pooled buffer,
	// sized by the stat (one byte more, to notice growth): one blob, whose
	// id is also the file digest.
	full, small := b.saver.newBuf(int(min(st.Size+1, int64(minChunk))))
	nr, err := readSmall(f, small, st.Size)
	if err == io.EOF || err == io.ErrUnexpectedEOF {
		small = small[:nr]
		id := w.blobID(small)
		if b.r.testHookChunk != nil {
			b.r.testHookChunk(p, 0)
		}
		if nr > 0 {
			if _, err := b.saver.save(DataBlob, id, full, nr); err != nil {
				return nil, &repoError{err}
			}
			res.content = []ID{id}
			res.digest = id
		} else {
			b.bufs.put(full)
			res.digest = sha256.Sum256(nil)
		}
		res.size = int64(nr)
		if err := syscall.Fstat(int(f.Fd()), &res.after); err != nil {
			return nil, fmt.Errorf("fstat: %w", err)
		}
		return res, nil
	}
	if err != nil {
		b.bufs.put(full)
		return nil, err
	}
	// Larger file: content-defined chunks. The bytes already read are fed
	// to the chunker first.
	head := &bytesReader{b: small}
	var cs *chunkState
	select {
	case cs = <-b.chunkers:
	case <-b.ctx.Done():
		b.bufs.put(full)
		return nil, &repoError{context.Cause(b.ctx)}
	}
	defer func() { b.chunkers <- cs }()
	// Alone (no other large file being chunked), as when a backup finds
	// one big file changed, the file is read a buffer ahead and its
	// chunks hashed and queued on two more goroutines, so that both cores
	// work on it. With another large file being chunked that gains
	// nothing and would cost the two read buffers and a chunk buffer more
	// per file, so then one goroutine does it all, as before; so it does
	// on one core.
	alone := runtime.GOMAXPROCS(0) > 1 && len(b.chunkers) == cap(b.chunkers)-1
	plan := w.reusableChunks(old)
	dr := &directReader{f: f, off: int64(len(small))}
	var src io.Reader = dr
	// Reused chunks are read by their own lengths, which would leave the
	// reads unaligned for O_DIRECT; the read-ahead reads aligned buffers.
	if alone || len(plan) > 0 {
		ra := newReadAhead(dr, b.bufs)
		defer ra.close()
		src = ra
	}
	rd := io.MultiReader(head, src)
	if cs == nil {
		cs = &chunkState{ch: b.r.cfg.NewChunker(rd), digest: sha256.New()}
	} else {
		cs.digest.Reset()
	}
	defer b.bufs.put(full)
	// The chunker cuts straight into a blob buffer big enough for most
	// chunks (chunk_min plus twice the average excess: 86% of them), so
	// a new chunk is not copied again; a larger one is.
	fit := int(min(b.r.cfg.MaxChunk, b.r.cfg.MinChunk+2<<b.r.cfg.AverageBits()))
	// cut hands the file's chunks to store in order: the reused ones,
	// then the chunker's from where the file first differs.
	cut := func(store func(cutChunk) error) error {
		rest, reused, release, err := w.reuseChunks(p, rd, plan, store)
		if err != nil {
			return err
		}
		defer release()
		if b.r.testHookReuse != nil {
			b.r.testHookReuse(p, reused)
		}
		cs.ch.Reset(rest)
		return w.cutChunks(p, cs.ch, fit, reused, store)
	}
	if !alone {
		err := cut(func(c cutChunk) error { return w.storeChunk(c, cs.digest, res) })
		if err != nil {
			return nil, err
		}
	} else {
		// Two chunks may wait between the cutter and the hasher, so that
		// neither waits for the other whenever one chunk takes the one
		// longer and the next the other (an unbuffered hand-off, which
		// holds one chunk buffer less, made a file that grew at its end
		// take 300 ms instead of 280 for 210 MiB on tmpfs).
		cuts := make(chan cutChunk, 2)
		stored := make(chan struct{})
		// stop ends cutChunks when storing failed; storeErr is reported.
		stop := errors.New("storing the chunks failed")
		var storeErr error
		go func() {
			defer close(stored)
			for c := range cuts {
				if storeErr = w.storeChunk(c, cs.digest, res); storeErr != nil {
					return
				}
			}
		}()
		cutErr := cut(func(c cutChunk) error {
			select {
			case cuts <- c:
				return nil
			case <-stored:
				b.bufs.put(c.full)
				return stop
			}
		})
		close(cuts)
		<-stored
		if storeErr != nil {
			return nil, storeErr
		}
		if cutErr != nil {
			return nil, cutErr
		}
	}
	copy(res.digest[:], cs.digest.Sum(nil))
	if err := syscall.Fstat(int(f.Fd()), &res.after); err != nil {
		return nil, fmt.Errorf("fstat: %w", err)
	}
	return res, nil
}

// cutChunk is one chunk of a large file on its way from cutChunks to
// storeChunks: data is the chunk, inside full (from newBuf) when the
// chunker cut it in place, else in a slice of its own (full then nil).
// A chunk of the parent snapshot's that the file still holds comes with
// its id (reused): it is stored already.
type cutChunk struct {
	full, data []byte
	reused     bool
	id         ID
}

// oldChunk is a chunk of a file's previous version: its id and length.
type oldChunk struct {
	id ID
	n  int
}

// reusableChunks returns the chunks that a changed file may still begin
// with: those of its previous version old, but the last, while the index
// knows their lengths. The chunker decides each cut from the bytes since
// the chunk's start alone (it starts afresh after every cut), so a chunk
// whose bytes are unchanged ends where it ended before; the old last chunk
// ended at the old end of the file, which may be no cut any longer. A file
// that grew at its end (logs, mail folders, database dumps) is then hashed
// but not run through the chunker up to where it changed, and its chunks
// are the ones a backup without parent cuts. (A parent copied from a
// repository with another chunker polynomial gives that repository's
// cuts: the bytes are the same, only deduplication against new data
// suffers.)
func (w *chunkWorker) reusableChunks(old *format.Node) []oldChunk {
	if old == nil || old.Type != format.NodeFile || len(old.Content) < 2 {
		return nil
	}
	x := w.b.r.index()
	lo, hi := w.b.r.cfg.MinChunk, w.b.r.cfg.MaxChunk
	plan := make([]oldChunk, 0, len(old.Content)-1)
	for _, id := range old.Content[:len(old.Content)-1] {
		_, pb, ok := x.Lookup(format.DataHandle(id))
		// A cut the chunker made lies within [chunk_min, chunk_max].
		if !ok || uint64(pb.RawLength) < uint64(lo) || uint64(pb.RawLength) > uint64(hi) {
			break
		}
		plan = append(plan, oldChunk{id: id, n: int(pb.RawLength)})
	}
	return plan
}

// reuseChunks reads the chunks of plan from rd as long as the file still
// holds them (same length, same id) and passes each to store as reused.
// It returns what the chunker must go on with: the bytes read of the
// first chunk that differs, then the rest of rd; how many chunks it
// reused; and release, which frees those bytes once the chunker is done.
func (w *chunkWorker) reuseChunks(p string, rd io.Reader, plan []oldChunk, store func(cutChunk) error) (rest io.Reader, reused int, release func(), err error) {
	b := w.b
	for i, oc := range plan {
		full, buf := b.saver.newBuf(oc.n)
		n, err := io.ReadFull(rd, buf)
		if err != nil && err != io.EOF && err != io.ErrUnexpectedEOF {
			b.bufs.put(full)
			return nil, 0, nil, err
		}
		if n < oc.n || w.blobID(buf) != oc.id {
			return io.MultiReader(&bytesReader{b: buf[:n]}, rd), i, func() { b.bufs.put(full) }, nil
		}
		if b.r.testHookChunk != nil {
			b.r.testHookChunk(p, i)
		}
		if err := store(cutChunk{full: full, data: buf, reused: true, id: oc.id}); err != nil {
			return nil, 0, nil, err
		}
		if i%8 == 7 {
			if err := b.ctx.Err(); err != nil {
				return nil, 0, nil, &repoError{context.Cause(b.ctx)}
			}
		}
	}
	return rd, len(plan), func() {}, nil
}

// cutChunks cuts a file into chunks and passes them to store in order,
// until the end of the file or an error (its own, or store's). The chunks
// are numbered from first on (for testHookChunk).
func (w *chunkWorker) cutChunks(p string, ch format.Chunker, fit, first int, store func(cutChunk) error) error {
	b := w.b
	for i := first; ; i++ {
		bfull, bdata := b.saver.newBuf(fit)
		data, err := ch.Next(bdata[:0:fit])
		if err == io.EOF {
			b.bufs.put(bfull)
			return nil
		}
		if err != nil {
			b.bufs.put(bfull)
			return err
		}
		cut := cutChunk{full: bfull, data: data}
		if &data[:1][0] != &bdata[:1][0] { // reallocated: too large for fit
			b.bufs.put(bfull)
			cut.full = nil
		}
		if b.r.testHookChunk != nil {
			b.r.testHookChunk(p, i)
		}
		if err := store(cut); err != nil {
			return err
		}
		if i%8 == 7 {
			if err := b.ctx.Err(); err != nil {
				return &repoError{context.Cause(b.ctx)}
			}
		}
	}
}

// storeChunk hashes a chunk into the file digest and res, and queues it
// when it is new. It takes c.full.
func (w *chunkWorker) storeChunk(c cutChunk, digest hash.Hash, res *readResult) error {
	b := w.b
	digest.Write(c.data)
	id := c.id
	if !c.reused {
		id = w.blobID(c.data)
	}
	res.content = append(res.content, id)
	res.size += int64(len(c.data))
	switch {
	case c.reused || b.r.index().Has(format.DataHandle(id)):
		b.bufs.put(c.full)
	case c.full != nil:
		if _, err := b.saver.save(DataBlob, id, c.full, len(c.data)); err != nil {
			return &repoError{err}
		}
	default:
		full, buf := b.saver.newBuf(len(c.data))
		copy(buf, c.data)
		if _, err := b.saver.save(DataBlob, id, full, len(c.data)); err != nil {
			return &repoError{err}
		}
	}
	return nil
}

// directReader reads a file with O_DIRECT where it can: for large files on
// a cold cache, the page cache's work (allocating, filling and copying
// pages, later evicting them) cost as much CPU as SHA-256 did (sys 0.3 to
// 0.6 s for 610 MB read buffered, 0.04 s direct, here). Small files gain
// nothing from it (their cost is opening and the inode), and they are read
// before a directReader starts. A read goes direct when its offset, buffer
// and length are aligned, else through the page cache; a file system that
// refuses O_DIRECT (EINVAL) is read through the page cache. The chunker's
// and readAhead's buffers are aligned (whole pages of the Go heap) and
// hold the file from aligned offsets on, all but the first after the
// chunk_min bytes read before, which ends at an aligned offset.
type directReader struct {
	f      *os.File
	off    int64 // file offset of the next read
	direct bool  // O_DIRECT is set on f
	failed bool  // O_DIRECT was refused: do not try again
	// directBytes counts the bytes read with O_DIRECT (tests look).
	directBytes int64
}

// directAlign is the alignment O_DIRECT asks of buffers, offsets and
// lengths (the logical block size, at most a page).
const directAlign = 4096

func (d *directReader) Read(p []byte) (int, error) {
	want := !d.failed && d.off%directAlign == 0 && len(p) >= directAlign && len(p)%directAlign == 0 &&
		uintptr(unsafe.Pointer(unsafe.SliceData(p)))%directAlign == 0
	if want != d.direct && !d.setDirect(want) {
		d.failed = true
	}
	n, err := d.f.Read(p)
	if errors.Is(err, syscall.EINVAL) && d.direct {
		d.failed = true
		if !d.setDirect(false) {
			return n, err
		}
		n, err = d.f.Read(p)
	} else if d.direct {
		d.directBytes += int64(n)
	}
	d.off += int64(n)
	return n, err
}

// setDirect turns O_DIRECT on or off for the file and reports whether it
// worked.
func (d *directReader) setDirect(on bool) bool {
	fd := uintptr(d.f.Fd())
	fl, err := unix.FcntlInt(fd, unix.F_GETFL, 0)
	if err != nil {
		return false
	}
	if on {
		fl |= unix.O_DIRECT
	} else {
		fl &^= unix.O_DIRECT
	}
	if _, err := unix.FcntlInt(fd, unix.F_SETFL, fl); err != nil {
		return false
	}
	d.direct = on
	return true
}

// readAhead reads on a goroutine of its own, a buffer ahead of its reader:
// the read calls (and, on a cold cache, the waits for the disk) then
// happen on the other core while the chunker cuts what was read before.
type readAhead struct {
	bufs   *bufPool
	full   chan readAheadBuf // read, in order
	free   chan []byte       // consumed, to read into again
	done   chan struct{}     // closed by close: stop reading
	exited chan struct{}     // closed when the goroutine returns
	cur    readAheadBuf
	pos    int
	held   [][]byte // the pooled buffers, to return them
}

type readAheadBuf struct {
	b   []byte
	err error // after b
}

// readAheadSize is the size of each of the two buffers: one read (one
// I/O, read direct) each.
const readAheadSize = 512 << 10

func newReadAhead(rd *directReader, bufs *bufPool) *readAhead {
	ra := &readAhead{
		bufs:   bufs,
		full:   make(chan readAheadBuf, 1),
		free:   make(chan []byte, 2),
		done:   make(chan struct{}),
		exited: make(chan struct{}),
	}
	for range 2 {
		b := bufs.get(readAheadSize)
		ra.held = append(ra.held, b)
		ra.free <- b
	}
	go ra.run(rd)
	return ra
}

func (ra *readAhead) run(rd *directReader) {
	defer close(ra.exited)
	for {
		var buf []byte
		select {
		case buf = <-ra.free:
		case <-ra.done:
			return
		}
		// From an unaligned offset (chunk_min need not be a multiple of
		// 4 KiB), a short first read reaches an aligned one, so that
		// the aligned buffers line up with aligned offsets after it.
		if r := int(rd.off % directAlign); r != 0 {
			buf = buf[:directAlign-r]
		}
		n, err := io.ReadFull(rd, buf)
		if err == io.ErrUnexpectedEOF {
			err = io.EOF
		}
		select {
		case ra.full <- readAheadBuf{b: buf[:n], err: err}:
		case <-ra.done:
			return
		}
		if err != nil {
			return
		}
	}
}

func (ra *readAhead) Read(p []byte) (int, error) {
	for ra.pos == len(ra.cur.b) {
		if ra.cur.err != nil {
			return 0, ra.cur.err
		}
		if ra.cur.b != nil {
			ra.free <- ra.cur.b[:readAheadSize] // never blocks: two buffers, two slots
		}
		ra.cur, ra.pos = <-ra.full, 0
	}
	n := copy(p, ra.cur.b[ra.pos:])
	ra.pos += n
	return n, nil
}

// close stops the goroutine and waits for it, so that the file can be
// closed, and returns the buffers to the pool.
func (ra *readAhead) close() {
	close(ra.done)
	<-ra.exited
	for _, b := range ra.held {
		ra.bufs.put(b)
	}
}

// readSmall is io.ReadFull for the first read of a file whose fstat said
// it has size bytes: once it has read exactly size bytes into a larger buf
// it reports io.ErrUnexpectedEOF without another read(2) to see the end of
// the file. That saves a syscall per small file; growth after the read is
// still caught by the fstat that follows every read (the sizes differ),
// and growth before it fills buf beyond size.
func readSmall(f io.Reader, buf []byte, size int64) (int, error) {
	n := 0
	for n < len(buf) {
		m, err := f.Read(buf[n:])
		n += m
		switch {
		case err == io.EOF && n == 0:
			return 0, io.EOF
		case err == io.EOF:
			return n, io.ErrUnexpectedEOF
		case err != nil:
			return n, err
		case int64(n) == size && n < len(buf):
			return n, io.ErrUnexpectedEOF
		}
	}
	return n, nil
}

// blobID hashes a chunk; all-zero chunks (sparse files) hash once per length.
func (w *chunkWorker) blobID(data []byte) ID {
	if len(data) >= 64<<10 && data[0] == 0 && data[len(data)-1] == 0 && isZero(data) {
		if id, ok := w.zeroIDs[len(data)]; ok {
			return id
		}
		id := ID(sha256.Sum256(data))
		w.zeroIDs[len(data)] = id
		return id
	}
	return sha256.Sum256(data)
}

// bytesReader reads a byte slice (bytes.Reader without the extra methods,
// so io.MultiReader does not try WriterTo).
type bytesReader struct{ b []byte }

func (r *bytesReader) Read(p []byte) (int, error) {
	if len(r.b) == 0 {
		return 0, io.EOF
	}
	n := copy(p, r.b)
	r.b = r.b[n:]
	return n, nil
}
