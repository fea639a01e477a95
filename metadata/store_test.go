package metadata

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"sort"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

var t0 = time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)

func mkBackup(id, host string, ts time.Time) *Backup {
	return &Backup{ID: id, Host: host, Timestamp: ts}
}

func mkDataset(src, name string, atoms ...string) *Dataset {
	d := &Dataset{ID: "ds-" + src + "-" + name, Source: src, Name: name, Handler: "file",
		SnapshotID: "snap-" + name, Repository: "local", TotalFiles: 3, TotalBytes: 100, Duration: 1500 * time.Millisecond}
	for _, a := range atoms {
		d.Atoms = append(d.Atoms, Atom{Name: a, Path: "root/" + a})
	}
	d.AtomCount = len(d.Atoms)
	return d
}

func countKeys(t *testing.T, s *EtcdStore) int64 {
	t.Helper()
	resp, err := s.cli.Get(context.Background(), s.opts.Prefix, clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		t.Fatal(err)
	}
	return resp.Count
}

func TestAddDatasetIdempotent(t *testing.T) {
	ctx := ctxT(t)
	s := newSharedStore(t, Options{})
	b := mkBackup("b1", "h1", t0)
	d := mkDataset("files", "home", "alice/docs", "bob")
	if err := s.AddDataset(ctx, b, d); err != nil {
		t.Fatal(err)
	}
	n1 := countKeys(t, s)
	// 3 backup keys + 1 backup-ds + 1 dataset + 1 atom list chunk + 2 atoms.
	if n1 != 8 {
		t.Fatalf("keys after first add = %d, want 8", n1)
	}
	for i := 0; i < 2; i++ {
		// A caller's copy with a local-zone timestamp is the same backup.
		b2 := mkBackup("b1", "h1", t0.In(time.FixedZone("X", 3600)))
		if err := s.AddDataset(ctx, b2, mkDataset("files", "home", "alice/docs", "bob")); err != nil {
			t.Fatal(err)
		}
	}
	if n := countKeys(t, s); n != n1 {
		t.Fatalf("keys after repeated add = %d, want %d", n, n1)
	}
	got, err := s.GetBackup(ctx, "b1")
	if err != nil {
		t.Fatal(err)
	}
	if len(got.Datasets) != 1 || !reflect.DeepEqual(got.Datasets[0], d) || got.Host != "h1" || !got.Timestamp.Equal(t0) {
		t.Fatalf("GetBackup = %+v (datasets %+v), want one dataset %+v", got, got.Datasets, d)
	}
	// A second dataset in the same backup joins it.
	if err := s.AddDataset(ctx, b, mkDataset("files", "etc", "passwd")); err != nil {
		t.Fatal(err)
	}
	got, err = s.GetBackup(ctx, "b1")
	if err != nil {
		t.Fatal(err)
	}
	if len(got.Datasets) != 2 || got.Datasets[0].Name != "etc" || got.Datasets[1].Name != "home" {
		t.Fatalf("datasets = %v, want etc, home", got.Datasets)
	}
	if _, err := s.GetBackup(ctx, "nope"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("GetBackup(nope) err = %v, want ErrNotFound", err)
	}
}

func TestAddDatasetRejects(t *testing.T) {
	ctx := ctxT(t)
	s := newSharedStore(t, Options{SpoolDir: t.TempDir()})
	if err := s.AddDataset(ctx, mkBackup("b1", "h1", t0), mkDataset("src", "ds", "a")); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		b    *Backup
		d    *Dataset
		want error
	}{
		{"no id", mkBackup("", "h", t0), mkDataset("s", "d", "a"), ErrInvalid},
		{"no host", mkBackup("x", "", t0), mkDataset("s", "d", "a"), ErrInvalid},
		{"no time", mkBackup("x", "h", time.Time{}), mkDataset("s", "d", "a"), ErrInvalid},
		{"slash in source", mkBackup("x", "h", t0), mkDataset("s/x", "d", "a"), ErrInvalid},
		{"slash in dataset", mkBackup("x", "h", t0), mkDataset("s", "d/x", "a"), ErrInvalid},
		{"nul in atom", mkBackup("x", "h", t0), mkDataset("s", "d", "a\x00b"), ErrInvalid},
		{"empty atom", mkBackup("x", "h", t0), mkDataset("s", "d", ""), ErrInvalid},
		{"duplicate atom", mkBackup("x", "h", t0), mkDataset("s", "d", "a", "a"), ErrInvalid},
		{"other host", mkBackup("b1", "h2", t0), mkDataset("src", "ds2", "a"), ErrConflict},
		{"other time", mkBackup("b1", "h1", t0.Add(time.Second)), mkDataset("src", "ds2", "a"), ErrConflict},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if err := s.AddDataset(ctx, tc.b, tc.d); !errors.Is(err, tc.want) {
				t.Fatalf("err = %v, want %v", err, tc.want)
			}
		})
	}
	if d := s.SpoolDepth(); d != 0 {
		t.Fatalf("refused records were spooled: depth %d", d)
	}
	if n := countKeys(t, s); n != 8-1 {
		t.Fatalf("keys = %d, want 7 (refused records left keys behind)", n)
	}
}

