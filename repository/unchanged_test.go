package repository

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/custos-backup/custos/repository/format"
)

// TestUnchangedComparesEveryField: a file of the parent snapshot is
// reused without reading only when type, size, mtime, ctime and inode
// all match and its blobs are still indexed. Each case changes exactly
// one of them (a backup cannot: any write moves ctime too), so dropping
// any one comparison fails its case.
func TestUnchangedComparesEveryField(t *testing.T) {
	ctx := context.Background()
	r, _ := newTestRepo(t, false)
	src := t.TempDir()
	writeFile(t, filepath.Join(src, "f"), randBytes(11, 100<<10), 0o644)
	sn, err := r.Backup(ctx, src, nil, BackupOptions{Dataset: "d", Host: "h"})
	if err != nil {
		t.Fatal(err)
	}
	old, err := findNode(ctx, r, sn.Tree, "f")
	if err != nil {
		t.Fatal(err)
	}
	if old.Inode == 0 || old.CTime == 0 || old.MTime == 0 || len(old.Content) == 0 {
		t.Fatalf("the stored node lacks fields the comparison needs: %+v", old)
	}
	b := &backupState{r: r}
	cases := []struct {
		name      string
		change    func(prev, n *format.Node) // prev: the parent's node; n: the file as stat'ed now
		unchanged bool
	}{
		{"identical", func(_, _ *format.Node) {}, true},
		{"mode and owner do not count", func(_, n *format.Node) { n.Mode ^= 0o111; n.UID++ }, true},
		{"was not a file", func(prev, _ *format.Node) { prev.Type = format.NodeSymlink }, false},
		{"size", func(_, n *format.Node) { n.Size++ }, false},
		{"mtime", func(_, n *format.Node) { n.MTime++ }, false},
		{"ctime", func(_, n *format.Node) { n.CTime++ }, false},
		{"inode", func(_, n *format.Node) { n.Inode++ }, false},
		{"content no longer indexed", func(prev, _ *format.Node) {
			prev.Content = append([]ID{format.HashID([]byte("a blob no index holds"))}, prev.Content...)
		}, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			prev, n := *old, *old
			prev.Content = append([]ID(nil), old.Content...)
			n.Content, n.Digest = nil, ID{}
			tc.change(&prev, &n)
			if got := b.unchanged(&prev, &n); got != tc.unchanged {
				t.Errorf("unchanged = %v, want %v", got, tc.unchanged)
			}
		})
	}
}

// TestChangedSizeSameMTimeIsRead: a file rewritten with another size and
// its mtime put back (as cp -p, rsync -t or a careless tool do) is read
// again, and the snapshot restores its new content.
func TestChangedSizeSameMTimeIsRead(t *testing.T) {
	ctx := context.Background()
	r, _ := newTestRepo(t, false)
	src := t.TempDir()
	p := filepath.Join(src, "f")
	writeFile(t, p, randBytes(21, 64<<10), 0o644)
	mt := time.Date(2020, 1, 2, 3, 4, 5, 6000, time.UTC)
	if err := os.Chtimes(p, mt, mt); err != nil {
		t.Fatal(err)
	}
	opts := BackupOptions{Dataset: "d", Host: "h"}
	if _, err := r.Backup(ctx, src, nil, opts); err != nil {
		t.Fatal(err)
	}
	next := randBytes(22, 80<<10)
	writeFile(t, p, next, 0o644)
	if err := os.Chtimes(p, mt, mt); err != nil {
		t.Fatal(err)
	}
	sn, err := r.Backup(ctx, src, nil, opts)
	if err != nil {
		t.Fatal(err)
	}
	if s := sn.Summary; s.FilesChanged != 1 || s.FilesUnmodified != 0 || s.BytesRead != int64(len(next)) {
		t.Errorf("summary %+v: want the file read again as changed", s)
	}
	var out bytes.Buffer
	if err := r.RestoreFile(ctx, sn, "f", &out); err != nil {
		t.Fatal(err)
	}
	mustEqual(t, out.Bytes(), next, "f")
}
