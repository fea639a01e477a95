package repository

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"runtime"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/custos-backup/custos/repository/backend"
	"github.com/custos-backup/custos/repository/format"
	"github.com/custos-backup/custos/repository/index"
	"golang.org/x/sync/errgroup"
)

// CheckOptions say how much of a repository Check verifies.
type CheckOptions struct {
	ReadData bool   // read and verify every blob of the packs in scope
	Budget   int64  // bytes of pack data to read this call; 0 = no limit
	Cursor   string // from the previous CheckResult; "" = start
}

// Problem is one damaged or missing object, with what depends on it, or
// (Kind ProblemUnindexedPack) a pack that no index file lists.
type Problem struct {
	Object    string   `json:"object"`              // backend path, e.g. "data/ab/ab12...", "index/...", "snapshots/..."
	Kind      string   `json:"kind,omitempty"`      // "" (damaged or missing) or ProblemUnindexedPack
	Err       string   `json:"error"`               // what is wrong
	Blobs     []string `json:"blobs,omitempty"`     // damaged blob ids, if known
	Snapshots []string `json:"snapshots,omitempty"` // snapshot ids that depend on the object
	Paths     []string `json:"paths,omitempty"`     // "snapshotShortID:path" of files that depend on it
}

// ProblemUnindexedPack is the Kind of a Problem about a pack that no index
// file lists and that is older than prune's grace period: nothing can read
// its blobs (readers find blobs through the index), the next prune deletes
// it, and it is not damage. Whether it was left by a crashed backup or its
// index file was lost, check cannot tell; if an index file was lost, the
// snapshots that needed it are named by problems of their own.
const ProblemUnindexedPack = "unindexed-pack"

// CheckResult is the outcome of one Check call.
type CheckResult struct {
	Problems     []Problem `json:"problems"`
	PacksChecked int       `json:"packs_checked"`
	BytesRead    int64     `json:"bytes_read"`
	Cursor       string    `json:"cursor,omitempty"` // "" when the pass is complete
}

// maxPathsPerProblem bounds how many dependent paths a problem lists, so that
// one damaged tree near the root cannot make the result as large as the
// repository's file list.
const maxPathsPerProblem = 1000

// checkSource is the repository as check reads it, role by role, so that
// a test can hand check a real repository wrapped to count or to fail in
// one of them. Check reads objects itself instead of through the
// repository's index, which a damaged index file may have left incomplete.
type checkSource struct {
	be           checkBackend
	objectOpener                // index files, snapshots, pack headers
	packSource                  // pack readers for trees and indexed blobs
	seal         *format.Sealer // opens the headers of packs read whole
	// pre, if not nil, is the first pass's fetch, started by OpenForCheck.
	pre *checkPrefetch
}

// checkBackend is the storage as check reads it: listings, and packs
// streamed or read whole.
type checkBackend interface {
	lister
	packLoader
}

// objectOpener opens the small objects check reads with the key, each
// verified against its name: index files and snapshots from their stored
// bytes (loaded through the checkBackend, so that they can be fetched
// before the key is known), and pack headers.
type objectOpener interface {
	openIndexFile(id ID, b []byte) (*format.IndexFile, error)
	openSnapshot(id ID, b []byte) (*Snapshot, error)
	readPackHeader(ctx context.Context, pack ID, packSize int64) (*format.PackHeader, error)
}

// checkSource returns r as check reads it.
func (r *Repository) checkSource() checkSource {
	return checkSource{be: r.be, objectOpener: r, packSource: r, seal: r.seal}
}

// listIDs lists the objects of type t whose names are valid ids.
func (s checkSource) listIDs(ctx context.Context, t backend.FileType, bad func(name string)) ([]ID, error) {
	return listObjectIDs(ctx, s.be, t, bad)
}

// loadIndexFile loads and opens index file id.
func (s checkSource) loadIndexFile(ctx context.Context, id ID) (*format.IndexFile, error) {
	b, err := fetchIndexFile(ctx, s.be, id)
	if err != nil {
		return nil, err
	}
	return s.openIndexFile(id, b)
}

// LoadSnapshot loads and opens snapshot file id.
func (s checkSource) LoadSnapshot(ctx context.Context, id ID) (*Snapshot, error) {
	b, err := fetchSnapshot(ctx, s.be, id)
	if err != nil {
		return nil, err
	}
	return s.openSnapshot(id, b)
}

// checkState collects what Check learns while it walks the repository.
type checkState struct {
	src checkSource
	res *CheckResult

	mu       sync.Mutex
	problems map[string]*Problem // by object
	order    []string

	// index as read by check itself (not r.index(), which a damaged index
	// file may have left incomplete)
	packs     map[ID]int64                            // pack -> size recorded in the index
	packBlobs map[ID][]format.PackedBlob              // pack -> its entries
	blobPacks map[BlobHandle][]ID                     // blob -> packs that hold it
	entry     map[ID]map[BlobHandle]format.PackedBlob // pack -> blob -> entry
	stored    map[ID]int64                            // packs present in data/, with size

	damagedIndexes []string
	damagedBlobs   map[BlobHandle]string // blob -> object (pack path or "index") it is attributed to
	unindexed      map[ID]bool           // packs reported as listed by no index file

	// what the pass listed, for looking again (changed)
	snapIDs, indexIDs []ID
}

func (c *checkState) problem(object, format string, args ...any) *Problem {
	c.mu.Lock()
	defer c.mu.Unlock()
	msg := fmt.Sprintf(format, args...)
	if p, ok := c.problems[object]; ok {
		if !strings.Contains(p.Err, msg) {
			p.Err += "; " + msg
		}
		return p
	}
	p := &Problem{Object: object, Err: msg}
	c.problems[object] = p
	c.order = append(c.order, object)
	return p
}

// damageBlob records that blob h cannot be read and blames object for it.
func (c *checkState) damageBlob(object string, h BlobHandle) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.damagedBlobs[h]; ok {
		return
	}
	c.damagedBlobs[h] = object
	if p := c.problems[object]; p != nil && !slices.Contains(p.Blobs, h.ID.String()) {
		p.Blobs = append(p.Blobs, h.ID.String())
	}
}

func packPath(id ID) string {
	return backend.Handle{Type: backend.PackFile, Name: id.String()}.Path()
}