// fixture: three backups by two hosts at t0 < t0+1h < t0+2h.
func findFixture(t *testing.T, s *EtcdStore) {
	t.Helper()
	ctx := ctxT(t)
	add := func(id, host string, ts time.Time, d *Dataset) {
		if err := s.AddDataset(ctx, mkBackup(id, host, ts), d); err != nil {
			t.Fatal(err)
		}
	}
	for i, id := range []string{"b1", "b2", "b3"} {
		host := "h1"
		if id == "b2" {
			host = "h2"
		}
		ts := t0.Add(time.Duration(i) * time.Hour)
		add(id, host, ts, mkDataset("files", "home", "alice", "alice/docs", "bob"))
		add(id, host, ts, mkDataset("db", "pg", "orders", "users"))
	}
	// Names that share a literal prefix with others.
	add("b4", "h1", t0.Add(-time.Hour), mkDataset("files", "homer", "x"))
	add("b4", "h1", t0.Add(-time.Hour), mkDataset("filesz", "home", "bob"))
}

// flat renders a find result as "backup:source/dataset/atom" lines in
// result order.
func flat(bs []*Backup) []string {
	var out []string
	for _, b := range bs {
		for _, d := range b.Datasets {
			for _, a := range d.Atoms {
				out = append(out, b.ID+":"+AtomName(d.Source, d.Name, a.Name))
			}
		}
	}
	return out
}

