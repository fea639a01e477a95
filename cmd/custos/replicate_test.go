package main

import (
	"bytes"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/custos-backup/custos/agent"
)

// TestReplicateKilledResumes kills a real "custos replicate" process with
// SIGKILL once the replica holds its first snapshot, runs it again, and
// measures what the second run sends: only what the replica lacked. The
// replica then passes a full fixity run.
func TestReplicateKilledResumes(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "custos")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	dir := t.TempDir()
	source := func(to string) string {
		return "name: files\nhandler: file\nparams:\n  root: ../data\nreplicate:\n  to: [" + to + "]\ndatasets:\n  - name: big\n"
	}
	files := map[string]string{
		"agent.yml": `hostname: test-host
work_dir: work
repositories:
  - name: local
    url: work/local
    password_file: pw
  - name: offsite
    url: work/offsite
    password_file: pw
  - name: fresh
    url: work/fresh
    password_file: pw
http_listen: 127.0.0.1:0
`,
		"pw":                "test password\n",
		"sources/files.yml": source("offsite"),
	}
	for name, content := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	cfg := filepath.Join(dir, "agent.yml")
	c := &cli{t: t, bin: bin, env: append(os.Environ(), "HOME="+dir)}
	// Four snapshots of one dataset, each adding 24 MiB that no other
	// holds: Copy makes each snapshot durable before the next.
	const step = 24 << 20
	for i := range 4 {
		b := make([]byte, step)
		if _, err := rand.Read(b); err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(dir, "data", "big", fmt.Sprintf("f%d.bin", i))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		c.ok("backup", "-c", cfg)
	}

	cmd := exec.Command(bin, "replicate", "-c", cfg, "--json")
	cmd.Env = c.env
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	snapDir := filepath.Join(dir, "work", "offsite", "snapshots")
	for {
		if ents, _ := os.ReadDir(snapDir); len(ents) > 0 {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	err := cmd.Wait()
	if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); !ok || !ws.Signaled() {
		t.Fatalf("the replication was not killed midway (it ended first: %v); the test needs more data", err)
	}

	replicate := func() int64 {
		t.Helper()
		var res []agent.ReplicateResult
		if err := json.Unmarshal([]byte(c.ok("replicate", "-c", cfg, "--json")), &res); err != nil {
			t.Fatal(err)
		}
		if len(res) != 1 || res[0].Snapshots != 4 {
			t.Fatalf("replicate: %+v", res)
		}
		return res[0].BytesCopied
	}
	resumed := replicate()
	if again := replicate(); again != 0 {
		t.Fatalf("a third run sent %d bytes", again)
	}
	// The same copy from scratch, for comparison.
	if err := os.WriteFile(filepath.Join(dir, "sources", "files.yml"), []byte(source("fresh")), 0o644); err != nil {
		t.Fatal(err)
	}
	full := replicate()
	t.Logf("after kill -9: the resumed run sent %d bytes, a full copy sends %d", resumed, full)
	if resumed == 0 || resumed > full-step {
		t.Fatalf("the resumed run sent %d bytes of a full copy's %d: it should skip at least the %d bytes of the first snapshot", resumed, full, step)
	}
	out := c.ok("fixity", "-c", cfg, "--repository", "offsite", "--all", "--deep")
	if !strings.Contains(out, "deep: 10 file(s)") {
		t.Fatalf("fixity of the replica: %s", out)
	}
	out = c.ok("find", "-c", cfg, "*")
	if !strings.Contains(out, "local,offsite,fresh") {
		t.Fatalf("find does not show where versions are held:\n%s", out)
	}
}

// TestRestoreDamagedDataFromReplica: "custos restore" meets a data pack of
// the primary with a flipped byte, restores the file byte for byte from
// the replica, and says so on the console even with --quiet.
func TestRestoreDamagedDataFromReplica(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "custos")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	dir := t.TempDir()
	big := make([]byte, 2<<20)
	if _, err := rand.Read(big); err != nil {
		t.Fatal(err)
	}
	files := map[string]string{
		"agent.yml": `hostname: test-host
work_dir: work
repositories:
  - name: local
    url: work/local
    password_file: pw
  - name: offsite
    url: work/offsite
    password_file: pw
http_listen: 127.0.0.1:0
`,
		"pw":                "test password\n",
		"sources/files.yml": "name: files\nhandler: file\nparams:\n  root: ../data\nreplicate:\n  to: [offsite]\ndatasets:\n  - name: big\n",
		"data/big/f.bin":    string(big),
	}
	for name, content := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	cfg := filepath.Join(dir, "agent.yml")
	c := &cli{t: t, bin: bin, env: append(os.Environ(), "HOME="+dir)}
	c.ok("backup", "-c", cfg)
	c.ok("replicate", "-c", cfg)
	// Flip a byte in the middle of the largest pack of the primary: one
	// of the file's data packs.
	packs, _ := filepath.Glob(filepath.Join(dir, "work", "local", "data", "*", "*"))
	var pack string
	var size int64
	for _, p := range packs {
		if fi, err := os.Stat(p); err == nil && fi.Size() > size {
			pack, size = p, fi.Size()
		}
	}
	if pack == "" {
		t.Fatal("no pack in the primary")
	}
	b, err := os.ReadFile(pack)
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)/2] ^= 0xff
	if err := os.Remove(pack); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(pack, b, 0o444); err != nil {
		t.Fatal(err)
	}
	target := t.TempDir()
	_, stderr, err := c.run("", "restore", "-c", cfg, "-q", "files", "--target", target)
	if err != nil {
		t.Fatalf("restore: %v\n%s", err, stderr)
	}
	t.Logf("restore with pack %s damaged:\n%s", filepath.Base(pack), stderr)
	got, err := os.ReadFile(filepath.Join(target, "files", "big", "big", "f.bin"))
	if err != nil || !bytes.Equal(got, big) {
		t.Fatalf("f.bin not restored byte for byte: %v", err)
	}
	for _, want := range []string{"restored files/big/big", "from replica offsite: the copy in local holds damaged file data (data blob ", " in pack " + filepath.Base(pack)} {
		if !strings.Contains(stderr, want) {
			t.Errorf("the console does not say %q:\n%s", want, stderr)
		}
	}
	_, stderr, err = c.run("", "restore", "-c", cfg, "files", "--target", t.TempDir(), "--repository", "local")
	if err == nil || !strings.Contains(stderr, "authentication failed") || !strings.Contains(stderr, " in pack data/") {
		t.Fatalf("restore pinned to the damaged primary: %v\n%s", err, stderr)
	}
}
