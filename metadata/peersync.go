package metadata

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// PeerAction is what a site-to-site sync does with one record that a peer
// site owns, decided from three versions of it: initial (as the last sync
// left it here), current (ours now) and target (the peer's now). A nil
// version means the record is absent there.
type PeerAction string

// The actions of the three-way rule (KEYS.md, "Sync, site to site").
const (
	// PeerNone: ours is already the peer's; nothing to do.
	PeerNone PeerAction = "none"
	// PeerTake: only the peer changed it since the last sync; take the
	// peer's (a nil target: the peer removed it).
	PeerTake PeerAction = "take"
	// PeerKeep: only we changed it since the last sync, and the peer did
	// not: keep ours, and report it, since the peer owns the record.
	PeerKeep PeerAction = "keep"
	// PeerConflict: both changed it, differently: take the peer's (the
	// owner's) and report the conflict with both versions.
	PeerConflict PeerAction = "conflict"
)

// ThreeWay decides the action for one record from its initial, current
// and target versions (the encoded records; nil = absent).
func ThreeWay(initial, current, target []byte) PeerAction {
	same := func(a, b []byte) bool {
		if a == nil || b == nil {
			return a == nil && b == nil
		}
		return bytes.Equal(a, b)
	}
	switch {
	case same(target, current):
		return PeerNone
	case same(initial, target):
		return PeerKeep
	case same(initial, current):
		return PeerTake
	default:
		return PeerConflict
	}
}

// Peer is another site's catalog: another etcd cluster, or another key
// prefix of the same one. The peer owns the records (dataset versions)
// written by Hosts, and a sync with it pulls those and no others.
type Peer struct {
	// Name names the peer in this catalog's keys (peersync/<name>⟂…).
	Name string
	// Store reads the peer's catalog. The sync only reads it.
	Store *EtcdStore
	// Hosts are the hosts whose records the peer owns.
	Hosts []string
}

// DefaultPeerOverlap is how many revisions before its watermark a sync
// looks again (PeerSyncOptions.Overlap).
const DefaultPeerOverlap = 1000

// PeerSyncOptions tune a sync with a peer.
type PeerSyncOptions struct {
	// Report computes and returns what the sync would do and changes
	// nothing (no record, no watermark, no initial copy).
	Report bool
	// Overlap is how many revisions before each watermark the sync looks
	// again; 0 means DefaultPeerOverlap, a negative value none. Looking
	// again costs reads only: a record in agreement comes out PeerNone.
	Overlap int64
	// Full ignores the watermarks and compares every record.
	Full bool
}

// PeerVersion is one version of a record in a peer sync: its digest (what
// the three-way rule compares) and the dataset record without its atoms
// (AtomCount says how many).
type PeerVersion struct {
	Digest  string   `json:"digest"`
	Host    string   `json:"host"`
	Dataset *Dataset `json:"dataset,omitempty"`
}

// PeerChange is one record a peer sync changed, would change, or reports.
type PeerChange struct {
	Action   PeerAction `json:"action"`
	Source   string     `json:"source"`
	Dataset  string     `json:"dataset"`
	BackupID string     `json:"backup_id"`
	Time     time.Time  `json:"time"` // the backup's
	// Initial, Current and Target are the three versions compared; nil:
	// absent. A PeerTake with a nil Target removes the record here.
	Initial *PeerVersion `json:"initial,omitempty"`
	Current *PeerVersion `json:"current,omitempty"`
	Target  *PeerVersion `json:"target,omitempty"`
	// Done: the change was made. Skipped says why not (report mode leaves
	// both empty).
	Done    bool   `json:"done"`
	Skipped string `json:"skipped,omitempty"`
	// Detected is when a sync recorded it (recorded reports only).
	Detected time.Time `json:"detected,omitzero"`
}

// Removes reports whether the change removes the record here.
func (c *PeerChange) Removes() bool { return c.Action == PeerTake && c.Target == nil }

