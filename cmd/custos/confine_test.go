package main

import (
	"context"
	"encoding/json"
	"maps"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/custos-backup/custos/agent"
)

// cliConfig is a config tree for in-process commands (no agent running):
// a file source over data/docs and a pipe source, on host HOST.
func cliConfig(host string) map[string]string {
	files := map[string]string{}
	for k, v := range statusConfig {
		files[k] = v
	}
	files["agent.yml"] = strings.Replace(statusConfig["agent.yml"], "hostname: status-host", "hostname: "+host, 1)
	files["handlers/dump.yml"] = `name: dump
type: pipe
params:
  backup_command: 'echo dumped'
  restore_command: 'cat > "$CUSTOS_RESTORE_TARGET/$CUSTOS_ATOM.out"'
`
	return files
}

func cliTestContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// plantLink makes target/rel a symlink to a folder (or, for a file path,
// to a file) outside target, holding one sentinel file, and returns a
// check that nothing was written there.
func plantLink(t *testing.T, target, rel string, file bool) func() {
	t.Helper()
	elsewhere := filepath.Join(filepath.Dir(target), "elsewhere")
	if err := os.MkdirAll(elsewhere, 0o755); err != nil {
		t.Fatal(err)
	}
	sentinel := filepath.Join(elsewhere, "sentinel")
	if err := os.WriteFile(sentinel, []byte("untouched"), 0o644); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(target, filepath.FromSlash(rel))
	if err := os.MkdirAll(filepath.Dir(link), 0o755); err != nil {
		t.Fatal(err)
	}
	to := elsewhere
	if file {
		to = sentinel
	}
	if err := os.Symlink(to, link); err != nil {
		t.Fatal(err)
	}
	return func() {
		t.Helper()
		entries, err := os.ReadDir(elsewhere)
		if err != nil {
			t.Fatal(err)
		}
		if len(entries) != 1 || entries[0].Name() != "sentinel" {
			t.Errorf("the restore wrote into %s: %v", elsewhere, entries)
		}
		if b, _ := os.ReadFile(sentinel); string(b) != "untouched" {
			t.Errorf("the restore wrote %q into %s through the link", b, sentinel)
		}
	}
}

// TestRestoreCommandsStayInTarget runs "custos restore" and "custos repo
// restore" through the cobra root with symlinks planted in the target at
// each level they create or write: a folder that is a symlink fails the
// command with an error naming it, a file that is one is replaced, and
// nothing is ever written outside the target.
func TestRestoreCommandsStayInTarget(t *testing.T) {
	ctx := cliTestContext(t)
	dir := t.TempDir()
	writeFiles(t, dir, cliConfig("host-a"))
	cfg := filepath.Join(dir, "agent.yml")
	if out, _, err := runCLI(ctx, "backup", "-c", cfg); err != nil {
		t.Fatalf("custos backup: %v\n%s", err, out)
	}
	const note = "hello custos status\n"
	repoArgs := []string{"repo", "--repo", filepath.Join(dir, "work", "repo"), "--password-file", filepath.Join(dir, "pw"), "-q"}
	cases := []struct {
		name  string
		args  func(target string) []string
		link  string // slash path below the target planted as a symlink
		file  bool   // link points to a file, else to a folder
		named string // "" = the command succeeds; else the error says that this is a symbolic link
		check string // slash path below the target that must hold note afterwards
	}{
		{"restore, source folder", restoreArgs(cfg, "files/*"), "files", false, "t/files", ""},
		{"restore, dataset folder", restoreArgs(cfg, "files/docs"), "files/docs", false, "t/files/docs", ""},
		{"restore, pipe dataset folder", restoreArgs(cfg, "db/*"), "db/main", false, "t/db/main", ""},
		{"restore, folder of the snapshot", restoreArgs(cfg, "files/docs"), "files/docs/docs", false, `"docs"`, ""},
		{"restore, file of the snapshot", restoreArgs(cfg, "files/docs"), "files/docs/docs/note.txt", true, "", "files/docs/docs/note.txt"},
		{"repo restore, folder of the snapshot", repoRestoreArgs(repoArgs), "docs", false, `"docs"`, ""},
		{"repo restore, file of the snapshot", repoRestoreArgs(repoArgs), "docs/note.txt", true, "", "docs/note.txt"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			target := filepath.Join(t.TempDir(), "t")
			untouched := plantLink(t, target, tc.link, tc.file)
			args := tc.args(target)
			out, errOut, err := runCLI(ctx, args...)
			t.Logf("custos %s: %v\n%s%s", strings.Join(args, " "), err, out, errOut)
			if tc.named == "" {
				if err != nil {
					t.Fatalf("custos %s: %v", strings.Join(args, " "), err)
				}
				p := filepath.Join(target, filepath.FromSlash(tc.check))
				if fi, err := os.Lstat(p); err != nil || !fi.Mode().IsRegular() {
					t.Errorf("%s: %v %v, want the restored regular file", p, fi, err)
				} else if b, _ := os.ReadFile(p); string(b) != note {
					t.Errorf("%s holds %q, want %q", p, b, note)
				}
			} else if err == nil {
				t.Errorf("custos %s succeeded through the symlink %s", strings.Join(args, " "), tc.link)
			} else if !strings.Contains(err.Error(), tc.named+" is a symbolic link") {
				t.Errorf("error %q does not say that %s is a symbolic link", err, tc.named)
			}
			untouched()
		})
	}
}

