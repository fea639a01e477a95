package repository

import (
	"context"
	"errors"
	"testing"

	"github.com/custos-backup/custos/repository/backend"
	"github.com/custos-backup/custos/repository/backend/backendtest"
	"github.com/custos-backup/custos/repository/format"
)

// TestBackupCommitsAsItGoes: a backup writes index files for its durable
// packs while it runs (every commitEvery blobs), each after the packs it
// lists and all before the snapshot; what it commits is restorable and
// checks clean; and a backup that fails at its snapshot leaves indexed
// blobs that the next backup does not store again.
func TestBackupCommitsAsItGoes(t *testing.T) {
	ctx := context.Background()
	be, _ := newBackend(t)
	fb := backendtest.NewFaulty(be)
	r, err := Init(ctx, fb, InitOptions{Password: testPassword, kdfParams: cheapKDF, PackSize: format.MinPackSize})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = r.Close() })
	r.commitEvery = 20
	src := t.TempDir()
	writeRandomFiles(t, src, "f", 200, 64<<10, 7)

	sn, err := r.Backup(ctx, src, nil, BackupOptions{Dataset: "d", Host: "h"})
	if err != nil {
		t.Fatal(err)
	}
	packsSaved := map[string]bool{}
	var indexSaves int
	snapshotSeen := false
	for _, c := range fb.Calls() {
		if c.Op != backendtest.OpSave || c.Err != nil {
			continue
		}
		switch c.Handle.Type {
		case backend.PackFile:
			if snapshotSeen {
				t.Errorf("pack %s saved after the snapshot", c.Handle.Name)
			}
			packsSaved[c.Handle.Name] = true
		case backend.IndexFile:
			indexSaves++
			if snapshotSeen {
				t.Errorf("index file %s saved after the snapshot", c.Handle.Name)
			}
		case backend.SnapshotFile:
			snapshotSeen = true
		}
	}
	if indexSaves < 3 {
		t.Fatalf("%d index files for %d packs with commitEvery 20: the backup did not commit as it went", indexSaves, len(packsSaved))
	}
	// Every pack an index file lists was saved before that index file.
	err = r.forEachIndexFile(ctx, false, func(id ID, f *format.IndexFile) error {
		for _, p := range f.Packs {
			if !packsSaved[p.ID.String()] {
				t.Errorf("index file %s lists pack %s, which this backup did not save", id.Short(), p.ID.Short())
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	restoreAndCompare(t, r, sn, src, nil)
	mustCheckClean(t, r, true)

	// A backup of new data that fails at its snapshot: the blobs it
	// committed on the way are indexed, check stays clean, and the next
	// backup of the same data finds them.
	more := t.TempDir()
	writeRandomFiles(t, more, "g", 200, 64<<10, 8)
	fb.Add(&backendtest.Rule{Op: backendtest.OpSave, Type: backend.SnapshotFile, Times: 1, Before: backendtest.Fail("disk full")})
	if _, err := r.Backup(ctx, more, nil, BackupOptions{Dataset: "m", Host: "h"}); !errors.Is(err, backendtest.ErrInjected) {
		t.Fatalf("backup whose snapshot save fails: %v", err)
	}
	mustCheckClean(t, r, true)
	sn2, err := r.Backup(ctx, more, nil, BackupOptions{Dataset: "m", Host: "h"})
	if err != nil {
		t.Fatal(err)
	}
	if sn2.Summary.BytesAdded > 4<<20 {
		t.Errorf("the backup after the failed one stored %d bytes again of 12.5 MiB committed before", sn2.Summary.BytesAdded)
	}
	restoreAndCompare(t, r, sn2, more, nil)
}