// PeerSyncResult is what a sync with a peer found and did.
type PeerSyncResult struct {
	Peer   string `json:"peer"`
	Report bool   `json:"report"`
	// Full: no watermark could be used (first sync, the peer's catalog
	// was replaced or rewound, or asked for), so every record was
	// compared.
	Full bool `json:"full"`
	// PeerRevision and OwnRevision are the revisions the sync read the
	// two catalogs at: the new watermarks. PeerFrom and OwnFrom are the
	// revisions after which it looked for changes.
	PeerRevision int64 `json:"peer_revision"`
	PeerFrom     int64 `json:"peer_from"`
	OwnRevision  int64 `json:"own_revision"`
	OwnFrom      int64 `json:"own_from"`
	// Compared counts the records of the peer's hosts compared, Agreed
	// those found already in agreement.
	Compared int `json:"compared"`
	Agreed   int `json:"agreed"`
	// Changes are the records taken, removed, kept and in conflict.
	Changes []PeerChange `json:"changes"`
	// Recorded are the reports kept in the catalog (conflicts, records
	// kept here, records this site owns that the peer also has), from
	// this sync and earlier ones, until ClearPeerReports.
	Recorded []PeerChange `json:"recorded"`
}

// Count returns how many changes of the action the result holds (PeerTake
// counts takes and removals).
func (r *PeerSyncResult) Count(a PeerAction) int {
	n := 0
	for _, c := range r.Changes {
		if c.Action == a {
			n++
		}
	}
	return n
}

// Peer sync keys, under this catalog's prefix: peersync/<peer>⟂state (the
// watermarks), …⟂initial⟂<rid> (the initial copies) and …⟂report⟂<rid>
// (recorded reports). <rid> is a dataset record's key without
// "P dataset/": <source>/<dataset>⟂<rt>/<backupid>.
const nsPeerSync = "peersync/"

func (k keys) peerPrefix(peer string) string  { return k.p + nsPeerSync + peer + sep }
func (k keys) peerState(peer string) string   { return k.peerPrefix(peer) + "state" }
func (k keys) peerInitial(peer string) string { return k.peerPrefix(peer) + "initial" + sep }
func (k keys) peerReports(peer string) string { return k.peerPrefix(peer) + "report" + sep }
func (k keys) datasetNS() string              { return k.p + nsDataset }
func (k keys) datasetRID(rid string) string   { return k.p + nsDataset + rid }

// parseRID splits a record id (see nsPeerSync).
func parseRID(rid string) (source, dataset string, ts time.Time, backupID string, err error) {
	name, rest, ok := strings.Cut(rid, sep)
	source, dataset, ok2 := strings.Cut(name, "/")
	if !ok || !ok2 || len(rest) < revTimeWidth+2 || rest[revTimeWidth] != '/' {
		return "", "", time.Time{}, "", fmt.Errorf("malformed dataset key %q", rid)
	}
	ts, err = parseRevTime(rest[:revTimeWidth])
	return source, dataset, ts, rest[revTimeWidth+1:], err
}

// peerState is the watermarks of one peer.
type peerState struct {
	// ClusterID of the peer's etcd: another one (the peer's catalog was
	// replaced) makes its revisions meaningless here.
	ClusterID    uint64    `json:"cluster_id"`
	PeerRevision int64     `json:"peer_revision"`
	OwnRevision  int64     `json:"own_revision"`
	Time         time.Time `json:"time"`
}

// versionDigest identifies one version of a record by its content as
// read back (backup header, dataset and atoms), the same on every site
// whatever form AddDataset was given it in.
func versionDigest(b *Backup) string {
	d := *b.Datasets[0]
	d.AtomCount = len(d.Atoms)
	if len(d.Atoms) == 0 {
		d.Atoms = nil
	}
	return contentSum(header(b), &d)
}

func peerVersion(b *Backup) *PeerVersion {
	if b == nil {
		return nil
	}
	d := *b.Datasets[0]
	d.AtomCount = len(d.Atoms)
	d.Atoms = nil
	return &PeerVersion{Digest: versionDigest(b), Host: b.Host, Dataset: &d}
}

func digestOf(v *PeerVersion) []byte {
	if v == nil {
		return nil
	}
	return []byte(v.Digest)
}

