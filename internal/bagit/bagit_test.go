package bagit_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/custos-backup/custos/internal/bagit"
	"github.com/custos-backup/custos/internal/bagitcheck"
)

func digest(b string) string {
	s := sha256.Sum256([]byte(b))
	return hex.EncodeToString(s[:])
}

func write(s string) func(io.Writer) error {
	return func(w io.Writer) error {
		_, err := io.WriteString(w, s)
		return err
	}
}

func openDir(t *testing.T) (string, *os.Root) {
	t.Helper()
	dir := t.TempDir()
	root, err := os.OpenRoot(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { root.Close() })
	return dir, root
}

// entries lists the names in dir.
func entries(t *testing.T, dir string) []string {
	t.Helper()
	es, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range es {
		out = append(out, e.Name())
	}
	return out
}

// TestWriteValidBag writes names that manifests must encode or carry as
// they are, and checks the bag with the RFC reader, byte for byte.
func TestWriteValidBag(t *testing.T) {
	ctx := context.Background()
	dir, root := openDir(t)
	files := map[string]string{
		"plain.txt":           "hello\n",
		"with space.txt":      "space",
		"café.txt":            "é",
		"日本/語 file.txt":       "unicode folder",
		"100%.txt":            "percent",
		"50%25.txt":           "an encoded-looking name",
		"line\nbreak.txt":     "newline",
		"carriage\rreturn":    "cr",
		"trailing space ":     "trailing",
		"empty":               "",
		"deep/a/b/c/file.bin": strings.Repeat("x", 100000),
	}
	b, err := bagit.Create(root, "bag one")
	if err != nil {
		t.Fatal(err)
	}
	var octets int
	for name, content := range files {
		octets += len(content)
		if err := b.AddFile(ctx, name, int64(len(content)), digest(content), write(content)); err != nil {
			t.Fatal(err)
		}
	}
	now := time.Date(2024, 5, 1, 12, 0, 0, 0, time.UTC)
	p, err := b.Commit(now, []bagit.Field{{"External-Identifier", "src/ds/atom"}, {"Custos-Host", "h1"}})
	if err != nil {
		t.Fatal(err)
	}
	if p != filepath.Join(dir, "bag one") {
		t.Errorf("bag at %s, want %s", p, filepath.Join(dir, "bag one"))
	}
	if got := entries(t, dir); len(got) != 1 || got[0] != "bag one" {
		t.Fatalf("target holds %q, want only the bag", got)
	}
	if err := bagitcheck.Validate(p); err != nil {
		t.Fatalf("bag is not valid: %v", err)
	}
	for name, content := range files {
		got, err := os.ReadFile(filepath.Join(p, "data", filepath.FromSlash(name)))
		if err != nil || string(got) != content {
			t.Errorf("data/%q: %q, %v; want %q", name, got, err, content)
		}
	}
	m, err := os.ReadFile(filepath.Join(p, "manifest-sha256.txt"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"  data/100%25.txt\n", "  data/50%2525.txt\n", "  data/line%0Abreak.txt\n",
		"  data/carriage%0Dreturn\n", "  data/with space.txt\n", "  data/café.txt\n", "  data/trailing space \n",
	} {
		if !strings.Contains(string(m), want) {
			t.Errorf("manifest lacks %q:\n%s", want, m)
		}
	}
	info, err := bagitcheck.Info(p)
	if err != nil {
		t.Fatal(err)
	}
	wantInfo := map[string]string{
		"External-Identifier": "src/ds/atom", "Custos-Host": "h1",
		"Bagging-Date": "2024-05-01", "Payload-Oxum": strconv.Itoa(octets) + "." + strconv.Itoa(len(files)),
	}
	for k, v := range wantInfo {
		if got := info[k]; len(got) != 1 || got[0] != v {
			t.Errorf("bag-info %s = %q, want %q", k, got, v)
		}
	}
	if b.Files() != len(files) || b.Octets() != int64(octets) {
		t.Errorf("Files, Octets = %d, %d; want %d, %d", b.Files(), b.Octets(), len(files), octets)
	}
}

// TestEmptyPayload: an atom may be an empty folder; its bag is still valid.
func TestEmptyPayload(t *testing.T) {
	_, root := openDir(t)
	b, err := bagit.Create(root, "empty")
	if err != nil {
		t.Fatal(err)
	}
	p, err := b.Commit(time.Now(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := bagitcheck.Validate(p); err != nil {
		t.Fatal(err)
	}
}

// TestDigestMismatch: bytes that do not match the recorded digest, or
// size, fail the file by name, and Abort leaves nothing behind.
func TestDigestMismatch(t *testing.T) {
	cases := []struct {
		name    string
		size    int64
		digest  string
		content string
		want    string
	}{
		{"content differs", 7, digest("content"), "CONTENT", "the SHA-256 of the bytes written is " + digest("CONTENT")},
		{"size differs", 7, digest("content"), "content!", "8 bytes were written, but the file had 7 bytes"},
		{"size unknown, content differs", -1, digest("content"), "other", "digest recorded at ingest is " + digest("content")},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir, root := openDir(t)
			b, err := bagit.Create(root, "bag")
			if err != nil {
				t.Fatal(err)
			}
			if err := b.AddFile(context.Background(), "ok.txt", 2, digest("ok"), write("ok")); err != nil {
				t.Fatal(err)
			}
			err = b.AddFile(context.Background(), "sub/bad file.txt", tc.size, tc.digest, write(tc.content))
			var de *bagit.DigestError
			if !errors.As(err, &de) {
				t.Fatalf("AddFile: %v, want a *DigestError", err)
			}
			if de.Path != "data/sub/bad file.txt" || !strings.Contains(err.Error(), `"data/sub/bad file.txt"`) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q (path %q) does not name the file and say %q", err, de.Path, tc.want)
			}
			b.Abort()
			if got := entries(t, dir); len(got) != 0 {
				t.Errorf("aborted bag left %q", got)
			}
		})
	}
}

