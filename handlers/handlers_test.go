package handlers

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/custos-backup/custos/repository"
	"github.com/custos-backup/custos/repository/backend"
	"github.com/custos-backup/custos/repository/backend/local"
	"github.com/custos-backup/custos/shell"
)

func newRepo(t *testing.T) *repository.Repository {
	t.Helper()
	ctx := context.Background()
	be, err := local.Create(ctx, filepath.Join(t.TempDir(), "repo"))
	if err != nil {
		t.Fatal(err)
	}
	r, err := repository.Init(ctx, be, repository.InitOptions{Password: []byte("pw"), KDF: "scrypt"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

func TestNewChecksParams(t *testing.T) {
	cases := []struct {
		name      string
		spec      Spec
		wantParam string // "" = no error
	}{
		{"file ok", Spec{Name: "f", Type: "file", Params: map[string]any{"root": "/srv", "excludes": []any{"*.o"}}}, ""},
		{"file without root", Spec{Name: "f", Type: "file"}, "root"},
		{"file root not a string", Spec{Name: "f", Type: "file", Params: map[string]any{"root": 3}}, "root"},
		{"file excludes not a list", Spec{Name: "f", Type: "file", Params: map[string]any{"root": "/", "excludes": "*.o"}}, "excludes"},
		{"file unknown param", Spec{Name: "f", Type: "file", Params: map[string]any{"root": "/", "rooot": "/"}}, "rooot"},
		{"pipe ok", Spec{Name: "p", Type: "pipe", Params: map[string]any{"backup_command": "a", "restore_command": "b"}}, ""},
		{"pipe without restore_command", Spec{Name: "p", Type: "pipe", Params: map[string]any{"backup_command": "a"}}, "restore_command"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := New(tc.spec)
			var pe *ParamError
			switch {
			case tc.wantParam == "" && err != nil:
				t.Fatalf("unexpected error %v", err)
			case tc.wantParam != "" && !errors.As(err, &pe):
				t.Fatalf("want a ParamError about %q, got %v", tc.wantParam, err)
			case tc.wantParam != "" && pe.Param != tc.wantParam:
				t.Fatalf("error about %q, want %q: %v", pe.Param, tc.wantParam, err)
			}
		})
	}
	if _, err := New(Spec{Name: "x", Type: "tape"}); err == nil {
		t.Error("unknown type accepted")
	}
}

func TestFileHandlerRoundTrip(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	files := map[string]string{"a/one.txt": "one", "a/skip.tmp": "no", "b/two.txt": "two", "c/three.txt": "three"}
	for p, body := range files {
		full := filepath.Join(root, p)
		os.MkdirAll(filepath.Dir(full), 0o755)
		os.WriteFile(full, []byte(body), 0o644)
	}
	h, err := New(Spec{Name: "file", Type: "file", Params: map[string]any{"root": root, "excludes": []any{"*.tmp"}}})
	if err != nil {
		t.Fatal(err)
	}
	repo := newRepo(t)
	atoms := []Atom{{Name: "a"}, {Name: "bee", Path: "b"}}
	stored, err := h.Backup(ctx, &BackupRequest{Source: "s", Dataset: "d", Atoms: atoms, Host: "h", BackupID: "b1", Time: time.Now(), Repo: repo})
	if err != nil {
		t.Fatal(err)
	}
	if len(stored) != 1 || stored[0].Snapshot.Dataset != "s/d" || strings.Join(stored[0].Atoms, ",") != "a,bee" {
		t.Fatalf("stored %+v", stored)
	}
	snaps := snapshotsOf(stored)
	// Restore only atom "bee": only b/ comes back.
	target := t.TempDir()
	if err := h.Restore(ctx, &RestoreRequest{Source: "s", Dataset: "d", Atoms: atoms[1:], Snapshots: snaps, Repo: repo, Target: target}); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(target, "b", "two.txt")); err != nil || string(b) != "two" {
		t.Errorf("b/two.txt: %q %v", b, err)
	}
	for _, p := range []string{"a/one.txt", "c/three.txt"} {
		if _, err := os.Stat(filepath.Join(target, p)); err == nil {
			t.Errorf("%s restored but not selected", p)
		}
	}
	// All atoms: a/ without the excluded file; c/ was never in the dataset.
	target = t.TempDir()
	if err := h.Restore(ctx, &RestoreRequest{Source: "s", Dataset: "d", Atoms: atoms, Snapshots: snaps, Repo: repo, Target: target}); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(target, "a", "one.txt")); string(b) != "one" {
		t.Errorf("a/one.txt: %q", b)
	}
	for _, p := range []string{"a/skip.tmp", "c/three.txt"} {
		if _, err := os.Stat(filepath.Join(target, p)); err == nil {
			t.Errorf("%s should not be in the backup", p)
		}
	}
}

