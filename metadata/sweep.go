package metadata

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// nsSweep holds the sweep's own state (KEYS.md, "Writes").
const nsSweep = "sweep" + sep

// DefaultSweepAge is the MinAge the agent's sync job and `custos sync`
// sweep with: a key must have been written before a sweep that ran at
// least this long ago, far longer than any write stays in flight.
const DefaultSweepAge = time.Hour

// maxSweepMarks bounds the marks kept in the sweep state.
const maxSweepMarks = 64

// SweepOptions tune SweepAtomSets.
type SweepOptions struct {
	// MinAge: only atom sets whose every key was written at or before the
	// revision read by an earlier sweep, one that ran at least MinAge
	// ago, are removed; so the first sweep of a catalog removes nothing
	// and only records its revision. 0 removes every atom set that no
	// record names as read now: writes in flight are still safe (their
	// switch fails and they write their set again), but disturbed.
	MinAge time.Duration
	// Now is the time recorded for this sweep and compared with MinAge;
	// zero: time.Now(). Tests set it.
	Now time.Time
}

// SweepResult says what a sweep found and removed.
type SweepResult struct {
	// Revision is the etcd revision the sweep read the catalog at;
	// Cutoff the newest mod revision a key it removed may have (0:
	// none may, there was no sweep MinAge ago).
	Revision int64 `json:"revision"`
	Cutoff   int64 `json:"cutoff"`
	// Gens counts the atom sets removed whole, Keys every key deleted
	// (list chunks and atom records).
	Gens int   `json:"gens"`
	Keys int64 `json:"keys"`
	// Young counts the unnamed atom sets left because a key of theirs is
	// newer than Cutoff; Changed those left (or left partly removed)
	// because their dataset record or list changed meanwhile. The next
	// sweep looks at both again.
	Young   int `json:"young"`
	Changed int `json:"changed"`
}

// sweepMark is one earlier sweep: the revision it read at, and when.
type sweepMark struct {
	Revision int64     `json:"revision"`
	Time     time.Time `json:"time"`
}

type sweepState struct {
	Marks []sweepMark `json:"marks"`
}

// leftover is one atom set (gen) of one dataset version that no record
// names, as the sweep read it.
type leftover struct {
	rid, gen  string
	recRev    int64 // the dataset record's mod revision (0: none)
	chunks    int   // list chunks seen
	chunk0Rev int64 // mod revision of chunk 000000 (0: absent)
	maxRev    int64 // newest mod revision of any of its keys
	atomKeys  []string
}

// sweepRecord is what the sweep needs of a dataset record.
type sweepRecord struct {
	gen    string
	modRev int64
	bad    bool // undecodable: what it names cannot be known
}

// SweepAtomSets deletes the atom sets (list chunks and atom records) that
// no dataset record names: those of a write that crashed before its
// switch, and those a write or removal left after a crash between its
// switch and its deletes. Readers never count them (KEYS.md, "Writes");
// they only take space.
//
// It reads the dataset records and the keys of every chunk and atom
// record at one revision, in pages, keys only where it can. A write in
// flight is never left naming a missing set: every transaction that
// deletes a set's keys is guarded by its dataset record's mod revision as
// read and by its list chunks (the first unchanged since the read, the
// later ones none left), and a write's switch requires its chunk 000000,
// which the sweep deletes first; a write whose set was swept therefore
// fails its switch and writes the whole set again, and the sweep deletes
// nothing of a set once chunk 000000 is back. With MinAge, sets written
// after an earlier sweep's revision are not even touched. Sets of records
// from before atom sets (no gen) are left alone.
func (s *EtcdStore) SweepAtomSets(ctx context.Context, opts SweepOptions) (*SweepResult, error) {
	if s.closed() {
		return nil, ErrClosed
	}
	now := opts.Now
	if now.IsZero() {
		now = time.Now()
	}
	stateKey := s.k.p + nsSweep + "state"
	st, err := s.kv.Get(ctx, stateKey)
	if err != nil {
		return nil, fmt.Errorf("metadata: sweep: read its state: %w", err)
	}
	rev := st.Header.Revision
	var state sweepState
	var stateRev int64
	if len(st.Kvs) > 0 {
		stateRev = st.Kvs[0].ModRevision
		if err := json.Unmarshal(st.Kvs[0].Value, &state); err != nil {
			// A damaged state only costs one sweep's worth of marks.
			s.log.Warn("catalog sweep: undecodable state; starting afresh", "key", stateKey, "err", err)
			state = sweepState{}
		}
	}
	res := &SweepResult{Revision: rev, Cutoff: rev}
	if opts.MinAge > 0 {
		res.Cutoff = 0
		for _, m := range state.Marks {
			if !m.Time.After(now.Add(-opts.MinAge)) && m.Revision > res.Cutoff && m.Revision <= rev {
				res.Cutoff = m.Revision
			}
		}
	}

	left, err := s.sweepRead(ctx, rev)
	if err != nil {
		return nil, fmt.Errorf("metadata: sweep: %w", err)
	}
	for _, l := range left {
		if l.maxRev > res.Cutoff {
			res.Young++
			continue
		}
		n, whole, err := s.sweepSet(ctx, l, rev)
		res.Keys += n
		if err != nil {
			return res, fmt.Errorf("metadata: sweep atom set %s of %q: %w", l.gen, l.rid, err)
		}
		if whole {
			res.Gens++
		} else {
			res.Changed++
		}
	}

	state.Marks = trimMarks(append(state.Marks, sweepMark{Revision: rev, Time: now.UTC()}), now, opts.MinAge)
	r, err := s.commit(ctx, func(t clientv3.Txn) clientv3.Txn {
		return t.If(clientv3.Compare(clientv3.ModRevision(stateKey), "=", stateRev)).
			Then(clientv3.OpPut(stateKey, mustJSON(state)))
	})
	switch {
	case err != nil:
		return res, fmt.Errorf("metadata: sweep: record its state: %w", err)
	case !r.Succeeded:
		// Another sweep recorded its own mark meanwhile; one is enough.
		s.log.Debug("catalog sweep: state changed by another sweep; not recording this one")
	}
	if res.Keys > 0 || res.Changed > 0 {
		s.log.Info("catalog sweep removed atom sets no record names", "gens", res.Gens, "keys", res.Keys,
			"young", res.Young, "changed", res.Changed, "revision", rev, "cutoff", res.Cutoff)
	}
	return res, nil
}