// SyncPeer pulls the records that peer p owns into this catalog (site to
// site; KEYS.md, "Sync, site to site"). The records compared are those
// changed on either side since the watermarks, less an overlap, and those
// with an initial copy that are gone on either side; each is decided by
// ThreeWay from its initial copy, ours and the peer's. A take writes the
// peer's version (or removes ours) in one transaction with the new initial
// copy, and only while ours is still the version compared. Records of
// hosts the peer does not own are never written or removed.
func (s *EtcdStore) SyncPeer(ctx context.Context, p Peer, opts PeerSyncOptions) (*PeerSyncResult, error) {
	if err := s.checkPeer(p); err != nil {
		return nil, err
	}
	switch {
	case opts.Overlap == 0:
		opts.Overlap = DefaultPeerOverlap
	case opts.Overlap < 0:
		opts.Overlap = 0
	}
	ps := &peerSync{s: s, p: p, opts: opts, hosts: map[string]bool{}}
	for _, h := range p.Hosts {
		ps.hosts[h] = true
	}
	res, err := ps.run(ctx)
	if err != nil {
		return res, fmt.Errorf("metadata: sync with peer %s: %w", p.Name, err)
	}
	return res, nil
}

func (s *EtcdStore) checkPeer(p Peer) error {
	if err := checkName("peer", p.Name, false); err != nil {
		return err
	}
	if p.Store == nil {
		return fmt.Errorf("%w: peer %s: no catalog", ErrInvalid, p.Name)
	}
	if p.Store.cli == s.cli && p.Store.opts.Prefix == s.opts.Prefix {
		return fmt.Errorf("%w: peer %s is this catalog (same etcd and prefix %s)", ErrInvalid, p.Name, s.opts.Prefix)
	}
	if len(p.Hosts) == 0 {
		return fmt.Errorf("%w: peer %s owns no host", ErrInvalid, p.Name)
	}
	for _, h := range p.Hosts {
		if err := checkName("host", h, true); err != nil {
			return fmt.Errorf("peer %s: %w", p.Name, err)
		}
		if h == s.opts.Host {
			return fmt.Errorf("%w: peer %s: host %s is this host, whose records this site owns", ErrInvalid, p.Name, h)
		}
	}
	return nil
}

// ClearPeerReports deletes the reports recorded for peer (conflicts,
// records kept here) and says how many there were.
func (s *EtcdStore) ClearPeerReports(ctx context.Context, peer string) (int64, error) {
	if err := checkName("peer", peer, false); err != nil {
		return 0, err
	}
	p := s.k.peerReports(peer)
	resp, err := s.kv.Delete(ctx, p, clientv3.WithRange(prefixEnd(p)))
	if err != nil {
		return 0, fmt.Errorf("metadata: clear the reports of peer %s: %w", peer, err)
	}
	return resp.Deleted, nil
}

// PeerReports returns the reports recorded for peer, by record.
func (s *EtcdStore) PeerReports(ctx context.Context, peer string) ([]PeerChange, error) {
	if err := checkName("peer", peer, false); err != nil {
		return nil, err
	}
	var out []*PeerChange
	if err := listJSON(ctx, s, s.k.peerReports(peer), 0, &out); err != nil {
		return nil, fmt.Errorf("metadata: reports of peer %s: %w", peer, err)
	}
	res := make([]PeerChange, len(out))
	for i, c := range out {
		res[i] = *c
	}
	return res, nil
}

type peerSync struct {
	s     *EtcdStore
	p     Peer
	opts  PeerSyncOptions
	hosts map[string]bool
	res   *PeerSyncResult
	now   time.Time
	// failed are the changes that could not be made for a reason that
	// may pass (etcd away); the watermarks then stay.
	failed []error
}

