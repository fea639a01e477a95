package repository

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"

	"github.com/custos-backup/custos/repository/backend"
	"github.com/custos-backup/custos/repository/format"
	"github.com/custos-backup/custos/repository/index"
	"golang.org/x/sync/errgroup"
)

// saveIndexFile stores f and returns its id.
func (r *Repository) saveIndexFile(ctx context.Context, f *format.IndexFile) (ID, error) {
	enc := r.getEncoder()
	stored := format.SealIndexFile(r.seal, enc, f)
	r.putEncoder(enc)
	id := format.HashID(stored)
	if err := saveBytes(ctx, r.be, backend.Handle{Type: backend.IndexFile, Name: id.String()}, stored); err != nil {
		return ID{}, err
	}
	return id, nil
}

// indexDamageError is a load failure caused by an index file's content (it
// does not hash to its name, open or decode), as opposed to failing to read
// it: reading again cannot help, so readers leave the file out instead of
// failing, while a read error may pass and stays an error.
type indexDamageError struct {
	h   backend.Handle
	err error
}

func (e *indexDamageError) Error() string { return fmt.Sprintf("index %s: %v", e.h, e.err) }
func (e *indexDamageError) Unwrap() error { return e.err }

// isIndexDamage reports whether err says that an index file's content is
// damaged.
func isIndexDamage(err error) bool {
	var d *indexDamageError
	return errors.As(err, &d)
}

// loadIndexFile loads and verifies one index file (name = SHA-256 of its bytes).
func (r *Repository) loadIndexFile(ctx context.Context, id ID) (*format.IndexFile, error) {
	r.indexLoads.Add(1)
	b, err := fetchIndexFile(ctx, r.be, id)
	if err != nil {
		return nil, err
	}
	return r.openIndexFile(id, b)
}

// fetchIndexFile loads the stored bytes of index file id.
func fetchIndexFile(ctx context.Context, be packLoader, id ID) ([]byte, error) {
	return loadSmall(ctx, be, backend.Handle{Type: backend.IndexFile, Name: id.String()}, format.MaxIndexFileSize)
}

// openIndexFile verifies and opens the stored bytes b of index file id.
func (r *Repository) openIndexFile(id ID, b []byte) (*format.IndexFile, error) {
	h := backend.Handle{Type: backend.IndexFile, Name: id.String()}
	if format.HashID(b) != id {
		return nil, &indexDamageError{h, errors.New("content does not match its name")}
	}
	f, err := format.OpenIndexFile(r.seal, b)
	if err != nil {
		return nil, &indexDamageError{h, err}
	}
	return f, nil
}

// loadAll loads the objects named by ids, at most limit at once, and returns
// each result or error at its id's position. An error for which fatal
// returns true stops the others and is returned as the third value.
func loadAll[T any](ctx context.Context, ids []ID, limit int, load func(context.Context, ID) (T, error), fatal func(ctx context.Context, err error) bool) ([]T, []error, error) {
	out := make([]T, len(ids))
	errs := make([]error, len(ids))
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(limit)
	for i, id := range ids {
		g.Go(func() error {
			v, err := load(gctx, id)
			if err != nil && fatal(gctx, err) {
				return err
			}
			out[i], errs[i] = v, err
			return nil
		})
	}
	return out, errs, g.Wait()
}

// anyError is the fatal function of loadAll callers that stop at the first error.
func anyError(context.Context, error) bool { return true }

// listIDs lists the objects of type t whose names are valid ids. Other
// names are reported through bad (may be nil).
func (r *Repository) listIDs(ctx context.Context, t backend.FileType, bad func(name string)) ([]ID, error) {
	return listObjectIDs(ctx, r.be, t, bad)
}

// lister lists a backend's objects of one type (backend.Backend.List).
type lister interface {
	List(ctx context.Context, t backend.FileType, fn func(backend.FileInfo) error) error
}

