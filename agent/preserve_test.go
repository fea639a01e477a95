package agent

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/custos-backup/custos/internal/faultproxy"
	"github.com/custos-backup/custos/internal/s3server"
	"github.com/custos-backup/custos/jobs"
	"github.com/custos-backup/custos/metadata"
)

// preserveSetup is newSetup with a replica repository "offsite" that the
// files source replicates to (after each ingest), and fixity on "local".
func preserveSetup(t *testing.T, extra map[string]string) *testSetup {
	t.Helper()
	files := map[string]string{
		"agent.yml": `hostname: test-host
work_dir: work
repositories:
  - name: local
    url: work/repo
    password_file: pw
    fixity: {period: 24h, budget: 1GiB}
  - name: offsite
    url: work/offsite
    password_file: pw2
    never_from: [db]
http_listen: 127.0.0.1:0
`,
		"pw2": "another password\n",
		"sources/files.yml": `name: files
handler: file
schedule: "@daily"
params:
  root: ../data
  excludes: ["*.tmp"]
replicate:
  to: [offsite]
datasets:
  - name: docs
  - name: photos
    atoms:
      - name: photos
`,
	}
	for k, v := range extra {
		files[k] = v
	}
	return newSetup(t, "@daily", files)
}

// largestPack returns the path of the largest pack file under repo.
func largestPack(t *testing.T, repo string) string {
	t.Helper()
	var best string
	var size int64
	err := filepath.Walk(filepath.Join(repo, "data"), func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		if !fi.IsDir() && fi.Size() > size {
			best, size = p, fi.Size()
		}
		return nil
	})
	if err != nil || best == "" {
		t.Fatalf("no pack in %s: %v", repo, err)
	}
	return best
}

// flipByte inverts every bit of the byte in the middle of the file.
func flipByte(t *testing.T, p string) {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)/2] ^= 0xff
	if err := os.Remove(p); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, b, 0o444); err != nil {
		t.Fatal(err)
	}
}

