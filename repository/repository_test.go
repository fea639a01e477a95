package repository

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/custos-backup/custos/repository/backend"
	"github.com/custos-backup/custos/repository/backend/local"
	"github.com/custos-backup/custos/repository/format"
	"golang.org/x/sync/errgroup"
)

func TestInitOpen(t *testing.T) {
	ctx := context.Background()
	for _, kdf := range []string{"scrypt", "argon2id"} {
		t.Run(kdf, func(t *testing.T) {
			be, dir := newBackend(t)
			opts := InitOptions{Password: testPassword, KDF: kdf}
			if kdf == "scrypt" {
				opts.kdfParams = cheapScrypt
			} else {
				opts.kdfParams = cheapKDF
			}
			r, err := Init(ctx, be, opts)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := Init(ctx, be, opts); err == nil {
				t.Fatal("second Init in the same place succeeded")
			}
			r2, err := Open(ctx, be, testPassword)
			if err != nil {
				t.Fatal(err)
			}
			if r2.ID() != r.ID() || len(r.ID()) != 64 || !r2.Encrypted() {
				t.Fatalf("ids %q %q encrypted %v", r.ID(), r2.ID(), r2.Encrypted())
			}
			if r2.cfg.Chunker != format.ChunkerGear || r2.cfg.ChunkerSeed == "" || r2.cfg.ChunkerSeed != r.cfg.ChunkerSeed {
				t.Fatalf("chunker %q, seed %q after Open; created with seed %q", r2.cfg.Chunker, r2.cfg.ChunkerSeed, r.cfg.ChunkerSeed)
			}
			_, err = Open(ctx, be, []byte("wrong"))
			if !errors.Is(err, ErrWrongPassword) {
				t.Fatalf("wrong password: %v", err)
			}
			if strings.Contains(err.Error(), "wrong\"") || strings.Contains(err.Error(), string(testPassword)) {
				t.Fatal("error reveals a password")
			}
			if _, err := Open(ctx, be, nil); !errors.Is(err, ErrWrongPassword) {
				t.Fatalf("no password: %v", err)
			}
			raw, err := os.ReadFile(filepath.Join(dir, "config"))
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Contains(raw, []byte(`"encrypted": true`)) || bytes.Contains(raw, []byte("chunker")) {
				t.Fatalf("encrypted config shows its inner part:\n%s", raw)
			}
			keys, _ := os.ReadDir(filepath.Join(dir, "keys"))
			if len(keys) != 1 {
				t.Fatalf("%d key files", len(keys))
			}
			kb, _ := os.ReadFile(filepath.Join(dir, "keys", keys[0].Name()))
			if !bytes.Contains(kb, []byte(`"kdf": "`+kdf+`"`)) {
				t.Fatalf("key file does not name its kdf:\n%s", kb)
			}
		})
	}
}

func TestOpenNotInitialized(t *testing.T) {
	be, _ := newBackend(t)
	if _, err := Open(context.Background(), be, testPassword); !errors.Is(err, ErrNotInitialized) {
		t.Fatalf("got %v", err)
	}
	if _, err := Init(context.Background(), be, InitOptions{}); err == nil {
		t.Fatal("Init without password of an encrypted repository succeeded")
	}
}

