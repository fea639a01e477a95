package metadata

import (
	"context"
	"encoding/json"
	"fmt"
	"path"
	"sort"
	"strings"

	"go.etcd.io/etcd/api/v3/mvccpb"
)

// matcher decides whether a global atom name is selected by a pattern:
// the pattern must match the name or one of its leading segment paths.
type matcher struct {
	all     bool
	pattern string
	nseg    int
}

func newMatcher(pattern string) (*matcher, error) {
	if pattern == "" {
		return nil, fmt.Errorf("%w: empty find pattern", ErrInvalid)
	}
	if strings.IndexByte(pattern, 0) >= 0 {
		return nil, fmt.Errorf("%w: find pattern %q contains NUL", ErrInvalid, pattern)
	}
	if pattern == "*" {
		return &matcher{all: true}, nil
	}
	p := strings.TrimSuffix(pattern, "/")
	if _, err := path.Match(p, ""); err != nil {
		return nil, fmt.Errorf("%w: find pattern %q: %w", ErrInvalid, pattern, err)
	}
	return &matcher{pattern: p, nseg: strings.Count(p, "/") + 1}, nil
}

func (m *matcher) match(name string) bool {
	if m.all {
		return true
	}
	// Only the leading path with as many segments as the pattern can
	// match, since "*" never crosses "/".
	cut := name
	n := 0
	for i := 0; i < len(name); i++ {
		if name[i] == '/' {
			n++
			if n == m.nseg {
				cut = name[:i]
				break
			}
		}
	}
	if n+1 < m.nseg {
		return false
	}
	ok, _ := path.Match(m.pattern, cut)
	return ok
}