func restoreArgs(cfg, pattern string) func(string) []string {
	return func(target string) []string {
		return []string{"restore", "-c", cfg, pattern, "--target", target}
	}
}

func repoRestoreArgs(repo []string) func(string) []string {
	return func(target string) []string {
		return append(append([]string{}, repo...), "restore", "--dataset", "files/docs", "--target", target)
	}
}

// TestFindHostFlag backs up as two hosts into one catalog (the embedded
// etcd under work_dir) and checks that "custos find --host H" lists only
// H's versions, and that without --host both hosts' are listed. The finds
// read the catalog's files (the backups stopped its server cleanly): they
// start no server, which would rewrite the clean file.
func TestFindHostFlag(t *testing.T) {
	ctx := cliTestContext(t)
	dir := t.TempDir()
	cfg := filepath.Join(dir, "agent.yml")
	for _, host := range []string{"host-a", "host-b", "host-a"} {
		writeFiles(t, dir, cliConfig(host))
		if out, _, err := runCLI(ctx, "backup", "-c", cfg); err != nil {
			t.Fatalf("custos backup as %s: %v\n%s", host, err, out)
		}
	}
	find := func(t *testing.T, args ...string) map[string]int {
		t.Helper()
		args = append([]string{"find", "-c", cfg, "*", "--versions", "10", "--json"}, args...)
		out, _, err := runCLI(ctx, args...)
		if err != nil {
			t.Fatalf("custos %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		var atoms []agent.BackupEntry
		if err := json.Unmarshal([]byte(out), &atoms); err != nil {
			t.Fatalf("custos %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		hosts := map[string]int{}
		for _, a := range atoms {
			hosts[a.Host]++
		}
		return hosts
	}
	cases := []struct {
		name string
		args []string
		want map[string]int // versions per host: 2 atoms (files/docs/docs, db/main/main) per backup
	}{
		{"host-a", []string{"--host", "host-a"}, map[string]int{"host-a": 4}},
		{"host-b", []string{"--host", "host-b"}, map[string]int{"host-b": 2}},
		{"no such host", []string{"--host", "host-c"}, map[string]int{}},
		{"every host", nil, map[string]int{"host-a": 4, "host-b": 2}},
	}
	c, err := agent.LoadConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	cleanFile := filepath.Join(c.MetaDB.DataDir, "clean")
	clean, err := os.ReadFile(cleanFile)
	if err != nil {
		t.Fatalf("no clean file after the backups: %v", err)
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got := find(t, tc.args...)
			if !maps.Equal(got, tc.want) {
				t.Errorf("find %v: versions per host %v, want %v", tc.args, got, tc.want)
			}
		})
	}
	if now, err := os.ReadFile(cleanFile); err != nil || string(now) != string(clean) {
		t.Errorf("the finds started the catalog's server: clean file %q (%v), was %q", now, err, clean)
	}
}
