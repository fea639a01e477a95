package main

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/custos-backup/custos/repository"
)

// cli runs the built custos binary as a separate process.
type cli struct {
	t   *testing.T
	bin string
	env []string
}

func (c *cli) run(stdin string, args ...string) (stdout, stderr string, err error) {
	c.t.Helper()
	cmd := exec.Command(c.bin, args...)
	cmd.Env = c.env
	cmd.Stdin = strings.NewReader(stdin)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err = cmd.Run()
	return o.String(), e.String(), err
}

func (c *cli) ok(args ...string) string {
	c.t.Helper()
	out, errOut, err := c.run("", args...)
	if err != nil {
		c.t.Fatalf("custos %s: %v\nstdout: %s\nstderr: %s", strings.Join(args, " "), err, out, errOut)
	}
	return out
}

func (c *cli) fails(wantMsg string, args ...string) string {
	c.t.Helper()
	out, errOut, err := c.run("", args...)
	if err == nil {
		c.t.Fatalf("custos %s succeeded, want failure", strings.Join(args, " "))
	}
	if !strings.Contains(errOut, wantMsg) {
		c.t.Fatalf("custos %s: stderr %q does not say %q", strings.Join(args, " "), errOut, wantMsg)
	}
	if n := strings.Count(strings.TrimSpace(errOut), "\n"); n != 0 {
		c.t.Errorf("custos %s: want a one-line error, got %q", strings.Join(args, " "), errOut)
	}
	return out + errOut
}

type snapOut struct {
	ID      string `json:"id"`
	ShortID string `json:"short_id"`
	Dataset string `json:"dataset"`
	Host    string `json:"host"`
	Tree    string `json:"tree"`
}

