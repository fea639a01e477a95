package repository

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/custos-backup/custos/repository/backend"
	"github.com/custos-backup/custos/repository/format"
)

// TestRestoreDamagedTree damages one directory's tree blob inside its pack
// and checks that a full restore writes everything that does not depend
// on it byte-exact, and fails naming the tree, its pack and the lost
// directory.
func TestRestoreDamagedTree(t *testing.T) {
	tests := []struct {
		name   string
		victim string // directory whose tree is damaged
	}{
		{"top-level directory", "lost"},
		{"nested directory", "keep2/lost"},
		{"directory with subdirectories", "keep2"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			r, dir := newSmallPackRepo(t, "pw")
			src := t.TempDir()
			for i, p := range []string{"top.bin", "keep1/a.bin", "keep1/sub/b.bin", "lost/c.bin", "lost/sub/d.bin",
				"keep2/e.bin", "keep2/lost/f.bin", "keep2/z/g.bin", "zzz/h.bin"} {
				writeFile(t, filepath.Join(src, p), randBytes(uint64(100+i), 20<<10+i*777), 0o640)
			}
			sn := backupDir(t, r, src, "d")

			// Find the victim's tree and damage one byte in its middle.
			treeID := sn.Tree
			for _, el := range strings.Split(tc.victim, "/") {
				tr, err := r.loadTree(ctx, treeID)
				if err != nil {
					t.Fatal(err)
				}
				treeID = tr.Find(el).Subtree
			}
			pack, pb, ok := r.index().Lookup(format.TreeHandle(treeID))
			if !ok {
				t.Fatal("victim tree not indexed")
			}
			object := filepath.Join(dir, backend.Handle{Type: backend.PackFile, Name: pack.String()}.Path())
			b, err := os.ReadFile(object)
			if err != nil {
				t.Fatal(err)
			}
			b[int64(pb.Offset)+int64(pb.Length)/2] ^= 0x20
			if err := os.Remove(object); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(object, b, 0o644); err != nil {
				t.Fatal(err)
			}

			r = reopen(t, dir, "pw")
			target := t.TempDir()
			st, err := r.Restore(ctx, sn, target, RestoreOptions{})
			var te *TreeError
			if !errors.As(err, &te) {
				t.Fatalf("restore with a damaged tree: err %v, want a *TreeError", err)
			}
			if te.Tree != treeID || te.Path != tc.victim {
				t.Errorf("TreeError names tree %s of %q, want %s of %q", te.Tree, te.Path, treeID, tc.victim)
			}
			var be *BlobError
			if !errors.As(err, &be) || be.Blob != treeID || be.Pack != pack {
				t.Errorf("error does not carry the tree blob and its pack: %v", err)
			}
			msg := err.Error()
			for _, want := range []string{treeID.String(), pack.String(), `"` + tc.victim + `"`} {
				if !strings.Contains(msg, want) {
					t.Errorf("error does not name %s: %v", want, err)
				}
			}
			if n := strings.Count(msg, "is damaged"); n != 1 {
				t.Errorf("error reports %d damaged trees, want 1: %v", n, err)
			}
			compareTree(t, src, target, tc.victim)
			if left, err := os.ReadDir(filepath.Join(target, tc.victim)); err != nil || len(left) != 0 {
				t.Errorf("lost directory %s holds %v (err %v), want it empty", tc.victim, left, err)
			}
			if st == nil || st.Files == 0 {
				t.Errorf("stats %+v, want the restored files counted", st)
			}
			// The damaged root tree leaves nothing to restore.
			bad := *sn
			bad.Tree = treeID
			if _, err := r.Restore(ctx, &bad, t.TempDir(), RestoreOptions{}); !errors.As(err, &te) || te.Path != "" {
				t.Errorf("restore from a damaged root tree: %v, want a TreeError for the root", err)
			}
		})
	}
}

// TestRestoreModesAndOverwrite restores files with modes that the umask
// would change, setuid/setgid/sticky bits, read-only files and empty
// files, twice into the same target (the second time over the first
// restore, with one file replaced by a symlink and one by a directory
// that must stay an error).
func TestRestoreModesAndOverwrite(t *testing.T) {
	ctx := context.Background()
	r, _ := newTestRepo(t, false)
	src := t.TempDir()
	files := []struct {
		name string
		mode os.FileMode
		size int
	}{
		{"plain", 0o644, 1000},
		{"group-writable", 0o664, 2000},
		{"world-writable", 0o666, 10},
		{"read-only", 0o400, 3000},
		{"no-perms", 0o000, 50},
		{"setuid", 0o755 | os.ModeSetuid, 100},
		{"setgid", 0o750 | os.ModeSetgid, 100},
		{"sticky", 0o644 | os.ModeSticky, 100},
		{"empty", 0o600, 0},
		{"sub/big", 0o640, 3 << 20},
	}
	for i, f := range files {
		writeFile(t, filepath.Join(src, f.name), randBytes(uint64(i), f.size), f.mode)
	}
	old := syscall.Umask(0o077) // restores must not depend on the umask
	defer syscall.Umask(old)
	sn, err := r.Backup(ctx, src, nil, BackupOptions{})
	if err != nil {
		t.Fatal(err)
	}
	target := t.TempDir()
	if _, err := r.Restore(ctx, sn, target, RestoreOptions{}); err != nil {
		t.Fatal(err)
	}
	compareTrees(t, src, target)

	// Again over the restore: stale content and a symlink in the way.
	if err := os.WriteFile(filepath.Join(target, "plain"), []byte("stale and longer than before"), 0o600); err != nil && os.Geteuid() == 0 {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(target, "group-writable")); err != nil {
		t.Fatal(err)
	}
	outside := filepath.Join(t.TempDir(), "outside")
	if err := os.Symlink(outside, filepath.Join(target, "group-writable")); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Restore(ctx, sn, target, RestoreOptions{}); err != nil {
		t.Fatal(err)
	}
	compareTrees(t, src, target)
	if _, err := os.Lstat(outside); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("restore wrote through a symlink: %v", err)
	}

	// A directory where a file belongs is not removed; the file fails.
	if err := os.Remove(filepath.Join(target, "empty")); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(target, "empty"), 0o755); err != nil {
		t.Fatal(err)
	}
	_, err = r.Restore(ctx, sn, target, RestoreOptions{})
	if err == nil || !strings.Contains(err.Error(), `"empty"`) {
		t.Errorf("restore over a directory in the way: %v, want an error naming it", err)
	}
}

// BenchmarkRestoreSmallFiles restores 2,000 small files in 50 directories,
// the shape where per-file kernel work dominates.
func BenchmarkRestoreSmallFiles(b *testing.B) {
	ctx := context.Background()
	r, _ := newTestRepo(b, false)
	src := b.TempDir()
	var total int64
	for i := range 2000 {
		data := randBytes(uint64(i), 1<<10+i*16)
		total += int64(len(data))
		writeFile(b, filepath.Join(src, "d"+strconv.Itoa(i%50), "f"+strconv.Itoa(i)), data, 0o644)
	}
	sn, err := r.Backup(ctx, src, nil, BackupOptions{})
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(total)
	b.ResetTimer()
	for range b.N {
		b.StopTimer()
		target := filepath.Join(b.TempDir(), "t")
		b.StartTimer()
		if _, err := r.Restore(ctx, sn, target, RestoreOptions{}); err != nil {
			b.Fatal(err)
		}
	}
}
