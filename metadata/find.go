package metadata

import (
	"context"
	"encoding/json"
	"fmt"
	"path"
	"sort"
	"strings"
	"time"
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

type foundAtom struct {
	name string
	rec  atomRecord
}

// FindAtoms returns the atom versions selected by req, grouped by backup
// and dataset: backups newest first, datasets by source/name, atoms by
// name; each Dataset carries only the selected atoms. It reads only the
// key range of the pattern's literal prefix, page by page, and jumps past
// an atom's remaining versions once it has NumVersions of them.
func (s *EtcdStore) FindAtoms(ctx context.Context, req FindRequest) ([]*Backup, error) {
	m, err := newMatcher(req.Pattern)
	if err != nil {
		return nil, err
	}
	n := req.NumVersions
	if n <= 0 {
		n = 1
	}
	var found []foundAtom
	for _, r := range s.scanRanges(req.Pattern) {
		cur := ""     // atom name being counted
		count := 0    // versions of cur kept
		skipped := "" // atom name known not to match
		err := s.scan(ctx, r[0], r[1], false, func(key, val []byte) (string, bool, error) {
			name, ts, _, err := s.k.parseAtomKey(string(key))
			if err != nil {
				s.log.Warn("skipping malformed catalog key", "err", err)
				return "", false, nil
			}
			versionsEnd := s.k.atomNS() + name + "\x01"
			if name == skipped {
				return versionsEnd, false, nil
			}
			if name != cur {
				if !m.match(name) {
					skipped = name
					return versionsEnd, false, nil
				}
				cur, count = name, 0
				if !req.OlderThan.IsZero() && !ts.Before(req.OlderThan) {
					// Jump to the first version older than OlderThan.
					return s.k.atomNS() + name + sep + revNanos(req.OlderThan.UnixNano()-1), false, nil
				}
			}
			if count >= n {
				return versionsEnd, false, nil
			}
			if !req.OlderThan.IsZero() && !ts.Before(req.OlderThan) {
				return "", false, nil
			}
			var rec atomRecord
			if err := json.Unmarshal(val, &rec); err != nil {
				return "", false, fmt.Errorf("decode atom record %q: %w", key, err)
			}
			if req.Host != "" && rec.Host != req.Host {
				return "", false, nil
			}
			found = append(found, foundAtom{name: name, rec: rec})
			count++
			if count >= n {
				return versionsEnd, false, nil
			}
			return "", false, nil
		})
		if err != nil {
			return nil, fmt.Errorf("metadata: find %q: %w", req.Pattern, err)
		}
	}
	return s.group(ctx, found)
}

// group turns found atom versions into Backup→Dataset→Atoms, loading each
// dataset record once.
func (s *EtcdStore) group(ctx context.Context, found []foundAtom) ([]*Backup, error) {
	type dsKey struct{ backup, source, dataset string }
	type dsEntry struct {
		key   string
		ts    time.Time
		host  string
		atoms []Atom
	}
	entries := map[dsKey]*dsEntry{}
	var order []dsKey
	for _, f := range found {
		src, ds, _, ok := SplitAtomName(f.name)
		if !ok {
			continue
		}
		k := dsKey{f.rec.BackupID, src, ds}
		e := entries[k]
		if e == nil {
			e = &dsEntry{key: s.k.dataset(src, ds, f.rec.Timestamp, f.rec.BackupID), ts: f.rec.Timestamp, host: f.rec.Host}
			entries[k] = e
			order = append(order, k)
		}
		e.atoms = append(e.atoms, f.rec.Atom)
	}
	keys := make([]string, len(order))
	for i, k := range order {
		keys[i] = entries[k].key
	}
	vals, err := s.getMany(ctx, keys)
	if err != nil {
		return nil, fmt.Errorf("metadata: load dataset records: %w", err)
	}
	backups := map[string]*Backup{}
	for i, k := range order {
		if vals[i] == nil {
			continue // dataset record missing: not a complete catalog entry
		}
		var rec datasetRecord
		if err := json.Unmarshal(vals[i], &rec); err != nil || rec.Dataset == nil {
			return nil, fmt.Errorf("metadata: decode dataset record %q: %v", keys[i], err)
		}
		e := entries[k]
		d := *rec.Dataset
		sort.Slice(e.atoms, func(a, b int) bool { return e.atoms[a].Name < e.atoms[b].Name })
		d.Atoms = e.atoms
		b := backups[k.backup]
		if b == nil {
			b = &Backup{ID: rec.BackupID, Timestamp: rec.Timestamp, Host: rec.Host}
			backups[k.backup] = b
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
	return out, nil
}
