package metadata

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Index is an in-memory copy of the catalog's dataset records and the atom
// lists they name, for finds that must not read and decode every atom
// record from etcd (find '*' over 100,000 atoms). It loads everything once
// at one revision, then follows an etcd watch from that revision, so it
// holds what etcd held at some revision, never a mix. Before it answers,
// Find asks etcd for its current revision and waits until the watch has
// caught up with it, so a record written by any process before the find
// began (a "custos backup" next to the agent) is in the answer, and an atom
// set that a record stopped naming is not.
//
// It reads only dataset/ and dataset-atoms/ (see KEYS.md): the dataset
// record says which atom set counts, and the list chunks of that set are
// its atoms, which is what the atom/ keys say at the same revision.
//
// When the index is not loaded or its watch broke, Find answers from etcd
// through the store (slower, same answer) while Run loads it again.
type Index struct {
	s   *EtcdStore
	dsP string // P dataset/
	chP string // P dataset-atoms/

	mu      sync.Mutex
	changed chan struct{} // closed and replaced whenever rev moves
	live    bool          // loaded, and the watch follows
	rev     int64         // state of etcd as of this revision
	recs    map[string]*idxRecord
	sets    map[string]map[string][]Atom // atom set (version id ⟂ gen) → chunk number → atoms
	view    []idxEntry                   // sorted find view; nil after a change
	viewOK  bool
	watchCx context.Context // the watch's context, for RequestProgress
	// static: loaded once (FindVersions), never followed; it answers as
	// of its load.
	static bool
	// within restricts a static index to dataset keys with this prefix.
	within string
}

// idxRecord is one dataset version: its record and backup header.
type idxRecord struct {
	rec    *datasetRecord
	backup *Backup // header only, shared by every atom of the version
}

// idxEntry is one atom version in the sorted view.
type idxEntry struct {
	name string // global atom name
	r    *idxRecord
	a    *Atom
}

// NewIndex returns an index over the store's catalog. It is empty and not
// live until Run loads it.
func NewIndex(s *EtcdStore) *Index {
	return &Index{
		s:       s,
		dsP:     s.k.p + nsDataset,
		chP:     s.k.p + nsDatasetAtom,
		changed: make(chan struct{}),
	}
}

// Run loads the index and follows the catalog until ctx ends. A load or
// watch that fails (etcd away, history compacted) is logged and tried
// again; meanwhile Find answers from etcd.
func (x *Index) Run(ctx context.Context) {
	wait := time.Second
	for ctx.Err() == nil {
		start := time.Now()
		err := x.follow(ctx)
		x.setLive(false)
		if ctx.Err() != nil {
			return
		}
		if time.Since(start) > time.Minute {
			wait = time.Second
		}
		x.s.log.Warn("catalog index: reloading; finds read etcd meanwhile", "err", err, "in", wait)
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		wait = min(2*wait, time.Minute)
	}
}

func (x *Index) setLive(v bool) {
	x.mu.Lock()
	defer x.mu.Unlock()
	x.live = v
	x.bump()
}

// bump wakes the Find calls waiting for the index to move. Called with mu.
func (x *Index) bump() {
	close(x.changed)
	x.changed = make(chan struct{})
}