func TestPipeHandler(t *testing.T) {
	ctx := context.Background()
	sh := FromShell(shell.New(shell.Options{}))
	dump := bytes.Repeat([]byte("row,of,data\n"), 50000)
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "dump.csv"), dump, 0o644)

	cases := []struct {
		name, backup string
		wantErr      bool
	}{
		{"complete dump", `cat dump.csv`, false},
		{"fails mid-stream", `head -c 300000 dump.csv; exit 2`, true},
		{"killed mid-stream", `head -c 300000 dump.csv; kill -KILL $$`, true},
		// The first atom's snapshot is stored before the second fails:
		// the dataset fails as a whole and leaves none.
		{"second atom fails", `if [ "$CUSTOS_ATOM" = t2 ]; then exit 5; fi; cat dump.csv`, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			repo := newRepo(t)
			h, err := New(Spec{Name: "p", Type: "pipe", Params: map[string]any{
				"backup_command":  tc.backup,
				"restore_command": `cat > "$CUSTOS_RESTORE_TARGET/$CUSTOS_SOURCE-$CUSTOS_DATASET-$CUSTOS_ATOM"`,
			}})
			if err != nil {
				t.Fatal(err)
			}
			atoms := []Atom{{Name: "t1"}, {Name: "t2"}}
			written, err := h.Backup(ctx, &BackupRequest{Source: "db", Dataset: "main", Atoms: atoms, Host: "h", BackupID: "b", Time: time.Now(), Repo: repo, Shell: sh, Dir: dir})
			snaps := snapshotsOf(written)
			stored, lerr := repo.Snapshots(ctx)
			if lerr != nil {
				t.Fatal(lerr)
			}
			if tc.wantErr {
				if err == nil {
					t.Fatal("a failed dump was reported as good")
				}
				if len(stored) != 0 {
					t.Errorf("a failed dump left %d snapshot(s) in the repository", len(stored))
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(snaps) != 2 || len(stored) != 2 {
				t.Fatalf("want one snapshot per atom, got %d (%d stored)", len(snaps), len(stored))
			}
			// Each atom is named with the snapshot that holds it.
			for _, w := range written {
				if len(w.Atoms) != 1 || !slices.Contains(w.Snapshot.Tags, "atom:"+w.Atoms[0]) {
					t.Errorf("snapshot %s (tags %v) is said to hold atoms %v", w.Snapshot.ID, w.Snapshot.Tags, w.Atoms)
				}
			}
			target := t.TempDir()
			if err := h.Restore(ctx, &RestoreRequest{Source: "db", Dataset: "main", Atoms: atoms[1:], Snapshots: snaps, Repo: repo, Shell: sh, Target: target, Dir: dir}); err != nil {
				t.Fatal(err)
			}
			got, err := os.ReadFile(filepath.Join(target, "db-main-t2"))
			if err != nil || !bytes.Equal(got, dump) {
				t.Fatalf("restored atom t2: %d bytes, %v", len(got), err)
			}
			if _, err := os.Stat(filepath.Join(target, "db-main-t1")); err == nil {
				t.Error("atom t1 restored but not selected")
			}
			// A restore_command that fails fails the restore.
			bad, _ := New(Spec{Name: "p", Type: "pipe", Params: map[string]any{"backup_command": "true", "restore_command": "cat >/dev/null; exit 4"}})
			err = bad.Restore(ctx, &RestoreRequest{Source: "db", Dataset: "main", Atoms: atoms[:1], Snapshots: snaps, Repo: repo, Shell: sh, Target: target})
			if err == nil || !strings.Contains(err.Error(), "restore_command failed") {
				t.Errorf("failing restore_command: %v", err)
			}
			// Stdout instead of restore_command.
			var buf bytes.Buffer
			if err := bad.Restore(ctx, &RestoreRequest{Source: "db", Dataset: "main", Atoms: atoms[:1], Snapshots: snaps, Repo: repo, Stdout: &buf}); err != nil || !bytes.Equal(buf.Bytes(), dump) {
				t.Errorf("restore to stdout: %d bytes, %v", buf.Len(), err)
			}
		})
	}
}

func snapshotsOf(stored []Stored) []*repository.Snapshot {
	out := make([]*repository.Snapshot, len(stored))
	for i, s := range stored {
		out[i] = s.Snapshot
	}
	return out
}

// TestCommandEnv: a per-atom command knows its atom and every atom of the
// run; hooks of a one-atom run know the atom too.
func TestCommandEnv(t *testing.T) {
	two := []Atom{{Name: "t1"}, {Name: "t2", Path: "x/t2"}}
	cases := []struct {
		name     string
		atoms    []Atom
		atom, id string
		want     []string
	}{
		{"hook of a dataset", two, "", "b1", []string{"CUSTOS_SOURCE=s", "CUSTOS_DATASET=d", "CUSTOS_ATOMS=t1 t2", "CUSTOS_BACKUP_ID=b1"}},
		{"per-atom command", two, "t2", "b1", []string{"CUSTOS_SOURCE=s", "CUSTOS_DATASET=d", "CUSTOS_ATOMS=t1 t2", "CUSTOS_BACKUP_ID=b1", "CUSTOS_ATOM=t2"}},
		{"hook of one atom", two[:1], "", "", []string{"CUSTOS_SOURCE=s", "CUSTOS_DATASET=d", "CUSTOS_ATOMS=t1", "CUSTOS_ATOM=t1"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := CommandEnv("s", "d", tc.id, tc.atoms, tc.atom); !slices.Equal(got, tc.want) {
				t.Errorf("got %q, want %q", got, tc.want)
			}
		})
	}
}