func (ps *peerSync) run(ctx context.Context) (*PeerSyncResult, error) {
	s, peer := ps.s, ps.p.Store
	ps.now = time.Now().UTC()
	res := &PeerSyncResult{Peer: ps.p.Name, Report: ps.opts.Report, Changes: []PeerChange{}, Recorded: []PeerChange{}}
	ps.res = res
	var st peerState
	err := s.getJSON(ctx, s.k.peerState(ps.p.Name), &st)
	if err != nil && !errors.Is(err, ErrNotFound) {
		return res, err
	}
	hasState := err == nil

	// Both key spaces, keys only, each at one revision: the peer's to find
	// what changed there and what is gone, ours likewise.
	peerRev, cluster, peerKeys, err := ridScan(ctx, peer, peer.k.datasetNS())
	if err != nil {
		return res, fmt.Errorf("read the peer's catalog: %w", err)
	}
	ownRev, _, ownKeys, err := ridScan(ctx, s, s.k.datasetNS())
	if err != nil {
		return res, fmt.Errorf("read this catalog: %w", err)
	}
	res.PeerRevision, res.OwnRevision = peerRev, ownRev
	res.Full = ps.opts.Full || !hasState || st.ClusterID != cluster || st.PeerRevision > peerRev || st.OwnRevision > ownRev
	if !res.Full {
		res.PeerFrom = max(0, st.PeerRevision-ps.opts.Overlap)
		res.OwnFrom = max(0, st.OwnRevision-ps.opts.Overlap)
	}
	_, _, initials, err := ridScan(ctx, s, s.k.peerInitial(ps.p.Name))
	if err != nil {
		return res, fmt.Errorf("read the initial copies: %w", err)
	}
	cand := map[string]bool{}
	for rid, rev := range peerKeys {
		if rev > res.PeerFrom {
			cand[rid] = true
		}
	}
	for rid, rev := range ownKeys {
		// A take writes the record and its initial copy in one
		// transaction: a record still at its initial copy's revision is
		// as this sync's own write left it.
		if rev > res.OwnFrom && rev != initials[rid] {
			cand[rid] = true
		}
	}
	for rid := range initials {
		if _, ok := peerKeys[rid]; !ok {
			cand[rid] = true
		} else if _, ok := ownKeys[rid]; !ok {
			cand[rid] = true
		}
	}
	rids := make([]string, 0, len(cand))
	for rid := range cand {
		rids = append(rids, rid)
	}
	sort.Strings(rids)

	for lo := 0; lo < len(rids); lo += s.opts.PageSize {
		page := rids[lo:min(lo+s.opts.PageSize, len(rids))]
		if err := ps.page(ctx, page, peerRev); err != nil {
			// A page that cannot be read stops the sync: the watermark
			// stays, so the next one compares it again.
			return res, err
		}
	}
	var errs []error
	if rec, err := s.PeerReports(ctx, ps.p.Name); err == nil {
		res.Recorded = rec
	} else {
		errs = append(errs, err)
	}
	if ps.opts.Report || len(ps.failed) > 0 {
		// A change that failed is looked at again by the next sync, from
		// the same watermarks.
		return res, errors.Join(append(errs, ps.failed...)...)
	}
	nst := peerState{ClusterID: cluster, PeerRevision: peerRev, OwnRevision: ownRev, Time: ps.now}
	if _, err := s.kv.Put(ctx, s.k.peerState(ps.p.Name), mustJSON(nst)); err != nil {
		errs = append(errs, fmt.Errorf("save the watermarks: %w", err))
	}
	return res, errors.Join(errs...)
}

// ridScan reads the keys under prefix (keys only, in pages, at one
// revision) and returns that revision, the cluster id, and each key's mod
// revision by record id (the key without prefix).
func ridScan(ctx context.Context, st *EtcdStore, prefix string) (int64, uint64, map[string]int64, error) {
	resp, err := st.kv.Get(ctx, prefix, clientv3.WithRange(prefixEnd(prefix)), clientv3.WithCountOnly())
	if err != nil {
		return 0, 0, nil, err
	}
	rev, cluster := resp.Header.Revision, resp.Header.ClusterId
	out := map[string]int64{}
	err = st.scanAt(ctx, prefix, prefixEnd(prefix), true, 0, &rev, func(kvs []*mvccpb.KeyValue) error {
		for _, kv := range kvs {
			out[string(kv.Key[len(prefix):])] = kv.ModRevision
		}
		return nil
	}, func([]byte, []byte) (string, bool, error) { return "", false, nil })
	return rev, cluster, out, err
}