// TestFillError: a failing source aborts cleanly too, with its error.
func TestFillError(t *testing.T) {
	dir, root := openDir(t)
	b, err := bagit.Create(root, "bag")
	if err != nil {
		t.Fatal(err)
	}
	boom := errors.New("repository unreachable")
	err = b.AddFile(context.Background(), "f", 1, digest("x"), func(io.Writer) error { return boom })
	if !errors.Is(err, boom) || !strings.Contains(err.Error(), `"data/f"`) {
		t.Fatalf("AddFile: %v", err)
	}
	b.Abort()
	if got := entries(t, dir); len(got) != 0 {
		t.Errorf("aborted bag left %q", got)
	}
}

func TestRefuses(t *testing.T) {
	ctx := context.Background()
	t.Run("existing bag", func(t *testing.T) {
		dir, root := openDir(t)
		if err := os.Mkdir(filepath.Join(dir, "bag"), 0o755); err != nil {
			t.Fatal(err)
		}
		if _, err := bagit.Create(root, "bag"); !errors.Is(err, fs.ErrExist) {
			t.Fatalf("Create over an existing folder: %v", err)
		}
	})
	t.Run("bag appears while writing", func(t *testing.T) {
		dir, root := openDir(t)
		b, err := bagit.Create(root, "bag")
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "bag"), []byte("someone else's"), 0o644); err != nil {
			t.Fatal(err)
		}
		if _, err := b.Commit(time.Now(), nil); !errors.Is(err, fs.ErrExist) {
			t.Fatalf("Commit over a file that appeared: %v", err)
		}
		if got, _ := os.ReadFile(filepath.Join(dir, "bag")); string(got) != "someone else's" {
			t.Errorf("the other file was changed: %q", got)
		}
		if got := entries(t, dir); len(got) != 1 {
			t.Errorf("failed commit left %q", got)
		}
	})
	for _, name := range []string{"", ".", "..", "a/b"} {
		t.Run("bag name "+name, func(t *testing.T) {
			_, root := openDir(t)
			if _, err := bagit.Create(root, name); err == nil {
				t.Fatalf("Create(%q) succeeded", name)
			}
		})
	}
	for _, rel := range []string{"../escape", "a/../../b", "/abs", "a//b", "./a", "bad\xffutf8", ""} {
		t.Run("payload path "+rel, func(t *testing.T) {
			dir, root := openDir(t)
			b, err := bagit.Create(root, "bag")
			if err != nil {
				t.Fatal(err)
			}
			defer b.Abort()
			if err := b.AddFile(ctx, rel, 1, digest("x"), write("x")); err == nil {
				t.Fatalf("AddFile(%q) succeeded", rel)
			}
			if _, err := os.Stat(filepath.Join(filepath.Dir(dir), "escape")); err == nil {
				t.Fatal("wrote outside the target")
			}
		})
	}
	t.Run("same file twice", func(t *testing.T) {
		_, root := openDir(t)
		b, err := bagit.Create(root, "bag")
		if err != nil {
			t.Fatal(err)
		}
		defer b.Abort()
		if err := b.AddFile(ctx, "f", 1, digest("x"), write("x")); err != nil {
			t.Fatal(err)
		}
		if err := b.AddFile(ctx, "f", 1, digest("x"), write("x")); err == nil {
			t.Fatal("second AddFile of the same path succeeded")
		}
	})
	for _, f := range []bagit.Field{{"Bad: label", "v"}, {" Padded", "v"}, {"Label", "two\nlines"}, {"Payload-Oxum", "1.1"}} {
		t.Run("bag-info "+f.Label, func(t *testing.T) {
			dir, root := openDir(t)
			b, err := bagit.Create(root, "bag")
			if err != nil {
				t.Fatal(err)
			}
			if _, err := b.Commit(time.Now(), []bagit.Field{f}); err == nil {
				t.Fatalf("Commit with %+v succeeded", f)
			}
			if got := entries(t, dir); len(got) != 0 {
				t.Errorf("failed commit left %q", got)
			}
		})
	}
}