// follow loads everything at one revision, then applies the watch from the
// next until it fails.
func (x *Index) follow(ctx context.Context) error {
	recs, sets, rev, err := x.loadAll(ctx)
	if err != nil {
		return err
	}
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// One watch over both namespaces ("dataset-atoms/" < "dataset/"), so
	// that their events come in the order etcd applied them.
	wch := x.s.cli.Watch(wctx, x.chP, clientv3.WithRange(prefixEnd(x.dsP)), clientv3.WithRev(rev+1))
	x.mu.Lock()
	x.recs, x.sets, x.rev, x.live, x.viewOK, x.view, x.watchCx = recs, sets, rev, true, false, nil, wctx
	x.bump()
	x.mu.Unlock()
	x.s.log.Debug("catalog index loaded", "revision", rev, "records", len(recs))
	for resp := range wch {
		if err := resp.Err(); err != nil {
			return fmt.Errorf("watch: %w", err)
		}
		if err := x.apply(resp); err != nil {
			return err
		}
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return errors.New("watch ended")
}

// loadAll reads the dataset records and atom lists (within x.within) at
// one revision.
func (x *Index) loadAll(ctx context.Context) (map[string]*idxRecord, map[string]map[string][]Atom, int64, error) {
	recs := map[string]*idxRecord{}
	sets := map[string]map[string][]Atom{}
	var rev int64
	if err := x.load(ctx, x.dsP+x.within, 1024, &rev, func(key, val []byte) error {
		return applyRecord(recs, x.dsP, key, val)
	}); err != nil {
		return nil, nil, 0, fmt.Errorf("load dataset records: %w", err)
	}
	if err := x.load(ctx, x.chP+x.within, chunkPage, &rev, func(key, val []byte) error {
		return applyChunk(sets, x.chP, key, val)
	}); err != nil {
		return nil, nil, 0, fmt.Errorf("load atom lists: %w", err)
	}
	return recs, sets, rev, nil
}

// load reads [p, prefixEnd(p)) at *rev (set by the first read) in pages of
// limit keys.
func (x *Index) load(ctx context.Context, p string, limit int64, rev *int64, fn func(key, val []byte) error) error {
	start, end := p, prefixEnd(p)
	for {
		opts := []clientv3.OpOption{clientv3.WithRange(end), clientv3.WithLimit(limit)}
		if *rev != 0 {
			opts = append(opts, clientv3.WithRev(*rev))
		}
		resp, err := x.s.kv.Get(ctx, start, opts...)
		if err != nil {
			return err
		}
		if *rev == 0 {
			*rev = resp.Header.Revision
		}
		for _, kv := range resp.Kvs {
			if err := fn(kv.Key, kv.Value); err != nil {
				return err
			}
		}
		if !resp.More || len(resp.Kvs) == 0 {
			return nil
		}
		start = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
	}
}

func (x *Index) apply(resp clientv3.WatchResponse) error {
	x.mu.Lock()
	defer x.mu.Unlock()
	rev := x.rev
	for _, ev := range resp.Events {
		key := ev.Kv.Key
		var val []byte
		if ev.Type == mvccpb.PUT {
			val = ev.Kv.Value
		}
		var err error
		if strings.HasPrefix(string(key), x.dsP) {
			err = applyRecord(x.recs, x.dsP, key, val)
		} else {
			err = applyChunk(x.sets, x.chP, key, val)
		}
		if err != nil {
			return err
		}
		rev = max(rev, ev.Kv.ModRevision)
		x.viewOK, x.view = false, nil
	}
	if resp.IsProgressNotify() {
		// Every event up to this revision has been sent before it.
		rev = max(rev, resp.Header.Revision)
	}
	if rev != x.rev {
		x.rev = rev
		x.bump()
	}
	return nil
}

// applyRecord puts (val != nil) or deletes the dataset record under key.
// An undecodable record is dropped, as FindAtoms skips versions without a
// usable record.
func applyRecord(recs map[string]*idxRecord, p string, key, val []byte) error {
	id := string(key[len(p):])
	if val == nil {
		delete(recs, id)
		return nil
	}
	rec, err := decodeDatasetRecord(key, val)
	if err != nil {
		delete(recs, id)
		return nil
	}
	recs[id] = &idxRecord{rec: rec, backup: &Backup{ID: rec.BackupID, Timestamp: rec.Timestamp, Host: rec.Host}}
	return nil
}

// applyChunk puts or deletes one atom list chunk. Its key is
// <source>/<dataset>⟂<rt>/<backup>⟂<gen>⟂<n> after p.
func applyChunk(sets map[string]map[string][]Atom, p string, key, val []byte) error {
	rest := string(key[len(p):])
	i := strings.LastIndexByte(rest, 0)
	if i < 0 {
		return nil // not a chunk key: nothing reads it
	}
	set, n := rest[:i], rest[i+1:]
	if val == nil {
		if m := sets[set]; m != nil {
			delete(m, n)
			if len(m) == 0 {
				delete(sets, set)
			}
		}
		return nil
	}
	atoms, err := decodeAtoms(val)
	if err != nil {
		return fmt.Errorf("decode atom list %q: %w", key, err)
	}
	m := sets[set]
	if m == nil {
		m = map[string][]Atom{}
		sets[set] = m
	}
	m[n] = atoms
	return nil
}

// buildView sorts every visible atom version by name, then newest first.
// Called with mu.
func (x *Index) buildView() {
	if x.viewOK {
		return
	}
	n := 0
	for _, r := range x.recs {
		n += r.rec.Dataset.AtomCount
	}
	view := make([]idxEntry, 0, n)
	for id, r := range x.recs {
		d := r.rec.Dataset
		add := func(atoms []Atom) {
			for i := range atoms {
				view = append(view, idxEntry{name: AtomName(d.Source, d.Name, atoms[i].Name), r: r, a: &atoms[i]})
			}
		}
		if r.rec.Gen == "" {
			add(d.Atoms) // a record from before atom sets lists its atoms
			continue
		}
		chunks := x.sets[id+sep+r.rec.Gen]
		nums := make([]string, 0, len(chunks))
		for c := range chunks {
			nums = append(nums, c)
		}
		sort.Strings(nums)
		for _, c := range nums {
			add(chunks[c])
		}
	}
	slices.SortFunc(view, func(a, b idxEntry) int {
		if c := strings.Compare(a.name, b.name); c != 0 {
			return c
		}
		if c := b.r.backup.Timestamp.Compare(a.r.backup.Timestamp); c != 0 {
			return c
		}
		return cmp.Compare(a.r.backup.ID, b.r.backup.ID)
	})
	x.view, x.viewOK = view, true
}

// errNotLive: the index cannot answer; Find goes to etcd.
var errNotLive = errors.New("catalog index not loaded")

// catchUp waits until the index holds etcd's current revision (as of the
// call) and returns with mu held. It returns errNotLive (mu not held) when
// the index is not live.
func (x *Index) catchUp(ctx context.Context) error {
	x.mu.Lock()
	if x.static {
		return nil // with mu
	}
	if !x.live {
		x.mu.Unlock()
		return errNotLive
	}
	x.mu.Unlock()
	// Any read answers with etcd's current revision; a missing key is the
	// cheapest.
	resp, err := x.s.kv.Get(ctx, x.s.k.p+nsBackup+"\x00", clientv3.WithCountOnly())
	if err != nil {
		return fmt.Errorf("catalog revision: %w", err)
	}
	want := resp.Header.Revision
	asked := false
	for {
		x.mu.Lock()
		if !x.live {
			x.mu.Unlock()
			return errNotLive
		}
		if x.rev >= want {
			return nil // with mu
		}
		ch, wctx := x.changed, x.watchCx
		x.mu.Unlock()
		if !asked {
			// Writes elsewhere in the catalog (job status) move the
			// revision without an event here: a progress notice says
			// when the watch has passed it.
			if err := x.s.cli.RequestProgress(wctx); err != nil {
				// The watch is restarting: etcd answers instead.
				return fmt.Errorf("%w: request progress: %w", errNotLive, err)
			}
			asked = true
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-ch:
		case <-time.After(time.Second):
			asked = false // ask again: a notice may be lost while the watch restarts
		}
	}
}

// FoundVersion is one atom version a find selected. Backup is the header
// of its backup (no Datasets) and Dataset its record without atoms; both
// are shared between calls and must not be changed.
type FoundVersion struct {
	Name    string // global atom name
	Backup  *Backup
	Dataset *Dataset
	Atom    *Atom
}

// Versions returns the atom versions selected by req, by atom name and
// then newest first, as FindAtoms selects them. It answers from memory
// once the index holds what etcd holds at the start of the call. What it
// returns is never changed afterwards (the index replaces records and
// atom lists, it does not modify them), so it may be used after later
// updates. It returns an error that IsNotLive recognizes when the index is
// not loaded; the caller then reads etcd.
func (x *Index) Versions(ctx context.Context, req FindRequest) ([]FoundVersion, error) {
	m, err := newMatcher(req.Pattern)
	if err != nil {
		return nil, err
	}
	if err := x.catchUp(ctx); err != nil {
		return nil, err
	}
	defer x.mu.Unlock()
	x.buildView()
	view := x.view
	lo, hi := 0, len(view)
	if lit, literal := literalPrefix(strings.TrimSuffix(req.Pattern, "/")); !m.all && lit != "" {
		lo = sort.Search(len(view), func(i int) bool { return view[i].name >= lit })
		end := prefixEnd(lit)
		if literal {
			// The atom itself and its subtree; never "lit0..." names.
			end = prefixEnd(lit + "/")
		}
		hi = lo + sort.Search(len(view)-lo, func(i int) bool { return view[lo+i].name >= end })
	}
	n := max(req.NumVersions, 1)
	cur, ok, count := "", false, 0
	var out []FoundVersion
	if m.all && n == 1 && req.Host == "" && req.OlderThan.IsZero() {
		out = make([]FoundVersion, 0, hi-lo)
	}
	for _, e := range view[lo:hi] {
		if e.name != cur {
			cur, ok, count = e.name, m.match(e.name), 0
		}
		if !ok || count >= n {
			continue
		}
		b := e.r.backup
		if req.Host != "" && b.Host != req.Host {
			continue
		}
		if !req.OlderThan.IsZero() && !b.Timestamp.Before(req.OlderThan) {
			continue
		}
		count++
		out = append(out, FoundVersion{Name: e.name, Backup: b, Dataset: e.r.rec.Dataset, Atom: e.a})
	}
	return out, nil
}

// FindAtoms is EtcdStore.FindAtoms answered from memory (from etcd while
// the index is not live), with the same result.
func (x *Index) FindAtoms(ctx context.Context, req FindRequest) ([]*Backup, error) {
	vs, err := x.Versions(ctx, req)
	if errors.Is(err, errNotLive) {
		return x.s.FindAtoms(ctx, req)
	}
	if err != nil {
		return nil, fmt.Errorf("metadata: find %q: %w", req.Pattern, err)
	}
	f := &finder{recs: map[string]*dsVersion{}}
	for _, v := range vs {
		key := v.Backup.ID + sep + v.Dataset.Source + "/" + v.Dataset.Name
		ds := f.recs[key]
		if ds == nil {
			ds = &dsVersion{rec: &datasetRecord{BackupID: v.Backup.ID, Host: v.Backup.Host, Timestamp: v.Backup.Timestamp, Dataset: v.Dataset}}
			f.recs[key] = ds
		}
		f.found = append(f.found, foundAtom{dsKey: key, ds: ds, atom: *v.Atom})
	}
	return f.group(), nil
}

// Live reports whether the index is loaded and following etcd.
func (x *Index) Live() bool {
	x.mu.Lock()
	defer x.mu.Unlock()
	return x.live
}

// WaitLive waits until the index is live or ctx ends.
func (x *Index) WaitLive(ctx context.Context) error {
	for {
		x.mu.Lock()
		live, ch := x.live, x.changed
		x.mu.Unlock()
		if live {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-ch:
		}
	}
}

// IsNotLive reports whether err says that the index could not answer
// because it is not loaded (the caller may ask etcd instead).
func IsNotLive(err error) bool { return errors.Is(err, errNotLive) }

// FindVersions returns what FindAtoms finds, flat: by atom name, then
// newest first. A pattern that names no dataset (find '*', a source, a
// glob over dataset names) selects most of what it reads, so it reads
// the dataset records and atom lists under its literal prefix, at one
// revision, and selects in memory: decoding a few large atom lists costs
// far less than one record per atom. Other patterns go through FindAtoms,
// which reads only their atoms' keys.
func (s *EtcdStore) FindVersions(ctx context.Context, req FindRequest) ([]FoundVersion, error) {
	if _, err := newMatcher(req.Pattern); err != nil {
		return nil, err
	}
	lit, _ := literalPrefix(req.Pattern)
	if strings.Count(lit, "/") < 2 {
		x := NewIndex(s)
		x.static, x.within = true, lit
		recs, sets, rev, err := x.loadAll(ctx)
		if err != nil {
			return nil, fmt.Errorf("metadata: find %q: %w", req.Pattern, err)
		}
		x.recs, x.sets, x.rev, x.live = recs, sets, rev, true
		return x.Versions(ctx, req)
	}
	found, err := s.FindAtoms(ctx, req)
	if err != nil {
		return nil, err
	}
	var out []FoundVersion
	for _, b := range found {
		h := &Backup{ID: b.ID, Timestamp: b.Timestamp, Host: b.Host}
		for _, d := range b.Datasets {
			for i := range d.Atoms {
				out = append(out, FoundVersion{Name: AtomName(d.Source, d.Name, d.Atoms[i].Name), Backup: h, Dataset: d, Atom: &d.Atoms[i]})
			}
		}
	}
	slices.SortStableFunc(out, func(a, b FoundVersion) int {
		if c := strings.Compare(a.Name, b.Name); c != 0 {
			return c
		}
		return b.Backup.Timestamp.Compare(a.Backup.Timestamp)
	})
	return out, nil
}