func TestFindAtoms(t *testing.T) {
	s := newSharedStore(t, Options{PageSize: 3}) // small pages exercise paging
	findFixture(t, s)
	tests := []struct {
		name string
		req  FindRequest
		want []string
	}{
		{"exact", FindRequest{Pattern: "files/home/bob"}, []string{"b3:files/home/bob"}},
		{"exact with subtree", FindRequest{Pattern: "files/home/alice"},
			[]string{"b3:files/home/alice", "b3:files/home/alice/docs"}},
		{"dataset", FindRequest{Pattern: "db/pg"}, []string{"b3:db/pg/orders", "b3:db/pg/users"}},
		{"glob atom", FindRequest{Pattern: "files/home/b*"}, []string{"b3:files/home/bob"}},
		{"glob source", FindRequest{Pattern: "*/home/bob"}, []string{"b3:files/home/bob", "b4:filesz/home/bob"}},
		{"glob deep", FindRequest{Pattern: "files/home/alice/*"}, []string{"b3:files/home/alice/docs"}},
		{"question mark", FindRequest{Pattern: "files/hom?"},
			[]string{"b3:files/home/alice", "b3:files/home/alice/docs", "b3:files/home/bob"}},
		{"class", FindRequest{Pattern: "files/home/[ab]*"},
			[]string{"b3:files/home/alice", "b3:files/home/alice/docs", "b3:files/home/bob"}},
		{"all", FindRequest{Pattern: "*"}, []string{
			"b3:db/pg/orders", "b3:db/pg/users",
			"b3:files/home/alice", "b3:files/home/alice/docs", "b3:files/home/bob",
			"b4:files/homer/x", "b4:filesz/home/bob"}},
		{"host filter", FindRequest{Pattern: "files/home/bob", Host: "h2"}, []string{"b2:files/home/bob"}},
		{"host filter glob", FindRequest{Pattern: "db/*", Host: "h2"}, []string{"b2:db/pg/orders", "b2:db/pg/users"}},
		{"two versions", FindRequest{Pattern: "files/home/bob", NumVersions: 2},
			[]string{"b3:files/home/bob", "b2:files/home/bob"}},
		{"all versions", FindRequest{Pattern: "db/pg/users", NumVersions: 10},
			[]string{"b3:db/pg/users", "b2:db/pg/users", "b1:db/pg/users"}},
		{"versions per atom", FindRequest{Pattern: "db/pg", NumVersions: 2},
			[]string{"b3:db/pg/orders", "b3:db/pg/users", "b2:db/pg/orders", "b2:db/pg/users"}},
		{"older than", FindRequest{Pattern: "db/pg/users", OlderThan: t0.Add(2 * time.Hour)},
			[]string{"b2:db/pg/users"}},
		{"older than is strict", FindRequest{Pattern: "db/pg/users", OlderThan: t0.Add(time.Hour), NumVersions: 5},
			[]string{"b1:db/pg/users"}},
		{"older than and host", FindRequest{Pattern: "db/pg/users", OlderThan: t0.Add(2 * time.Hour), Host: "h1"},
			[]string{"b1:db/pg/users"}},
		{"nothing older", FindRequest{Pattern: "db/pg/users", OlderThan: t0}, nil},
		{"no match", FindRequest{Pattern: "files/home/carol"}, nil},
		{"literal is not a prefix match", FindRequest{Pattern: "files/hom"}, nil},
		{"trailing slash", FindRequest{Pattern: "files/homer/"}, []string{"b4:files/homer/x"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := s.FindAtoms(ctxT(t), tc.req)
			if err != nil {
				t.Fatal(err)
			}
			if f := flat(got); !reflect.DeepEqual(f, tc.want) {
				t.Fatalf("FindAtoms(%+v) = %q, want %q", tc.req, f, tc.want)
			}
		})
	}
}

func TestFindAtomsResultShape(t *testing.T) {
	s := newSharedStore(t, Options{})
	findFixture(t, s)
	got, err := s.FindAtoms(ctxT(t), FindRequest{Pattern: "files/home/bob", NumVersions: 3})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 3 {
		t.Fatalf("got %d backups, want 3", len(got))
	}
	for i, b := range got {
		if i > 0 && !b.Timestamp.Before(got[i-1].Timestamp) {
			t.Fatalf("backups not newest first: %v then %v", got[i-1].Timestamp, b.Timestamp)
		}
		if len(b.Datasets) != 1 {
			t.Fatalf("backup %s has %d datasets, want 1 (only the matching one)", b.ID, len(b.Datasets))
		}
		d := b.Datasets[0]
		want := mkDataset("files", "home", "bob")
		want.AtomCount = 3 // of the whole dataset version
		if !reflect.DeepEqual(d, want) {
			t.Fatalf("dataset = %+v, want %+v (full record, matching atoms only)", d, want)
		}
		wantHost := map[string]string{"b1": "h1", "b2": "h2", "b3": "h1"}[b.ID]
		if b.Host != wantHost {
			t.Fatalf("backup %s host %q, want %q", b.ID, b.Host, wantHost)
		}
	}
}

// TestAtomSnapshotIDs: a dataset whose atoms live in separate snapshots
// keeps each atom's snapshot id through the dataset record (GetBackup) and
// the atom records (FindAtoms, which returns only the matching atom).
func TestAtomSnapshotIDs(t *testing.T) {
	ctx := ctxT(t)
	s := newSharedStore(t, Options{})
	b := mkBackup("b-atoms", "h1", t0)
	d := &Dataset{ID: "b-atoms/pg/dump", Source: "pg", Name: "dump", Handler: "pipe", Repository: "local",
		Atoms: []Atom{{Name: "app", SnapshotID: "snap-app"}, {Name: "users", SnapshotID: "snap-users"}}}
	if err := s.AddDataset(ctx, b, d); err != nil {
		t.Fatal(err)
	}
	got, err := s.GetBackup(ctx, b.ID)
	if err != nil {
		t.Fatal(err)
	}
	if len(got.Datasets) != 1 || !reflect.DeepEqual(got.Datasets[0].Atoms, d.Atoms) {
		t.Fatalf("GetBackup atoms = %+v, want %+v", got.Datasets, d.Atoms)
	}
	for _, want := range d.Atoms {
		found, err := s.FindAtoms(ctx, FindRequest{Pattern: "pg/dump/" + want.Name})
		if err != nil {
			t.Fatal(err)
		}
		if len(found) != 1 || len(found[0].Datasets) != 1 || len(found[0].Datasets[0].Atoms) != 1 {
			t.Fatalf("find %s: %+v, want one atom", want.Name, found)
		}
		if a := found[0].Datasets[0].Atoms[0]; a != want {
			t.Errorf("find %s: atom %+v, want %+v", want.Name, a, want)
		}
	}
}