// trimMarks keeps the newest mark at least minAge old (the next sweeps'
// cutoff), the newer ones, and at most maxSweepMarks of them.
func trimMarks(marks []sweepMark, now time.Time, minAge time.Duration) []sweepMark {
	sort.Slice(marks, func(i, j int) bool { return marks[i].Revision < marks[j].Revision })
	first := 0
	for i, m := range marks {
		if !m.Time.After(now.Add(-minAge)) {
			first = i
		}
	}
	marks = marks[first:]
	if len(marks) > maxSweepMarks {
		// Drop the oldest after the cutoff mark: later cutoffs come a
		// little later, never younger than minAge.
		marks = append(marks[:1], marks[len(marks)-maxSweepMarks+1:]...)
	}
	return marks
}

// sweepRead reads, at revision rev, the dataset records and the keys of
// every list chunk and atom record, and returns the atom sets that no
// record names, by dataset version and gen.
func (s *EtcdStore) sweepRead(ctx context.Context, rev int64) ([]*leftover, error) {
	recs := map[string]sweepRecord{}
	dsNS := s.k.p + nsDataset
	err := s.scanAt(ctx, dsNS, prefixEnd(dsNS), false, 0, &rev, func(kvs []*mvccpb.KeyValue) error {
		for _, kv := range kvs {
			var r struct {
				Gen     string          `json:"gen"`
				Dataset json.RawMessage `json:"dataset"`
			}
			rid := string(kv.Key[len(dsNS):])
			if err := json.Unmarshal(kv.Value, &r); err != nil || len(r.Dataset) == 0 || string(r.Dataset) == "null" {
				recs[rid] = sweepRecord{bad: true}
				continue
			}
			recs[rid] = sweepRecord{gen: r.Gen, modRev: kv.ModRevision}
		}
		return nil
	}, noKey)
	if err != nil {
		return nil, fmt.Errorf("read the dataset records: %w", err)
	}

	sets := map[string]*leftover{}
	set := func(rid, gen string, modRev int64) *leftover {
		r := recs[rid]
		if r.bad || gen == "" || r.gen == gen {
			return nil
		}
		l := sets[rid+sep+gen]
		if l == nil {
			l = &leftover{rid: rid, gen: gen, recRev: r.modRev}
			sets[rid+sep+gen] = l
		}
		l.maxRev = max(l.maxRev, modRev)
		return l
	}
	chunkNS := s.k.p + nsDatasetAtom
	err = s.scanAt(ctx, chunkNS, prefixEnd(chunkNS), true, 0, &rev, func(kvs []*mvccpb.KeyValue) error {
		for _, kv := range kvs {
			parts := strings.Split(string(kv.Key[len(chunkNS):]), sep)
			if len(parts) != 4 {
				s.log.Warn("catalog sweep: malformed list chunk key left alone", "key", string(kv.Key))
				continue
			}
			if l := set(parts[0]+sep+parts[1], parts[2], kv.ModRevision); l != nil {
				l.chunks++
				if parts[3] == fmt.Sprintf("%06d", 0) {
					l.chunk0Rev = kv.ModRevision
				}
			}
		}
		return nil
	}, noKey)
	if err != nil {
		return nil, fmt.Errorf("read the atom list keys: %w", err)
	}
	atomNS := s.k.atomNS()
	err = s.scanAt(ctx, atomNS, prefixEnd(atomNS), true, 0, &rev, func(kvs []*mvccpb.KeyValue) error {
		for _, kv := range kvs {
			parts := strings.Split(string(kv.Key[len(atomNS):]), sep)
			if len(parts) == 2 {
				continue // from before atom sets
			}
			i := strings.Index(parts[0], "/")
			j := -1
			if i >= 0 {
				j = strings.Index(parts[0][i+1:], "/")
			}
			if len(parts) != 3 || j < 0 {
				s.log.Warn("catalog sweep: malformed atom key left alone", "key", string(kv.Key))
				continue
			}
			if l := set(parts[0][:i+1+j]+sep+parts[1], parts[2], kv.ModRevision); l != nil {
				l.atomKeys = append(l.atomKeys, string(kv.Key))
			}
		}
		return nil
	}, noKey)
	if err != nil {
		return nil, fmt.Errorf("read the atom record keys: %w", err)
	}
	out := make([]*leftover, 0, len(sets))
	for _, l := range sets {
		out = append(out, l)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].rid != out[j].rid {
			return out[i].rid < out[j].rid
		}
		return out[i].gen < out[j].gen
	})
	return out, nil
}