// Check verifies the repository. Without ReadData it checks the structure:
// every index and snapshot file verifies against its name and decrypts,
// every indexed pack exists with the recorded size and every index entry
// lies inside its pack, every tree reachable from a snapshot is readable and
// every blob a tree references is indexed with the type the reference needs
// (a tree for a subtree, data for file content). A pack no index file lists is
// reported (Kind ProblemUnindexedPack) when the creation time in its header
// is older than prune's grace period; younger ones may belong to a backup
// still running and are not reported. With ReadData it also reads packs
// (in sorted order, from Cursor, until Budget is spent): the pack's SHA-256
// must equal its name, its header must decrypt and agree with the index, and
// every blob must decrypt, decompress and hash to its id.
//
// Each damaged object is reported once, with the snapshots and file paths
// that depend on it. Check returns an error only when it could not run (for
// example the backend failed to list); damage is reported in the result.
//
// Check takes no lock. Backups, copies, forgets and prunes running at the
// same time never make it report a problem that is not there (see check);
// damage present for the whole run is always reported.
func (r *Repository) Check(ctx context.Context, opts CheckOptions) (*CheckResult, error) {
	ctx = backend.Uncached(ctx) // check vouches for the stored bytes, not a local copy
	return r.check(ctx, opts, time.Now())
}

// maxCheckPasses bounds how often Check starts over because the
// repository lost objects while it was being read.
const maxCheckPasses = 5

// check is Check as of now, which decides whether an unindexed pack is past
// the grace period (tests move it to see packs age).
//
// Writers write packs, then index files, then snapshots (FORMAT.md §10).
// A pass reads in the reverse order: snapshots, then index files, then the
// pack listing. Everything a snapshot it read needs was indexed and stored
// before that snapshot existed, so backups and copies running meanwhile
// (which only add objects) cannot make anything look missing. Forget and
// prune delete objects, which can: a pass that found problems therefore
// looks again, listing every kind of object once more. If an object it
// listed is gone, or a new index file supersedes others or indexes a pack
// it called unindexed, the repository changed under it and the pass starts
// over. Real damage survives every pass and is reported; a repository that
// keeps changing for maxCheckPasses passes is an error, not damage.
func (r *Repository) check(ctx context.Context, opts CheckOptions, now time.Time) (*CheckResult, error) {
	src := r.checkSource()
	src.pre = r.checkPre.Swap(nil)
	return checkFrom(ctx, src, r.log, opts, now)
}

// checkFrom is check reading from src.
func checkFrom(ctx context.Context, src checkSource, log *slog.Logger, opts CheckOptions, now time.Time) (*CheckResult, error) {
	pre := src.pre // the first pass's only
	if pre != nil {
		defer pre.stop()
	}
	if opts.Cursor != "" {
		if _, err := ParseID(opts.Cursor); err != nil {
			return nil, fmt.Errorf("check: bad cursor: %w", err)
		}
	}
	for pass := 1; ; pass++ {
		c := newCheckState(src)
		err := c.pass(ctx, opts, now, pre)
		pre = nil
		if err != nil {
			return nil, err
		}
		if len(c.problems) == 0 {
			return c.result(), nil
		}
		changed, err := c.changed(ctx)
		if err != nil {
			return nil, err
		}
		if changed == "" {
			return c.result(), nil
		}
		if pass == maxCheckPasses {
			return nil, fmt.Errorf("check: the repository changed while it was read, %d times in a row (last: %s); its %d findings could not be confirmed; run check again when no prune or forget is running",
				pass, changed, len(c.problems))
		}
		log.Info("check: the repository changed while it was read; looking again", "pass", pass, "change", changed)
	}
}

func newCheckState(src checkSource) *checkState {
	return &checkState{
		src:          src,
		res:          &CheckResult{Problems: []Problem{}},
		problems:     map[string]*Problem{},
		packs:        map[ID]int64{},
		packBlobs:    map[ID][]format.PackedBlob{},
		blobPacks:    map[BlobHandle][]ID{},
		entry:        map[ID]map[BlobHandle]format.PackedBlob{},
		stored:       map[ID]int64{},
		damagedBlobs: map[BlobHandle]string{},
		unindexed:    map[ID]bool{},
	}
}

// pass checks the repository once, in the reverse of the write order.
func (c *checkState) pass(ctx context.Context, opts CheckOptions, now time.Time, pre *checkPrefetch) error {
	snaps, err := c.checkSnapshotsAndIndex(ctx, pre)
	if err != nil {
		return err
	}
	c.checkIndexedPacks()
	if err := c.checkUnindexed(ctx, now); err != nil {
		return err
	}
	// The trees and the packs are read at the same time: neither needs
	// what the other finds until attributeMissing, and on remote storage
	// the walk's round trips, a level of the tree at a time, then cost
	// nothing.
	var missing map[BlobHandle]bool
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		var err error
		missing, err = c.checkTrees(gctx, snaps)
		return err
	})
	if opts.ReadData {
		g.Go(func() error { return c.readPacks(gctx, opts) })
	}
	if err := g.Wait(); err != nil {
		return err
	}
	c.attributeMissing(missing)
	if len(c.damagedBlobs) > 0 {
		if err := c.findDependents(ctx, snaps); err != nil {
			return err
		}
	}
	return nil
}

// result returns the problems found, in the order they were found.
func (c *checkState) result() *CheckResult {
	for _, o := range c.order {
		p := c.problems[o]
		sort.Strings(p.Blobs)
		c.res.Problems = append(c.res.Problems, *p)
	}
	return c.res
}

// changed lists the repository again after a pass and says how it changed
// in a way that can make objects look missing or unindexed ("" if not):
// an object the pass listed is gone, or a new index file supersedes others,
// indexes a pack the pass called unindexed, or cannot be loaded.
func (c *checkState) changed(ctx context.Context) (string, error) {
	r := c.src
	snaps, err := r.listIDs(ctx, backend.SnapshotFile, nil)
	if err != nil {
		return "", fmt.Errorf("check: %w", err)
	}
	if gone := missingFrom(c.snapIDs, snaps); gone != nil {
		return "snapshot " + gone.Short() + " was removed", nil
	}
	idx, err := r.listIDs(ctx, backend.IndexFile, nil)
	if err != nil {
		return "", fmt.Errorf("check: %w", err)
	}
	if gone := missingFrom(c.indexIDs, idx); gone != nil {
		return "index file " + gone.Short() + " was removed", nil
	}
	known := make(map[ID]bool, len(c.indexIDs))
	for _, id := range c.indexIDs {
		known[id] = true
	}
	var added []ID
	for _, id := range idx {
		if !known[id] {
			added = append(added, id)
		}
	}
	files, errs, err := loadAll(ctx, added, 8, r.loadIndexFile, cancelled)
	if err != nil {
		return "", fmt.Errorf("check: %w", err)
	}
	for i, f := range files {
		switch {
		case errs[i] != nil:
			return "new index file " + added[i].Short() + " cannot be loaded", nil
		case len(f.Supersedes) > 0:
			return "new index file " + added[i].Short() + " supersedes others", nil
		}
		for _, p := range f.Packs {
			if c.unindexed[p.ID] {
				return "new index file " + added[i].Short() + " indexes pack " + p.ID.Short(), nil
			}
		}
	}
	packs, err := r.listIDs(ctx, backend.PackFile, nil)
	if err != nil {
		return "", fmt.Errorf("check: %w", err)
	}
	listed := make([]ID, 0, len(c.stored))
	for id := range c.stored {
		listed = append(listed, id)
	}
	if gone := missingFrom(listed, packs); gone != nil {
		return "pack " + gone.Short() + " was removed", nil
	}
	return "", nil
}

