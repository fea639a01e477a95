package agent

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/custos-backup/custos/metadata"
	"github.com/custos-backup/custos/repository"
)

// syncSetup is newSetup with a file atom whose name is not its path and a
// pipe dataset of two atoms, the shapes a rebuild must get right.
func syncSetup(t *testing.T) *testSetup {
	return newSetup(t, "@daily", map[string]string{
		"sources/files.yml": `name: files
handler: file
params:
  root: ../data
  excludes: ["*.tmp"]
datasets:
  - name: docs
  - name: photos
    atoms:
      - name: pics
        path: photos
`,
		"sources/db.yml": `name: db
handler: dump
datasets:
  - name: main
  - name: multi
    atoms:
      - name: one
      - name: two
`,
	})
}

// cliCatalog is what a command opens: config, catalog, manager.
type cliCatalog struct {
	cm  *ConfigManager
	cat *Catalog
	mgr *Manager
}

func openCatalogForTest(ctx context.Context, t *testing.T, path string) *cliCatalog {
	t.Helper()
	log := testLogger(t)
	cm, err := NewConfigManager(path, log)
	if err != nil {
		t.Fatal(err)
	}
	cat, err := OpenCatalog(ctx, cm.Current().Config, CatalogOptions{Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	c := &cliCatalog{cm: cm, cat: cat, mgr: NewManager(cm, cat.Store, nil, log)}
	t.Cleanup(c.close)
	return c
}

func (c *cliCatalog) close() {
	c.mgr.Close()
	c.cat.Close()
}

func (c *cliCatalog) sync(ctx context.Context, t *testing.T, opts SyncOptions) *SyncResult {
	t.Helper()
	res, err := c.mgr.Sync(ctx, c.cm.Current(), c.cat.Store, opts)
	if err != nil {
		t.Fatalf("sync (report %v): %v", opts.Report, err)
	}
	return res
}

// findAll is what `custos find '*' --versions 100 --json` prints, with the
// atoms' paths and snapshot ids as the records hold them.
func (c *cliCatalog) findAll(ctx context.Context, t *testing.T) string {
	t.Helper()
	found, err := c.mgr.Find(ctx, metadata.FindRequest{Pattern: "*", NumVersions: 100})
	if err != nil {
		t.Fatal(err)
	}
	var lines []string
	for _, e := range Flatten(found) {
		b, _ := json.Marshal(e)
		lines = append(lines, string(b))
	}
	for _, b := range found {
		for _, d := range b.Datasets {
			for _, a := range d.Atoms {
				lines = append(lines, "atom "+b.ID+" "+d.Source+"/"+d.Name+" "+a.Name+" path="+a.Path+" snapshot="+a.SnapshotID+" dataset-snapshot="+d.SnapshotID+" handler="+d.Handler)
			}
		}
	}
	slices.Sort(lines)
	return strings.Join(lines, "\n")
}

func actions(res *SyncResult) map[string]int {
	return map[string]int{SyncAdd: res.Count(SyncAdd), SyncRewrite: res.Count(SyncRewrite), SyncRemove: res.Count(SyncRemove)}
}

// TestSyncRebuildsLostCatalog backs up twice, wipes the embedded etcd's
// data, and has the sync rebuild the catalog from the repository: find
// lists the same atom versions as before (names, paths, snapshots, times,
// totals), restore works from the rebuilt records, and a second sync
// changes nothing. --report says the same and changes nothing.
func TestSyncRebuildsLostCatalog(t *testing.T) {
	ctx := testContext(t)
	ts := syncSetup(t)
	c := openCatalogForTest(ctx, t, ts.cfgPath)
	for range 2 {
		res, err := BackupNow(ctx, c.mgr, c.cm.Current(), "", "")
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range res {
			if r.Err != nil {
				t.Fatalf("%s/%s: %v", r.Source, r.Dataset, r.Err)
			}
		}
	}
	if res := c.sync(ctx, t, SyncOptions{}); len(res.Changes) != 0 {
		t.Fatalf("sync of an intact catalog changes %+v", res.Changes)
	}
	before := c.findAll(ctx, t)
	if n := strings.Count(before, "\natom ") + 1; n != 2*5 {
		t.Fatalf("the catalog holds %d atom versions before the loss, want 10:\n%s", n, before)
	}

	// The catalog is lost.
	c.close()
	if err := os.RemoveAll(filepath.Join(ts.dir, "work", "etcd")); err != nil {
		t.Fatal(err)
	}
	c = openCatalogForTest(ctx, t, ts.cfgPath)
	if got := c.findAll(ctx, t); got != "" {
		t.Fatalf("the wiped catalog still lists:\n%s", got)
	}

	report := c.sync(ctx, t, SyncOptions{Report: true})
	if got := actions(report); got[SyncAdd] != 8 || got[SyncRemove]+got[SyncRewrite] != 0 {
		t.Errorf("report on the lost catalog: %v, want 8 versions to add (4 datasets, 2 backups)", got)
	}
	for _, ch := range report.Changes {
		if ch.Done {
			t.Errorf("report mode made a change: %+v", ch)
		}
	}
	if w := catalogWarnings(report); len(w) != 1 || !strings.Contains(w[0], "empty") || !strings.Contains(w[0], "8 dataset version(s)") {
		t.Errorf("warnings for a lost catalog: %q", w)
	}
	if got := c.findAll(ctx, t); got != "" {
		t.Fatalf("sync --report wrote to the catalog:\n%s", got)
	}

	res := c.sync(ctx, t, SyncOptions{})
	if got := actions(res); got[SyncAdd] != 8 {
		t.Errorf("sync of the lost catalog: %v, want 8 adds", got)
	}
	for _, ch := range res.Changes {
		if !ch.Done {
			t.Errorf("not done: %+v", ch)
		}
		// Every atom's name is known from the configuration here; only
		// the ingest's duration is not.
		if ch.Inexact != "duration from the snapshots" {
			t.Errorf("%s/%s: inexact %q", ch.Source, ch.Dataset, ch.Inexact)
		}
	}
	if after := c.findAll(ctx, t); after != before {
		t.Errorf("find after the rebuild differs.\nbefore:\n%s\nafter:\n%s", before, after)
	}
	if again := c.sync(ctx, t, SyncOptions{}); len(again.Changes) != 0 || len(again.Notes) != 0 {
		t.Errorf("a second sync changes %+v, notes %q", again.Changes, again.Notes)
	}
	target := t.TempDir()
	if _, err := c.mgr.Restore(ctx, RestoreRequest{Pattern: "*", Target: target}); err != nil {
		t.Fatalf("restore from the rebuilt catalog: %v", err)
	}
	ts.checkRestored(t, target)
}

// TestSyncDropsForgottenSnapshots forgets snapshots with the repository
// API: a whole file dataset version, and one atom of a pipe dataset
// stored per atom. The sync removes the first from the catalog and
// rewrites the second with the atom that is left; find then lists only
// what can be restored, and a second sync changes nothing.
func TestSyncDropsForgottenSnapshots(t *testing.T) {
	ctx := testContext(t)
	ts := syncSetup(t)
	c := openCatalogForTest(ctx, t, ts.cfgPath)
	rc := c.cm.Current()
	var first []*DatasetResult
	for i := range 2 {
		res, err := BackupNow(ctx, c.mgr, rc, "", "")
		if err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			first = res
		}
	}
	rec := map[string]*DatasetResult{}
	for _, r := range first {
		if r.Err != nil {
			t.Fatal(r.Err)
		}
		rec[r.Source+"/"+r.Dataset] = r
	}
	repo, err := c.mgr.repos.Get(ctx, rc.Config.Repository("local"))
	if err != nil {
		t.Fatal(err)
	}
	docs := rec["files/docs"].Record
	var two string
	for _, a := range rec["db/multi"].Record.Atoms {
		if a.Name == "two" {
			two = a.SnapshotID
		}
	}
	for _, s := range []string{docs.SnapshotID, two} {
		id, err := repository.ParseID(s)
		if err != nil {
			t.Fatal(err)
		}
		if err := repo.RemoveSnapshots(ctx, id); err != nil {
			t.Fatal(err)
		}
	}

	report := c.sync(ctx, t, SyncOptions{Report: true})
	if got := actions(report); got[SyncRemove] != 1 || got[SyncRewrite] != 1 || got[SyncAdd] != 0 {
		t.Fatalf("report after forget: %v, want one removal and one rewrite: %+v", got, report.Changes)
	}
	if w := catalogWarnings(report); len(w) != 2 {
		t.Errorf("warnings after forget: %q", w)
	}
	res := c.sync(ctx, t, SyncOptions{})
	for _, ch := range res.Changes {
		if !ch.Done {
			t.Errorf("not done: %+v", ch)
		}
		switch ch.Action {
		case SyncRemove:
			if ch.Source+"/"+ch.Dataset != "files/docs" || ch.BackupID != rec["files/docs"].BackupID || !strings.Contains(ch.Reason, "gone") {
				t.Errorf("removal: %+v", ch)
			}
		case SyncRewrite:
			if ch.Source+"/"+ch.Dataset != "db/multi" || ch.Atoms != 1 {
				t.Errorf("rewrite: %+v", ch)
			}
		}
	}
	found, err := c.mgr.Find(ctx, metadata.FindRequest{Pattern: "*", NumVersions: 10})
	if err != nil {
		t.Fatal(err)
	}
	versions := map[string]int{}
	for _, e := range Flatten(found) {
		versions[e.Atom]++
		if e.BackupID == rec["files/docs"].BackupID && strings.HasPrefix(e.Atom, "files/docs/") {
			t.Errorf("find still lists the forgotten version %+v", e)
		}
		if e.SnapshotID == two {
			t.Errorf("find still lists the forgotten atom %+v", e)
		}
	}
	want := map[string]int{"files/docs/docs": 1, "files/photos/pics": 2, "db/main/main": 2, "db/multi/one": 2, "db/multi/two": 1}
	for k, n := range want {
		if versions[k] != n {
			t.Errorf("%s: %d versions after the sync, want %d", k, versions[k], n)
		}
	}
	if again := c.sync(ctx, t, SyncOptions{}); len(again.Changes) != 0 {
		t.Errorf("a second sync changes %+v", again.Changes)
	}
	// Every version find lists restores.
	for _, r := range first {
		target := t.TempDir()
		if _, err := c.mgr.Restore(ctx, RestoreRequest{Pattern: r.Source + "/" + r.Dataset, Target: target}); err != nil {
			t.Errorf("restore %s/%s after the sync: %v", r.Source, r.Dataset, err)
		}
	}
}

// TestSyncRefusesEmptyRepository: a repository that holds no snapshot at
// all while the catalog lists versions in it looks like a wrong url or an
// unmounted disk; the sync removes nothing unless told to.
func TestSyncRefusesEmptyRepository(t *testing.T) {
	ctx := testContext(t)
	ts := syncSetup(t)
	c := openCatalogForTest(ctx, t, ts.cfgPath)
	if _, err := BackupNow(ctx, c.mgr, c.cm.Current(), "db", "main"); err != nil {
		t.Fatal(err)
	}
	repo, err := c.mgr.repos.Get(ctx, c.cm.Current().Config.Repository("local"))
	if err != nil {
		t.Fatal(err)
	}
	snaps, err := repo.Snapshots(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range snaps {
		if err := repo.RemoveSnapshots(ctx, s.ID); err != nil {
			t.Fatal(err)
		}
	}
	res, err := c.mgr.Sync(ctx, c.cm.Current(), c.cat.Store, SyncOptions{})
	if err == nil || !strings.Contains(err.Error(), "holds no snapshot at all") {
		t.Fatalf("sync against an empty repository: %v", err)
	}
	if len(res.Changes) != 0 {
		t.Errorf("changes planned against an empty repository: %+v", res.Changes)
	}
	if got := c.findAll(ctx, t); got == "" {
		t.Fatal("the sync emptied the catalog")
	}
	res = c.sync(ctx, t, SyncOptions{AllowEmpty: true})
	if res.Count(SyncRemove) != 1 {
		t.Errorf("with AllowEmpty: %+v", res.Changes)
	}
	if got := c.findAll(ctx, t); got != "" {
		t.Errorf("left in the catalog:\n%s", got)
	}
}
