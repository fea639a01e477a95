package repository

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestRestoreDirsOfALevelWhileTreesLoad: restore creates each level's
// directories while that level's trees load. A directory that cannot be
// created (a symlink is in its place in the target, at two depths) is
// named in the error and not entered (nothing is written through the
// symlink); every other file is restored byte-exact, and the directories'
// times are restored after their contents.
func TestRestoreDirsOfALevelWhileTreesLoad(t *testing.T) {
	ctx := context.Background()
	r, _ := newTestRepo(t, false)
	src := filepath.Join(t.TempDir(), "src")
	nestedTree(t, src, 3, 3)
	sn, err := r.Backup(ctx, src, nil, BackupOptions{})
	if err != nil {
		t.Fatal(err)
	}
	// A clean restore first, with the trees read by level.
	target := filepath.Join(t.TempDir(), "out")
	if _, err := r.Restore(ctx, sn, target, RestoreOptions{}); err != nil {
		t.Fatal(err)
	}
	compareTrees(t, src, target)

	target = filepath.Join(t.TempDir(), "out")
	outside := t.TempDir()
	blocked := []string{"d1", "d2/d0"}
	for _, b := range blocked {
		if err := os.MkdirAll(filepath.Dir(filepath.Join(target, b)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(outside, filepath.Join(target, b)); err != nil {
			t.Fatal(err)
		}
	}
	_, err = r.Restore(ctx, sn, target, RestoreOptions{})
	if err == nil {
		t.Fatal("restore through symlinks in the target succeeded")
	}
	for _, b := range blocked {
		if !strings.Contains(err.Error(), `"`+b+`" is a symbolic link`) {
			t.Errorf("restore error does not name %s: %v", b, err)
		}
	}
	if entries, _ := os.ReadDir(outside); len(entries) > 0 {
		t.Errorf("restore wrote through a symlink: %d entries in its target", len(entries))
	}
	n := 0
	err = filepath.Walk(src, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		for _, b := range blocked {
			if rel == b {
				return filepath.SkipDir
			}
		}
		if !fi.Mode().IsRegular() {
			return nil
		}
		want, _ := os.ReadFile(p)
		got, gerr := os.ReadFile(filepath.Join(target, rel))
		if gerr != nil || !bytes.Equal(got, want) {
			t.Errorf("%s not restored byte-exact (err %v)", rel, gerr)
		}
		n++
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if n < 20 {
		t.Fatalf("only %d files outside the blocked directories: the tree is too small to tell", n)
	}
	// The directories below a blocked one were not made elsewhere either.
	if _, err := os.Lstat(filepath.Join(target, "d2", "d0", "d0")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a directory below a blocked one exists: %v", err)
	}
}