// TestBitRotHealedFromReplica: a flipped byte in a pack of the primary is
// found by fixity, named down to its atom and path, recorded as evidence,
// and healed from the replica; the next run passes and a restore yields the
// original bytes. Damage no replica holds fails the run loudly.
func TestBitRotHealedFromReplica(t *testing.T) {
	ctx := testContext(t)
	ts := preserveSetup(t, nil)
	cm, cat, mgr := openTestCLI(ctx, t, ts.cfgPath, CatalogOptions{})
	rc := cm.Current()
	if _, err := BackupNow(ctx, mgr, rc, "", ""); err != nil {
		t.Fatal(err)
	}
	res, err := ReplicateNow(ctx, mgr, rc, "", "")
	if err != nil {
		t.Fatal(err)
	}
	if len(res) != 2 || res[0].BytesCopied == 0 || res[0].Written != 1 {
		t.Fatalf("replicate: %+v", res[0])
	}
	// Again: the replica holds everything, nothing is sent.
	res, err = ReplicateNow(ctx, mgr, rc, "files", "docs")
	if err != nil {
		t.Fatal(err)
	}
	if len(res) != 1 || res[0].BytesCopied != 0 || res[0].Written != 0 || res[0].Snapshots != 1 {
		t.Fatalf("second replicate sent data: %+v", res[0])
	}
	found, err := mgr.Find(ctx, metadata.FindRequest{Pattern: "*"})
	if err != nil {
		t.Fatal(err)
	}
	entries := Flatten(found)
	if err := mgr.AddHoldings(ctx, entries); err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		want := []string{"local", "offsite"}
		if strings.HasPrefix(e.Atom, "db/") {
			want = want[:1]
		}
		if !slices.Equal(e.HeldIn, want) {
			t.Errorf("%s held in %v, want %v", e.Atom, e.HeldIn, want)
		}
	}

	// The docs dataset's pack is the largest (docs/sub/big.bin).
	docsPack := largestPack(t, filepath.Join(ts.dir, "work", "repo"))
	flipByte(t, docsPack)
	run, err := mgr.Fixity(ctx, rc, "local", FixityOptions{})
	if err != nil {
		t.Fatalf("fixity with a replica to heal from: %v", err)
	}
	if len(run.Damaged) != 1 {
		t.Fatalf("damaged: %+v", run.Damaged)
	}
	d := run.Damaged[0]
	if !d.Healed || !slices.Equal(d.Atoms, []string{"files/docs/docs"}) || !slices.ContainsFunc(d.Paths, func(p string) bool { return strings.HasSuffix(p, ":docs/sub/big.bin") }) {
		t.Fatalf("damage not named or not healed: %+v", d)
	}
	if d.Pack != filepath.Base(docsPack) {
		t.Fatalf("damaged pack %s, flipped %s", d.Pack, filepath.Base(docsPack))
	}
	ev, err := cat.Store.FixityHistory(ctx, "local", d.Pack, 0)
	if err != nil || len(ev) != 1 || ev[0].OK || !ev[0].Healed || ev[0].Host != "test-host" || ev[0].Algorithm != AlgoPack || ev[0].Error == "" {
		t.Fatalf("evidence of the failure: %+v %v", ev, err)
	}
	run, err = mgr.Fixity(ctx, rc, "local", FixityOptions{All: true, Deep: true})
	if err != nil || len(run.Damaged) != 0 || run.Deep == nil || run.Deep.Files != 4 {
		t.Fatalf("the run after the heal: %+v %v", run, err)
	}
	target := t.TempDir()
	if _, err := mgr.Restore(ctx, RestoreRequest{Pattern: "*", Target: target}); err != nil {
		t.Fatal(err)
	}
	ts.checkRestored(t, target)

	// The db source is refused by offsite: damage to its pack (the only
	// other one above 150 KiB: the dump) has no copy to heal from.
	dbPack := ""
	for _, p := range run.Checked {
		if p != d.Pack && !slices.Contains(d.HealedInto, p) {
			path := filepath.Join(ts.dir, "work", "repo", "data", p[:2], p)
			if fi, err := os.Stat(path); err == nil && fi.Size() > 150<<10 {
				dbPack = path
			}
		}
	}
	if dbPack == "" {
		t.Fatal("no pack of the db dump found")
	}
	flipByte(t, dbPack)
	run, err = mgr.Fixity(ctx, rc, "local", FixityOptions{All: true})
	if err == nil || run.Unhealed() != 1 || !strings.Contains(err.Error(), "could not be healed") {
		t.Fatalf("unhealable damage: %+v %v", run, err)
	}
	if got := run.Damaged[0].Atoms; !slices.Equal(got, []string{"db/main/main"}) {
		t.Fatalf("unhealable damage names %v", got)
	}
}

// TestRestoreFromReplica: with the primary gone, restore falls back to the
// replica; --repository picks a copy.
func TestRestoreFromReplica(t *testing.T) {
	ctx := testContext(t)
	ts := preserveSetup(t, nil)
	cm, _, mgr := openTestCLI(ctx, t, ts.cfgPath, CatalogOptions{})
	if _, err := BackupNow(ctx, mgr, cm.Current(), "files", ""); err != nil {
		t.Fatal(err)
	}
	if _, err := ReplicateNow(ctx, mgr, cm.Current(), "files", ""); err != nil {
		t.Fatal(err)
	}
	delete(ts.files, "photos/ignore.tmp")
	check := func(target string) {
		t.Helper()
		for name, want := range ts.files {
			ds := strings.SplitN(name, "/", 2)[0]
			got, err := os.ReadFile(filepath.Join(target, "files", ds, filepath.FromSlash(name)))
			if err != nil || !bytes.Equal(got, want) {
				t.Errorf("%s: %v", name, err)
			}
		}
	}
	target := t.TempDir()
	if _, err := mgr.Restore(ctx, RestoreRequest{Pattern: "files", Target: target, Repository: "offsite"}); err != nil {
		t.Fatal(err)
	}
	check(target)
	mgr.Close()
	if err := os.Rename(filepath.Join(ts.dir, "work", "repo"), filepath.Join(ts.dir, "work", "gone")); err != nil {
		t.Fatal(err)
	}
	// A new manager, as the next command would have: the primary cannot
	// be opened (and must not be created anew: the pool would initialise
	// an empty one, whose snapshots are missing, which falls back too).
	_, _, mgr2 := openTestCLI(ctx, t, ts.cfgPath, CatalogOptions{})
	target = t.TempDir()
	if _, err := mgr2.Restore(ctx, RestoreRequest{Pattern: "files", Target: target}); err != nil {
		t.Fatal(err)
	}
	check(target)
	_, err := mgr2.Restore(ctx, RestoreRequest{Pattern: "files", Target: t.TempDir(), Repository: "local"})
	if err == nil {
		t.Fatal("restore from the missing primary with --repository local succeeded")
	}
}

