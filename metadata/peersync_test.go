package metadata

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/custos-backup/custos/metadata/etcdserver"
)

// TestThreeWay covers every row of the three-way rule, with present and
// absent versions.
func TestThreeWay(t *testing.T) {
	a, b, c := []byte(`{"v":1}`), []byte(`{"v":2}`), []byte(`{"v":3}`)
	tests := []struct {
		name                     string
		initial, current, target []byte
		want                     PeerAction
	}{
		{"nothing changed", a, a, a, PeerNone},
		{"both changed it the same way", a, b, b, PeerNone},
		{"absent everywhere", nil, nil, nil, PeerNone},
		{"both created it the same", nil, a, a, PeerNone},
		{"both removed it", a, nil, nil, PeerNone},
		{"the peer changed it", a, a, b, PeerTake},
		{"the peer created it", nil, nil, a, PeerTake},
		{"the peer removed it", a, a, nil, PeerTake},
		{"we changed it", a, b, a, PeerKeep},
		{"we created it", nil, a, nil, PeerKeep},
		{"we removed it", a, nil, a, PeerKeep},
		{"both changed it differently", a, b, c, PeerConflict},
		{"both created it differently", nil, a, b, PeerConflict},
		{"we removed it, the peer changed it", a, nil, b, PeerConflict},
		{"we changed it, the peer removed it", a, b, nil, PeerConflict},
		{"empty is not absent", []byte{}, nil, []byte{}, PeerKeep},
	}
	for _, tc := range tests {
		if got := ThreeWay(tc.initial, tc.current, tc.target); got != tc.want {
			t.Errorf("%s: ThreeWay = %s, want %s", tc.name, got, tc.want)
		}
	}
}

// peerPair is a site ("here", on the shared server) and a peer site on an
// embedded etcd server of its own, whose hosts are "there" and "there2".
type peerPair struct {
	here, there *EtcdStore
	peer        Peer
}