func TestUnencrypted(t *testing.T) {
	ctx := context.Background()
	r, dir := newTestRepo(t, true)
	raw, err := os.ReadFile(filepath.Join(dir, "config"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(raw, []byte(`"encrypted": false`)) || !bytes.Contains(raw, []byte(`"cipher": "none"`)) {
		t.Fatalf("config does not say unencrypted:\n%s", raw)
	}
	if keys, _ := os.ReadDir(filepath.Join(dir, "keys")); len(keys) != 0 {
		t.Fatalf("unencrypted repository has %d key files", len(keys))
	}
	src := t.TempDir()
	text := bytes.Repeat([]byte("plain text that an unencrypted repository stores readably\n"), 2000)
	writeFile(t, filepath.Join(src, "a.txt"), text, 0o644)
	sn, err := r.Backup(ctx, src, nil, BackupOptions{Dataset: "d", Host: "h"})
	if err != nil {
		t.Fatal(err)
	}
	r2, err := Open(ctx, r.Backend(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if r2.Encrypted() {
		t.Fatal("reopened as encrypted")
	}
	var out bytes.Buffer
	if err := r2.RestoreFile(ctx, sn, "a.txt", &out); err != nil {
		t.Fatal(err)
	}
	mustEqual(t, out.Bytes(), text, "a.txt")
	// Unencrypted objects are still checksummed: flipping a snapshot byte
	// is detected.
	snapPath := filepath.Join(dir, "snapshots", sn.ID.String())
	b, _ := os.ReadFile(snapPath)
	b[len(b)/2] ^= 1
	if err := os.WriteFile(snapPath, b, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := r2.LoadSnapshot(ctx, sn.ID); err == nil {
		t.Fatal("damaged snapshot loaded")
	}
}

// makeTree builds a source tree with the awkward cases.
func makeTree(t *testing.T, src string, sparse bool) {
	t.Helper()
	writeFile(t, filepath.Join(src, "empty"), nil, 0o644)
	if err := os.MkdirAll(filepath.Join(src, "emptydir"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(src, "d1", "d2", "d3"), 0o750); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(src, "d1", "d2", "d3", "deep.txt"), []byte("deep\n"), 0o600)
	writeFile(t, filepath.Join(src, "d1", "random.bin"), randBytes(1, 5<<20+12345), 0o640)
	writeFile(t, filepath.Join(src, "d1", "text.log"), bytes.Repeat([]byte("2024-01-01 INFO something happened id=42\n"), 60000), 0o644)
	writeFile(t, filepath.Join(src, "exec.sh"), []byte("#!/bin/sh\necho hi\n"), 0o755)
	odd := []string{"with space", "new\nline", "bad\xff\xfeutf8", strings.Repeat("n", 255), "-dash", "ünïcödé"}
	for i, name := range odd {
		writeFile(t, filepath.Join(src, "odd", name), []byte{byte(i), 'x'}, 0o644)
	}
	if err := os.Symlink("d1/text.log", filepath.Join(src, "link-rel")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("/etc/passwd", filepath.Join(src, "link-abs")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("missing-target", filepath.Join(src, "link-dangling")); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(src, "hard1"), []byte("hard linked content\n"), 0o644)
	if err := os.Link(filepath.Join(src, "hard1"), filepath.Join(src, "d1", "hard2")); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mkfifo(filepath.Join(src, "fifo"), 0o640); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(filepath.Join(src, "d1", "d2"), 0o711); err != nil {
		t.Fatal(err)
	}
	if sparse {
		f, err := os.Create(filepath.Join(src, "sparse.img"))
		if err != nil {
			t.Fatal(err)
		}
		if err := f.Truncate(1 << 30); err != nil {
			t.Fatal(err)
		}
		if _, err := f.WriteAt([]byte("a needle in the middle"), 300<<20+7); err != nil {
			t.Fatal(err)
		}
		if err := f.Close(); err != nil {
			t.Fatal(err)
		}
	}
	// Fixed, distinct mtimes (directories last, since creating entries
	// changes them).
	mt := time.Date(2020, 5, 6, 7, 8, 9, 123456789, time.UTC)
	_ = filepath.Walk(src, func(p string, fi os.FileInfo, err error) error {
		if err == nil && fi.Mode()&os.ModeSymlink == 0 && !fi.IsDir() {
			mt = mt.Add(time.Second)
			_ = os.Chtimes(p, mt, mt)
		}
		return nil
	})
	for _, d := range []string{"d1/d2/d3", "d1/d2", "d1", "emptydir", "odd"} {
		mt = mt.Add(time.Minute)
		_ = os.Chtimes(filepath.Join(src, d), mt, mt)
	}
}

func TestRoundTrip(t *testing.T) {
	ctx := context.Background()
	r, _ := newTestRepo(t, false)
	src := t.TempDir()
	makeTree(t, src, true)
	sn, err := r.Backup(ctx, src, nil, BackupOptions{Dataset: "ds", Host: "host1", Tags: []string{"x"}})
	if err != nil {
		t.Fatal(err)
	}
	if len(sn.Warnings) != 0 {
		t.Fatalf("warnings: %v", sn.Warnings)
	}
	if sn.Summary.Files != 14 || sn.Summary.Dirs != 5 || sn.Summary.FilesNew != 14 {
		t.Errorf("summary %+v", sn.Summary)
	}
	// A 1 GiB sparse file must not cost 1 GiB in the repository.
	if sn.Summary.BytesAdded > 20<<20 {
		t.Errorf("BytesAdded %d", sn.Summary.BytesAdded)
	}

	r2, err := Open(ctx, r.Backend(), testPassword)
	if err != nil {
		t.Fatal(err)
	}
	sn2, err := r2.FindSnapshot(ctx, "latest", "ds", "host1")
	if err != nil || sn2.ID != sn.ID || sn2.Summary != sn.Summary || sn2.Tags[0] != "x" {
		t.Fatalf("FindSnapshot: %v %+v", err, sn2)
	}
	target := filepath.Join(t.TempDir(), "restore")
	st, err := r2.Restore(ctx, sn2, target, RestoreOptions{})
	if err != nil {
		t.Fatal(err)
	}
	// Restore counts every non-directory entry (links, fifo too).
	if st.Files != 18 || st.Dirs != 5 {
		t.Errorf("restore stats %+v", st)
	}
	compareTrees(t, src, target)
	var fst syscall.Stat_t
	if err := syscall.Stat(filepath.Join(target, "sparse.img"), &fst); err != nil {
		t.Fatal(err)
	}
	if fst.Blocks*512 > 64<<20 {
		t.Errorf("sparse file takes %d bytes on disk after restore", fst.Blocks*512)
	}
	f, _ := os.Open(filepath.Join(target, "sparse.img"))
	buf := make([]byte, 30)
	_, _ = f.ReadAt(buf, 300<<20)
	_ = f.Close()
	if !bytes.Equal(buf, append(make([]byte, 7), "a needle in the middle\x00"...)) {
		t.Errorf("sparse content around the needle: %q", buf)
	}
	// RestoreFile streams the same bytes.
	var out bytes.Buffer
	if err := r2.RestoreFile(ctx, sn2, "d1/random.bin", &out); err != nil {
		t.Fatal(err)
	}
	mustEqual(t, out.Bytes(), randBytes(1, 5<<20+12345), "d1/random.bin")
	if err := r2.RestoreFile(ctx, sn2, "d1", &out); err == nil {
		t.Error("RestoreFile of a directory succeeded")
	}
	if err := r2.RestoreFile(ctx, sn2, "nope", &out); err == nil {
		t.Error("RestoreFile of a missing file succeeded")
	}
}

func TestRestoreInclude(t *testing.T) {
	ctx := context.Background()
	r, _ := newTestRepo(t, false)
	src := t.TempDir()
	writeFile(t, filepath.Join(src, "a", "b", "c.txt"), []byte("c"), 0o644)
	writeFile(t, filepath.Join(src, "a", "b", "d.txt"), []byte("d"), 0o644)
	writeFile(t, filepath.Join(src, "a", "e.txt"), []byte("e"), 0o644)
	writeFile(t, filepath.Join(src, "f", "g.txt"), []byte("g"), 0o644)
	sn, err := r.Backup(ctx, src, nil, BackupOptions{Dataset: "d"})
	if err != nil {
		t.Fatal(err)
	}
	target := t.TempDir()
	if _, err := r.Restore(ctx, sn, target, RestoreOptions{Include: []string{"a/b", "f/g.txt"}}); err != nil {
		t.Fatal(err)
	}
	for p, want := range map[string]bool{"a/b/c.txt": true, "a/b/d.txt": true, "a/e.txt": false, "f/g.txt": true} {
		_, err := os.Stat(filepath.Join(target, p))
		if (err == nil) != want {
			t.Errorf("%s: exists=%v, want %v", p, err == nil, want)
		}
	}
	if _, err := r.Restore(ctx, sn, t.TempDir(), RestoreOptions{Include: []string{"nothing/here"}}); err == nil {
		t.Error("include of a missing path succeeded")
	}
}

func TestBackupPathsAndExcludes(t *testing.T) {
	ctx := context.Background()
	r, _ := newTestRepo(t, false)
	src := t.TempDir()
	for _, p := range []string{"keep/a.txt", "keep/skip.tmp", "keep/sub/b.txt", "keep/cache/x", "other/c.txt", "top.txt"} {
		writeFile(t, filepath.Join(src, p), []byte(p), 0o644)
	}
	var last Progress
	calls := 0
	progress := func(p Progress) { last = p; calls++ }
	sn, err := r.Backup(ctx, src, []string{"keep", "top.txt"}, BackupOptions{Dataset: "d", Excludes: []string{"*.tmp", "keep/cache"}, Progress: progress})
	if err != nil {
		t.Fatal(err)
	}
	if calls == 0 || last.Files != 3 || last.Bytes != int64(len("keep/a.txt")+len("keep/sub/b.txt")+len("top.txt")) {
		t.Errorf("progress: %d calls, last %+v", calls, last)
	}
	var got []string
	if err := r.walkTree(ctx, sn.Tree, func(p string, n *format.Node) error { got = append(got, p); return nil }); err != nil {
		t.Fatal(err)
	}
	want := "keep keep/a.txt keep/sub keep/sub/b.txt top.txt"
	if strings.Join(got, " ") != want {
		t.Fatalf("tree %q, want %q", strings.Join(got, " "), want)
	}
	if _, err := r.Backup(ctx, src, []string{"../etc"}, BackupOptions{}); err == nil {
		t.Error("path outside the root accepted")
	}
	if _, err := r.Backup(ctx, src, []string{"missing"}, BackupOptions{}); err == nil {
		t.Error("missing path accepted")
	}
	if _, err := r.Backup(ctx, filepath.Join(src, "top.txt"), nil, BackupOptions{}); err == nil {
		t.Error("a file as root accepted")
	}
}

func TestDedup(t *testing.T) {
	ctx := context.Background()
	r, _ := newTestRepo(t, false)
	src := t.TempDir()
	// Large enough that the chunks the prefix disturbs (at most one
	// max-size chunk and its neighbour) stay well under a third, whatever
	// the random polynomial.
	data := randBytes(7, 48<<20)
	writeFile(t, filepath.Join(src, "one", "data.bin"), data, 0o644)
	sn1, err := r.Backup(ctx, src, []string{"one"}, BackupOptions{Dataset: "d1"})
	if err != nil {
		t.Fatal(err)
	}
	if sn1.Summary.BytesAdded < 48<<20 {
		t.Fatalf("first backup added only %d bytes", sn1.Summary.BytesAdded)
	}
	// The same data under another path, in another dataset (no parent).
	writeFile(t, filepath.Join(src, "two", "copy.bin"), data, 0o644)
	sn2, err := r.Backup(ctx, src, []string{"two"}, BackupOptions{Dataset: "d2"})
	if err != nil {
		t.Fatal(err)
	}
	if sn2.Summary.BytesRead != 48<<20 || sn2.Summary.BytesAdded > 16<<10 {
		t.Fatalf("identical copy: read %d, added %d", sn2.Summary.BytesRead, sn2.Summary.BytesAdded)
	}
	// A copy shifted by an odd prefix shares all but the first chunks.
	shifted := append(randBytes(8, 1001), data...)
	writeFile(t, filepath.Join(src, "three", "shifted.bin"), shifted, 0o644)
	sn3, err := r.Backup(ctx, src, []string{"three"}, BackupOptions{Dataset: "d3"})
	if err != nil {
		t.Fatal(err)
	}
	if sn3.Summary.BytesAdded > int64(len(shifted))/3 {
		t.Fatalf("shifted copy added %d of %d bytes", sn3.Summary.BytesAdded, len(shifted))
	}
	var out bytes.Buffer
	if err := r.RestoreFile(ctx, sn3, "three/shifted.bin", &out); err != nil {
		t.Fatal(err)
	}
	mustEqual(t, out.Bytes(), shifted, "shifted.bin")
}

func TestIncremental(t *testing.T) {
	ctx := context.Background()
	r, _ := newTestRepo(t, false)
	src := t.TempDir()
	makeTree(t, src, false)
	opts := BackupOptions{Dataset: "d", Host: "h"}
	sn1, err := r.Backup(ctx, src, nil, opts)
	if err != nil {
		t.Fatal(err)
	}
	sn2, err := r.Backup(ctx, src, nil, opts)
	if err != nil {
		t.Fatal(err)
	}
	s := sn2.Summary
	if s.BytesRead != 0 || s.FilesUnmodified != s.Files || s.FilesNew != 0 || s.FilesChanged != 0 || s.Bytes != sn1.Summary.Bytes {
		t.Fatalf("no-change backup summary %+v", s)
	}
	if sn2.Parent == nil || *sn2.Parent != sn1.ID || sn2.Tree != sn1.Tree {
		t.Fatalf("parent %v tree %v, want parent %v tree %v", sn2.Parent, sn2.Tree, sn1.ID, sn1.Tree)
	}
	if s.BlobsAdded != 0 {
		t.Fatalf("no-change backup added %d blobs", s.BlobsAdded)
	}
	// Change one file; another dataset has no parent and reads everything.
	changed := []byte("new content of deep.txt\n")
	writeFile(t, filepath.Join(src, "d1", "d2", "d3", "deep.txt"), changed, 0o600)
	sn3, err := r.Backup(ctx, src, nil, opts)
	if err != nil {
		t.Fatal(err)
	}
	s = sn3.Summary
	if s.BytesRead != int64(len(changed)) || s.FilesChanged != 1 || s.FilesUnmodified != s.Files-1 {
		t.Fatalf("one-change backup summary %+v", s)
	}
	sn4, err := r.Backup(ctx, src, nil, BackupOptions{Dataset: "d", Host: "h", NoParent: true})
	if err != nil {
		t.Fatal(err)
	}
	if sn4.Summary.BytesRead != sn4.Summary.Bytes || sn4.Parent != nil || sn4.Tree != sn3.Tree {
		t.Fatalf("NoParent summary %+v parent %v", sn4.Summary, sn4.Parent)
	}
	target := t.TempDir()
	if _, err := r.Restore(ctx, sn3, target, RestoreOptions{}); err != nil {
		t.Fatal(err)
	}
	compareTrees(t, src, target)
	snaps, err := r.Snapshots(ctx)
	if err != nil || len(snaps) != 4 || snaps[0].ID != sn1.ID || snaps[3].ID != sn4.ID {
		t.Fatalf("Snapshots: %v, %d", err, len(snaps))
	}
	if got, err := r.FindSnapshot(ctx, sn2.ID.String()[:10], "", ""); err != nil || got.ID != sn2.ID {
		t.Fatalf("FindSnapshot by prefix: %v", err)
	}
	if _, err := r.FindSnapshot(ctx, "latest", "other", ""); err == nil {
		t.Fatal("FindSnapshot found a snapshot of another dataset")
	}
}

func TestModifiedWhileReading(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name      string
		size      int
		always    bool
		wantWarn  string
		wantFinal bool // the stored content is the file's final content
	}{
		{"small-once", 1000, false, "read again", true},
		{"large-once", 3 << 20, false, "read again", true},
		{"large-always", 3 << 20, true, "stored as read", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, _ := newTestRepo(t, false)
			src := t.TempDir()
			p := filepath.Join(src, "busy.bin")
			writeFile(t, p, randBytes(3, tc.size), 0o644)
			writeFile(t, filepath.Join(src, "calm.txt"), []byte("calm"), 0o644)
			calls := 0
			r.testHookChunk = func(path string, n int) {
				if path != p || n != 0 || (!tc.always && calls > 0) {
					return
				}
				calls++
				// Same size, new bytes, new mtime: only the times betray it.
				b := randBytes(uint64(100+calls), tc.size)
				if err := os.WriteFile(p, b, 0o644); err != nil {
					t.Error(err)
				}
				mt := time.Now().Add(time.Duration(calls) * time.Hour)
				_ = os.Chtimes(p, mt, mt)
			}
			sn, err := r.Backup(ctx, src, nil, BackupOptions{Dataset: "d"})
			if err != nil {
				t.Fatal(err)
			}
			if len(sn.Warnings) != 1 || !strings.Contains(sn.Warnings[0], "busy.bin") || !strings.Contains(sn.Warnings[0], tc.wantWarn) {
				t.Fatalf("warnings %q", sn.Warnings)
			}
			n, err := findNode(ctx, r, sn.Tree, "busy.bin")
			if err != nil {
				t.Fatal(err)
			}
			var out bytes.Buffer
			// RestoreFile checks the stored content against the digest.
			if err := r.RestoreFile(ctx, sn, "busy.bin", &out); err != nil {
				t.Fatal(err)
			}
			if uint64(out.Len()) != n.Size {
				t.Fatalf("restored %d bytes, node says %d", out.Len(), n.Size)
			}
			cur, _ := os.ReadFile(p)
			if tc.wantFinal {
				mustEqual(t, out.Bytes(), cur, "busy.bin")
			} else {
				// Stored as read: the next backup must read it again.
				r.testHookChunk = nil
				sn2, err := r.Backup(ctx, src, nil, BackupOptions{Dataset: "d"})
				if err != nil {
					t.Fatal(err)
				}
				if sn2.Summary.BytesRead != int64(tc.size) || sn2.Summary.FilesChanged != 1 {
					t.Fatalf("next backup summary %+v", sn2.Summary)
				}
			}
		})
	}
}

func TestBackupStream(t *testing.T) {
	ctx := context.Background()
	r, dir := newTestRepo(t, false)
	data := append(randBytes(9, 3<<20), bytes.Repeat([]byte("dump line\n"), 100000)...)
	sn, err := r.BackupStream(ctx, "db.dump", bytes.NewReader(data), BackupOptions{Dataset: "db", Host: "h"})
	if err != nil {
		t.Fatal(err)
	}
	if sn.Summary.Files != 1 || sn.Summary.Bytes != int64(len(data)) || sn.Summary.BytesRead != int64(len(data)) {
		t.Fatalf("summary %+v", sn.Summary)
	}
	var out bytes.Buffer
	if err := r.RestoreFile(ctx, sn, "db.dump", &out); err != nil {
		t.Fatal(err)
	}
	mustEqual(t, out.Bytes(), data, "db.dump")
	target := t.TempDir()
	if _, err := r.Restore(ctx, sn, target, RestoreOptions{}); err != nil {
		t.Fatal(err)
	}
	got, _ := os.ReadFile(filepath.Join(target, "db.dump"))
	mustEqual(t, got, data, "restored db.dump")

	count := func(sub string) int {
		var n int
		_ = filepath.Walk(filepath.Join(dir, sub), func(_ string, fi os.FileInfo, _ error) error {
			if fi != nil && fi.Mode().IsRegular() {
				n++
			}
			return nil
		})
		return n
	}
	snaps, idx := count("snapshots"), count("index")
	boom := errors.New("pg_dump exited 1")
	rd := io.MultiReader(bytes.NewReader(randBytes(10, 6<<20)), &failingReader{err: boom})
	_, err = r.BackupStream(ctx, "bad.dump", rd, BackupOptions{Dataset: "db", Host: "h"})
	if !errors.Is(err, boom) {
		t.Fatalf("failing reader: %v", err)
	}
	if count("snapshots") != snaps || count("index") != idx {
		t.Fatal("a failed stream backup recorded a snapshot or an index")
	}
	if count("locks") != 0 {
		t.Fatal("lock left behind")
	}
	if _, err := r.BackupStream(ctx, "../x", bytes.NewReader(nil), BackupOptions{}); err == nil {
		t.Fatal("stream name with a slash accepted")
	}
}

func TestWrongPasswordAfterUse(t *testing.T) {
	ctx := context.Background()
	r, _ := newTestRepo(t, false)
	if _, err := r.BackupStream(ctx, "x", strings.NewReader("x"), BackupOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(ctx, r.Backend(), append([]byte{}, testPassword[:len(testPassword)-1]...)); !errors.Is(err, ErrWrongPassword) {
		t.Fatalf("got %v", err)
	}
}

func TestLocks(t *testing.T) {
	ctx := context.Background()
	r, _ := newTestRepo(t, false)
	s1, err := r.Lock(ctx, false)
	if err != nil {
		t.Fatal(err)
	}
	s2, err := r.Lock(ctx, false)
	if err != nil {
		t.Fatal("two shared locks:", err)
	}
	if _, err := r.Lock(ctx, true); !errors.Is(err, ErrLocked) {
		t.Fatalf("exclusive while shared held: %v", err)
	}
	_ = s1.Unlock(ctx)
	_ = s2.Unlock(ctx)
	x, err := r.Lock(ctx, true)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.Lock(ctx, false); !errors.Is(err, ErrLocked) {
		t.Fatalf("shared while exclusive held: %v", err)
	}
	if _, err := r.BackupStream(ctx, "x", strings.NewReader("x"), BackupOptions{}); !errors.Is(err, ErrLocked) {
		t.Fatalf("backup while exclusive held: %v", err)
	}
	_ = x.Unlock(ctx)

	// A stale lock (not refreshed for too long) does not block, and
	// RemoveStaleLocks clears it.
	old := time.Now().Add(-2 * LockStaleAfter)
	b, _ := json.Marshal(lockInfo{Version: 1, Exclusive: true, Created: old, Refreshed: old, Hostname: "gone", PID: 1})
	if err := saveBytes(ctx, r.be, backend.Handle{Type: backend.LockFile, Name: "stale"}, r.seal.Seal(nil, b)); err != nil {
		t.Fatal(err)
	}
	x, err = r.Lock(ctx, true)
	if err != nil {
		t.Fatal("stale lock blocks:", err)
	}
	_ = x.Unlock(ctx)
	if n, err := r.RemoveStaleLocks(ctx); err != nil || n != 1 {
		t.Fatalf("RemoveStaleLocks: %d %v", n, err)
	}
	if locks, err := r.listLocks(ctx); err != nil || len(locks) != 0 {
		t.Fatalf("locks left after RemoveStaleLocks: %v %v", locks, err)
	}

	// Refresh rewrites the lock file.
	l, err := r.lock(ctx, false, 20*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = l.Unlock(ctx) }()
	l.mu.Lock()
	first := l.info.Refreshed
	l.mu.Unlock()
	deadline := time.Now().Add(10 * time.Second)
	for {
		locks, err := r.listLocks(ctx)
		if err != nil || len(locks) != 1 || locks[0].Info == nil {
			t.Fatalf("locks %v %v", locks, err)
		}
		if locks[0].Info.Refreshed.After(first) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("lock never refreshed")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := l.Valid(); err != nil {
		t.Fatal(err)
	}
}

func TestRestoreNeverEscapes(t *testing.T) {
	ctx := context.Background()
	for _, name := range []string{"..", ".", "", "/etc/x", "a/../../x", "../outside"} {
		t.Run(strings.ReplaceAll(name, "/", "_"), func(t *testing.T) {
			r, _ := newTestRepo(t, false)
			base := t.TempDir()
			target := filepath.Join(base, "target")
			content := []byte("evil")
			evil := format.Node{Name: name, Type: format.NodeFile, Mode: 0o644, Size: uint64(len(content)), Digest: format.HashID(content), Content: []ID{format.HashID(content)}}
			sn := saveRawTree(t, r, []format.Node{evil}, content)
			_, err := r.Restore(ctx, sn, target, RestoreOptions{})
			if err == nil {
				t.Fatal("restore of a tree with a hostile name succeeded")
			}
			entries, _ := os.ReadDir(base)
			if len(entries) != 1 || entries[0].Name() != "target" {
				t.Fatalf("something was written beside the target: %v", entries)
			}
			if left, _ := os.ReadDir(target); len(left) != 0 {
				t.Fatalf("target holds %v", left)
			}
			if err := r.RestoreFile(ctx, sn, name, &bytes.Buffer{}); err == nil {
				t.Fatal("RestoreFile of a hostile tree succeeded")
			}
		})
	}
	// A symlink pointing outside is restored as a link, but a later restore
	// never writes through it.
	r, _ := newTestRepo(t, false)
	base := t.TempDir()
	outside := filepath.Join(base, "outside")
	if err := os.Mkdir(outside, 0o755); err != nil {
		t.Fatal(err)
	}
	target := filepath.Join(base, "target")
	sn := saveRawTree(t, r, []format.Node{{Name: "d", Type: format.NodeSymlink, Mode: 0o777, LinkTarget: outside}}, nil)
	if _, err := r.Restore(ctx, sn, target, RestoreOptions{}); err != nil {
		t.Fatal(err)
	}
	content := []byte("x")
	sub := saveRawTree(t, r, []format.Node{{Name: "x", Type: format.NodeFile, Mode: 0o644, Size: 1, Digest: format.HashID(content), Content: []ID{format.HashID(content)}}}, content)
	sn2 := saveRawTree(t, r, []format.Node{{Name: "d", Type: format.NodeDir, Mode: 0o755, Subtree: sub.Tree}}, nil)
	if _, err := r.Restore(ctx, sn2, target, RestoreOptions{}); err == nil {
		t.Fatal("restore through a symlink succeeded")
	}
	if left, _ := os.ReadDir(outside); len(left) != 0 {
		t.Fatalf("written outside the target: %v", left)
	}
}

// saveRawTree stores nodes as a tree with the raw encoder (no validation),
// plus data as one data blob, and a snapshot pointing at it.
func saveRawTree(t *testing.T, r *Repository, nodes []format.Node, data []byte) *Snapshot {
	t.Helper()
	ctx := context.Background()
	g, gctx := errgroup.WithContext(ctx)
	s := r.newBlobSaver(gctx, g, &bufPool{})
	if data != nil {
		if _, err := s.saveCopy(DataBlob, data); err != nil {
			t.Fatal(err)
		}
	}
	id, err := s.saveCopy(TreeBlob, format.EncodeTree(&format.Tree{Nodes: nodes}))
	if err != nil {
		t.Fatal(err)
	}
	packs, err := s.flush()
	if err != nil {
		t.Fatal(err)
	}
	if err := g.Wait(); err != nil {
		t.Fatal(err)
	}
	if err := r.commitPacks(ctx, packs); err != nil {
		t.Fatal(err)
	}
	sn := &Snapshot{Time: time.Now(), Tree: id}
	if err := r.saveSnapshot(ctx, sn); err != nil {
		t.Fatal(err)
	}
	return sn
}

func TestDamagedBlob(t *testing.T) {
	ctx := context.Background()
	r, dir := newTestRepo(t, false)
	src := t.TempDir()
	good := randBytes(20, 3<<20)
	bad := randBytes(21, 100<<10)
	writeFile(t, filepath.Join(src, "good.bin"), good, 0o644)
	writeFile(t, filepath.Join(src, "bad.bin"), bad, 0o644)
	sn, err := r.Backup(ctx, src, nil, BackupOptions{})
	if err != nil {
		t.Fatal(err)
	}
	badID := format.HashID(bad)
	pack, pb, ok := r.index().Lookup(format.DataHandle(badID))
	if !ok {
		t.Fatal("bad.bin's blob not in index")
	}
	pp := filepath.Join(dir, backend.Handle{Type: backend.PackFile, Name: pack.String()}.Path())
	pf, err := os.OpenFile(pp, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	one := []byte{0}
	_, _ = pf.ReadAt(one, int64(pb.Offset)+int64(pb.Length)/2)
	one[0] ^= 0x40
	_, _ = pf.WriteAt(one, int64(pb.Offset)+int64(pb.Length)/2)
	_ = pf.Close()

	target := t.TempDir()
	_, err = r.Restore(ctx, sn, target, RestoreOptions{})
	if err == nil {
		t.Fatal("restore of a damaged blob succeeded")
	}
	var be *BlobError
	if !errors.As(err, &be) || be.Blob != badID || be.Pack != pack {
		t.Fatalf("error does not carry the blob and pack: %v", err)
	}
	if !strings.Contains(err.Error(), "bad.bin") || !strings.Contains(err.Error(), pack.String()) {
		t.Fatalf("error does not name the file and pack: %v", err)
	}
	if strings.Contains(err.Error(), "good.bin") {
		t.Fatalf("error blames good.bin: %v", err)
	}
	got, _ := os.ReadFile(filepath.Join(target, "good.bin"))
	mustEqual(t, got, good, "good.bin")
	if err := r.RestoreFile(ctx, sn, "bad.bin", &bytes.Buffer{}); err == nil {
		t.Fatal("RestoreFile of a damaged blob succeeded")
	}
}

func TestLocalBackendReopen(t *testing.T) {
	// The repository works through a freshly opened backend too.
	ctx := context.Background()
	r, dir := newTestRepo(t, false)
	if _, err := r.BackupStream(ctx, "f", strings.NewReader("hello"), BackupOptions{Dataset: "x"}); err != nil {
		t.Fatal(err)
	}
	be, err := local.Open(ctx, dir)
	if err != nil {
		t.Fatal(err)
	}
	r2, err := Open(ctx, be, testPassword)
	if err != nil {
		t.Fatal(err)
	}
	sn, err := r2.FindSnapshot(ctx, "latest", "x", "")
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if err := r2.RestoreFile(ctx, sn, "f", &out); err != nil || out.String() != "hello" {
		t.Fatalf("%v %q", err, out.String())
	}
}

type failingReader struct{ err error }

func (f *failingReader) Read([]byte) (int, error) { return 0, f.err }

// TestStaleIndexRefreshed: a Repository opened before another process
// backed up and replaced the index must not dedup against its old view.
func TestStaleIndexRefreshed(t *testing.T) {
	ctx := context.Background()
	r1, _ := newTestRepo(t, false)
	// Below the chunker's minimum size, so that the file is exactly one
	// blob (hashID(data)) whatever the repository's random polynomial.
	data := randBytes(30, 240<<10)
	src := t.TempDir()
	writeFile(t, filepath.Join(src, "f.bin"), data, 0o644)
	if _, err := r1.Backup(ctx, src, nil, BackupOptions{Dataset: "a"}); err != nil {
		t.Fatal(err)
	}
	// A second handle (another process) learns of r1's index only by
	// refreshing; its restore must see the new snapshot's blobs.
	r2, err := Open(ctx, r1.Backend(), testPassword)
	if err != nil {
		t.Fatal(err)
	}
	src2 := t.TempDir()
	other := randBytes(31, 200<<10)
	writeFile(t, filepath.Join(src2, "g.bin"), other, 0o644)
	sn, err := r1.Backup(ctx, src2, nil, BackupOptions{Dataset: "b"})
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if err := r2.RestoreFile(ctx, sn, "g.bin", &out); err != nil {
		t.Fatal("stale handle cannot restore a newer snapshot:", err)
	}
	mustEqual(t, out.Bytes(), other, "g.bin")
	// Simulate prune replacing the index and dropping f.bin's pack: r1's
	// next backup of the same data must store it again.
	x := r1.index()
	fpack, _, ok := x.Lookup(format.DataHandle(format.HashID(data)))
	if !ok {
		t.Fatal("f.bin is not one blob in the index")
	}
	var keep []format.IndexPack
	err = r1.forEachIndexFile(ctx, false, func(id ID, f *format.IndexFile) error {
		for _, p := range f.Packs {
			if p.ID != fpack {
				keep = append(keep, p)
			}
		}
		return r1.be.Remove(ctx, backend.Handle{Type: backend.IndexFile, Name: id.String()})
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r1.saveIndexFile(ctx, &format.IndexFile{Packs: keep}); err != nil {
		t.Fatal(err)
	}
	if err := r1.be.Remove(ctx, backend.Handle{Type: backend.PackFile, Name: fpack.String()}); err != nil {
		t.Fatal(err)
	}
	sn3, err := r2.Backup(ctx, src, nil, BackupOptions{Dataset: "c"})
	if err != nil {
		t.Fatal(err)
	}
	// The data blob must have been stored again (the tree blob may sit in
	// another, surviving pack: backups fill several packs at once).
	if pack, _, ok := r2.index().Lookup(format.DataHandle(format.HashID(data))); !ok || pack == fpack || sn3.Summary.BlobsAdded < 1 {
		t.Fatalf("backup after the index changed added %d blobs, f.bin in pack %s (deleted: %s); it deduplicated against a deleted pack", sn3.Summary.BlobsAdded, pack.Short(), fpack.Short())
	}
	out.Reset()
	if err := r1.RestoreFile(ctx, sn3, "f.bin", &out); err != nil {
		t.Fatal(err)
	}
	mustEqual(t, out.Bytes(), data, "f.bin")
}