// TestCommitSyncingEachFile: where the file system cannot be synced at
// once, Commit syncs every file and folder itself and the bag is as valid.
func TestCommitSyncingEachFile(t *testing.T) {
	ctx := context.Background()
	dir, root := openDir(t)
	b, err := bagit.Create(root, "bag")
	if err != nil {
		t.Fatal(err)
	}
	bagit.SyncEachFile(b)
	files := map[string]string{"a.txt": "a", "x/y/b.txt": "bb", "x/c.txt": ""}
	for name, content := range files {
		if err := b.AddFile(ctx, name, int64(len(content)), digest(content), write(content)); err != nil {
			t.Fatal(err)
		}
	}
	p, err := b.Commit(time.Now(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := bagitcheck.Validate(p); err != nil {
		t.Fatalf("bag is not valid: %v", err)
	}
	if got := entries(t, dir); len(got) != 1 || got[0] != "bag" {
		t.Fatalf("target holds %q, want only the bag", got)
	}
}

// TestAddFileConcurrently: files added from many goroutines at once, into
// shared folders, make a valid bag with every file; of two adds of one
// path at once exactly one succeeds.
func TestAddFileConcurrently(t *testing.T) {
	ctx := context.Background()
	_, root := openDir(t)
	b, err := bagit.Create(root, "bag")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	want := map[string]string{}
	for i := range 60 {
		name := fmt.Sprintf("d%d/e%d/f%02d.txt", i%3, i%2, i)
		content := strings.Repeat(name, i+1)
		want[name] = content
		wg.Go(func() {
			if err := b.AddFile(ctx, name, int64(len(content)), digest(content), write(content)); err != nil {
				t.Errorf("%s: %v", name, err)
			}
		})
	}
	var mu sync.Mutex
	var dupOK, dupErr int
	for range 2 {
		wg.Go(func() {
			err := b.AddFile(ctx, "twice.txt", 1, digest("x"), write("x"))
			mu.Lock()
			defer mu.Unlock()
			if err == nil {
				dupOK++
			} else if strings.Contains(err.Error(), "added twice") {
				dupErr++
			}
		})
	}
	wg.Wait()
	if dupOK != 1 || dupErr != 1 {
		t.Fatalf("two adds of one path: %d succeeded, %d refused as a duplicate; want 1 and 1", dupOK, dupErr)
	}
	p, err := b.Commit(time.Now(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := bagitcheck.Validate(p); err != nil {
		t.Fatalf("bag is not valid: %v", err)
	}
	if b.Files() != len(want)+1 {
		t.Errorf("%d files in the bag, want %d", b.Files(), len(want)+1)
	}
	for name, content := range want {
		got, err := os.ReadFile(filepath.Join(p, "data", filepath.FromSlash(name)))
		if err != nil || string(got) != content {
			t.Errorf("data/%s: %d bytes, %v", name, len(got), err)
		}
	}
}

// TestWriterSaysWhatItVerifies: the writer AddFile hands to fill says which
// SHA-256 it will hold the bytes to, so that a fill that would hash them
// for the same check (a restore against the recorded digest) can leave it
// to the bag; and it does hold them to it.
func TestWriterSaysWhatItVerifies(t *testing.T) {
	_, root := openDir(t)
	b, err := bagit.Create(root, "bag")
	if err != nil {
		t.Fatal(err)
	}
	defer b.Abort()
	want := sha256.Sum256([]byte("content"))
	var promised [32]byte
	err = b.AddFile(context.Background(), "f.txt", -1, hex.EncodeToString(want[:]), func(w io.Writer) error {
		v, ok := w.(interface{ VerifiesSHA256() [32]byte })
		if !ok {
			return errors.New("the payload writer does not say what it verifies")
		}
		promised = v.VerifiesSHA256()
		_, err := io.WriteString(w, "CONTENT")
		return err
	})
	if promised != want {
		t.Errorf("the writer says it verifies %x, the recorded digest is %x", promised, want)
	}
	var de *bagit.DigestError
	if !errors.As(err, &de) {
		t.Fatalf("AddFile of bytes that do not match: %v, want a *DigestError", err)
	}
}