func newPeerPair(t *testing.T, opts Options) *peerPair {
	t.Helper()
	srv, err := etcdserver.StartEmbedded(context.Background(), t.TempDir(), etcdserver.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	cli := newClient(t, srv.Endpoints()...)
	t.Cleanup(func() { cli.Close() })
	there, err := NewStore(cli, Options{Prefix: "/site-b/", Host: "there", Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { there.Close() })
	opts.Host = "here"
	here := newSharedStore(t, opts)
	return &peerPair{here: here, there: there, peer: Peer{Name: "b", Store: there, Hosts: []string{"there", "there2"}}}
}

// version v of the dataset src/<name> of backup <name> by host: v names
// its content, "" means absent.
func putVersion(t *testing.T, s *EtcdStore, name, host, v string) {
	t.Helper()
	b := mkBackup("bk-"+name, host, t0)
	if v == "" {
		if _, err := s.RemoveDatasetVersion(ctxT(t), "src", name, t0, b.ID); err != nil {
			t.Fatal(err)
		}
		return
	}
	d := mkDataset("src", name, "atom-"+v, "common")
	d.Repository = "repo-" + v
	if err := s.AddDataset(ctxT(t), b, d); err != nil {
		t.Fatal(err)
	}
}

// versionOf returns which version of src/<name> s holds ("" absent).
func versionOf(t *testing.T, s *EtcdStore, name string) string {
	t.Helper()
	b, err := s.GetDatasetVersion(ctxT(t), "src", name, t0, "bk-"+name)
	if errors.Is(err, ErrNotFound) {
		return ""
	}
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimPrefix(b.Datasets[0].Repository, "repo-")
}

func syncPeer(t *testing.T, pp *peerPair, opts PeerSyncOptions) *PeerSyncResult {
	t.Helper()
	res, err := pp.here.SyncPeer(ctxT(t), pp.peer, opts)
	if err != nil {
		t.Fatal(err)
	}
	return res
}

func changeOf(res *PeerSyncResult, dataset string) *PeerChange {
	for i := range res.Changes {
		if res.Changes[i].Dataset == dataset {
			return &res.Changes[i]
		}
	}
	return nil
}

// TestSyncPeerRows runs a two-site sync between two embedded etcd servers
// through every row of the three-way rule: a first sync leaves each
// record's initial version, then each side changes it as the row says,
// and a second sync must decide the row's action and leave the row's
// result here, and never write to the peer.
func TestSyncPeerRows(t *testing.T) {
	rows := []struct {
		name                     string
		initial, current, target string // "" absent
		want                     PeerAction
		after                    string // what this site holds after the sync
	}{
		{"nothing changed", "a", "a", "a", PeerNone, "a"},
		{"both changed it the same way", "a", "b", "b", PeerNone, "b"},
		{"both created it the same", "", "a", "a", PeerNone, "a"},
		{"both removed it", "a", "", "", PeerNone, ""},
		{"the peer changed it", "a", "a", "b", PeerTake, "b"},
		{"the peer created it", "", "", "a", PeerTake, "a"},
		{"the peer removed it", "a", "a", "", PeerTake, ""},
		{"we changed it", "a", "b", "a", PeerKeep, "b"},
		{"we created it", "", "a", "", PeerKeep, "a"},
		{"we removed it", "a", "", "a", PeerKeep, ""},
		{"both changed it differently", "a", "b", "c", PeerConflict, "c"},
		{"both created it differently", "", "a", "b", PeerConflict, "b"},
		{"we removed it, the peer changed it", "a", "", "b", PeerConflict, "b"},
		{"we changed it, the peer removed it", "a", "b", "", PeerConflict, ""},
	}
	pp := newPeerPair(t, Options{})
	ds := func(i int) string { return fmt.Sprintf("row%02d", i) }
	for i, r := range rows {
		if r.initial != "" {
			putVersion(t, pp.there, ds(i), "there", r.initial)
		}
	}
	first := syncPeer(t, pp, PeerSyncOptions{})
	if !first.Full || first.Count(PeerTake) != countInitial(rows) {
		t.Fatalf("first sync: full %v, %d taken, want a full sync taking %d", first.Full, first.Count(PeerTake), countInitial(rows))
	}
	for i, r := range rows {
		if got := versionOf(t, pp.here, ds(i)); got != r.initial {
			t.Fatalf("%s: after the first sync this site holds %q, want %q", r.name, got, r.initial)
		}
		if r.current != r.initial {
			putVersion(t, pp.here, ds(i), "there", r.current)
		}
		if r.target != r.initial {
			putVersion(t, pp.there, ds(i), "there", r.target)
		}
	}
	peerRev := revision(t, pp.there)
	res := syncPeer(t, pp, PeerSyncOptions{})
	if res.Full {
		t.Error("the second sync was full; want it from the watermarks")
	}
	for i, r := range rows {
		c := changeOf(res, ds(i))
		got := PeerNone
		if c != nil {
			got = c.Action
			if c.Skipped != "" || (c.Action != PeerKeep && !c.Done) {
				t.Errorf("%s: change not done: %+v", r.name, c)
			}
		}
		if got != r.want {
			t.Errorf("%s: action %s, want %s", r.name, got, r.want)
		}
		if v := versionOf(t, pp.here, ds(i)); v != r.after {
			t.Errorf("%s: this site holds %q, want %q", r.name, v, r.after)
		}
		if v := versionOf(t, pp.there, ds(i)); v != r.target {
			t.Errorf("%s: the peer holds %q, want %q (a sync never writes to the peer)", r.name, v, r.target)
		}
		if r.want == PeerConflict && (c == nil || (c.Current == nil) == (r.current != "") || (c.Target == nil) == (r.target != "")) {
			t.Errorf("%s: the conflict does not carry both versions: %+v", r.name, c)
		}
	}
	if got := revision(t, pp.there); got != peerRev {
		t.Errorf("the peer's revision moved from %d to %d: the sync wrote to it", peerRev, got)
	}
	// Conflicts and records kept here are recorded for a person.
	recorded := map[string]PeerAction{}
	for _, c := range res.Recorded {
		recorded[c.Dataset] = c.Action
	}
	for i, r := range rows {
		want := PeerAction("")
		if r.want == PeerKeep || r.want == PeerConflict {
			want = r.want
		}
		if recorded[ds(i)] != want {
			t.Errorf("%s: recorded %q, want %q", r.name, recorded[ds(i)], want)
		}
	}
	// A third sync takes nothing: what was taken agrees now; what we
	// changed is still kept.
	third := syncPeer(t, pp, PeerSyncOptions{})
	if n := third.Count(PeerTake) + third.Count(PeerConflict); n != 0 {
		t.Errorf("third sync: %d takes or conflicts, want none: %+v", n, third.Changes)
	}
	if n := third.Count(PeerKeep); n != 3 {
		t.Errorf("third sync: %d kept, want 3", n)
	}
}

func countInitial[T any](rows []T) int {
	n := 0
	for _, r := range rows {
		if reflect.ValueOf(r).FieldByName("initial").String() != "" {
			n++
		}
	}
	return n
}

func revision(t *testing.T, s *EtcdStore) int64 {
	t.Helper()
	resp, err := s.kv.Get(ctxT(t), "x", clientv3.WithCountOnly())
	if err != nil {
		t.Fatal(err)
	}
	return resp.Header.Revision
}

// TestSyncPeerKeepsOwnRecords: a sync never writes or removes a record of
// a host this site owns, whatever the peer holds under the same key, and
// does not pull records of hosts the peer does not own.
func TestSyncPeerKeepsOwnRecords(t *testing.T) {
	pp := newPeerPair(t, Options{})
	putVersion(t, pp.here, "ours", "here", "a")        // ours; the peer has another version of it
	putVersion(t, pp.there, "ours", "there", "b")      // same key, claimed by a peer host
	putVersion(t, pp.here, "ours2", "here", "a")       // ours; the peer has a copy of it, changed
	putVersion(t, pp.there, "ours2", "here", "c")      //
	putVersion(t, pp.here, "alone", "here", "a")       // ours, the peer lacks it
	putVersion(t, pp.there, "third", "elsewhere", "a") // neither ours nor the peer's
	before := map[string]string{}
	for _, n := range []string{"ours", "ours2", "alone"} {
		before[n] = digestHere(t, pp.here, n)
	}
	for range 2 { // the second from the watermarks
		res := syncPeer(t, pp, PeerSyncOptions{})
		for n, d := range before {
			if got := digestHere(t, pp.here, n); got != d {
				t.Errorf("record %s of this site changed: %s, was %s", n, got, d)
			}
		}
		if v := versionOf(t, pp.here, "third"); v != "" {
			t.Errorf("the record of host elsewhere was pulled (%s): the peer does not own it", v)
		}
		c := changeOf(res, "ours")
		if c == nil || c.Done || !strings.Contains(c.Skipped, "this site owns") {
			t.Errorf("the peer's record under this site's key is not reported: %+v", c)
		}
		for _, n := range []string{"ours2", "alone", "third"} {
			if c := changeOf(res, n); c != nil {
				t.Errorf("%s: unexpected change %+v", n, c)
			}
		}
	}
	if err := pp.here.checkPeer(Peer{Name: "b", Store: pp.there, Hosts: []string{"here"}}); !errors.Is(err, ErrInvalid) {
		t.Errorf("a peer owning this host: %v, want ErrInvalid", err)
	}
	if err := pp.here.checkPeer(Peer{Name: "b", Store: pp.here, Hosts: []string{"there"}}); !errors.Is(err, ErrInvalid) {
		t.Errorf("a peer that is this catalog: %v, want ErrInvalid", err)
	}
}

func digestHere(t *testing.T, s *EtcdStore, name string) string {
	t.Helper()
	b, err := s.GetDatasetVersion(ctxT(t), "src", name, t0, "bk-"+name)
	if err != nil {
		t.Fatal(err)
	}
	return b.Host + " " + versionDigest(b)
}

// TestSyncPeerFindable: pulled records are findable through the agent's
// in-memory index, and removed ones disappear from it.
func TestSyncPeerFindable(t *testing.T) {
	pp := newPeerPair(t, Options{})
	x := startIndex(t, pp.here)
	putVersion(t, pp.there, "db", "there", "a")
	syncPeer(t, pp, PeerSyncOptions{})
	bs, err := x.FindAtoms(ctxT(t), FindRequest{Pattern: "src/db/*"})
	if err != nil {
		t.Fatal(err)
	}
	if got := flat(bs); len(got) != 2 {
		t.Fatalf("find after the pull: %v, want the two atoms of src/db", got)
	}
	putVersion(t, pp.there, "db", "there", "")
	syncPeer(t, pp, PeerSyncOptions{})
	bs, err = x.FindAtoms(ctxT(t), FindRequest{Pattern: "src/db/*"})
	if err != nil {
		t.Fatal(err)
	}
	if got := flat(bs); len(got) != 0 {
		t.Fatalf("find after the peer removed it: %v, want nothing", got)
	}
}

// TestSyncPeerWatermarkAndReport: a sync compares only what changed since
// the watermarks (less the overlap); a report changes nothing, not even
// the watermarks; pages of a few records and a dataset written over
// several transactions are taken whole with their initial copies.
func TestSyncPeerWatermarkAndReport(t *testing.T) {
	pp := newPeerPair(t, Options{PageSize: 2, MaxTxnOps: 8})
	for i := range 5 {
		putVersion(t, pp.there, fmt.Sprintf("d%d", i), "there", "a")
	}
	big := mkDataset("src", "big")
	for i := range 40 {
		big.Atoms = append(big.Atoms, Atom{Name: fmt.Sprintf("f%03d", i)})
	}
	if err := pp.there.AddDataset(ctxT(t), mkBackup("bk-big", "there2", t0), big); err != nil {
		t.Fatal(err)
	}
	rev := revision(t, pp.here)
	rep := syncPeer(t, pp, PeerSyncOptions{Report: true})
	if rep.Count(PeerTake) != 6 || !rep.Full {
		t.Fatalf("report: %d takes (full %v), want 6 from a full compare", rep.Count(PeerTake), rep.Full)
	}
	if got := revision(t, pp.here); got != rev {
		t.Fatalf("a report wrote to this catalog (revision %d, was %d)", got, rev)
	}
	res := syncPeer(t, pp, PeerSyncOptions{Overlap: -1})
	if res.Count(PeerTake) != 6 || !res.Full {
		t.Fatalf("first sync: %d takes (full %v), want 6", res.Count(PeerTake), res.Full)
	}
	b, err := pp.here.GetDatasetVersion(ctxT(t), "src", "big", t0, "bk-big")
	if err != nil || len(b.Datasets[0].Atoms) != 40 {
		t.Fatalf("the big dataset here: %v, %v", b, err)
	}
	_, _, initials, err := ridScan(ctxT(t), pp.here, pp.here.k.peerInitial("b"))
	if err != nil || len(initials) != 6 {
		t.Fatalf("initial copies: %d (%v), want 6", len(initials), err)
	}
	again := syncPeer(t, pp, PeerSyncOptions{Overlap: -1})
	if again.Full || again.Compared != 0 || len(again.Changes) != 0 {
		t.Errorf("a sync with nothing changed compared %d records (full %v): %+v %+v", again.Compared, again.Full, again.Changes, again)
	}
	putVersion(t, pp.there, "d3", "there", "b")
	one := syncPeer(t, pp, PeerSyncOptions{Overlap: -1})
	if one.Compared != 1 || one.Count(PeerTake) != 1 || versionOf(t, pp.here, "d3") != "b" {
		t.Errorf("after one change at the peer: compared %d, %d taken, d3 is %q", one.Compared, one.Count(PeerTake), versionOf(t, pp.here, "d3"))
	}
	if full := syncPeer(t, pp, PeerSyncOptions{Full: true}); full.Compared != 6 || full.Agreed != 6 {
		t.Errorf("a full sync compared %d, agreed %d; want 6 and 6", full.Compared, full.Agreed)
	}
}