// missingFrom returns one id of before that now lacks, or nil.
func missingFrom(before, now []ID) *ID {
	set := make(map[ID]bool, len(now))
	for _, id := range now {
		set[id] = true
	}
	for _, id := range before {
		if !set[id] {
			return &id
		}
	}
	return nil
}

// packListing is what listing data/ found.
type packListing struct {
	stored map[ID]int64
	bad    []string // names that are not pack ids
}

// listPackFiles lists data/ (after the index files: see check) without
// recording anything, so that it can run while index files load.
func (c *checkState) listPackFiles(ctx context.Context) (packListing, error) {
	return listPackFiles(ctx, c.src.be)
}

func listPackFiles(ctx context.Context, be lister) (packListing, error) {
	l := packListing{stored: map[ID]int64{}}
	err := be.List(ctx, backend.PackFile, func(fi backend.FileInfo) error {
		id, err := ParseID(fi.Name)
		if err != nil {
			l.bad = append(l.bad, fi.Name)
			return nil
		}
		l.stored[id] = fi.Size
		return nil
	})
	if err != nil {
		return l, fmt.Errorf("check: list packs: %w", err)
	}
	return l, nil
}

func (c *checkState) recordPacks(l packListing) {
	for _, name := range l.bad {
		c.problem(backend.Handle{Type: backend.PackFile, Name: name}.Path(), "object name is not a pack id")
	}
	maps.Copy(c.stored, l.stored)
}

// checkIndexAndPacks is checkIndex and then listPacks, listing the packs
// while the index files load (see checkSnapshotsAndIndex).
func (c *checkState) checkIndexAndPacks(ctx context.Context) error {
	idx, packs, err := c.listIndexAndPacks(ctx)
	if err != nil {
		return err
	}
	c.recordIndex(idx)
	c.recordPacks(packs)
	return nil
}

// listIndexAndPacks lists index/, then lists data/ while it loads the
// index files listed, and records nothing.
func (c *checkState) listIndexAndPacks(ctx context.Context) (indexListing, packListing, error) {
	idx, err := c.listIndex(ctx)
	if err != nil {
		return idx, packListing{}, err
	}
	var packs packListing
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		var err error
		packs, err = c.listPackFiles(gctx)
		return err
	})
	g.Go(func() error { return c.loadIndexFiles(gctx, &idx) })
	err = g.Wait()
	return idx, packs, err
}

// checkFetch is what a pass lists and loads before it opens anything with
// the key: the snapshot, index and pack listings, in that order (see
// check), each starting when the one before has returned, and the stored
// bytes of the snapshot and index files they named, which load during the
// next listing. OpenForCheck starts one while it derives the key, so that
// on remote storage those round trips cost nothing.
type checkFetch struct {
	snapIDs  []ID
	snapBad  []string
	snapRaw  [][]byte
	snapErrs []error
	idx      indexListing // ids and bad; opening fills files and errs
	idxRaw   [][]byte
	packs    packListing
}

// fetchForCheck lists and loads what checkFetch holds. Failing to list is
// an error; failing to load a file is recorded for that file.
func fetchForCheck(ctx context.Context, be checkBackend) (*checkFetch, error) {
	f := &checkFetch{}
	var err error
	f.snapIDs, err = listObjectIDs(ctx, be, backend.SnapshotFile, func(name string) { f.snapBad = append(f.snapBad, name) })
	if err != nil {
		return nil, fmt.Errorf("check: %w", err)
	}
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		var err error
		f.snapRaw, f.snapErrs, err = loadAll(gctx, f.snapIDs, 16, func(ctx context.Context, id ID) ([]byte, error) {
			return fetchSnapshot(ctx, be, id)
		}, cancelled)
		if err != nil {
			return fmt.Errorf("check: %w", err)
		}
		return nil
	})
	g.Go(func() error {
		ids, err := listObjectIDs(gctx, be, backend.IndexFile, func(name string) { f.idx.bad = append(f.idx.bad, name) })
		if err != nil {
			return fmt.Errorf("check: %w", err)
		}
		f.idx.ids = ids
		g2, g2ctx := errgroup.WithContext(gctx)
		g2.Go(func() error {
			var err error
			f.packs, err = listPackFiles(g2ctx, be)
			return err
		})
		g2.Go(func() error {
			var err error
			f.idxRaw, f.idx.errs, err = loadAll(g2ctx, ids, 8, func(ctx context.Context, id ID) ([]byte, error) {
				return fetchIndexFile(ctx, be, id)
			}, cancelled)
			if err != nil {
				return fmt.Errorf("check: %w", err)
			}
			return nil
		})
		return g2.Wait()
	})
	if err := g.Wait(); err != nil {
		return nil, err
	}
	return f, nil
}

// checkPrefetch is a fetchForCheck running in the background.
type checkPrefetch = background[*checkFetch]

