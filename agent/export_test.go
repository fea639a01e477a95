package agent

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/custos-backup/custos/internal/bagit"
	"github.com/custos-backup/custos/internal/bagitcheck"
	"github.com/custos-backup/custos/repository"
)

// oddNames are file names a bag must carry through its manifest: spaces,
// non-ASCII, "%" (encoded as %25, and a name that looks encoded already),
// and line breaks (encoded as %0A and %0D).
var oddNames = map[string][]byte{
	"docs/with space.txt":       []byte("space\n"),
	"docs/café.txt":             []byte("é\n"),
	"docs/日本/語 notes.txt":       []byte("日本語\n"),
	"docs/100%.txt":             []byte("percent\n"),
	"docs/50%25 done.txt":       []byte("looks encoded\n"),
	"docs/line\nbreak.txt":      []byte("newline in the name\n"),
	"docs/carriage\rreturn.txt": []byte("carriage return in the name\n"),
	"docs/empty":                nil,
}

// exportSetup is newSetup plus the odd names and a symbolic link under
// data/docs, all backed up once.
func exportSetup(ctx context.Context, t *testing.T) (*testSetup, *Manager, []*DatasetResult) {
	t.Helper()
	ts := newSetup(t, "@daily", nil)
	for name, b := range oddNames {
		p := filepath.Join(ts.dir, "data", filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatalf("this file system refuses the name %q: %v", name, err)
		}
		ts.files[name] = b
	}
	if err := os.Symlink("a.txt", filepath.Join(ts.dir, "data", "docs", "link")); err != nil {
		t.Fatal(err)
	}
	cm, _, mgr := openTestCLI(ctx, t, ts.cfgPath, CatalogOptions{})
	res, err := BackupNow(ctx, mgr, cm.Current(), "", "")
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range res {
		if r.Err != nil {
			t.Fatalf("backup %s/%s: %v", r.Source, r.Dataset, r.Err)
		}
	}
	return ts, mgr, res
}

func readDir(t *testing.T, dir string) []string {
	t.Helper()
	es, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range es {
		names = append(names, e.Name())
	}
	return names
}

// TestExportBagIt exports every atom of a file source (with odd names) and
// of a pipe source, validates every bag with the RFC 8493 reader, and
// compares payload and metadata with what was backed up.
func TestExportBagIt(t *testing.T) {
	ctx := testContext(t)
	ts, mgr, res := exportSetup(ctx, t)
	records := map[string]*DatasetResult{}
	for _, r := range res {
		records[r.Source+"/"+r.Dataset] = r
	}
	out := filepath.Join(t.TempDir(), "bags")
	bags, err := mgr.ExportBagIt(ctx, ExportRequest{Pattern: "*", Dir: out})
	if err != nil {
		t.Fatal(err)
	}
	byAtom := map[string]ExportedBag{}
	for _, b := range bags {
		byAtom[b.Atom] = b
	}
	want := []string{"db/main/main", "files/docs/docs", "files/photos/photos"}
	if got := slices.Sorted(func(yield func(string) bool) {
		for k := range byAtom {
			if !yield(k) {
				return
			}
		}
	}); !slices.Equal(got, want) {
		t.Fatalf("exported %q, want %q", got, want)
	}
	if got := readDir(t, out); len(got) != len(want) {
		t.Fatalf("export folder holds %q, want exactly the %d bags", got, len(want))
	}
	for _, atom := range want {
		b := byAtom[atom]
		t.Run(atom, func(t *testing.T) {
			if err := bagitcheck.Validate(b.Path); err != nil {
				t.Fatalf("bag is not valid: %v", err)
			}
			ds := strings.Join(strings.Split(atom, "/")[:2], "/")
			r := records[ds]
			payload := map[string][]byte{}
			if ds == "db/main" {
				payload["main"] = ts.dump
			} else {
				top := strings.Split(atom, "/")[1]
				for name, c := range ts.files {
					if strings.HasPrefix(name, top+"/") && !strings.HasSuffix(name, ".tmp") {
						payload[name] = c
					}
				}
			}
			var octets int64
			for name, c := range payload {
				got, err := os.ReadFile(filepath.Join(b.Path, "data", filepath.FromSlash(name)))
				if err != nil || !bytes.Equal(got, c) {
					t.Errorf("data/%q: %d bytes, %v; want the %d bytes backed up", name, len(got), err, len(c))
				}
				octets += int64(len(c))
			}
			if b.Files != len(payload) || b.Bytes != octets {
				t.Errorf("bag has %d files, %d bytes; want %d, %d", b.Files, b.Bytes, len(payload), octets)
			}
			if strings.HasPrefix(atom, "files/photos") {
				if _, err := os.Stat(filepath.Join(b.Path, "data", "photos", "ignore.tmp")); err == nil {
					t.Error("a file excluded at ingest is in the bag")
				}
			}
			info, err := bagitcheck.Info(b.Path)
			if err != nil {
				t.Fatal(err)
			}
			snapID := r.Record.Atoms[0].SnapshotID
			for label, v := range map[string]string{
				"External-Identifier":  atom,
				"Bag-Group-Identifier": r.BackupID,
				"Custos-Source":        strings.Split(atom, "/")[0],
				"Custos-Host":          "test-host",
				"Custos-Backup-Id":     r.BackupID,
				"Custos-Snapshot-Id":   snapID,
				"Custos-Repository":    "local",
				"Bagging-Date":         time.Now().Format(time.DateOnly),
			} {
				if got := info[label]; len(got) != 1 || got[0] != v {
					t.Errorf("bag-info %s = %q, want %q", label, got, v)
				}
			}
			if got := info["Custos-Ingest-Time"]; len(got) != 1 {
				t.Errorf("bag-info Custos-Ingest-Time = %q", got)
			} else if it, err := time.Parse(time.RFC3339Nano, got[0]); err != nil || !it.Equal(b.Time) {
				t.Errorf("Custos-Ingest-Time %q, want the backup's time %s (%v)", got[0], b.Time, err)
			}
			if !strings.HasPrefix(filepath.Base(b.Path), strings.ReplaceAll(atom, "/", "_")+"_") {
				t.Errorf("bag folder %s is not named after %s", filepath.Base(b.Path), atom)
			}
			if atom == "files/docs/docs" {
				if !slices.Equal(b.Skipped, []string{"docs/link (symlink)"}) {
					t.Errorf("skipped %q, want the symbolic link", b.Skipped)
				}
				if got := info["Custos-Not-Exported"]; len(got) != 1 || !strings.HasPrefix(got[0], "1 ") {
					t.Errorf("bag-info Custos-Not-Exported = %q", got)
				}
				m, err := os.ReadFile(filepath.Join(b.Path, "manifest-sha256.txt"))
				if err != nil {
					t.Fatal(err)
				}
				for _, enc := range []string{"data/docs/100%25.txt\n", "data/docs/50%2525 done.txt\n", "data/docs/line%0Abreak.txt\n", "data/docs/carriage%0Dreturn.txt\n"} {
					if !strings.Contains(string(m), enc) {
						t.Errorf("manifest lacks %q", enc)
					}
				}
			}
		})
	}

	// A second export into the same folder refuses to replace the bags.
	_, err = mgr.ExportBagIt(ctx, ExportRequest{Pattern: "files/docs", Dir: out})
	if err == nil || !strings.Contains(err.Error(), "already exists") {
		t.Fatalf("export over an existing bag: %v", err)
	}
	if err := bagitcheck.Validate(byAtom["files/docs/docs"].Path); err != nil {
		t.Fatalf("the existing bag was changed: %v", err)
	}
	if got := readDir(t, out); len(got) != len(want) {
		t.Errorf("the refused export left %q", got)
	}
}

