package agent

import (
	"bytes"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/custos-backup/custos/metadata"
	"github.com/custos-backup/custos/repository"
)

// TestAtomSnapshotIDs: a pipe dataset of several atoms records one
// snapshot per atom on its atoms (and none on the dataset), a file dataset
// records its one snapshot on the dataset and on every atom, and restore
// finds an atom through its own snapshot id.
func TestAtomSnapshotIDs(t *testing.T) {
	ctx := testContext(t)
	ts := newSetup(t, "@daily", map[string]string{
		"handlers/multi.yml": `name: multi
type: pipe
params:
  backup_command: 'printf "data of %s" "$CUSTOS_ATOM"'
  restore_command: 'cat > "$CUSTOS_RESTORE_TARGET/$CUSTOS_ATOM.out"'
`,
		"sources/multi.yml": `name: multi
handler: multi
datasets:
  - name: ds
    atoms:
      - name: a
      - name: b
      - name: c
`,
	})
	cm, cat, mgr := openTestCLI(ctx, t, ts.cfgPath, CatalogOptions{})
	rc := cm.Current()
	res, err := BackupNow(ctx, mgr, rc, "", "")
	if err != nil {
		t.Fatal(err)
	}
	recs := map[string]*metadata.Dataset{}
	for _, r := range res {
		if r.Err != nil {
			t.Fatalf("%s/%s: %v", r.Source, r.Dataset, r.Err)
		}
		recs[r.Source+"/"+r.Dataset] = r.Record
	}

	multi := recs["multi/ds"]
	if multi.SnapshotID != "" {
		t.Errorf("multi/ds: dataset snapshot id %q, want none (its atoms are separate snapshots)", multi.SnapshotID)
	}
	seen := map[string]string{}
	for _, a := range multi.Atoms {
		if a.SnapshotID == "" {
			t.Errorf("multi/ds/%s: no snapshot id", a.Name)
		}
		if other, dup := seen[a.SnapshotID]; dup {
			t.Errorf("multi/ds: atoms %s and %s share snapshot %s", other, a.Name, a.SnapshotID)
		}
		seen[a.SnapshotID] = a.Name
	}
	for _, name := range []string{"files/docs", "files/photos", "db/main"} {
		d := recs[name]
		if d.SnapshotID == "" {
			t.Errorf("%s: a dataset with one snapshot must name it", name)
		}
		for _, a := range d.Atoms {
			if a.SnapshotID != d.SnapshotID {
				t.Errorf("%s/%s: atom snapshot %q, want the dataset's %q", name, a.Name, a.SnapshotID, d.SnapshotID)
			}
		}
	}

	// The catalog keeps them: the atom record of b names b's snapshot.
	found, err := mgr.Find(ctx, metadata.FindRequest{Pattern: "multi/ds/b"})
	if err != nil {
		t.Fatal(err)
	}
	if len(found) != 1 || len(found[0].Datasets[0].Atoms) != 1 || found[0].Datasets[0].Atoms[0] != multi.Atoms[1] {
		t.Fatalf("find multi/ds/b: %+v, want atom %+v", found, multi.Atoms[1])
	}

	// Restore one atom: only it is written, from its own snapshot.
	target := t.TempDir()
	if _, err := mgr.Restore(ctx, RestoreRequest{Pattern: "multi/ds/b", Target: target}); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(target, "multi", "ds")
	if got, err := os.ReadFile(filepath.Join(dir, "b.out")); err != nil || string(got) != "data of b" {
		t.Errorf("restored b: %q, %v; want %q", got, err, "data of b")
	}
	for _, other := range []string{"a.out", "c.out"} {
		if _, err := os.Stat(filepath.Join(dir, other)); err == nil {
			t.Errorf("restoring b also wrote %s", other)
		}
	}

	// A record whose dataset snapshot id is useless still restores: the
	// atoms' ids are what restore reads. It replaces the real record of
	// the same backup, so it agrees with its snapshots (restore checks).
	repo, err := mgr.repos.Get(ctx, rc.Config.DefaultRepository())
	if err != nil {
		t.Fatal(err)
	}
	sid, err := repository.ParseID(multi.Atoms[0].SnapshotID)
	if err != nil {
		t.Fatal(err)
	}
	snap, err := repo.LoadSnapshot(ctx, sid)
	if err != nil {
		t.Fatal(err)
	}
	b := &metadata.Backup{ID: snap.BackupID, Host: snap.Host, Timestamp: snap.Time}
	d := *multi
	d.SnapshotID = "not-a-snapshot-id"
	if err := cat.Store.AddDataset(ctx, b, &d); err != nil {
		t.Fatal(err)
	}
	for _, a := range multi.Atoms {
		var out bytes.Buffer
		if _, err := mgr.Restore(ctx, RestoreRequest{Pattern: "multi/ds/" + a.Name, Stdout: &out}); err != nil {
			t.Fatalf("restore %s from its atom snapshot id: %v", a.Name, err)
		}
		if want := "data of " + a.Name; out.String() != want {
			t.Errorf("restore %s: got %q, want %q", a.Name, out.String(), want)
		}
	}
}

func TestSnapshotIDs(t *testing.T) {
	cases := []struct {
		name string
		d    metadata.Dataset
		want []string
	}{
		{"file: one snapshot on dataset and atoms", metadata.Dataset{SnapshotID: "s1", Atoms: []metadata.Atom{{Name: "a", SnapshotID: "s1"}, {Name: "b", SnapshotID: "s1"}}}, []string{"s1"}},
		{"pipe: one per atom, in atom order", metadata.Dataset{Atoms: []metadata.Atom{{Name: "b", SnapshotID: "s2"}, {Name: "a", SnapshotID: "s1"}}}, []string{"s2", "s1"}},
		{"atoms win over a stale dataset id", metadata.Dataset{SnapshotID: "junk", Atoms: []metadata.Atom{{Name: "a", SnapshotID: "s1"}}}, []string{"s1"}},
		{"old record: comma-joined dataset ids", metadata.Dataset{SnapshotID: "s1, s2", Atoms: []metadata.Atom{{Name: "a"}, {Name: "b"}}}, []string{"s1", "s2"}},
		{"old record without ids names the empty id (restore reports it)", metadata.Dataset{Atoms: []metadata.Atom{{Name: "a"}}}, []string{""}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := SnapshotIDs(&c.d); !slices.Equal(got, c.want) {
				t.Errorf("SnapshotIDs = %q, want %q", got, c.want)
			}
		})
	}
}