// versionsAt reads the dataset records of rids with their atoms at one
// revision (*rev; 0: the latest, which it sets). A record that cannot be
// decoded is left out and said so in bad.
func (s *EtcdStore) versionsAt(ctx context.Context, rids []string, rev *int64) (bs []*Backup, modRevs []int64, bad []error, err error) {
	keys := make([]string, len(rids))
	for i, rid := range rids {
		keys[i] = s.k.datasetRID(rid)
	}
	kvs, err := s.getKVs(ctx, keys, rev)
	if err != nil {
		return nil, nil, nil, err
	}
	bs, modRevs, bad = make([]*Backup, len(rids)), make([]int64, len(rids)), make([]error, len(rids))
	var recs []*datasetRecord
	for i, kv := range kvs {
		if kv == nil {
			continue
		}
		modRevs[i] = kv.ModRevision
		rec, err := decodeDatasetRecord(kv.Key, kv.Value)
		if err != nil {
			bad[i] = err
			continue
		}
		recs = append(recs, rec)
		bs[i] = &Backup{ID: rec.BackupID, Timestamp: rec.Timestamp, Host: rec.Host, Datasets: []*Dataset{rec.Dataset}}
	}
	if err := s.fillAtoms(ctx, recs, *rev); err != nil {
		return nil, nil, nil, err
	}
	return bs, modRevs, bad, nil
}

// page compares and applies one page of records.
func (ps *peerSync) page(ctx context.Context, rids []string, peerRev int64) error {
	s, name := ps.s, ps.p.Name
	targets, _, tbad, err := ps.p.Store.versionsAt(ctx, rids, &peerRev)
	if err != nil {
		return fmt.Errorf("read the peer's records: %w", err)
	}
	var rev int64
	currents, curRevs, cbad, err := s.versionsAt(ctx, rids, &rev)
	if err != nil {
		return fmt.Errorf("read this catalog's records: %w", err)
	}
	keys := make([]string, 0, 2*len(rids))
	for _, rid := range rids {
		keys = append(keys, s.k.peerInitial(name)+rid, s.k.peerReports(name)+rid)
	}
	own, err := s.getKVs(ctx, keys, &rev)
	if err != nil {
		return fmt.Errorf("read the initial copies: %w", err)
	}
	for i, rid := range rids {
		var initial *PeerVersion
		var report *PeerChange
		if kv := own[2*i]; kv != nil {
			initial = &PeerVersion{}
			if err := json.Unmarshal(kv.Value, initial); err != nil || initial.Digest == "" {
				// Compared as absent: if both sites agree, the sync
				// writes it again; otherwise it is a keep or a conflict,
				// reported, never a silent change of ours.
				s.log.Warn("an undecodable initial copy of a peer sync counts as absent", "peer", name, "key", string(kv.Key), "err", err)
				initial = nil
			}
		}
		if kv := own[2*i+1]; kv != nil {
			report = &PeerChange{}
			if err := json.Unmarshal(kv.Value, report); err != nil {
				report = &PeerChange{Action: PeerConflict} // kept for a person
			}
		}
		source, dataset, ts, backupID, err := parseRID(rid)
		if err != nil {
			return err
		}
		c := PeerChange{Source: source, Dataset: dataset, BackupID: backupID, Time: ts, Initial: initial}
		if err := errors.Join(tbad[i], cbad[i]); err != nil {
			c.Action, c.Skipped = PeerConflict, "not compared: "+err.Error()
			ps.res.Changes = append(ps.res.Changes, c)
			continue
		}
		tgt, cur := targets[i], currents[i]
		if tgt != nil && !ps.hosts[tgt.Host] {
			tgt = nil // the peer holds it, but does not own it
		}
		if cur != nil && !ps.hosts[cur.Host] {
			// This site's record: never changed by a peer sync. The
			// peer holding its own record under the same key (the same
			// backup id) is reported.
			if tgt != nil {
				c.Action, c.Current, c.Target = PeerConflict, peerVersion(cur), peerVersion(tgt)
				c.Skipped = fmt.Sprintf("the record here is of host %s, which this site owns; it stays", cur.Host)
				ps.record(ctx, rid, &c)
			}
			continue
		}
		if tgt == nil && cur == nil && initial == nil {
			continue // not the peer's
		}
		ps.res.Compared++
		c.Current, c.Target = peerVersion(cur), peerVersion(tgt)
		c.Action = ThreeWay(digestOf(initial), digestOf(c.Current), digestOf(c.Target))
		switch c.Action {
		case PeerNone:
			ps.res.Agreed++
			ps.settle(ctx, rid, initial, c.Target, report)
		case PeerKeep:
			ps.record(ctx, rid, &c)
		default:
			ps.apply(ctx, rid, &c, tgt, curRevs[i])
		}
	}
	return nil
}