// checkSnapshotsAndIndex is checkSnapshots, checkIndex and listPacks in
// one: it fetches (fetchForCheck) unless pre has already, opens what was
// fetched with the key, and records what it found in the order of the
// three steps, so a pass reports as it would one step after another.
func (c *checkState) checkSnapshotsAndIndex(ctx context.Context, pre *checkPrefetch) ([]*Snapshot, error) {
	var (
		f   *checkFetch
		err error
	)
	if pre != nil {
		f, err = pre.wait(ctx)
	} else {
		f, err = fetchForCheck(ctx, c.src.be)
	}
	if err != nil {
		return nil, err
	}
	snaps, snapErrs, err := openFetched(ctx, f.snapIDs, f.snapRaw, f.snapErrs, 16, c.src.openSnapshot)
	if err != nil {
		return nil, fmt.Errorf("check: %w", err)
	}
	idx := f.idx
	idx.files, idx.errs, err = openFetched(ctx, idx.ids, f.idxRaw, idx.errs, 8, c.src.openIndexFile)
	if err != nil {
		return nil, fmt.Errorf("check: %w", err)
	}
	c.snapIDs = f.snapIDs
	out := c.recordSnapshots(f.snapIDs, f.snapBad, snaps, snapErrs)
	c.recordIndex(idx)
	c.recordPacks(f.packs)
	return out, nil
}

// openFetched opens raw[i], the stored bytes of object ids[i], unless
// loading it failed (errs[i]), at most limit at once: the results and the
// errors by position, or an error when ctx ends.
func openFetched[T any](ctx context.Context, ids []ID, raw [][]byte, errs []error, limit int, open func(ID, []byte) (T, error)) ([]T, []error, error) {
	at := make(map[ID]int, len(ids))
	for i, id := range ids {
		at[id] = i
	}
	out, oerrs, err := loadAll(ctx, ids, limit, func(_ context.Context, id ID) (T, error) {
		i := at[id]
		if errs[i] != nil {
			var zero T
			return zero, errs[i]
		}
		return open(id, raw[i])
	}, cancelled)
	return out, oerrs, err
}

// cancelled is loadAll's fatal function for check: a damaged object is a
// problem to report, only a cancelled check stops.
func cancelled(ctx context.Context, _ error) bool { return ctx.Err() != nil }

// indexListing is what listing and loading index/ found.
type indexListing struct {
	ids   []ID
	bad   []string // names that are not index ids
	files []*format.IndexFile
	errs  []error
}

// listIndex lists index/ without recording anything.
func (c *checkState) listIndex(ctx context.Context) (indexListing, error) {
	var l indexListing
	ids, err := c.src.listIDs(ctx, backend.IndexFile, func(name string) { l.bad = append(l.bad, name) })
	if err != nil {
		return l, fmt.Errorf("check: %w", err)
	}
	l.ids = ids
	return l, nil
}

// loadIndexFiles loads the index files l lists, without recording anything.
func (c *checkState) loadIndexFiles(ctx context.Context, l *indexListing) error {
	files, errs, err := loadAll(ctx, l.ids, 8, c.src.loadIndexFile, cancelled)
	if err != nil {
		return fmt.Errorf("check: %w", err)
	}
	l.files, l.errs = files, errs
	return nil
}

// recordIndex records the index files of l as check's own view of the
// index (loaded by check itself, so that one damaged file is reported
// instead of hiding the others), and their problems.
func (c *checkState) recordIndex(l indexListing) {
	r := c.src
	for _, name := range l.bad {
		c.problem(backend.Handle{Type: backend.IndexFile, Name: name}.Path(), "object name is not an index id")
	}
	ids, files := l.ids, l.files
	c.indexIDs = ids
	for i, err := range l.errs {
		if err != nil {
			o := backend.Handle{Type: backend.IndexFile, Name: ids[i].String()}.Path()
			c.problem(o, "%v", err)
			c.mu.Lock()
			c.damagedIndexes = append(c.damagedIndexes, o)
			c.mu.Unlock()
		}
	}
	superseded := index.Superseded(ids, files)
	overhead := r.seal.Overhead()
	for i, f := range files {
		if f == nil || superseded[ids[i]] {
			continue
		}
		obj := backend.Handle{Type: backend.IndexFile, Name: ids[i].String()}.Path()
		for _, p := range f.Packs {
			pp := packPath(p.ID)
			if old, ok := c.packs[p.ID]; ok && old != p.Size {
				c.problem(obj, "pack %s listed with size %d, another index says %d", pp, p.Size, old)
			}
			c.packs[p.ID] = p.Size
			if c.entry[p.ID] == nil {
				c.entry[p.ID] = map[BlobHandle]format.PackedBlob{}
			}
			for _, pb := range p.Blobs {
				if err := pb.Check(overhead); err != nil {
					c.problem(obj, "pack %s: %v", pp, err)
					continue
				}
				if int64(pb.Offset)+int64(pb.Length) > p.Size-format.PackTrailerSize {
					c.problem(obj, "blob %s lies outside pack %s (%d+%d of %d bytes)", pb.ID, pp, pb.Offset, pb.Length, p.Size)
					continue
				}
				if _, dup := c.entry[p.ID][pb.Handle()]; dup {
					continue
				}
				c.entry[p.ID][pb.Handle()] = pb
				c.packBlobs[p.ID] = append(c.packBlobs[p.ID], pb)
				c.blobPacks[pb.Handle()] = append(c.blobPacks[pb.Handle()], p.ID)
			}
		}
	}
}

// checkIndexedPacks checks that every indexed pack is stored with the size
// the index records.
func (c *checkState) checkIndexedPacks() {
	for id, size := range c.packs {
		st, ok := c.stored[id]
		switch {
		case !ok:
			c.problem(packPath(id), "pack is in the index but missing from the backend")
			for _, pb := range c.packBlobs[id] {
				c.damageBlob(packPath(id), pb.Handle())
			}
		case st != size:
			c.problem(packPath(id), "pack has %d bytes, index says %d", st, size)
			for _, pb := range c.packBlobs[id] {
				c.damageBlob(packPath(id), pb.Handle())
			}
		}
	}
}