// TestFixityBudget: with a budget of a tenth of the repository (plus the
// largest pack, since runs read whole packs), ten runs verify every pack,
// and no pack is verified an n+1th time while another has been verified
// fewer than n times.
func TestFixityBudget(t *testing.T) {
	ctx := testContext(t)
	ts := preserveSetup(t, nil)
	cm, _, mgr := openTestCLI(ctx, t, ts.cfgPath, CatalogOptions{})
	// Packs of about one size: the example's big file would be a pack of
	// its own, larger than a tenth of the rest.
	if err := os.Remove(filepath.Join(ts.dir, "data", "docs", "sub", "big.bin")); err != nil {
		t.Fatal(err)
	}
	for i := range 12 {
		if err := os.WriteFile(filepath.Join(ts.dir, "data", "docs", "new.bin"), randomBytes(t, 40<<10+i*1000), 0o644); err != nil {
			t.Fatal(err)
		}
		if _, err := BackupNow(ctx, mgr, cm.Current(), "files", "docs"); err != nil {
			t.Fatal(err)
		}
	}
	repo, err := mgr.repos.Get(ctx, cm.Current().Config.Repository("local"))
	if err != nil {
		t.Fatal(err)
	}
	packs, err := repo.Packs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var total, largest int64
	for _, p := range packs {
		total += p.Size
		largest = max(largest, p.Size)
	}
	if len(packs) < 20 {
		t.Fatalf("only %d packs", len(packs))
	}
	cm.Current().Config.Repository("local").Fixity.Budget = total/10 + largest
	budget := total/10 + largest
	cm.Current().Config.Repository("local").Fixity.Budget = budget
	count := map[string]int{}
	for run := 1; run <= 15; run++ {
		r, err := mgr.Fixity(ctx, cm.Current(), "local", FixityOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if r.BytesRead > budget {
			t.Fatalf("run %d read %d bytes, budget %d", run, r.BytesRead, budget)
		}
		for _, p := range r.Checked {
			count[p]++
			for _, q := range packs {
				if count[q.ID.String()] < count[p]-1 {
					t.Fatalf("run %d verified pack %s for the %d. time while pack %s was verified %d times", run, p[:8], count[p], q.ID.Short(), count[q.ID.String()])
				}
			}
		}
		if run == 10 {
			for _, p := range packs {
				if count[p.ID.String()] == 0 {
					t.Fatalf("pack %s not verified in ten runs", p.ID.Short())
				}
			}
		}
	}
	if len(count) != len(packs) {
		t.Fatalf("%d packs verified, the repository has %d", len(count), len(packs))
	}
}

// TestNeverFrom: config check refuses a source that replicates to a
// repository that refuses it, naming file, line and field; a replication
// asked for anyway sends nothing.
func TestNeverFrom(t *testing.T) {
	ts := preserveSetup(t, map[string]string{
		"sources/db.yml": "name: db\nhandler: dump\nschedule: \"@daily\"\ndatasets:\n  - name: main\nreplicate:\n  to: [offsite]\n",
	})
	_, err := LoadConfig(ts.cfgPath)
	var ce ConfigErrors
	if !errors.As(err, &ce) || len(ce) != 1 {
		t.Fatalf("want one config error, got %v", err)
	}
	if got := ce[0].Error(); !strings.Contains(got, "sources/db.yml:7:") || !strings.Contains(got, `field "replicate.to[0]"`) || !strings.Contains(got, "refuses source db") {
		t.Fatalf("error: %s", got)
	}

	// The config passes without the replicate; a replication of db to
	// offsite asked for anyway is refused before anything is sent.
	ts = preserveSetup(t, nil)
	ctx := testContext(t)
	cm, _, mgr := openTestCLI(ctx, t, ts.cfgPath, CatalogOptions{})
	if _, err := BackupNow(ctx, mgr, cm.Current(), "db", ""); err != nil {
		t.Fatal(err)
	}
	_, err = mgr.Replicate(ctx, cm.Current(), cm.Current().Source("db"), "main", []string{"offsite"})
	if err == nil || !strings.Contains(err.Error(), "refuses source db") {
		t.Fatalf("replicate to a refusing repository: %v", err)
	}
	if _, err := os.Stat(filepath.Join(ts.dir, "work", "offsite")); !os.IsNotExist(err) {
		t.Fatalf("the refusing repository was touched: %v", err)
	}
}

// TestRunKinds: POST /api/run takes a kind; replicate and fixity jobs run
// on their queues through the agent's runner.
func TestRunKinds(t *testing.T) {
	ctx := testContext(t)
	ts := preserveSetup(t, nil)
	a, base := startTestAgent(ctx, t, ts)
	cases := []struct {
		query string
		code  int
		kind  string
	}{
		{"kind=bogus&source=files", 400, ""},
		{"kind=replicate&source=db", 422, ""},
		{"kind=fixity&repository=nowhere", 404, ""},
		{"kind=replicate&source=files", 200, "replicate"},
		{"kind=fixity&repository=local", 200, "fixity"},
	}
	for _, tc := range cases {
		code, body := apiCall(ctx, t, "POST", base+"/api/run?"+tc.query, "")
		if code != tc.code {
			t.Fatalf("%s: %d %s", tc.query, code, body)
		}
		if tc.kind == "" {
			continue
		}
		waitFor(ctx, t, tc.kind+" job done", func() bool {
			for _, j := range a.Runner().Done() {
				if j.Kind == tc.kind {
					if j.Result != jobs.ResultOK {
						t.Fatalf("%s job: %s %s", tc.kind, j.Result, j.Error)
					}
					return true
				}
			}
			return false
		})
	}
}

// TestReplicateRefusesWithoutSpace: a local target whose file system
// cannot take the copy plus the margin fails the job by name, with the
// numbers, before anything is sent; with room, the same job copies. The
// target is a real 20 MiB tmpfs when this process may mount one, else the
// real file system seen through a probe that caps its free space.
func TestReplicateRefusesWithoutSpace(t *testing.T) {
	ctx := testContext(t)
	ts := preserveSetup(t, nil)
	offsite := filepath.Join(ts.dir, "work", "offsite")
	if err := os.MkdirAll(offsite, 0o700); err != nil {
		t.Fatal(err)
	}
	mounted := syscall.Mount("tmpfs", offsite, "tmpfs", 0, "size=20m") == nil
	if mounted {
		t.Cleanup(func() {
			if err := syscall.Unmount(offsite, 0); err != nil {
				t.Errorf("unmount %s: %v", offsite, err)
			}
		})
	}
	cm, cat, mgr := openTestCLI(ctx, t, ts.cfgPath, CatalogOptions{})
	if !mounted {
		t.Log("cannot mount a tmpfs here; capping the free space the real statfs reports")
		mgr.freeSpace = func(p string) (int64, error) {
			free, err := statfsFree(p)
			return min(free, 20<<20), err
		}
	}
	if _, err := BackupNow(ctx, mgr, cm.Current(), "files", "docs"); err != nil {
		t.Fatal(err)
	}
	res, err := ReplicateNow(ctx, mgr, cm.Current(), "files", "docs")
	if err == nil || !strings.Contains(err.Error(), "dataset files/docs: not enough space in offsite") || !strings.Contains(err.Error(), "nothing was copied") {
		t.Fatalf("replicate to a full target: %v", err)
	}
	if len(res) != 1 || res[0].Written != 0 || res[0].BytesCopied != 0 || res[0].BlobsCopied != 0 {
		t.Fatalf("replicate to a full target reports a copy: %+v", res)
	}
	packs := func() int {
		n := 0
		err := filepath.Walk(filepath.Join(offsite, "data"), func(_ string, fi os.FileInfo, err error) error {
			if err == nil && fi.Mode().IsRegular() {
				n++
			}
			if errors.Is(err, os.ErrNotExist) {
				return nil
			}
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	if n := packs(); n != 0 {
		t.Fatalf("the refused copy left %d packs in the target", n)
	}
	if recs, err := cat.Store.ListReplicas(ctx, "offsite"); err != nil || len(recs) != 0 {
		t.Fatalf("replica records after a refused copy: %v %v", recs, err)
	}

	// Room enough: the same job copies, so the refusal was the space's.
	if mounted {
		if err := syscall.Mount("tmpfs", offsite, "tmpfs", syscall.MS_REMOUNT, "size=256m"); err != nil {
			t.Fatal(err)
		}
	} else {
		mgr.freeSpace = statfsFree
	}
	res, err = ReplicateNow(ctx, mgr, cm.Current(), "files", "docs")
	if err != nil || len(res) != 1 || res[0].Written != 1 {
		t.Fatalf("replicate with room: %+v %v", res, err)
	}
	if packs() == 0 {
		t.Fatal("the copy with room wrote no pack")
	}
}

// packsBySize lists the pack files under repo, largest first.
func packsBySize(t *testing.T, repo string) []string {
	t.Helper()
	type pack struct {
		path string
		size int64
	}
	var packs []pack
	err := filepath.Walk(filepath.Join(repo, "data"), func(p string, fi os.FileInfo, err error) error {
		if err == nil && fi.Mode().IsRegular() {
			packs = append(packs, pack{p, fi.Size()})
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	slices.SortFunc(packs, func(a, b pack) int { return int(b.size - a.size) })
	out := make([]string, len(packs))
	for i, p := range packs {
		out[i] = p.path
	}
	return out
}

// TestRestoreFallsBackOnDamagedData: file data found damaged in the middle
// of a restore (a flipped byte inside a data pack: the snapshot, its trees
// and the index are sound, so the copy is chosen) is restored again from
// a replica holding the snapshot, byte for byte, and the result says so.
// Pinned to the damaged copy, or with no sound copy anywhere, the restore
// fails naming the damaged pack.
func TestRestoreFallsBackOnDamagedData(t *testing.T) {
	ctx := testContext(t)
	ts := preserveSetup(t, nil)
	cm, _, mgr := openTestCLI(ctx, t, ts.cfgPath, CatalogOptions{})
	if _, err := BackupNow(ctx, mgr, cm.Current(), "", ""); err != nil {
		t.Fatal(err)
	}
	if _, err := ReplicateNow(ctx, mgr, cm.Current(), "files", ""); err != nil {
		t.Fatal(err)
	}
	local := packsBySize(t, filepath.Join(ts.dir, "work", "repo"))
	// The largest pack holds docs/sub/big.bin, the next the db dump
	// (which offsite refuses: never_from).
	docsPack, dbPack := local[0], local[1]
	flipByte(t, docsPack)
	flipByte(t, dbPack)

	target := t.TempDir()
	done, err := mgr.Restore(ctx, RestoreRequest{Pattern: "files", Target: target})
	if err != nil {
		t.Fatalf("restore with a sound replica: %v", err)
	}
	for name, want := range ts.files {
		if name == "photos/ignore.tmp" {
			continue // excluded from the backup
		}
		ds := strings.SplitN(name, "/", 2)[0]
		got, err := os.ReadFile(filepath.Join(target, "files", ds, filepath.FromSlash(name)))
		if err != nil || !bytes.Equal(got, want) {
			t.Errorf("%s not restored byte for byte: %v", name, err)
		}
	}
	if len(done) != 2 {
		t.Fatalf("restored %+v", done)
	}
	for _, a := range done {
		switch a.Name {
		case "files/docs/docs":
			if a.Repository != "offsite" || !strings.Contains(a.Fallback, "the copy in local holds damaged file data") || !strings.Contains(a.Fallback, "in pack "+filepath.Base(docsPack)) {
				t.Errorf("docs restored from %s, fallback %q", a.Repository, a.Fallback)
			}
		case "files/photos/photos":
			if a.Repository != "local" || a.Fallback != "" {
				t.Errorf("photos (not damaged) restored from %s, fallback %q", a.Repository, a.Fallback)
			}
		default:
			t.Errorf("restored %s", a.Name)
		}
	}

	for _, tc := range []struct {
		name, pattern, repo string
		damage              func()
		want                []string
	}{
		{name: "pinned to the damaged copy", pattern: "files/docs", repo: "local",
			want: []string{filepath.Base(docsPack)}},
		{name: "no replica", pattern: "db",
			want: []string{"repository local holds damaged file data of db/main", "no replica holds a verified copy", "in pack " + filepath.Base(dbPack)}},
		{name: "every copy damaged", pattern: "files/docs",
			damage: func() { flipByte(t, packsBySize(t, filepath.Join(ts.dir, "work", "offsite"))[0]) },
			want:   []string{"every copy of files/docs holds damaged file data (tried local, offsite)", filepath.Base(docsPack)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.damage != nil {
				tc.damage()
			}
			_, err := mgr.Restore(ctx, RestoreRequest{Pattern: tc.pattern, Target: t.TempDir(), Repository: tc.repo})
			if err == nil {
				t.Fatal("restore of damaged data succeeded")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error does not say %q: %v", w, err)
				}
			}
		})
	}
}

// TestRestorePipeFallsBackOnDamagedData: a pipe atom whose stream breaks
// on damaged data is fed to restore_command again, whole, from the
// replica; to standard output, where what was written cannot be taken
// back, the restore fails and names the replica to restore from.
func TestRestorePipeFallsBackOnDamagedData(t *testing.T) {
	ctx := testContext(t)
	ts := preserveSetup(t, map[string]string{
		"agent.yml": `hostname: test-host
work_dir: work
repositories:
  - name: local
    url: work/repo
    password_file: pw
  - name: offsite
    url: work/offsite
    password_file: pw2
http_listen: 127.0.0.1:0
`,
		"sources/db.yml": "name: db\nhandler: dump\nschedule: \"@daily\"\nreplicate:\n  to: [offsite]\ndatasets:\n  - name: main\n",
	})
	cm, _, mgr := openTestCLI(ctx, t, ts.cfgPath, CatalogOptions{})
	if _, err := BackupNow(ctx, mgr, cm.Current(), "db", ""); err != nil {
		t.Fatal(err)
	}
	if _, err := ReplicateNow(ctx, mgr, cm.Current(), "db", ""); err != nil {
		t.Fatal(err)
	}
	dbPack := packsBySize(t, filepath.Join(ts.dir, "work", "repo"))[0]
	flipByte(t, dbPack)

	target := t.TempDir()
	done, err := mgr.Restore(ctx, RestoreRequest{Pattern: "db", Target: target})
	if err != nil {
		t.Fatalf("restore with a sound replica: %v", err)
	}
	if len(done) != 1 || done[0].Repository != "offsite" || !strings.Contains(done[0].Fallback, filepath.Base(dbPack)) {
		t.Fatalf("restored %+v", done)
	}
	got, err := os.ReadFile(filepath.Join(target, "db", "main", "main.bin"))
	if err != nil || !bytes.Equal(got, ts.dump) {
		t.Fatalf("the dump is not restored byte for byte (%d bytes of %d): %v", len(got), len(ts.dump), err)
	}

	var out bytes.Buffer
	_, err = mgr.Restore(ctx, RestoreRequest{Pattern: "db", Stdout: &out})
	if err == nil || !strings.Contains(err.Error(), "what was written to standard output is incomplete: restore again from a replica with --repository offsite") || !strings.Contains(err.Error(), filepath.Base(dbPack)) {
		t.Fatalf("restore to standard output: %v", err)
	}
	out.Reset()
	if _, err := mgr.Restore(ctx, RestoreRequest{Pattern: "db", Stdout: &out, Repository: "offsite"}); err != nil || !bytes.Equal(out.Bytes(), ts.dump) {
		t.Fatalf("restore to standard output from the replica: %v (%d bytes of %d)", err, out.Len(), len(ts.dump))
	}
}

// TestReplicateCancelStops: a replication to an S3 replica whose pack
// uploads the network holds (a proxy that answers none of them) stops as
// soon as its context is cancelled, instead of waiting for the network,
// and records no replica; the next run, with the network back, completes
// and the replica holds every snapshot.
func TestReplicateCancelStops(t *testing.T) {
	ctx := testContext(t)
	srv := s3server.Start(t)
	srv.SetEnv(t)
	srv.CreateBucket(t, "off")
	p := faultproxy.Start(t, srv.Endpoint)
	ts := newSetup(t, "@daily", map[string]string{
		"agent.yml": `hostname: test-host
work_dir: work
repositories:
  - name: local
    url: work/repo
    password_file: pw
  - name: offsite
    url: s3:` + p.URL() + `/off/repo
    password_file: pw
http_listen: 127.0.0.1:0
`,
	})
	cm, _, mgr := openTestCLI(ctx, t, ts.cfgPath, CatalogOptions{})
	rc := cm.Current()
	if res, err := BackupNow(ctx, mgr, rc, "files", "docs"); err != nil || res[0].Err != nil {
		t.Fatalf("backup: %v %v", err, res)
	}
	src := rc.Source("files")
	// Open the replica first (init writes config and keys), then hold
	// every pack upload.
	if _, err := mgr.repos.Get(ctx, rc.Config.Repository("offsite")); err != nil {
		t.Fatal(err)
	}
	packs := faultproxy.Match{Method: "PUT", PathContains: "/data/"}
	p.StallNext(1000, 0, packs)
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		_, err := mgr.Replicate(rctx, rc, src, "docs", []string{"offsite"})
		done <- err
	}()
	// Cancel once an upload is held: the replication is then waiting for
	// the network, which will never answer.
	for p.Count(packs) == 0 {
		select {
		case err := <-done:
			t.Fatalf("the replication ended before its first pack upload: %v", err)
		case <-ctx.Done():
			t.Fatal("no pack upload reached the proxy")
		case <-time.After(10 * time.Millisecond):
		}
	}
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("cancelled replication returned %v, want context.Canceled", err)
		}
	case <-ctx.Done():
		t.Fatal("the cancelled replication did not return")
	}
	held, err := mgr.HeldIn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, recs := range held {
		for _, r := range recs {
			if r.Repository == "offsite" {
				t.Errorf("a cancelled replication recorded a replica: %+v", r)
			}
		}
	}

	p.Reset()
	res, err := mgr.Replicate(ctx, rc, src, "docs", []string{"offsite"})
	if err != nil || len(res) != 1 || res[0].Err != nil || res[0].Written != 1 {
		t.Fatalf("replication after the cancel: %v %+v", err, res)
	}
	if held, err = mgr.HeldIn(ctx); err != nil {
		t.Fatal(err)
	}
	found := false
	for _, recs := range held {
		for _, r := range recs {
			found = found || (r.Repository == "offsite" && r.Dataset == "docs" && r.Verified)
		}
	}
	if !found {
		t.Errorf("no verified replica record after the second run: %v", held)
	}
	// The S3 replica's snapshot and index files are kept in work/cache, in
	// one folder (the local repository has none).
	for _, kind := range []string{"snapshots", "index"} {
		got, _ := filepath.Glob(filepath.Join(ts.dir, "work", "cache", "*", kind, "*"))
		if len(got) == 0 {
			t.Errorf("no %s copies in work/cache after a replication to S3", kind)
		}
	}
	if dirs, _ := filepath.Glob(filepath.Join(ts.dir, "work", "cache", "*")); len(dirs) != 1 {
		t.Errorf("cache folders %v, want one (the S3 repository's)", dirs)
	}
}