func TestFindAtomsBadPattern(t *testing.T) {
	s := newSharedStore(t, Options{})
	for _, p := range []string{"", "files/[", "a\x00b"} {
		if _, err := s.FindAtoms(ctxT(t), FindRequest{Pattern: p}); !errors.Is(err, ErrInvalid) {
			t.Errorf("pattern %q: err = %v, want ErrInvalid", p, err)
		}
	}
}

// TestFindAtomsReadsOnlyItsRange checks through a wrapper around the real
// KV that find reads from the pattern's literal prefix, not the catalog,
// and stops reading an atom's versions after NumVersions.
func TestFindAtomsReadsOnlyItsRange(t *testing.T) {
	ctx := ctxT(t)
	s := newSharedStore(t, Options{PageSize: 4})
	// Unrelated bulk on both sides of the searched range.
	for _, src := range []string{"aaa", "zzz"} {
		var atoms []string
		for i := 0; i < 200; i++ {
			atoms = append(atoms, fmt.Sprintf("f%03d", i))
		}
		if err := s.AddDataset(ctx, mkBackup("bulk-"+src, "h1", t0), mkDataset(src, "ds", atoms...)); err != nil {
			t.Fatal(err)
		}
	}
	// One atom with many versions next to the one we look for.
	const versions = 40
	for i := 0; i < versions; i++ {
		b := mkBackup(fmt.Sprintf("v%02d", i), "h1", t0.Add(time.Duration(i)*time.Minute))
		if err := s.AddDataset(ctx, b, mkDataset("files", "home", "bob", "carol")); err != nil {
			t.Fatal(err)
		}
	}
	ckv := &countingKV{KV: s.kv}
	s.kv = ckv

	tests := []struct {
		name    string
		req     FindRequest
		start   string // every range read must start at or after this key
		end     string // ... and end at or before this key
		maxRead int
		want    int // atoms found
	}{
		{"glob, newest only", FindRequest{Pattern: "files/home/b*"},
			s.k.atomNS() + "files/home/b", prefixEnd(s.k.atomNS() + "files/home/b"), 2 * 4, 1},
		{"literal, three versions", FindRequest{Pattern: "files/home/carol", NumVersions: 3},
			s.k.atomNS() + "files/home/carol", prefixEnd(s.k.atomNS() + "files/home/carol"), 2 * 4, 3},
		{"dataset glob", FindRequest{Pattern: "files/h*me", NumVersions: 2},
			s.k.atomNS() + "files/h", prefixEnd(s.k.atomNS() + "files/h"), 4 * 4, 4},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ckv.reset()
			got, err := s.FindAtoms(ctx, tc.req)
			if err != nil {
				t.Fatal(err)
			}
			if n := len(flat(got)); n != tc.want {
				t.Fatalf("found %d atom versions, want %d", n, tc.want)
			}
			ckv.mu.Lock()
			defer ckv.mu.Unlock()
			if len(ckv.ranges) == 0 {
				t.Fatal("no range reads recorded")
			}
			for _, r := range ckv.ranges {
				if r[0] < tc.start || r[1] == "" || r[1] > tc.end {
					t.Errorf("read range [%q, %q) outside [%q, %q)", r[0], r[1], tc.start, tc.end)
				}
			}
			t.Logf("read %d keys in %d range reads", ckv.read, len(ckv.ranges))
			if ckv.read > tc.maxRead {
				t.Errorf("read %d keys, want at most %d (of %d atom versions in range)", ckv.read, tc.maxRead, 2*versions)
			}
		})
	}
}