// checkUnindexed reports the packs in data/ that no readable index file
// lists. Their age comes from the creation time in the header, as prune
// judges it (FORMAT.md §12 rule 2): one that is younger than the grace
// period may belong to a backup that has not written its index yet, and is
// left alone.
func (c *checkState) checkUnindexed(ctx context.Context, now time.Time) error {
	var ids []ID
	for id := range c.stored {
		if _, ok := c.packs[id]; !ok {
			ids = append(ids, id)
		}
	}
	slices.SortFunc(ids, func(a, b ID) int { return bytes.Compare(a[:], b[:]) })
	readHeader := func(ctx context.Context, id ID) (*format.PackHeader, error) {
		return c.src.readPackHeader(ctx, id, c.stored[id])
	}
	hdrs, errs, err := loadAll(ctx, ids, 8, readHeader, cancelled)
	if err != nil {
		return fmt.Errorf("check: %w", err)
	}
	cutoff := now.Add(-pruneGrace)
	for i, id := range ids {
		pp := packPath(id)
		if errs[i] != nil {
			// Prune never deletes a pack whose header it cannot read.
			c.problem(pp, "pack is listed by no index file and its header cannot be read (prune keeps it): %v", errs[i])
			continue
		}
		created := hdrs[i].Created
		if !created.Before(cutoff) {
			continue
		}
		c.unindexed[id] = true
		var p *Problem
		if len(c.damagedIndexes) > 0 {
			p = c.problem(pp, "pack is listed by no readable index file (created %s, more than %v ago); a damaged index file may list it, and prune refuses to run until that is repaired",
				created.UTC().Format(time.RFC3339), pruneGrace)
		} else {
			p = c.problem(pp, "pack is listed by no index file (created %s, more than %v ago): no snapshot can use its blobs, and the next prune deletes it",
				created.UTC().Format(time.RFC3339), pruneGrace)
		}
		c.mu.Lock()
		p.Kind = ProblemUnindexedPack
		c.mu.Unlock()
	}
	return nil
}

// checkSnapshots loads every snapshot file and returns the readable ones.
func (c *checkState) checkSnapshots(ctx context.Context) ([]*Snapshot, error) {
	var bad []string
	ids, err := c.src.listIDs(ctx, backend.SnapshotFile, func(name string) { bad = append(bad, name) })
	if err != nil {
		return nil, fmt.Errorf("check: %w", err)
	}
	c.snapIDs = ids
	out, errs, err := loadAll(ctx, ids, 16, c.src.LoadSnapshot, cancelled)
	if err != nil {
		return nil, fmt.Errorf("check: %w", err)
	}
	return c.recordSnapshots(ids, bad, out, errs), nil
}

// recordSnapshots records the problems of the snapshot files ids (loaded
// as out, or failing with errs; bad are names that are not ids) and
// returns the readable ones, sorted by id.
func (c *checkState) recordSnapshots(ids []ID, bad []string, out []*Snapshot, errs []error) []*Snapshot {
	for _, name := range bad {
		c.problem(backend.Handle{Type: backend.SnapshotFile, Name: name}.Path(), "object name is not a snapshot id")
	}
	for i, err := range errs {
		if err != nil {
			p := c.problem(backend.Handle{Type: backend.SnapshotFile, Name: ids[i].String()}.Path(), "%v", err)
			c.mu.Lock()
			p.Snapshots = []string{ids[i].String()}
			c.mu.Unlock()
		}
	}
	snaps := slices.DeleteFunc(out, func(s *Snapshot) bool { return s == nil })
	sort.Slice(snaps, func(i, j int) bool { return snaps[i].ID.String() < snaps[j].ID.String() })
	return snaps
}

// lookupBlob finds a blob in check's own view of the index: by type and
// id, so that a reference is satisfied only by a blob of the type it needs.
func (c *checkState) lookupBlob(h BlobHandle) (ID, format.PackedBlob, bool) {
	ps := c.blobPacks[h]
	if len(ps) == 0 {
		return ID{}, format.PackedBlob{}, false
	}
	return ps[0], c.entry[ps[0]][h], true
}

// checkTrees reads every tree reachable from snaps once and checks that every
// blob it references is indexed. It returns the referenced blobs that are in
// no index.
func (c *checkState) checkTrees(ctx context.Context, snaps []*Snapshot) (map[BlobHandle]bool, error) {
	seen := map[ID]bool{}
	missing := map[BlobHandle]bool{}
	var queue []ID
	for _, sn := range snaps {
		if !seen[sn.Tree] {
			seen[sn.Tree] = true
			queue = append(queue, sn.Tree)
		}
	}
	// A level at a time, each level by pack (loadTrees): one round trip
	// per level rather than per directory.
	for len(queue) > 0 {
		trees, err := c.loadTrees(ctx, queue)
		if err != nil {
			return nil, fmt.Errorf("check: %w", err)
		}
		var next []ID
		for _, tid := range queue {
			t := trees[tid]
			if t == nil {
				continue
			}
			for j := range t.Nodes {
				n := &t.Nodes[j]
				switch n.Type {
				case format.NodeDir:
					if !seen[n.Subtree] {
						seen[n.Subtree] = true
						next = append(next, n.Subtree)
					}
				case format.NodeFile:
					for _, b := range n.Content {
						if _, _, ok := c.lookupBlob(format.DataHandle(b)); !ok {
							missing[format.DataHandle(b)] = true
						}
					}
				}
			}
		}
		queue = next
	}
	return missing, nil
}

