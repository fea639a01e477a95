package main

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestRepoCLIDamagedSnapshot damages one snapshot file and checks that the
// rest of the repository stays usable from the command line: snapshots
// lists the readable ones and exits non-zero naming the damaged file,
// restore of latest and forget work, and prune refuses.
func TestRepoCLIDamagedSnapshot(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "custos")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	tmp := t.TempDir()
	repo := filepath.Join(tmp, "repo")
	pwFile := filepath.Join(tmp, "pw")
	if err := os.WriteFile(pwFile, []byte("pw-for-damage\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c := &cli{t: t, bin: bin, env: []string{"PATH=" + os.Getenv("PATH"), "HOME=" + tmp,
		"CUSTOS_REPOSITORY=" + repo, "CUSTOS_PASSWORD_FILE=" + pwFile}}
	c.ok("repo", "init")
	for _, ds := range []string{"good", "bad"} {
		if _, errOut, err := c.run("content of "+ds, "repo", "backup", "--dataset", ds, "--host", "h", "--stdin", "--stdin-name", ds+".txt"); err != nil {
			t.Fatalf("backup %s: %v %s", ds, err, errOut)
		}
	}
	var snaps []snapOut
	if err := json.Unmarshal([]byte(c.ok("repo", "snapshots", "--json")), &snaps); err != nil {
		t.Fatal(err)
	}
	var bad string
	for _, s := range snaps {
		if s.Dataset == "bad" {
			bad = s.ID
		}
	}
	p := filepath.Join(repo, "snapshots", bad)
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)/2] ^= 1
	if err := os.Remove(p); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}

	out := c.fails("1 snapshot files are damaged", "repo", "snapshots", "--json")
	snaps = nil
	if err := json.NewDecoder(strings.NewReader(out)).Decode(&snaps); err != nil || len(snaps) != 1 || snaps[0].Dataset != "good" {
		t.Errorf("snapshots with a damaged file listed %+v (%v), want the good one", snaps, err)
	}
	if !strings.Contains(out, bad) {
		t.Errorf("snapshots does not name the damaged file %s: %q", bad, out)
	}
	if _, errOut, err := c.run("", "repo", "restore", "--stdout", "good.txt"); err != nil {
		t.Errorf("restore of latest with a damaged snapshot file: %v %s", err, errOut)
	}
	if _, errOut, err := c.run("", "repo", "forget", "--keep-last", "1"); err != nil {
		t.Errorf("forget with a damaged snapshot file: %v %s", err, errOut)
	}
	if _, err := os.Stat(p); err != nil {
		t.Errorf("the damaged snapshot file was removed: %v", err)
	}
	c.fails("refusing to prune", "repo", "prune")
}
