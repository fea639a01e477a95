package agent

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/custos-backup/custos/metadata"
)

// TestRestoreRefusesTamperedRecord backs up a dataset twice, then does what
// any local user who reaches etcd could do: points the newest record at the
// older snapshot. Restore must refuse it, naming the mismatch, instead of
// quietly restoring the old version; an intact record still restores.
func TestRestoreRefusesTamperedRecord(t *testing.T) {
	ctx := testContext(t)
	ts := newSetup(t, "@daily", nil)
	cm, cat, mgr := openTestCLI(ctx, t, ts.cfgPath, CatalogOptions{})
	rc := cm.Current()
	src := rc.Source("files")
	ds := Dataset{Name: "docs", Atoms: nil}
	all, err := Datasets(ctx, rc.Shell(), src)
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range all {
		if d.Name == "docs" {
			ds = d
		}
	}
	t1 := time.Now().Add(-time.Hour).Truncate(time.Second)
	old := mgr.Ingest(ctx, rc, src, NewBackup("test-host", t1), ds)
	if old.Err != nil {
		t.Fatal(old.Err)
	}
	if err := os.WriteFile(filepath.Join(ts.dir, "data", "docs", "a.txt"), []byte("new version\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	b2 := NewBackup("test-host", time.Now().Truncate(time.Second))
	cur := mgr.Ingest(ctx, rc, src, b2, ds)
	if cur.Err != nil {
		t.Fatal(cur.Err)
	}

	// Intact: the newest version restores.
	target := t.TempDir()
	if _, err := mgr.Restore(ctx, RestoreRequest{Pattern: "files/docs/*", Target: target}); err != nil {
		t.Fatalf("restore of an intact record: %v", err)
	}
	if got, _ := os.ReadFile(filepath.Join(target, "files", "docs", "docs", "a.txt")); string(got) != "new version\n" {
		t.Fatalf("restored %q, want the new version", got)
	}

	tampered := *cur.Record
	tampered.SnapshotID = old.Record.SnapshotID
	tampered.Atoms = append([]metadata.Atom(nil), cur.Record.Atoms...)
	for i := range tampered.Atoms {
		tampered.Atoms[i].SnapshotID = old.Record.Atoms[0].SnapshotID
	}
	if err := cat.Store.AddDataset(ctx, b2, &tampered); err != nil {
		t.Fatal(err)
	}
	target = t.TempDir()
	_, err = mgr.Restore(ctx, RestoreRequest{Pattern: "files/docs/*", Target: target})
	if err == nil {
		t.Fatal("restore of a record pointed at an older snapshot succeeded")
	}
	for _, want := range []string{"belongs to backup " + old.BackupID, "not " + b2.ID, "refusing"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
	if _, err := os.Stat(filepath.Join(target, "files", "docs", "docs", "a.txt")); err == nil {
		t.Error("the refused restore wrote the old file anyway")
	}
}