// literalPrefix is the part of the pattern before its first meta
// character, and whether the whole pattern is literal.
func literalPrefix(pattern string) (string, bool) {
	if i := strings.IndexAny(pattern, `*?[\`); i >= 0 {
		return pattern[:i], false
	}
	return pattern, true
}

// scanRanges returns the key ranges FindAtoms reads for a pattern: a
// literal pattern reads exactly the versions of that name and its subtree;
// a glob reads everything under its literal prefix.
func (s *EtcdStore) scanRanges(pattern string) [][2]string {
	ns := s.k.atomNS()
	if pattern == "*" {
		return [][2]string{{ns, prefixEnd(ns)}}
	}
	lit, literal := literalPrefix(strings.TrimSuffix(pattern, "/"))
	if literal {
		exact := ns + lit + sep
		sub := ns + lit + "/"
		return [][2]string{{exact, prefixEnd(exact)}, {sub, prefixEnd(sub)}}
	}
	return [][2]string{{ns + lit, prefixEnd(ns + lit)}}
}

// dsVersion is one dataset record as find read it. It is the authority
// on which atoms the dataset version has: an atom record counts only
// while the record names its atom set (gen; see write).
type dsVersion struct {
	rec *datasetRecord
	// listed names the atoms of a record from before atom sets, which
	// lists them itself.
	listed map[string]bool
}

// has reports whether the atom record of atom in atom set gen belongs to
// this dataset version.
func (v *dsVersion) has(gen, atom string) bool {
	if v.rec.Gen == "" {
		return gen == "" && v.listed[atom]
	}
	return gen == v.rec.Gen
}

type foundAtom struct {
	dsKey string
	ds    *dsVersion
	atom  Atom
}

// finder is the state of one FindAtoms call.
type finder struct {
	s   *EtcdStore
	m   *matcher
	req FindRequest
	n   int
	// rev is the revision of every read, so that atom records and dataset
	// records are seen as of one moment.
	rev   int64
	recs  map[string]*dsVersion // by dataset key; nil value: no record at rev
	found []foundAtom
}

// cursor is where a walk over one key range is: the atom being counted,
// its versions kept, and an atom name known not to match.
type cursor struct {
	cur     string
	count   int
	skipped string
}

// verdict of step on one key: jump is the key to continue at ("" for the
// next one); hit marks a version that counts, dsKey names it, ds is its
// dataset record and atom the atom (both unset while prefetching).
type verdict struct {
	jump  string
	dsKey string
	hit   bool
	ds    *dsVersion
	atom  Atom
}

// FindAtoms returns the atom versions selected by req, grouped by backup
// and dataset: backups newest first, datasets by source/name, atoms by
// name; each Dataset carries only the selected atoms. It reads only the
// key range of the pattern's literal prefix, page by page, and jumps past
// an atom's remaining versions once it has NumVersions of them. A version
// counts only when its dataset record (read at the same revision) names
// the atom record's atom set.
func (s *EtcdStore) FindAtoms(ctx context.Context, req FindRequest) ([]*Backup, error) {
	m, err := newMatcher(req.Pattern)
	if err != nil {
		return nil, err
	}
	f := &finder{s: s, m: m, req: req, n: max(req.NumVersions, 1), recs: map[string]*dsVersion{}}
	for _, r := range s.scanRanges(req.Pattern) {
		var c cursor
		err := s.scanAt(ctx, r[0], r[1], false, 0, &f.rev,
			func(kvs []*mvccpb.KeyValue) error { return f.prefetch(ctx, c, kvs) },
			func(key, val []byte) (string, bool, error) {
				v, err := f.step(ctx, &c, key, val, false)
				if err != nil || !v.hit {
					return v.jump, false, err
				}
				f.found = append(f.found, foundAtom{dsKey: v.dsKey, ds: v.ds, atom: v.atom})
				return v.jump, false, nil
			})
		if err != nil {
			return nil, fmt.Errorf("metadata: find %q: %w", req.Pattern, err)
		}
	}
	return f.group(), nil
}

// step decides on one atom key and moves the cursor. A version counts
// when it passes the filters and its dataset record names its atom set; while
// prefetching (pre), a version whose record is not read yet is assumed to
// count.
func (f *finder) step(ctx context.Context, c *cursor, key, val []byte, pre bool) (verdict, error) {
	k := f.s.k
	name, ts, backupID, gen, err := k.parseAtomKey(string(key))
	if err != nil {
		if !pre {
			f.s.log.Warn("skipping malformed catalog key", "err", err)
		}
		return verdict{}, nil
	}
	versionsEnd := k.atomNS() + name + "\x01"
	if name == c.skipped {
		return verdict{jump: versionsEnd}, nil
	}
	if name != c.cur {
		if !f.m.match(name) {
			c.skipped = name
			return verdict{jump: versionsEnd}, nil
		}
		c.cur, c.count = name, 0
		if !f.req.OlderThan.IsZero() && !ts.Before(f.req.OlderThan) {
			// Jump to the first version older than OlderThan.
			return verdict{jump: k.atomNS() + name + sep + revNanos(f.req.OlderThan.UnixNano()-1)}, nil
		}
	}
	if c.count >= f.n {
		return verdict{jump: versionsEnd}, nil
	}
	if !f.req.OlderThan.IsZero() && !ts.Before(f.req.OlderThan) {
		return verdict{}, nil
	}
	var arec atomRecord
	decoded := false
	if f.req.Host != "" {
		// The atom record carries the host, so versions of other hosts
		// are passed over without reading their dataset records.
		if err := json.Unmarshal(val, &arec); err != nil {
			return verdict{}, fmt.Errorf("decode atom record %q: %w", key, err)
		}
		decoded = true
		if arec.Host != f.req.Host {
			return verdict{}, nil
		}
	}
	src, ds, atom, ok := SplitAtomName(name)
	if !ok {
		return verdict{}, nil
	}
	v := verdict{dsKey: k.dataset(src, ds, ts, backupID)}
	if rec, known := f.recs[v.dsKey]; known || !pre {
		if !known {
			if rec, err = f.record(ctx, v.dsKey); err != nil {
				return verdict{}, err
			}
		}
		if rec == nil {
			return verdict{}, nil // no dataset record: an unfinished or abandoned write
		}
		if !rec.has(gen, atom) {
			return verdict{}, nil // not (or no longer) an atom of that dataset version
		}
		v.ds = rec
	}
	if !pre {
		if !decoded {
			if err := json.Unmarshal(val, &arec); err != nil {
				return verdict{}, fmt.Errorf("decode atom record %q: %w", key, err)
			}
		}
		v.atom = arec.Atom
	}
	v.hit = true
	c.count++
	if c.count >= f.n {
		v.jump = versionsEnd
	}
	return v, nil
}

// prefetch reads, in a few transactions, the dataset records that the
// walk over this page will need (running step on a copy of the cursor),
// instead of one read per record as the walk meets them. A version that
// turns out not to count shifts what the walk needs; record reads the
// rest one by one.
func (f *finder) prefetch(ctx context.Context, c cursor, kvs []*mvccpb.KeyValue) error {
	var want []string
	seen := map[string]bool{}
	next := ""
	for _, kv := range kvs {
		if next != "" && string(kv.Key) < next {
			continue
		}
		v, err := f.step(ctx, &c, kv.Key, kv.Value, true)
		if err != nil {
			break // the walk itself reports it
		}
		next = v.jump
		if _, known := f.recs[v.dsKey]; v.hit && !known && !seen[v.dsKey] {
			seen[v.dsKey] = true
			want = append(want, v.dsKey)
		}
	}
	if len(want) == 0 {
		return nil
	}
	vals, err := f.s.getMany(ctx, want, f.rev)
	if err != nil {
		return fmt.Errorf("load dataset records: %w", err)
	}
	for i, key := range want {
		if err := f.keep(key, vals[i]); err != nil {
			return err
		}
	}
	return nil
}

// record returns the dataset record under key at the find's revision
// (nil when there is none), reading it if it is not cached.
func (f *finder) record(ctx context.Context, key string) (*dsVersion, error) {
	if v, ok := f.recs[key]; ok {
		return v, nil
	}
	vals, err := f.s.getMany(ctx, []string{key}, f.rev)
	if err != nil {
		return nil, fmt.Errorf("load dataset record %q: %w", key, err)
	}
	if err := f.keep(key, vals[0]); err != nil {
		return nil, err
	}
	return f.recs[key], nil
}

// keep caches the dataset record val (nil: missing) under key.
func (f *finder) keep(key string, val []byte) error {
	if val == nil {
		f.recs[key] = nil
		return nil
	}
	rec, err := decodeDatasetRecord([]byte(key), val)
	if err != nil {
		return err
	}
	v := &dsVersion{rec: rec}
	if rec.Gen == "" {
		v.listed = make(map[string]bool, len(rec.Dataset.Atoms))
		for _, a := range rec.Dataset.Atoms {
			v.listed[a.Name] = true
		}
	}
	f.recs[key] = v
	return nil
}

// group turns the found atom versions into Backup→Dataset→Atoms.
func (f *finder) group() []*Backup {
	type entry struct {
		ds    *dsVersion
		atoms []Atom
	}
	entries := map[string]*entry{}
	var order []string
	for _, fa := range f.found {
		e := entries[fa.dsKey]
		if e == nil {
			e = &entry{ds: fa.ds}
			entries[fa.dsKey] = e
			order = append(order, fa.dsKey)
		}
		e.atoms = append(e.atoms, fa.atom)
	}
	backups := map[string]*Backup{}
	for _, key := range order {
		e := entries[key]
		rec := e.ds.rec
		d := *rec.Dataset
		sort.Slice(e.atoms, func(a, b int) bool { return e.atoms[a].Name < e.atoms[b].Name })
		d.Atoms = e.atoms
		b := backups[rec.BackupID]
		if b == nil {
			b = &Backup{ID: rec.BackupID, Timestamp: rec.Timestamp, Host: rec.Host}
			backups[rec.BackupID] = b
		}
		b.Datasets = append(b.Datasets, &d)
	}
	out := make([]*Backup, 0, len(backups))
	for _, b := range backups {
		sortDatasets(b.Datasets)
		out = append(out, b)
	}
	sort.Slice(out, func(i, j int) bool {
		if !out[i].Timestamp.Equal(out[j].Timestamp) {
			return out[i].Timestamp.After(out[j].Timestamp)
		}
		return out[i].ID < out[j].ID
	})
	return out
}