// loadTrees reads trees through check's own index view, the trees of one
// pack together and several packs at once (Repository.loadTrees), and
// records why a tree could not be read, as loadTree does. The result holds
// the trees that were read; it returns an error only when ctx ends.
func (c *checkState) loadTrees(ctx context.Context, ids []ID) (map[ID]*format.Tree, error) {
	want := map[ID][]format.PackedBlob{}
	for _, id := range ids {
		h := format.TreeHandle(id)
		pack, pb, ok := c.lookupBlob(h)
		if !ok {
			c.mu.Lock()
			c.damagedBlobs[h] = ""
			c.mu.Unlock()
			continue
		}
		if _, ok := c.stored[pack]; !ok {
			continue // already reported
		}
		want[pack] = append(want[pack], pb)
	}
	out := make(map[ID]*format.Tree, len(ids))
	var mu sync.Mutex
	err := readPackSet(ctx, c.src, want, c.src.readers(treeWorkers()), func(pack ID, b readBlob) error {
		if t := c.openTree(pack, b); t != nil {
			mu.Lock()
			out[b.Entry.ID] = t
			mu.Unlock()
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// openTree decodes a tree blob read from pack, or records why it cannot.
func (c *checkState) openTree(pack ID, b readBlob) *format.Tree {
	id := b.Entry.ID
	if b.Err != nil {
		c.problem(packPath(pack), "tree blob %s: %v", id.Short(), blobCause(b.Err))
		c.damageBlob(packPath(pack), format.TreeHandle(id))
		return nil
	}
	t, err := format.DecodeTree(b.Plain)
	if err != nil {
		c.problem(packPath(pack), "tree blob %s: %v", id.Short(), err)
		c.damageBlob(packPath(pack), format.TreeHandle(id))
		return nil
	}
	return t
}

// loadTree reads one tree through check's own index view and records why it
// could not be read.
func (c *checkState) loadTree(ctx context.Context, id ID) (*format.Tree, error) {
	h := format.TreeHandle(id)
	pack, pb, ok := c.lookupBlob(h)
	if !ok {
		c.mu.Lock()
		c.damagedBlobs[h] = ""
		c.mu.Unlock()
		return nil, fmt.Errorf("tree %s not in index", id)
	}
	if _, ok := c.stored[pack]; !ok {
		return nil, errors.New("pack missing") // already reported
	}
	pr := c.src.newPackReader(false)
	var t *format.Tree
	if err := pr.read(ctx, pack, []format.PackedBlob{pb}, func(b readBlob) error { t = c.openTree(pack, b); return nil }); err != nil {
		return nil, err
	}
	if t == nil {
		return nil, fmt.Errorf("tree %s is damaged", id) // reported by openTree
	}
	return t, nil
}

// attributeMissing blames referenced blobs that no index lists: on the
// damaged index files if there are any (they most likely listed them), or on
// the index as a whole.
func (c *checkState) attributeMissing(missing map[BlobHandle]bool) {
	for h, obj := range c.damagedBlobs {
		if obj == "" {
			missing[h] = true
			delete(c.damagedBlobs, h)
		}
	}
	if len(missing) == 0 {
		return
	}
	hs := make([]BlobHandle, 0, len(missing))
	otherType := 0
	for h := range missing {
		hs = append(hs, h)
		if _, _, ok := c.lookupBlob(BlobHandle{Type: otherBlobType(h.Type), ID: h.ID}); ok {
			otherType++
		}
	}
	slices.SortFunc(hs, func(a, b BlobHandle) int {
		if c := bytes.Compare(a.ID[:], b.ID[:]); c != 0 {
			return c
		}
		return int(a.Type) - int(b.Type)
	})
	// A blob indexed only with the other type is what older versions left
	// when a file chunk and a tree had the same id: they stored one of the
	// two. Saying so tells the operator the cure.
	why := ""
	if otherType > 0 {
		why = fmt.Sprintf(" (%d of them only as a blob of the other type: a file chunk with the same bytes as a tree; the next backup of the data stores them)", otherType)
	}
	if len(c.damagedIndexes) == 0 {
		c.problem("index", "%d blobs referenced by snapshots are in no index file%s", len(hs), why)
		for _, h := range hs {
			c.damageBlob("index", h)
		}
		return
	}
	sort.Strings(c.damagedIndexes)
	for _, o := range c.damagedIndexes {
		c.problem(o, "%d blobs referenced by snapshots are in no readable index file%s", len(hs), why)
	}
	for _, h := range hs {
		c.damageBlob(c.damagedIndexes[0], h)
	}
	// Every damaged index file may have held them: give each the same list.
	first := c.problems[c.damagedIndexes[0]]
	for _, o := range c.damagedIndexes[1:] {
		c.problems[o].Blobs = append([]string(nil), first.Blobs...)
	}
}

// otherBlobType returns the type that is not t.
func otherBlobType(t BlobType) BlobType {
	if t == DataBlob {
		return TreeBlob
	}
	return DataBlob
}

// readPacks reads the packs in scope and verifies them byte by byte.
func (c *checkState) readPacks(ctx context.Context, opts CheckOptions) error {
	all := make([]ID, 0, len(c.stored))
	for id := range c.stored {
		all = append(all, id)
	}
	slices.SortFunc(all, func(a, b ID) int { return bytes.Compare(a[:], b[:]) })
	start := 0
	if opts.Cursor != "" {
		cur, _ := ParseID(opts.Cursor)
		start = sort.Search(len(all), func(i int) bool { return bytes.Compare(all[i][:], cur[:]) > 0 })
	}
	var scope []ID
	var planned int64
	for _, id := range all[start:] {
		size := c.stored[id]
		if opts.Budget > 0 && len(scope) > 0 && planned+size > opts.Budget {
			break
		}
		scope = append(scope, id)
		planned += size
	}
	if start+len(scope) < len(all) && len(scope) > 0 {
		c.res.Cursor = scope[len(scope)-1].String()
	}
	return c.readPackList(ctx, scope, func(_ ID, n int64) {
		c.mu.Lock()
		c.res.PacksChecked++
		c.res.BytesRead += n
		c.mu.Unlock()
	})
}

// readPackList verifies packs (readPack), as many at once as the backend
// has connections for (on local folders, one per core), and calls done
// with the bytes read of each. It returns an error only when ctx ends.
func (c *checkState) readPackList(ctx context.Context, packs []ID, done func(id ID, n int64)) error {
	workers := c.src.readers(max(2, runtime.GOMAXPROCS(0)))
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(workers)
	// Readers (and the rare whole-pack buffer) are reused: a fresh one per
	// pack would let garbage pile up.
	readers := make(chan *packReader, workers)
	for _, id := range packs {
		g.Go(func() error {
			var pr *packReader
			select {
			case pr = <-readers:
			default:
				pr = c.src.newPackReader(false)
			}
			n, err := c.readPack(gctx, id, pr)
			readers <- pr
			if err != nil {
				return err
			}
			done(id, n)
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return fmt.Errorf("check: %w", err)
	}
	return nil
}

// readPack verifies one pack with pr and returns the bytes it read; an
// error only when ctx ended. A pack whose index entries are in order and
// inside it is streamed through verification (streamPack), so memory holds
// one blob, not the pack; any other, damaged or unindexed, is read whole.
func (c *checkState) readPack(ctx context.Context, id ID, pr *packReader) (int64, error) {
	if blobs, ok := c.streamable(id); ok {
		return c.streamPack(ctx, id, blobs, pr)
	}
	n, buf, err := c.readWholePack(ctx, id, pr.whole)
	pr.whole = buf
	return n, err
}

// streamable returns the index entries of pack sorted by offset, if they
// can be verified as the pack streams past: the pack is indexed, stored with
// the size the index records, and its entries do not overlap.
func (c *checkState) streamable(pack ID) ([]format.PackedBlob, bool) {
	if c.entry[pack] == nil || c.packs[pack] != c.stored[pack] {
		return nil, false
	}
	blobs := slices.SortedFunc(slices.Values(c.packBlobs[pack]), byOffset)
	size := c.stored[pack]
	for i, pb := range blobs {
		if int64(pb.Offset)+int64(pb.Length) > size-format.PackTrailerSize ||
			(i > 0 && int64(blobs[i-1].Offset)+int64(blobs[i-1].Length) > int64(pb.Offset)) {
			return nil, false
		}
	}
	return blobs, true
}

// streamPack verifies a pack in one pass over one request: every byte goes
// through the pack's SHA-256, each indexed blob is verified as it passes,
// and the header is read from what follows the last blob. It reports what
// readWholePack would, in the same order.
func (c *checkState) streamPack(ctx context.Context, id ID, blobs []format.PackedBlob, pr *packReader) (int64, error) {
	pp := packPath(id)
	size := c.stored[id]
	h := backend.Handle{Type: backend.PackFile, Name: id.String()}
	sum := sha256.New()
	var read int64
	fail := func(err error) (int64, error) {
		if ctx.Err() != nil {
			return read, ctx.Err()
		}
		c.problem(pp, "reading pack: %v", err)
		for _, pb := range c.packBlobs[id] {
			c.damageBlob(pp, pb.Handle())
		}
		return read, nil
	}
	rd, err := c.src.be.Load(ctx, h, 0, 0)
	if err != nil {
		return fail(err)
	}
	defer func() { _ = rd.Close() }()
	in := io.TeeReader(&countReader{r: rd, n: &read}, sum)
	var damaged []readBlob
	var pos int64
	for i, pb := range blobs {
		if skip := int64(pb.Offset) - pos; skip > 0 {
			if _, err := io.CopyN(io.Discard, in, skip); err != nil {
				return fail(fmt.Errorf("read %s: %w", h, shortBody(err)))
			}
		}
		if cap(pr.sealed) < int(pb.Length) {
			pr.sealed = make([]byte, pb.Length)
		}
		sealed := pr.sealed[:pb.Length]
		if _, err := io.ReadFull(in, sealed); err != nil {
			return fail(fmt.Errorf("read %s: %w", h, shortBody(err)))
		}
		pos = int64(pb.Offset) + int64(pb.Length)
		if b := pr.open(id, i, pb, sealed); b.Err != nil {
			damaged = append(damaged, b)
		}
	}
	// The rest holds the header and trailer, and possibly blobs no index
	// lists; only its end (the longest header there can be) is kept.
	rest := size - pos
	keep := min(rest, format.MaxPackHeaderBytes+format.PackTrailerSize)
	if _, err := io.CopyN(io.Discard, in, rest-keep); err != nil {
		return fail(fmt.Errorf("read %s: %w", h, shortBody(err)))
	}
	if int64(cap(pr.whole)) < keep {
		pr.whole = make([]byte, keep)
	}
	tail := pr.whole[:keep]
	if _, err := io.ReadFull(in, tail); err != nil {
		return fail(fmt.Errorf("read %s: %w", h, shortBody(err)))
	}
	if n, _ := io.ReadFull(in, make([]byte, 1)); n > 0 {
		return fail(fmt.Errorf("read %s: more than the %d bytes listed", h, size))
	}
	if ID(sum.Sum(nil)) != id {
		c.problem(pp, "pack content does not match its name (SHA-256 mismatch)")
		defer c.damageAllIfNone(id)
	}
	c.checkHeader(id, tail, size)
	for _, b := range damaged {
		c.blobProblem(pp, b)
	}
	return read, nil
}

// countReader counts the bytes read through it into *n.
type countReader struct {
	r io.Reader
	n *int64
}

func (c *countReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	*c.n += int64(n)
	return n, err
}

// damageAllIfNone marks every blob of a pack whose hash fails as damaged
// when none was found damaged itself: the pack is damaged even where every
// indexed blob still verifies (e.g. in its header), and its problem must
// name what depends on it.
func (c *checkState) damageAllIfNone(id ID) {
	pp := packPath(id)
	c.mu.Lock()
	p := c.problems[pp]
	nb := len(p.Blobs)
	c.mu.Unlock()
	if nb == 0 {
		for _, pb := range c.packBlobs[id] {
			c.damageBlob(pp, pb.Handle())
		}
	}
}

// checkHeader parses a pack's header from tail (the end of the pack of
// size bytes) and checks that the index entries of the pack agree with it.
// It returns the header, or nil if it cannot be read.
func (c *checkState) checkHeader(id ID, tail []byte, size int64) *format.PackHeader {
	pp := packPath(id)
	hdr, err := format.ParsePackTail(c.src.seal, tail, size)
	if err != nil {
		c.problem(pp, "pack header: %v", err)
		return nil
	}
	inHeader := make(map[BlobHandle]format.PackedBlob, len(hdr.Blobs))
	for _, pb := range hdr.Blobs {
		inHeader[pb.Handle()] = pb
	}
	for h, pb := range c.entry[id] {
		if hb, ok := inHeader[h]; !ok || hb != pb {
			c.problem(pp, "index entry for %s blob %s does not match the pack header", h.Type, h.ID.Short())
		}
	}
	return hdr
}

// blobProblem records a blob that failed verification.
func (c *checkState) blobProblem(pp string, b readBlob) {
	if errors.Is(b.Err, errBeyondEnd) {
		c.problem(pp, "blob %s lies beyond the end of the pack", b.Entry.ID.Short())
	} else {
		c.problem(pp, "%s blob %s: %v", b.Entry.Type, b.Entry.ID.Short(), blobCause(b.Err))
	}
	c.damageBlob(pp, b.Entry.Handle())
}

// readWholePack verifies one whole pack, reading it into buf's memory. It
// returns the bytes read and the buffer for reuse; an error only when ctx
// ended.
func (c *checkState) readWholePack(ctx context.Context, id ID, buf []byte) (int64, []byte, error) {
	pp := packPath(id)
	size := c.stored[id]
	h := backend.Handle{Type: backend.PackFile, Name: id.String()}
	buf, err := loadWhole(ctx, c.src.be, h, size, buf)
	if err != nil {
		if ctx.Err() != nil {
			return 0, buf, ctx.Err()
		}
		c.problem(pp, "reading pack: %v", err)
		for _, pb := range c.packBlobs[id] {
			c.damageBlob(pp, pb.Handle())
		}
		return int64(len(buf)), buf, nil
	}
	indexed := c.entry[id]
	if sha256.Sum256(buf) != id {
		c.problem(pp, "pack content does not match its name (SHA-256 mismatch)")
		defer c.damageAllIfNone(id)
	}
	hdr := c.checkHeader(id, buf, int64(len(buf)))
	// Verify blobs by the index entries (what restore uses); for a pack no
	// index lists, by its header.
	var blobs []format.PackedBlob
	if indexed != nil {
		blobs = c.packBlobs[id]
	} else if hdr != nil {
		blobs = hdr.Blobs
	}
	// The pack hash and header are done with, so blobs are opened in
	// place.
	pr := c.src.newPackReader(false)
	_ = pr.readBuffer(id, buf, blobs, func(b readBlob) error {
		if b.Err != nil {
			c.blobProblem(pp, b)
		}
		return nil
	})
	return int64(len(buf)), buf, nil
}

// loadWhole reads a whole object of the given size into buf's memory (or a
// new buffer if buf is too small).
func loadWhole(ctx context.Context, be packLoader, h backend.Handle, size int64, buf []byte) ([]byte, error) {
	if int64(cap(buf)) < size+1 {
		buf = make([]byte, 0, size+1)
	}
	rd, err := be.Load(ctx, h, 0, 0)
	if err != nil {
		return buf[:0], err
	}
	defer func() { _ = rd.Close() }()
	buf, err = readAllInto(rd, buf[:0])
	if err != nil {
		return buf, fmt.Errorf("read %s: %w", h, err)
	}
	if int64(len(buf)) != size {
		return buf, fmt.Errorf("read %s: got %d bytes, listed with %d", h, len(buf), size)
	}
	return buf, nil
}

func readAllInto(rd io.Reader, b []byte) ([]byte, error) {
	for {
		if len(b) == cap(b) {
			b = append(b, 0)[:len(b)]
		}
		n, err := rd.Read(b[len(b):cap(b)])
		b = b[:len(b)+n]
		if err == io.EOF {
			return b, nil
		}
		if err != nil {
			return b, err
		}
	}
}

// findDependents walks every readable snapshot's tree and records, for each
// damaged blob, the snapshots and file paths that need it.
func (c *checkState) findDependents(ctx context.Context, snaps []*Snapshot) error {
	type dep struct {
		snaps map[string]bool
		paths []string
	}
	byObject := map[string]*dep{}
	add := func(blob BlobHandle, sn *Snapshot, p string) {
		obj, ok := c.damagedBlobs[blob]
		if !ok {
			return
		}
		d := byObject[obj]
		if d == nil {
			d = &dep{snaps: map[string]bool{}}
			byObject[obj] = d
		}
		d.snaps[sn.ID.String()] = true
		if p != "" && len(d.paths) < maxPathsPerProblem {
			d.paths = append(d.paths, sn.ID.Short()+":"+p)
		}
	}
	for _, sn := range snaps {
		add(format.TreeHandle(sn.Tree), sn, "/")
		if _, bad := c.damagedBlobs[format.TreeHandle(sn.Tree)]; bad {
			continue
		}
		err := c.walk(ctx, "", sn.Tree, func(p string, n *format.Node) {
			switch n.Type {
			case format.NodeDir:
				add(format.TreeHandle(n.Subtree), sn, p+"/")
			case format.NodeFile:
				for _, b := range n.Content {
					if _, bad := c.damagedBlobs[format.DataHandle(b)]; bad {
						add(format.DataHandle(b), sn, p)
						break
					}
				}
			}
		})
		if err != nil {
			return fmt.Errorf("check: %w", err)
		}
	}
	for obj, d := range byObject {
		p := c.problems[obj]
		if p == nil {
			continue
		}
		for s := range d.snaps {
			if !slices.Contains(p.Snapshots, s) {
				p.Snapshots = append(p.Snapshots, s)
			}
		}
		sort.Strings(p.Snapshots)
		p.Paths = append(p.Paths, d.paths...)
	}
	return nil
}

// walk visits the nodes below tree id, skipping subtrees that are damaged.
// A node whose path is needed more than once (shared subtrees) is visited
// once per path, which is what dependents need.
func (c *checkState) walk(ctx context.Context, prefix string, id ID, fn func(p string, n *format.Node)) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if _, bad := c.damagedBlobs[format.TreeHandle(id)]; bad {
		return nil
	}
	t, err := c.loadTree(ctx, id)
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return nil
	}
	for i := range t.Nodes {
		n := &t.Nodes[i]
		p := n.Name
		if prefix != "" {
			p = prefix + "/" + n.Name
		}
		fn(p, n)
		if n.Type == format.NodeDir {
			if err := c.walk(ctx, p, n.Subtree, fn); err != nil {
				return err
			}
		}
	}
	return nil
}

// OpenForCheck opens a repository for Check alone: without loading its
// index, which Check does not use (it reads and verifies every index file
// itself, and reports the damaged ones), so that no index file is fetched
// twice. Readers that need the index (restore, listings of files) load it
// when they start, as they do after another process added index files.
//
// It also lists and loads, while it derives the key, what the first Check
// lists and loads before it needs the key (checkFetch); Close stops that
// if no Check takes it.
func OpenForCheck(ctx context.Context, be backend.Backend, password []byte) (*Repository, error) {
	pre := startBackground(ctx, func(ctx context.Context) (*checkFetch, error) { return fetchForCheck(backend.Uncached(ctx), be) })
	r, err := openConfig(ctx, be, password)
	if err != nil {
		pre.stop()
		return nil, err
	}
	r.checkPre.Store(pre)
	return r, nil
}

// OpenTolerant opens a repository like Open, but an index file that cannot
// be read, for whatever reason, does not stop it either: the in-memory
// index is built from the index files that load, and those that do not are
// returned (as backend paths with the reason). Blobs listed only in such a
// file are then "not in index", so restore fails loudly for the files that
// need them and still restores every other file, and Check names the
// damaged file. Prune refuses to run while an index file cannot be read.
func OpenTolerant(ctx context.Context, be backend.Backend, password []byte) (*Repository, []string, error) {
	pre := prefetchIndex(ctx, be)
	defer pre.stop()
	r, err := openConfig(ctx, be, password)
	if err != nil {
		return nil, nil, err
	}
	x, err := r.buildIndex(ctx, func(error) bool { return true }, pre)
	if err != nil {
		return nil, nil, fmt.Errorf("open %s: load index: %w", be.Location(), err)
	}
	r.setIndex(x)
	files := x.DamagedFiles()
	damaged := make([]string, 0, len(files))
	for id, err := range files {
		damaged = append(damaged, fmt.Sprintf("%s: %v", backend.Handle{Type: backend.IndexFile, Name: id.String()}.Path(), err))
	}
	sort.Strings(damaged)
	return r, damaged, nil
}