// TestPipeCommandEnv runs a real backup_command that records what it was
// told, for each atom.
func TestPipeCommandEnv(t *testing.T) {
	ctx := context.Background()
	sh := FromShell(shell.New(shell.Options{}))
	h, err := New(Spec{Name: "p", Type: "pipe", Params: map[string]any{
		"backup_command":  `printf '%s|%s|%s|%s|%s|%s' "$CUSTOS_SOURCE" "$CUSTOS_DATASET" "$CUSTOS_ATOMS" "$CUSTOS_ATOM" "$CUSTOS_BACKUP_ID" "$EXTRA"`,
		"restore_command": "true",
	}})
	if err != nil {
		t.Fatal(err)
	}
	repo := newRepo(t)
	atoms := []Atom{{Name: "t1"}, {Name: "t2"}}
	written, err := h.Backup(ctx, &BackupRequest{Source: "db", Dataset: "main", Atoms: atoms, Host: "h", BackupID: "b7", Time: time.Now(), Repo: repo, Shell: sh, Env: []string{"EXTRA=x"}})
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range written {
		var buf bytes.Buffer
		if err := repo.RestoreFile(ctx, w.Snapshot, w.Atoms[0], &buf); err != nil {
			t.Fatal(err)
		}
		if want := "db|main|t1 t2|" + w.Atoms[0] + "|b7|x"; buf.String() != want {
			t.Errorf("atom %s: the command saw %q, want %q", w.Atoms[0], buf.String(), want)
		}
	}
}

// faultyBackend wraps a real backend and fails the saves of packs, as a
// full disk does.
type faultyBackend struct {
	backend.Backend
}

func (b faultyBackend) Save(ctx context.Context, h backend.Handle, rd io.ReadSeeker, size int64) error {
	if h.Type == backend.PackFile {
		return fmt.Errorf("save %s: %w", h, syscall.ENOSPC)
	}
	return b.Backend.Save(ctx, h, rd, size)
}

// TestPipeErrorNamesCause: when the repository side fails, the pipe
// handler stops backup_command; the error must name the repository's
// failure, not the stop (bug 4 of issue 11: "context canceled (not
// started)" for a locked repository, "killed by signal 15" for a full
// disk), and only a failing command is reported as one.
func TestPipeErrorNamesCause(t *testing.T) {
	ctx := context.Background()
	sh := FromShell(shell.New(shell.Options{}))
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "dump.csv"), bytes.Repeat([]byte("row,of,data\n"), 50000), 0o644); err != nil {
		t.Fatal(err)
	}
	// Endless and never repeating, so that packs fill up and are saved.
	endless := `cat /dev/urandom`
	cases := []struct {
		name, command string
		repo          func(t *testing.T) *repository.Repository
		want          error  // errors.Is target, nil for none
		say, notSay   string // in the message, never in the message
	}{
		{"repository locked", endless, func(t *testing.T) *repository.Repository {
			r := newRepo(t)
			l, err := r.Lock(ctx, true)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = l.Unlock(ctx) })
			return r
		}, repository.ErrLocked, "repository is locked", "backup_command"},
		{"disk full", endless, func(t *testing.T) *repository.Repository {
			be, err := local.Create(ctx, filepath.Join(t.TempDir(), "repo"))
			if err != nil {
				t.Fatal(err)
			}
			r, err := repository.Init(ctx, faultyBackend{be}, repository.InitOptions{Password: []byte("pw"), KDF: "scrypt"})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { r.Close() })
			return r
		}, syscall.ENOSPC, "no space left on device", "backup_command"},
		{"command fails", `cat dump.csv; exit 3`, newRepo, nil, "backup_command failed: ", "context canceled"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h, err := New(Spec{Name: "p", Type: "pipe", Params: map[string]any{"backup_command": tc.command, "restore_command": "cat >/dev/null"}})
			if err != nil {
				t.Fatal(err)
			}
			_, err = h.Backup(ctx, &BackupRequest{Source: "db", Dataset: "main", Atoms: []Atom{{Name: "t1"}}, Host: "h", BackupID: "b", Time: time.Now(), Repo: tc.repo(t), Shell: sh, Dir: dir})
			if err == nil {
				t.Fatal("backup succeeded")
			}
			if tc.want != nil && !errors.Is(err, tc.want) {
				t.Errorf("error %q does not wrap %v", err, tc.want)
			}
			if !strings.Contains(err.Error(), tc.say) || strings.Contains(err.Error(), tc.notSay) {
				t.Errorf("error %q: want it to say %q and never %q", err, tc.say, tc.notSay)
			}
			for _, lie := range []string{"signal", "not started"} {
				if strings.Contains(err.Error(), lie) {
					t.Errorf("error %q blames the command's stop (%q)", err, lie)
				}
			}
		})
	}
}
