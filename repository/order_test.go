package repository

import (
	"bytes"
	"context"
	"errors"
	"path/filepath"
	"strings"
	"testing"

	"github.com/custos-backup/custos/repository/backend"
	"github.com/custos-backup/custos/repository/backend/backendtest"
	"github.com/custos-backup/custos/repository/format"
)

// newFaultyRepo initialises a repository on a real local backend wrapped
// in a fault injector.
func newFaultyRepo(t *testing.T) (*Repository, *backendtest.Faulty) {
	t.Helper()
	be, _ := newBackend(t)
	f := backendtest.NewFaulty(be)
	r, err := Init(context.Background(), f, InitOptions{Password: testPassword, kdfParams: cheapKDF, PackSize: format.MinPackSize})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = r.Close() })
	return r, f
}

// orderCases are the two writers of new data: a backup of a folder and a
// stream backup.
func orderCases(t *testing.T) []struct {
	name   string
	backup func(ctx context.Context, r *Repository) (*Snapshot, error)
} {
	src := t.TempDir()
	writeTreeOfFiles(t, src, 6, 2, 200<<10, 3)
	stream := randBytes(7, 3<<20)
	return []struct {
		name   string
		backup func(ctx context.Context, r *Repository) (*Snapshot, error)
	}{
		{"Backup", func(ctx context.Context, r *Repository) (*Snapshot, error) {
			return r.Backup(ctx, src, nil, BackupOptions{Dataset: "s/d", Host: "h"})
		}},
		{"BackupStream", func(ctx context.Context, r *Repository) (*Snapshot, error) {
			return r.BackupStream(ctx, "dump", bytes.NewReader(stream), BackupOptions{Dataset: "s/d", Host: "h"})
		}},
	}
}

// TestIndexBeforeSnapshot: backup and stream backup write every index file
// before the snapshot. With the index save failing, the backup fails,
// saying so, and no snapshot exists (a snapshot whose blobs are in no
// index is unrestorable); when it succeeds, the snapshot is the last
// object written after all pack and index saves.
func TestIndexBeforeSnapshot(t *testing.T) {
	for _, tc := range orderCases(t) {
		t.Run(tc.name+" with the index save failing", func(t *testing.T) {
			ctx := context.Background()
			r, f := newFaultyRepo(t)
			f.Add(&backendtest.Rule{Op: backendtest.OpSave, Type: backend.IndexFile, Before: backendtest.Fail("no space left on device")})
			sn, err := tc.backup(ctx, r)
			if err == nil {
				t.Fatalf("backup succeeded (snapshot %s) although no index file could be saved", sn.ID.Short())
			}
			if !errors.Is(err, backendtest.ErrInjected) || !strings.Contains(err.Error(), "index/") {
				t.Errorf("error %q does not name the index file whose save failed", err)
			}
			var snaps []string
			if err := f.Backend.List(ctx, backend.SnapshotFile, func(fi backend.FileInfo) error {
				snaps = append(snaps, fi.Name)
				return nil
			}); err != nil {
				t.Fatal(err)
			}
			if len(snaps) != 0 {
				t.Errorf("snapshots %v exist although their index was never written", snaps)
			}
			for _, c := range f.Calls() {
				if c.Op == backendtest.OpSave && c.Handle.Type == backend.SnapshotFile {
					t.Errorf("snapshot %s was saved (%v)", c.Handle.Name, c.Err)
				}
			}
		})
		t.Run(tc.name+" order", func(t *testing.T) {
			ctx := context.Background()
			r, f := newFaultyRepo(t)
			f.Reset()
			sn, err := tc.backup(ctx, r)
			if err != nil {
				t.Fatal(err)
			}
			last := map[backend.FileType]int{}
			first := map[backend.FileType]int{}
			for i, c := range f.Calls() {
				if c.Op != backendtest.OpSave || c.Err != nil {
					continue
				}
				if _, ok := first[c.Handle.Type]; !ok {
					first[c.Handle.Type] = i
				}
				last[c.Handle.Type] = i
			}
			snapAt, ok := first[backend.SnapshotFile]
			if !ok {
				t.Fatalf("snapshot %s was never saved through the backend", sn.ID.Short())
			}
			for _, typ := range []backend.FileType{backend.PackFile, backend.IndexFile} {
				if at, ok := last[typ]; !ok || at > snapAt {
					t.Errorf("last %s save at call %d (seen %v), after the snapshot's at %d", typ, at, ok, snapAt)
				}
			}
			// And what was written restores.
			if _, err := r.Restore(ctx, sn, filepath.Join(t.TempDir(), "out"), RestoreOptions{}); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestParentFoundBesideIndexRefresh: a backup, with the lock held, lists
// the snapshots (to find its parent) while it lists the index files, not
// after: on remote storage that is a round trip less for every backup.
func TestParentFoundBesideIndexRefresh(t *testing.T) {
	for _, tc := range orderCases(t) {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			r, f := newFaultyRepo(t)
			first, err := tc.backup(ctx, r)
			if err != nil {
				t.Fatal(err)
			}
			// The two listings overlap.
			both := together(2)
			f.Add(&backendtest.Rule{Op: backendtest.OpList, Type: backend.IndexFile, Times: 1, Before: both})
			f.Add(&backendtest.Rule{Op: backendtest.OpList, Type: backend.SnapshotFile, Times: 1, Before: both})
			sn, err := tc.backup(ctx, r)
			if err != nil {
				t.Fatal(err)
			}
			if sn.Parent == nil || *sn.Parent != first.ID {
				t.Errorf("parent %v, want %s", sn.Parent, first.ID.Short())
			}
		})
	}
}