// settle brings the initial copy of a record in agreement to the agreed
// version, and drops a recorded "kept" report of it: it is settled now.
func (ps *peerSync) settle(ctx context.Context, rid string, initial, agreed *PeerVersion, report *PeerChange) {
	if ps.opts.Report {
		return
	}
	s, k := ps.s, ps.s.k
	var ops []clientv3.Op
	switch {
	case agreed == nil && initial != nil:
		ops = append(ops, clientv3.OpDelete(k.peerInitial(ps.p.Name)+rid))
	case agreed != nil && (initial == nil || initial.Digest != agreed.Digest):
		ops = append(ops, clientv3.OpPut(k.peerInitial(ps.p.Name)+rid, mustJSON(agreed)))
	}
	if report != nil && report.Action == PeerKeep {
		ops = append(ops, clientv3.OpDelete(k.peerReports(ps.p.Name)+rid))
	}
	if len(ops) == 0 {
		return
	}
	if _, err := s.kv.Txn(ctx).Then(ops...).Commit(); err != nil {
		ps.failed = append(ps.failed, fmt.Errorf("update the initial copy of %s: %w", rid, err))
	}
}

// record keeps a report of a record for a person (status, --report).
func (ps *peerSync) record(ctx context.Context, rid string, c *PeerChange) {
	ps.res.Changes = append(ps.res.Changes, *c)
	if ps.opts.Report {
		return
	}
	c.Detected = ps.now
	if _, err := ps.s.kv.Put(ctx, ps.s.k.peerReports(ps.p.Name)+rid, mustJSON(c)); err != nil {
		ps.failed = append(ps.failed, fmt.Errorf("record the report of %s: %w", rid, err))
	}
}

// apply takes the peer's version of a record (PeerTake, PeerConflict):
// writes it, or removes ours when the peer removed it, in one transaction
// with the new initial copy (and the conflict's report), while ours is
// still at curRev, the version compared.
func (ps *peerSync) apply(ctx context.Context, rid string, c *PeerChange, tgt *Backup, curRev int64) {
	if ps.opts.Report {
		ps.res.Changes = append(ps.res.Changes, *c)
		return
	}
	k, name := ps.s.k, ps.p.Name
	var extra []clientv3.Op
	if c.Target != nil {
		extra = append(extra, clientv3.OpPut(k.peerInitial(name)+rid, mustJSON(c.Target)))
	} else {
		extra = append(extra, clientv3.OpDelete(k.peerInitial(name)+rid))
	}
	if c.Action == PeerConflict {
		rc := *c
		rc.Done, rc.Detected = true, ps.now
		extra = append(extra, clientv3.OpPut(k.peerReports(name)+rid, mustJSON(rc)))
	}
	var err error
	if tgt != nil {
		err = ps.s.writeGuarded(ctx, header(tgt), tgt.Datasets[0], curRev, extra)
	} else {
		err = ps.s.removeGuarded(ctx, c.Source, c.Dataset, c.Time, c.BackupID, curRev, extra)
	}
	switch {
	case err == nil:
		c.Done = true
	case errors.Is(err, errMovedOn):
		c.Skipped = "the record changed here meanwhile; the next sync compares it again"
	case errors.Is(err, ErrConflict) || errors.Is(err, ErrInvalid):
		// Taking it can never succeed: say so, and keep it for a person.
		c.Skipped = err.Error()
		ps.record(ctx, rid, c)
		return
	default:
		c.Skipped = err.Error()
		ps.failed = append(ps.failed, err)
	}
	ps.res.Changes = append(ps.res.Changes, *c)
}
