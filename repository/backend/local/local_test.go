package local_test

import (
	"bytes"
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/custos-backup/custos/repository/backend"
	"github.com/custos-backup/custos/repository/backend/backendtest"
	"github.com/custos-backup/custos/repository/backend/local"
)

func newLocal(t *testing.T) *local.Backend {
	t.Helper()
	be, err := local.Create(context.Background(), filepath.Join(t.TempDir(), "repo"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = be.Close() })
	return be
}

func TestConformance(t *testing.T) {
	backendtest.Run(t, func(t *testing.T) backend.Backend { return newLocal(t) })
}

func TestCreateLayout(t *testing.T) {
	be := newLocal(t)
	for _, dir := range []string{"keys", "data", "index", "snapshots", "locks"} {
		fi, err := os.Stat(filepath.Join(be.Dir(), dir))
		if err != nil {
			t.Fatalf("layout folder %s: %v", dir, err)
		}
		if !fi.IsDir() || fi.Mode().Perm() != 0o700 {
			t.Errorf("layout folder %s: mode %v, want a 0700 directory", dir, fi.Mode())
		}
	}
	if _, err := os.Stat(filepath.Join(be.Dir(), "config")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Create made a config file: %v", err)
	}
	// Fan-out folders appear only when needed.
	entries, err := os.ReadDir(filepath.Join(be.Dir(), "data"))
	if err != nil || len(entries) != 0 {
		t.Fatalf("data/ after Create = %v, %v; want empty", entries, err)
	}
	if want := "local:" + filepath.ToSlash(be.Dir()); be.Location() != want {
		t.Errorf("Location() = %q, want %q", be.Location(), want)
	}
	// Create on an existing repository keeps its objects.
	h := backend.Handle{Type: backend.KeyFile, Name: "k1"}
	if err := be.Save(context.Background(), h, strings.NewReader("key"), 3); err != nil {
		t.Fatal(err)
	}
	again, err := local.Create(context.Background(), be.Dir())
	if err != nil {
		t.Fatalf("Create again: %v", err)
	}
	if fi, err := again.Stat(context.Background(), h); err != nil || fi.Size != 3 {
		t.Fatalf("Stat after second Create = %+v, %v", fi, err)
	}
}

func TestSavedFileOnDisk(t *testing.T) {
	be := newLocal(t)
	name := "ab" + strings.Repeat("0", 62)
	if err := be.Save(context.Background(), backend.Handle{Type: backend.PackFile, Name: name}, strings.NewReader("pack"), 4); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(be.Dir(), "data", "ab", name)
	fi, err := os.Stat(p)
	if err != nil {
		t.Fatalf("pack not at %s: %v", p, err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("pack file mode %v, want 0600", fi.Mode().Perm())
	}
	fi, err = os.Stat(filepath.Dir(p))
	if err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("fan-out folder: %v, %v; want mode 0700", fi, err)
	}
}

func TestOpen(t *testing.T) {
	ctx := context.Background()
	be := newLocal(t)
	h := backend.Handle{Type: backend.ConfigFile}
	if err := be.Save(ctx, h, strings.NewReader("cfg"), 3); err != nil {
		t.Fatal(err)
	}
	opened, err := local.Open(ctx, be.Dir())
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	if fi, err := opened.Stat(ctx, h); err != nil || fi.Size != 3 {
		t.Fatalf("Stat(config) via Open = %+v, %v", fi, err)
	}

	missing := filepath.Join(t.TempDir(), "nothing-here")
	_, err = local.Open(ctx, missing)
	if !errors.Is(err, backend.ErrNotExist) || !strings.Contains(err.Error(), missing) {
		t.Errorf("Open(missing folder) = %v, want ErrNotExist naming %s", err, missing)
	}
	file := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := local.Open(ctx, file); err == nil || !strings.Contains(err.Error(), "not a directory") {
		t.Errorf("Open(regular file) = %v, want a not-a-directory error", err)
	}
	if _, err := local.Open(ctx, ""); err == nil {
		t.Error("Open(\"\") succeeded")
	}
	// An existing folder without a repository opens; there is no config.
	empty, err := local.Open(ctx, t.TempDir())
	if err != nil {
		t.Fatalf("Open(empty folder): %v", err)
	}
	if _, err := empty.Stat(ctx, h); !errors.Is(err, backend.ErrNotExist) {
		t.Fatalf("Stat(config) in empty folder = %v, want ErrNotExist", err)
	}
	// Saving into a folder opened without Create makes the folders needed.
	if err := empty.Save(ctx, backend.Handle{Type: backend.SnapshotFile, Name: "s"}, strings.NewReader("x"), 1); err != nil {
		t.Fatalf("Save into folder without layout: %v", err)
	}
}