func TestListBackupsAndVersions(t *testing.T) {
	ctx := ctxT(t)
	s := newSharedStore(t, Options{PageSize: 2})
	findFixture(t, s)
	ids := func(bs []*Backup) string {
		var out []string
		for _, b := range bs {
			out = append(out, fmt.Sprintf("%s(%d)", b.ID, len(b.Datasets)))
		}
		return strings.Join(out, " ")
	}
	tests := []struct {
		host  string
		limit int
		want  string
	}{
		{"", 0, "b3(2) b2(2) b1(2) b4(2)"},
		{"", 2, "b3(2) b2(2)"},
		{"h1", 0, "b3(2) b1(2) b4(2)"},
		{"h2", 5, "b2(2)"},
		{"nobody", 0, ""},
	}
	for _, tc := range tests {
		got, err := s.ListBackups(ctx, tc.host, tc.limit)
		if err != nil {
			t.Fatal(err)
		}
		if ids(got) != tc.want {
			t.Errorf("ListBackups(%q, %d) = %s, want %s", tc.host, tc.limit, ids(got), tc.want)
		}
	}
	vs, err := s.DatasetVersions(ctx, "db", "pg", "h1", 0)
	if err != nil {
		t.Fatal(err)
	}
	if ids(vs) != "b3(1) b1(1)" || vs[0].Datasets[0].SnapshotID != "snap-pg" {
		t.Fatalf("DatasetVersions = %s", ids(vs))
	}
}

func TestFixityAndReplicaRecords(t *testing.T) {
	ctx := ctxT(t)
	s := newSharedStore(t, Options{})
	put := func(repo, pack string, ts time.Time, ok bool) {
		if err := s.PutFixityResult(ctx, &FixityResult{Repository: repo, Pack: pack, Time: ts, OK: ok, Bytes: 10}); err != nil {
			t.Fatal(err)
		}
	}
	put("local", "p1", t0, true)
	put("local", "p1", t0.Add(time.Hour), false)
	put("local", "p2", t0, true)
	put("localx", "p1", t0, true) // a repo whose name extends another
	got, err := s.GetFixityResult(ctx, "local", "p1")
	if err != nil || got.OK || !got.Time.Equal(t0.Add(time.Hour)) {
		t.Fatalf("latest p1 = %+v, %v; want the failed one", got, err)
	}
	list, err := s.ListFixityResults(ctx, "local")
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 2 || list[0].Pack != "p1" || list[1].Pack != "p2" {
		t.Fatalf("ListFixityResults = %+v", list)
	}
	hist, err := s.FixityHistory(ctx, "local", "p1", 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(hist) != 2 || hist[0].OK || !hist[1].OK {
		t.Fatalf("history = %+v, want failed (newest) then ok", hist)
	}
	if _, err := s.GetFixityResult(ctx, "local", "p9"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("missing pack err = %v", err)
	}
	if err := s.PutFixityResult(ctx, &FixityResult{Repository: "local"}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("invalid fixity err = %v", err)
	}

	for _, snap := range []string{"s2", "s1"} {
		if err := s.PutReplica(ctx, &ReplicaRecord{Repository: "offsite", SnapshotID: snap, FromRepository: "local", Time: t0, Verified: true}); err != nil {
			t.Fatal(err)
		}
	}
	r, err := s.GetReplica(ctx, "offsite", "s1")
	if err != nil || !r.Verified || r.FromRepository != "local" {
		t.Fatalf("GetReplica = %+v, %v", r, err)
	}
	rs, err := s.ListReplicas(ctx, "offsite")
	if err != nil {
		t.Fatal(err)
	}
	var snaps []string
	for _, r := range rs {
		snaps = append(snaps, r.SnapshotID)
	}
	if !sort.StringsAreSorted(snaps) || len(snaps) != 2 {
		t.Fatalf("ListReplicas = %v", snaps)
	}
	if _, err := s.GetReplica(ctx, "local", "s1"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("replica in wrong repo err = %v", err)
	}
}