// faultySource wraps the real repository: it flips a byte of one file as
// it is streamed, or forges that file's digest in the listing.
type faultySource struct {
	exportSource
	path        string
	flip, forge bool
}

func (f *faultySource) WalkFiles(ctx context.Context, snap *repository.Snapshot, p string, fn func(repository.Entry, func(io.Writer) error) error) error {
	return f.exportSource.WalkFiles(ctx, snap, p, func(e repository.Entry, write func(io.Writer) error) error {
		if e.Path == f.path {
			if f.forge {
				e.SHA256 = strings.Repeat("ab", 32)
			}
			if f.flip {
				inner := write
				write = func(w io.Writer) error { return inner(&flipWriter{w: w}) }
			}
		}
		return fn(e, write)
	})
}

type flipWriter struct {
	w    io.Writer
	done bool
}

func (f *flipWriter) Write(b []byte) (int, error) {
	if !f.done && len(b) > 0 {
		f.done = true
		c := slices.Clone(b)
		c[len(c)/2] ^= 0xff
		return f.w.Write(c)
	}
	return f.w.Write(b)
}

// TestExportDigestMismatch: bytes that do not match the digest recorded at
// ingest, or a listing whose digest was forged, fail the export naming the
// file, and leave no bag (nor half of one) behind; the other atoms export.
func TestExportDigestMismatch(t *testing.T) {
	ctx := testContext(t)
	_, mgr, _ := exportSetup(ctx, t)
	for _, tc := range []struct {
		name        string
		flip, forge bool
	}{
		{"content no longer matches the digest", true, false},
		{"forged digest", false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out := t.TempDir()
			bags, err := mgr.ExportBagIt(ctx, ExportRequest{Pattern: "files", Dir: out, wrap: func(s exportSource) exportSource {
				return &faultySource{exportSource: s, path: "docs/sub/big.bin", flip: tc.flip, forge: tc.forge}
			}})
			var de *bagit.DigestError
			if !errors.As(err, &de) {
				t.Fatalf("export: %v, want a digest mismatch", err)
			}
			for _, want := range []string{`"data/docs/sub/big.bin"`, "files/docs/docs", "digest recorded at ingest"} {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q does not say %q", err, want)
				}
			}
			if len(bags) != 1 || bags[0].Atom != "files/photos/photos" {
				t.Errorf("exported %+v, want only the intact atom", bags)
			}
			got := readDir(t, out)
			if len(got) != 1 || !strings.HasPrefix(got[0], "files_photos_photos_") {
				t.Errorf("export folder holds %q, want only the intact bag", got)
			}
		})
	}
}