// TestCrashLeftTempFile plants the temp files a crash midway through Save
// would leave: List hides them and removes none (read-only commands list),
// RemoveLeftovers removes only those last written before its time.
func TestCrashLeftTempFile(t *testing.T) {
	ctx := context.Background()
	be := newLocal(t)
	pack := "cd" + strings.Repeat("1", 62)
	if err := be.Save(ctx, backend.Handle{Type: backend.PackFile, Name: pack}, strings.NewReader("pack"), 4); err != nil {
		t.Fatal(err)
	}
	fresh := filepath.Join(be.Dir(), "data", "cd", local.TempPrefix+"123")
	stale := filepath.Join(be.Dir(), "data", "cd", local.TempPrefix+"456")
	staleKey := filepath.Join(be.Dir(), "keys", local.TempPrefix+"789")
	for _, p := range []string{fresh, stale, staleKey} {
		if err := os.WriteFile(p, []byte("partial"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	old := time.Now().Add(-48 * time.Hour)
	for _, p := range []string{stale, staleKey} {
		if err := os.Chtimes(p, old, old); err != nil {
			t.Fatal(err)
		}
	}

	var packs, keys []string
	if err := be.List(ctx, backend.PackFile, func(fi backend.FileInfo) error { packs = append(packs, fi.Name); return nil }); err != nil {
		t.Fatal(err)
	}
	if err := be.List(ctx, backend.KeyFile, func(fi backend.FileInfo) error { keys = append(keys, fi.Name); return nil }); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(packs, []string{pack}) || len(keys) != 0 {
		t.Fatalf("List shows temp files: packs %v, keys %v", packs, keys)
	}
	for _, p := range []string{fresh, stale, staleKey} {
		if _, err := os.Stat(p); err != nil {
			t.Errorf("List removed temp file %s: %v", p, err)
		}
	}
	n, size, err := be.RemoveLeftovers(ctx, time.Now().Add(-backend.LeftoverAge))
	if err != nil || n != 2 || size != 2*int64(len("partial")) {
		t.Fatalf("RemoveLeftovers: %d files, %d bytes, %v; want 2, %d", n, size, err, 2*len("partial"))
	}
	if _, err := os.Stat(fresh); err != nil {
		t.Errorf("fresh temp file (maybe a save in progress) was removed: %v", err)
	}
	for _, p := range []string{stale, staleKey} {
		if _, err := os.Stat(p); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("stale temp file %s not removed: %v", p, err)
		}
	}
	if _, err := os.Stat(filepath.Join(be.Dir(), "data", "cd", pack)); err != nil {
		t.Errorf("RemoveLeftovers touched an object: %v", err)
	}
	// Names with the temp prefix cannot be saved, so no object can hide.
	err = be.Save(ctx, backend.Handle{Type: backend.KeyFile, Name: local.TempPrefix + "x"}, strings.NewReader("x"), 1)
	if err == nil {
		t.Error("Save of an object named like a temp file succeeded")
	}
}

func TestFailedSaveLeavesNoTempFile(t *testing.T) {
	ctx := context.Background()
	be := newLocal(t)
	h := backend.Handle{Type: backend.PackFile, Name: "ef" + strings.Repeat("2", 62)}
	for _, tc := range []struct {
		name string
		data string
		size int64
	}{
		{"short reader", "abc", 10},
		{"long reader", "abcdef", 3},
	} {
		if err := be.Save(ctx, h, strings.NewReader(tc.data), tc.size); err == nil {
			t.Fatalf("%s: Save succeeded", tc.name)
		}
		entries, err := os.ReadDir(filepath.Join(be.Dir(), "data", "ef"))
		if err != nil {
			t.Fatal(err)
		}
		if len(entries) != 0 {
			t.Fatalf("%s: failed Save left %v", tc.name, entries)
		}
	}
}

func TestDirectorySync(t *testing.T) {
	ctx := context.Background()
	be := newLocal(t)
	var mu sync.Mutex
	var synced []string
	be.SetSyncDir(func(dir string) error {
		mu.Lock()
		defer mu.Unlock()
		rel, err := filepath.Rel(be.Dir(), dir)
		if err != nil {
			t.Errorf("sync of %s outside the repository", dir)
		}
		synced = append(synced, filepath.ToSlash(rel))
		return local.SyncDir(dir)
	})
	take := func() []string {
		mu.Lock()
		defer mu.Unlock()
		s := synced
		synced = nil
		return s
	}

	first := backend.Handle{Type: backend.PackFile, Name: "a1" + strings.Repeat("3", 62)}
	if err := be.Save(ctx, first, strings.NewReader("one"), 3); err != nil {
		t.Fatal(err)
	}
	// The new fan-out folder's entry in data/, then the object's in data/a1.
	if got, want := take(), []string{"data", "data/a1"}; !slices.Equal(got, want) {
		t.Errorf("first pack in a new folder synced %v, want %v", got, want)
	}
	second := backend.Handle{Type: backend.PackFile, Name: "a1" + strings.Repeat("4", 62)}
	if err := be.Save(ctx, second, strings.NewReader("two"), 3); err != nil {
		t.Fatal(err)
	}
	if got, want := take(), []string{"data/a1"}; !slices.Equal(got, want) {
		t.Errorf("second pack synced %v, want %v", got, want)
	}
	if err := be.Remove(ctx, second); err != nil {
		t.Fatal(err)
	}
	if got, want := take(), []string{"data/a1"}; !slices.Equal(got, want) {
		t.Errorf("Remove synced %v, want %v", got, want)
	}
	if err := be.Save(ctx, backend.Handle{Type: backend.ConfigFile}, strings.NewReader("c"), 1); err != nil {
		t.Fatal(err)
	}
	if got, want := take(), []string{"."}; !slices.Equal(got, want) {
		t.Errorf("config save synced %v, want %v", got, want)
	}

	// A failing folder sync is reported: the data may not be durable.
	boom := errors.New("sync failed")
	be.SetSyncDir(func(string) error { return boom })
	h := backend.Handle{Type: backend.IndexFile, Name: "i1"}
	if err := be.Save(ctx, h, strings.NewReader("x"), 1); !errors.Is(err, boom) || !strings.Contains(err.Error(), "index/i1") {
		t.Errorf("Save with failing folder sync = %v, want the sync error naming index/i1", err)
	}
}

func TestSyncDirReal(t *testing.T) {
	dir := t.TempDir()
	if err := local.SyncDir(dir); err != nil {
		t.Fatalf("syncDir(%s): %v", dir, err)
	}
	if err := local.SyncDir(filepath.Join(dir, "missing")); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("syncDir(missing) = %v, want ErrNotExist", err)
	}
}

func TestLoadAfterReplaceKeepsOldReader(t *testing.T) {
	ctx := context.Background()
	be := newLocal(t)
	h := backend.Handle{Type: backend.IndexFile, Name: "idx"}
	if err := be.Save(ctx, h, bytes.NewReader([]byte("old content")), 11); err != nil {
		t.Fatal(err)
	}
	rd, err := be.Load(ctx, h, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer rd.Close()
	if err := be.Save(ctx, h, bytes.NewReader([]byte("new")), 3); err != nil {
		t.Fatal(err)
	}
	// Replacement is by rename, so an open reader keeps a whole old object.
	buf := new(bytes.Buffer)
	if _, err := buf.ReadFrom(rd); err != nil || buf.String() != "old content" {
		t.Fatalf("reader opened before the replace read %q, %v", buf.String(), err)
	}
}

// TestSyncOrder: Save and Stage's commit fsync the temp file before they
// rename it into place (else a power loss can leave a named object with
// missing bytes), and the folder after (else the name itself can be lost).
func TestSyncOrder(t *testing.T) {
	ctx := context.Background()
	for _, how := range []string{"save", "stage"} {
		t.Run(how, func(t *testing.T) {
			be := newLocal(t)
			h := backend.Handle{Type: backend.PackFile, Name: "ab" + strings.Repeat("3", 62)}
			final := filepath.Join(be.Dir(), filepath.FromSlash(h.Path()))
			var events []string
			be.SetSyncFile(func(f *os.File) error {
				if _, err := os.Stat(final); err == nil {
					events = append(events, "file synced after rename")
				} else {
					events = append(events, "file synced")
				}
				return f.Sync()
			})
			be.SetSyncDir(func(dir string) error {
				if _, err := os.Stat(final); err == nil && dir == filepath.Dir(final) {
					events = append(events, "folder synced after rename")
				}
				return local.SyncDir(dir)
			})
			data := []byte("pack bytes")
			switch how {
			case "save":
				if err := be.Save(ctx, h, bytes.NewReader(data), int64(len(data))); err != nil {
					t.Fatal(err)
				}
			case "stage":
				w, commit, _, err := be.Stage(ctx, backend.PackFile)
				if err != nil {
					t.Fatal(err)
				}
				if _, err := w.Write(data); err != nil {
					t.Fatal(err)
				}
				if err := commit(ctx, h); err != nil {
					t.Fatal(err)
				}
			}
			if want := []string{"file synced", "folder synced after rename"}; !slices.Equal(events, want) {
				t.Errorf("events %q, want %q", events, want)
			}
		})
	}
}