// listObjectIDs is listIDs on be.
func listObjectIDs(ctx context.Context, be lister, t backend.FileType, bad func(name string)) ([]ID, error) {
	var ids []ID
	err := be.List(ctx, t, func(fi backend.FileInfo) error {
		id, err := ParseID(fi.Name)
		if err != nil {
			if bad != nil {
				bad(fi.Name)
			}
			return nil
		}
		ids = append(ids, id)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", t, err)
	}
	return ids, nil
}

// forEachIndexFile loads every index file concurrently and calls fn for
// each (serialised). Files superseded by another present file are skipped
// unless all is true.
func (r *Repository) forEachIndexFile(ctx context.Context, all bool, fn func(id ID, f *format.IndexFile) error) error {
	_, err := r.forEachIndexFileIDs(ctx, all, fn)
	return err
}

// forEachIndexFileIDs is forEachIndexFile that also returns every index
// file id it listed.
func (r *Repository) forEachIndexFileIDs(ctx context.Context, all bool, fn func(id ID, f *format.IndexFile) error) ([]ID, error) {
	ids, err := r.listIDs(ctx, backend.IndexFile, ignoredIndexName(r.log))
	if err != nil {
		return nil, err
	}
	files, _, err := loadAll(ctx, ids, 8, r.loadIndexFile, anyError)
	if err != nil {
		return nil, err
	}
	var superseded map[ID]bool
	if !all {
		superseded = index.Superseded(ids, files)
	}
	for i, id := range ids {
		if superseded[id] {
			continue
		}
		if err := fn(id, files[i]); err != nil {
			return nil, err
		}
	}
	return ids, nil
}

// ignoredIndexName is how loading the index reports an object in index/
// whose name is no id: it is left out, and a warning says so.
func ignoredIndexName(log *slog.Logger) func(name string) {
	return func(name string) { log.Warn("ignoring index object with an invalid name", "name", name) }
}

// rawIndex is index/ listed, with the stored bytes of each file or why
// they could not be loaded.
type rawIndex struct {
	ids  []ID
	raw  [][]byte
	errs []error // of loading raw[i]
}

// indexPrefetch lists index/ and loads the bytes of every index file in
// the background, before the repository's key is known.
type indexPrefetch = background[rawIndex]

// prefetchIndex starts an indexPrefetch; stop ends it.
func prefetchIndex(ctx context.Context, be backend.Backend) *indexPrefetch {
	return startBackground(ctx, func(ctx context.Context) (rawIndex, error) {
		var x rawIndex
		var err error
		x.ids, err = listObjectIDs(ctx, be, backend.IndexFile, ignoredIndexName(repoLogger(be)))
		if err != nil {
			return x, err
		}
		load := func(ctx context.Context, id ID) ([]byte, error) { return fetchIndexFile(ctx, be, id) }
		// Every failure is kept for buildIndex to judge.
		x.raw, x.errs, _ = loadAll(ctx, x.ids, 8, load, func(context.Context, error) bool { return false })
		return x, nil
	})
}

// openPrefetched waits for p and opens what it loaded, as loadAll of
// loadIndexFile would: the results by position, or the first error fatal
// returns true for.
func (r *Repository) openPrefetched(ctx context.Context, p *indexPrefetch, fatal func(context.Context, error) bool) ([]ID, []*format.IndexFile, []error, error) {
	x, err := p.wait(ctx)
	if err != nil {
		return nil, nil, nil, err
	}
	files := make([]*format.IndexFile, len(x.ids))
	errs := make([]error, len(x.ids))
	for i, id := range x.ids {
		r.indexLoads.Add(1)
		err := x.errs[i]
		if err == nil {
			files[i], err = r.openIndexFile(id, x.raw[i])
		}
		if err != nil && fatal(ctx, err) {
			return nil, nil, nil, err
		}
		errs[i] = err
	}
	return x.ids, files, errs, nil
}

// buildIndex builds a new in-memory index from every index file, listed
// and loaded now or, if pre is not nil, by pre. A file that fails to load
// with an error tolerate accepts is recorded in the index's damaged set
// instead of failing the build; a nil tolerate accepts none.
func (r *Repository) buildIndex(ctx context.Context, tolerate func(error) bool, pre *indexPrefetch) (*index.Index, error) {
	fatal := func(gctx context.Context, err error) bool {
		return tolerate == nil || gctx.Err() != nil || !tolerate(err)
	}
	var (
		ids   []ID
		files []*format.IndexFile
		errs  []error
		err   error
	)
	if pre != nil {
		ids, files, errs, err = r.openPrefetched(ctx, pre, fatal)
	} else {
		ids, err = r.listIDs(ctx, backend.IndexFile, ignoredIndexName(r.log))
		if err == nil {
			files, errs, err = loadAll(ctx, ids, 8, r.loadIndexFile, fatal)
		}
	}
	if err != nil {
		return nil, err
	}
	var damaged bool
	for _, err := range errs {
		damaged = damaged || err != nil
	}
	var stored map[ID]bool
	if damaged {
		// A damaged file may be the one a prune wrote to supersede all
		// others before it deleted packs (a prune that stopped before
		// deleting the old files leaves both). The old files then list
		// packs that are gone, and a backup must not deduplicate against
		// them: use only packs that exist. The packs are listed after the
		// index files, so every pack those files list is durable already.
		if stored, err = r.storedPackSet(ctx); err != nil {
			return nil, err
		}
	}
	return index.Build(ids, files, errs, stored), nil
}

// storedPackSet lists the packs in data/.
func (r *Repository) storedPackSet(ctx context.Context) (map[ID]bool, error) {
	ids, err := r.listIDs(ctx, backend.PackFile, nil)
	if err != nil {
		return nil, err
	}
	set := make(map[ID]bool, len(ids))
	for _, id := range ids {
		set[id] = true
	}
	return set, nil
}

func (r *Repository) setIndex(x *index.Index) {
	r.idxMu.Lock()
	r.idx = x
	r.idxMu.Unlock()
}

// loadIndex rebuilds the in-memory index from every index file and fails
// if any of them cannot be loaded: prune, which deletes what the index does
// not list, must see all of them.
func (r *Repository) loadIndex(ctx context.Context) error {
	r.refreshMu.Lock()
	defer r.refreshMu.Unlock()
	x, err := r.buildIndex(ctx, nil, nil)
	if err != nil {
		return err
	}
	r.setIndex(x)
	return nil
}

// loadIndexSkipDamaged rebuilds the in-memory index for reading and
// backing up: a damaged index file is left out (a backup then stores its
// blobs again, and check names it), while failing to read one is an error,
// since that may pass.
func (r *Repository) loadIndexSkipDamaged(ctx context.Context, pre *indexPrefetch) error {
	r.refreshMu.Lock()
	defer r.refreshMu.Unlock()
	x, err := r.buildIndex(ctx, isIndexDamage, pre)
	if err != nil {
		return err
	}
	r.logDamaged(x, nil)
	r.setIndex(x)
	return nil
}

// logDamaged logs the damaged index files of x (not shared yet) that old
// did not know.
func (r *Repository) logDamaged(x, old *index.Index) {
	var known map[ID]error
	if old != nil {
		known = old.DamagedFiles()
	}
	for id, err := range x.DamagedFiles() {
		if _, ok := known[id]; ok {
			continue
		}
		r.log.Warn("index file cannot be used; blobs listed only there count as not stored (run check)",
			"file", backend.Handle{Type: backend.IndexFile, Name: id.String()}.Path(), "err", err)
	}
}

// refreshIndex brings the in-memory index up to date with index/: another
// process may have added index files (new backups) or replaced them
// (prune). A long-lived Repository would otherwise dedup against blobs
// whose packs prune has since deleted.
//
// While every file the index loaded is still listed, only the files it has
// not seen are loaded and added. Adding is safe then: prune deletes packs
// only after writing a file that supersedes the ones listing them, and
// deletes those files last, so a pack still listed by a present,
// unsuperseded file exists. A new file that supersedes a loaded one, a
// loaded file that disappeared, or a new file that is damaged (it may be
// such a superseder) makes it rebuild the index from every file instead.
// Damaged files are left out either way.
//
// Writers call it after taking their lock, with strict set: then failing
// to read an index file is an error. Readers pass strict false: such a
// failure keeps the current index, and the next call tries again; reads
// through a location in a deleted pack fail loudly, so a stale view costs
// readers nothing silent.
func (r *Repository) refreshIndex(ctx context.Context, strict bool) error {
	r.refreshMu.Lock()
	defer r.refreshMu.Unlock()
	ids, err := r.listIDs(ctx, backend.IndexFile, nil)
	if err != nil {
		return err
	}
	x := r.index()
	added, gone := x.Compare(ids)
	if !gone {
		if len(added) == 0 {
			return nil
		}
		rebuild, err := r.addIndexFiles(ctx, x, added)
		if err != nil {
			if strict {
				return err
			}
			r.log.Warn("index files changed but cannot be loaded; using the index loaded before", "err", err)
			return nil
		}
		if !rebuild {
			return nil
		}
	}
	nx, err := r.buildIndex(ctx, isIndexDamage, nil)
	if err != nil {
		if strict {
			return err
		}
		// x is left as it was (it still lists the vanished files it
		// loaded, or lacks the new ones), so the next call, and every
		// writer's, sees the change and tries again.
		r.log.Warn("index files changed but cannot be reloaded; using the index loaded before", "err", err)
		return nil
	}
	r.logDamaged(nx, x)
	r.setIndex(nx)
	return nil
}

// addIndexFiles loads the index files added (not seen by x yet) and adds
// their packs to x. It adds nothing and returns rebuild true when x must be
// rebuilt from every file instead: a new file is damaged, or supersedes a
// file x has loaded. A file that cannot be read is an error.
func (r *Repository) addIndexFiles(ctx context.Context, x *index.Index, added []ID) (rebuild bool, err error) {
	files, errs, err := loadAll(ctx, added, 8, r.loadIndexFile, cancelled)
	if err != nil {
		return false, err
	}
	for _, err := range errs {
		if err != nil && !isIndexDamage(err) {
			return false, err
		}
	}
	for _, err := range errs {
		if err != nil {
			return true, nil
		}
	}
	return x.AddFiles(added, files), nil
}

// indexDamageWarnings returns one warning per index file the in-memory
// index left out as damaged, for a backup to record in its snapshot: blobs
// listed only there count as not stored, so the backup stored them again.
func (r *Repository) indexDamageWarnings() []string {
	damaged := r.index().DamagedFiles()
	out := make([]string, 0, len(damaged))
	for id, err := range damaged {
		reason := err
		var d *indexDamageError
		if errors.As(err, &d) {
			reason = d.err
		}
		out = append(out, fmt.Sprintf("damaged index file %s left out (%v): blobs listed only there count as not stored, and this backup stored again those it needed; run check",
			backend.Handle{Type: backend.IndexFile, Name: id.String()}.Path(), reason))
	}
	sort.Strings(out)
	return out
}

// index returns the current in-memory index.
func (r *Repository) index() *index.Index {
	r.idxMu.RLock()
	defer r.idxMu.RUnlock()
	return r.idx
}

// lookupBlob returns where the current index says h is stored.
func (r *Repository) lookupBlob(h BlobHandle) (ID, format.PackedBlob, bool) {
	return r.index().Lookup(h)
}

// hasBlob reports whether the current index lists h.
func (r *Repository) hasBlob(h BlobHandle) bool { return r.index().Has(h) }