// TestExportOlderThan: --older-than picks the version restore would.
func TestExportOlderThan(t *testing.T) {
	ctx := testContext(t)
	ts := newSetup(t, "@daily", nil)
	cm, _, mgr := openTestCLI(ctx, t, ts.cfgPath, CatalogOptions{})
	rc := cm.Current()
	src := rc.Source("files")
	all, err := Datasets(ctx, rc.Shell(), src)
	if err != nil {
		t.Fatal(err)
	}
	i := slices.IndexFunc(all, func(d Dataset) bool { return d.Name == "docs" })
	t1 := time.Now().Add(-time.Hour).Truncate(time.Second)
	if r := mgr.Ingest(ctx, rc, src, NewBackup("test-host", t1), all[i]); r.Err != nil {
		t.Fatal(r.Err)
	}
	if err := os.WriteFile(filepath.Join(ts.dir, "data", "docs", "a.txt"), []byte("new version\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if r := mgr.Ingest(ctx, rc, src, NewBackup("test-host", time.Now()), all[i]); r.Err != nil {
		t.Fatal(r.Err)
	}
	for _, tc := range []struct {
		name      string
		olderThan time.Time
		want      string
	}{
		{"newest", time.Time{}, "new version\n"},
		{"older than half an hour", time.Now().Add(-30 * time.Minute), "hello custos\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			bags, err := mgr.ExportBagIt(ctx, ExportRequest{Pattern: "files/docs/docs", OlderThan: tc.olderThan, Dir: t.TempDir()})
			if err != nil {
				t.Fatal(err)
			}
			if len(bags) != 1 {
				t.Fatalf("exported %+v, want one bag", bags)
			}
			if err := bagitcheck.Validate(bags[0].Path); err != nil {
				t.Fatal(err)
			}
			got, err := os.ReadFile(filepath.Join(bags[0].Path, "data", "docs", "a.txt"))
			if err != nil || string(got) != tc.want {
				t.Errorf("a.txt = %q, %v; want %q", got, err, tc.want)
			}
		})
	}
	if _, err := mgr.ExportBagIt(ctx, ExportRequest{Pattern: "files/docs/docs", Host: "other-host", Dir: t.TempDir()}); err == nil || !strings.Contains(err.Error(), "no atom") {
		t.Errorf("export of another host's atoms: %v, want no match", err)
	}
}

func TestBagName(t *testing.T) {
	at := time.Date(2024, 5, 1, 12, 30, 0, 0, time.FixedZone("x", 3600))
	cases := []struct{ atom, want string }{
		{"files/docs/docs", "files_docs_docs_20240501T113000Z"},
		{"db/main/my_db.v2", "db_main_my_db.v2_20240501T113000Z"},
	}
	for _, tc := range cases {
		if got := bagName(tc.atom, at); got != tc.want {
			t.Errorf("bagName(%q) = %q, want %q", tc.atom, got, tc.want)
		}
	}
	a, b := bagName("s/d/a b", at), bagName("s/d/a-b", at)
	if a == b || !strings.HasPrefix(a, "s_d_a-b-") {
		t.Errorf("names that differ only in a replaced character collide or lose their shape: %q, %q", a, b)
	}
	if n := bagName("s/d/.hidden/../x", at); strings.HasPrefix(n, ".") || strings.Contains(n, "/") {
		t.Errorf("bagName made %q", n)
	}
}

// TestExportSingleFileAtom: a file atom whose path is one file, not a
// folder, makes a bag holding that file under its path.
func TestExportSingleFileAtom(t *testing.T) {
	ctx := testContext(t)
	ts := newSetup(t, "@daily", map[string]string{"sources/files.yml": `name: files
handler: file
schedule: "@daily"
params:
  root: ../data
datasets:
  - name: notes
    atoms:
      - name: note
        path: docs/a.txt
`})
	cm, _, mgr := openTestCLI(ctx, t, ts.cfgPath, CatalogOptions{})
	res, err := BackupNow(ctx, mgr, cm.Current(), "files", "")
	if err != nil || len(res) != 1 || res[0].Err != nil {
		t.Fatalf("backup: %v %+v", err, res)
	}
	bags, err := mgr.ExportBagIt(ctx, ExportRequest{Pattern: "files/notes/note", Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	if len(bags) != 1 || bags[0].Files != 1 {
		t.Fatalf("exported %+v, want one bag of one file", bags)
	}
	if err := bagitcheck.Validate(bags[0].Path); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(filepath.Join(bags[0].Path, "data", "docs", "a.txt"))
	if err != nil || !bytes.Equal(got, ts.files["docs/a.txt"]) {
		t.Errorf("data/docs/a.txt = %q, %v", got, err)
	}
	info, err := bagitcheck.Info(bags[0].Path)
	if err != nil {
		t.Fatal(err)
	}
	if got := info["Custos-Atom-Path"]; len(got) != 1 || got[0] != "docs/a.txt" {
		t.Errorf("bag-info Custos-Atom-Path = %q", got)
	}
}