func noKey([]byte, []byte) (string, bool, error) { return "", false, nil }

// sweepSet deletes one unnamed atom set read at revision rev: its list
// chunks (one range delete, in the first transaction) and its atom
// records, in transactions within the request limits. Each is guarded by
// the dataset record's mod revision as read; the first also by the chunks
// being as read, the later ones by no chunk being left. A write whose set
// this is puts chunk 000000 again before any of its atom records, so from
// that moment no transaction here deletes anything of it. It returns the
// keys deleted and whether the whole set went.
func (s *EtcdStore) sweepSet(ctx context.Context, l *leftover, rev int64) (int64, bool, error) {
	dsKey := s.k.p + nsDataset + l.rid
	cp := s.k.p + nsDatasetAtom + l.rid + sep + l.gen + sep
	chunk0 := cp + fmt.Sprintf("%06d", 0)
	recCmp := clientv3.Compare(clientv3.ModRevision(dsKey), "=", l.recRev)
	noChunks := clientv3.Compare(clientv3.Version(cp), "=", 0).WithRange(prefixEnd(cp))
	var ops []clientv3.Op
	first := []clientv3.Cmp{recCmp, noChunks}
	if l.chunks > 0 {
		ops = append(ops, clientv3.OpDelete(cp, clientv3.WithRange(prefixEnd(cp))))
		first = []clientv3.Cmp{recCmp,
			clientv3.Compare(clientv3.ModRevision(chunk0), "=", l.chunk0Rev),
			clientv3.Compare(clientv3.ModRevision(cp), "<", rev+1).WithRange(prefixEnd(cp))}
	}
	for _, k := range l.atomKeys {
		ops = append(ops, clientv3.OpDelete(k))
	}
	var deleted int64
	for done := 0; done < len(ops); {
		n, size := 0, 0
		for done+n < len(ops) && n < s.opts.MaxTxnOps {
			sz := opBytes(ops[done+n])
			if n > 0 && size+sz > maxTxnBytes-64<<10 { // room for the compares
				break
			}
			n, size = n+1, size+sz
		}
		cmps := []clientv3.Cmp{recCmp, noChunks}
		if done == 0 {
			cmps = first
		}
		batch := ops[done : done+n]
		r, err := s.commit(ctx, func(t clientv3.Txn) clientv3.Txn { return t.If(cmps...).Then(batch...) })
		if err != nil {
			return deleted, false, err
		}
		if !r.Succeeded {
			s.log.Debug("catalog sweep: atom set changed meanwhile; left for the next sweep", "set", l.rid, "gen", l.gen)
			return deleted, false, nil
		}
		for _, op := range r.Responses {
			if d := op.GetResponseDeleteRange(); d != nil {
				deleted += d.Deleted
			}
		}
		done += n
	}
	return deleted, true, nil
}