func TestRepoCLI(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "custos")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	tmp := t.TempDir()
	repo := filepath.Join(tmp, "repo")
	const password = "s3cret-Passw0rd"
	pwFile := filepath.Join(tmp, "pw")
	if err := os.WriteFile(pwFile, []byte(password+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	src := filepath.Join(tmp, "src")
	files := map[string]string{
		"a.txt":         "hello\n",
		"dir/b.bin":     strings.Repeat("0123456789", 100000),
		"dir/sub/c.log": strings.Repeat("log line\n", 5000),
	}
	for name, content := range files {
		p := filepath.Join(src, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	base := []string{"PATH=" + os.Getenv("PATH"), "HOME=" + tmp}
	c := &cli{t: t, bin: bin, env: append(base, "CUSTOS_REPOSITORY="+repo, "CUSTOS_PASSWORD_FILE="+pwFile)}

	c.fails("no repository found at "+repo, "repo", "snapshots")
	out := c.ok("repo", "init", "--kdf", "argon2id")
	if !strings.Contains(out, "created encrypted repository") || strings.Contains(out, password) {
		t.Errorf("init printed %q", out)
	}
	c.fails("give the directory to back up", "repo", "backup", "--dataset", "d")
	c.ok("repo", "backup", "--dataset", "docs", "--host", "h1", "--tag", "t1", src)

	var snaps []snapOut
	if err := json.Unmarshal([]byte(c.ok("repo", "snapshots", "--json")), &snaps); err != nil {
		t.Fatal(err)
	}
	if len(snaps) != 1 || snaps[0].Dataset != "docs" || snaps[0].Host != "h1" || len(snaps[0].ID) != 64 || len(snaps[0].Tree) != 64 {
		t.Fatalf("snapshots --json: %+v", snaps)
	}

	target := filepath.Join(tmp, "restore")
	c.ok("repo", "restore", "--snapshot", snaps[0].ShortID, "--target", target)
	for name, content := range files {
		got, err := os.ReadFile(filepath.Join(target, name))
		if err != nil || string(got) != content {
			t.Errorf("restored %s differs (%v)", name, err)
		}
	}
	if got := c.ok("repo", "restore", "--stdout", "dir/sub/c.log"); got != files["dir/sub/c.log"] {
		t.Errorf("restore --stdout returned %d bytes, want %d", len(got), len(files["dir/sub/c.log"]))
	}

	// A stream, a second backup, then check, forget, prune and stats.
	if _, errOut, err := c.run("streamed data", "repo", "backup", "--dataset", "db", "--host", "h1", "--stdin", "--stdin-name", "dump.sql"); err != nil {
		t.Fatalf("backup --stdin: %v %s", err, errOut)
	}
	if got := c.ok("repo", "restore", "--dataset", "db", "--stdout", "dump.sql"); got != "streamed data" {
		t.Errorf("streamed file restored as %q", got)
	}
	if err := os.WriteFile(filepath.Join(src, "a.txt"), []byte("changed\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	c.ok("repo", "backup", "--dataset", "docs", "--host", "h1", src)

	var res struct {
		Problems     []json.RawMessage `json:"problems"`
		PacksChecked int               `json:"packs_checked"`
	}
	if err := json.Unmarshal([]byte(c.ok("repo", "check", "--read-data", "--json")), &res); err != nil {
		t.Fatal(err)
	}
	if len(res.Problems) != 0 || res.PacksChecked == 0 {
		t.Errorf("check --read-data --json: %+v", res)
	}
	c.ok("repo", "check", "--budget", "1K")

	c.fails("no --keep-* option", "repo", "forget")
	// Bad prune flags stop forget before it removes a snapshot (the forget
	// below checks that the first one is still there to remove).
	c.fails("--max-repack-size: bad size", "repo", "forget", "--keep-last", "1", "--prune", "--max-repack-size", "lots")
	var fg struct {
		Keep   []snapOut `json:"keep"`
		Remove []snapOut `json:"remove"`
		Prune  *struct {
			BytesFreed int64 `json:"bytes_freed"`
		} `json:"prune"`
	}
	// With --prune and --json, the prune results are part of the one JSON
	// document. The removed snapshot alone referenced the old a.txt.
	if err := json.Unmarshal([]byte(c.ok("repo", "forget", "--keep-last", "1", "--prune", "--max-unused", "0%", "--json")), &fg); err != nil {
		t.Fatal(err)
	}
	if len(fg.Remove) != 1 || fg.Remove[0].ID != snaps[0].ID || len(fg.Keep) != 2 {
		t.Errorf("forget --keep-last 1: keep %d, remove %+v", len(fg.Keep), fg.Remove)
	}
	if fg.Prune == nil || fg.Prune.BytesFreed == 0 {
		t.Errorf("forget --prune --json: prune results %+v, want bytes freed", fg.Prune)
	}
	var pst struct {
		PacksDeleted   *int `json:"packs_deleted"`
		PacksRewritten *int `json:"packs_rewritten"`
	}
	if err := json.Unmarshal([]byte(c.ok("repo", "prune", "--json")), &pst); err != nil {
		t.Fatal(err)
	}
	if pst.PacksDeleted == nil || *pst.PacksDeleted != 0 || pst.PacksRewritten == nil || *pst.PacksRewritten != 0 {
		t.Errorf("prune --json right after a prune: %+v, want nothing to do", pst)
	}
	c.fails("--max-unused: bad value \"0.05\"", "repo", "prune", "--max-unused", "0.05")
	if out := c.ok("repo", "prune", "--max-unused", "unlimited"); !strings.Contains(out, "packs deleted, 0 packs rewritten") {
		t.Errorf("prune --max-unused unlimited printed %q", out)
	}
	if out := c.ok("repo", "prune", "--max-unused", "0%", "--max-repack-size", "1GiB"); !strings.Contains(out, "packs deleted") || strings.Contains(out, "partly used packs") {
		t.Errorf("prune --max-unused 0%% printed %q", out)
	}
	var st struct {
		Snapshots int   `json:"snapshots"`
		Packs     int   `json:"packs"`
		PackBytes int64 `json:"pack_bytes"`
	}
	if err := json.Unmarshal([]byte(c.ok("repo", "stats", "--json")), &st); err != nil {
		t.Fatal(err)
	}
	if st.Snapshots != 2 || st.Packs == 0 || st.PackBytes == 0 {
		t.Errorf("stats --json: %+v", st)
	}
	c.ok("repo", "check", "--read-data")

	// Copy into a second repository with another password.
	repo2 := filepath.Join(tmp, "repo2")
	c2 := &cli{t: t, bin: bin, env: append(base, "CUSTOS_REPOSITORY="+repo2, "CUSTOS_PASSWORD=other")}
	c2.ok("repo", "init", "--insecure-no-encryption")
	out = c.ok("repo", "copy", "--to", repo2, "--dataset", "docs")
	if !strings.Contains(out, "copied 1 snapshots") {
		t.Errorf("copy printed %q", out)
	}
	target2 := filepath.Join(tmp, "restore2")
	c2.ok("repo", "restore", "--target", target2)
	if got, _ := os.ReadFile(filepath.Join(target2, "a.txt")); string(got) != "changed\n" {
		t.Errorf("copied snapshot restores a.txt as %q", got)
	}

	// Failures are one actionable line and never show the password.
	wrong := &cli{t: t, bin: bin, env: append(base, "CUSTOS_REPOSITORY="+repo, "CUSTOS_PASSWORD=wrong-"+password)}
	if msg := wrong.fails("wrong password for repository at "+repo, "repo", "snapshots"); strings.Contains(msg, password) {
		t.Errorf("error output shows the password: %q", msg)
	}
	nopw := &cli{t: t, bin: bin, env: append(base, "CUSTOS_REPOSITORY="+repo)}
	nopw.fails("is encrypted: give its password", "repo", "snapshots")
	norepo := &cli{t: t, bin: bin, env: base}
	norepo.fails("no repository given", "repo", "snapshots")
}

func TestPruneFlags(t *testing.T) {
	for _, tc := range []struct {
		maxUnused, maxRepack string
		want                 repository.PruneOptions
		err                  string // "" = valid; else the flag the error must name
	}{
		{"5%", "unlimited", repository.PruneOptions{MaxUnused: 0.05}, ""},
		{" 2.5% ", "unlimited", repository.PruneOptions{MaxUnused: 0.025}, ""},
		{"0%", "unlimited", repository.PruneOptions{}, ""},
		{"100%", "unlimited", repository.PruneOptions{MaxUnused: 1}, ""},
		{"Unlimited", "unlimited", repository.PruneOptions{MaxUnused: 1}, ""},
		{"10%", "1GiB", repository.PruneOptions{MaxUnused: 0.1, MaxRepackBytes: 1 << 30}, ""},
		{"10%", "500M", repository.PruneOptions{MaxUnused: 0.1, MaxRepackBytes: 500 << 20}, ""},
		{"0.05", "unlimited", repository.PruneOptions{}, "--max-unused"},
		{"5", "unlimited", repository.PruneOptions{}, "--max-unused"},
		{"101%", "unlimited", repository.PruneOptions{}, "--max-unused"},
		{"-1%", "unlimited", repository.PruneOptions{}, "--max-unused"},
		{"NaN%", "unlimited", repository.PruneOptions{}, "--max-unused"},
		{"", "unlimited", repository.PruneOptions{}, "--max-unused"},
		{"5%", "lots", repository.PruneOptions{}, "--max-repack-size"},
		{"5%", "0", repository.PruneOptions{}, "--max-repack-size"},
		{"5%", "-1G", repository.PruneOptions{}, "--max-repack-size"},
	} {
		pf := pruneFlags{maxUnused: tc.maxUnused, maxRepack: tc.maxRepack}
		got, err := pf.options()
		switch {
		case tc.err == "" && err != nil:
			t.Errorf("--max-unused %q --max-repack-size %q: %v", tc.maxUnused, tc.maxRepack, err)
		case tc.err == "" && got != tc.want:
			t.Errorf("--max-unused %q --max-repack-size %q: %+v, want %+v", tc.maxUnused, tc.maxRepack, got, tc.want)
		case tc.err != "" && (err == nil || !strings.HasPrefix(err.Error(), tc.err+":")):
			t.Errorf("--max-unused %q --max-repack-size %q: error %v, want one naming %s", tc.maxUnused, tc.maxRepack, err, tc.err)
		}
	}
	// The defaults the commands register must parse.
	cmd := newRepoPruneCmd(&repoFlags{})
	pf := pruneFlags{maxUnused: cmd.Flags().Lookup("max-unused").DefValue, maxRepack: cmd.Flags().Lookup("max-repack-size").DefValue}
	if o, err := pf.options(); err != nil || o != (repository.PruneOptions{MaxUnused: repository.DefaultMaxUnused}) {
		t.Errorf("default flags give %+v, %v", o, err)
	}
}
