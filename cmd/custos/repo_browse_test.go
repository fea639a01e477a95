package main

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestRepoLsFindKey runs ls, find and the key commands against a real
// repository.
func TestRepoLsFindKey(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	pw, newPW := filepath.Join(dir, "pw"), filepath.Join(dir, "newpw")
	repo, src := filepath.Join(dir, "repo"), filepath.Join(dir, "src")
	files := map[string]string{pw: "first\n", newPW: "second\n",
		filepath.Join(src, "top.txt"): "top", filepath.Join(src, "sub", "deep.txt"): "deep", filepath.Join(src, "sub", "other.bin"): "bin"}
	for p, s := range files {
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	run := func(args ...string) string {
		t.Helper()
		out, _, err := runCLI(ctx, args...)
		if err != nil {
			t.Fatalf("custos %s: %v", strings.Join(args, " "), err)
		}
		return out
	}
	run("repo", "init", "-r", repo, "-p", pw)
	run("repo", "backup", "-r", repo, "-p", pw, "--dataset", "t/a", src)

	ls := func(args ...string) []string {
		var paths []string
		for _, line := range strings.Split(strings.TrimSpace(run(append([]string{"repo", "ls", "-r", repo, "-p", pw, "--json"}, args...)...)), "\n") {
			var e struct{ Path, Type, Sha256 string }
			if err := json.Unmarshal([]byte(line), &e); err != nil {
				t.Fatalf("ls line %q: %v", line, err)
			}
			paths = append(paths, e.Path)
		}
		return paths
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"latest"}, "[sub top.txt]"},
		{[]string{"latest", "sub"}, "[sub/deep.txt sub/other.bin]"},
		{[]string{"latest", "/", "-R"}, "[sub sub/deep.txt sub/other.bin top.txt]"},
	} {
		if got := strings.Join(ls(tc.args...), " "); "["+got+"]" != tc.want {
			t.Errorf("ls %v: %s, want %s", tc.args, got, tc.want)
		}
	}
	if _, _, err := runCLI(ctx, "repo", "ls", "-r", repo, "-p", pw, "latest", "nope"); err == nil || !strings.Contains(err.Error(), `no folder "nope"`) {
		t.Errorf("ls of a missing folder: %v", err)
	}

	out := run("repo", "find", "-r", repo, "-p", pw, "--json", "*.txt")
	if n := strings.Count(out, "\n"); n != 2 || !strings.Contains(out, `"path":"sub/deep.txt"`) || !strings.Contains(out, `"path":"top.txt"`) {
		t.Errorf("find *.txt: %s", out)
	}
	if out := run("repo", "find", "-r", repo, "-p", pw, "--json", "sub/*.bin"); !strings.Contains(out, `"path":"sub/other.bin"`) || strings.Count(out, "\n") != 1 {
		t.Errorf("find sub/*.bin: %s", out)
	}

	// Keys: add a second password, change the first, remove the rest.
	run("repo", "key", "add", "-r", repo, "-p", pw, "--new-password-file", newPW)
	run("repo", "snapshots", "-r", repo, "-p", newPW) // both open it
	var keys []keyRow
	if err := json.Unmarshal([]byte(run("repo", "key", "list", "-r", repo, "-p", newPW, "--json")), &keys); err != nil || len(keys) != 2 {
		t.Fatalf("key list: %v %+v", err, keys)
	}
	if _, _, err := runCLI(ctx, "repo", "key", "remove", "-r", repo, "-p", newPW, cur(keys)); err == nil {
		t.Error("removing the key in use succeeded")
	}
	run("repo", "key", "remove", "-r", repo, "-p", newPW, other(keys))
	if _, _, err := runCLI(ctx, "repo", "snapshots", "-r", repo, "-p", pw); exitCode(ctx, err) != exitWrongPassword {
		t.Errorf("the removed password still opens the repository: %v", err)
	}
	run("repo", "key", "passwd", "-r", repo, "-p", newPW, "--new-password-file", pw)
	run("repo", "snapshots", "-r", repo, "-p", pw)
	if _, _, err := runCLI(ctx, "repo", "snapshots", "-r", repo, "-p", newPW); exitCode(ctx, err) != exitWrongPassword {
		t.Errorf("the old password still opens the repository after passwd: %v", err)
	}
}

type keyRow struct {
	ID      string `json:"id"`
	Current bool   `json:"current"`
}

// cur and other return the id of the key in use and of another key.
func cur(keys []keyRow) string   { return pick(keys, true) }
func other(keys []keyRow) string { return pick(keys, false) }

func pick(keys []keyRow, current bool) string {
	for _, k := range keys {
		if k.Current == current {
			return k.ID
		}
	}
	return ""
}
