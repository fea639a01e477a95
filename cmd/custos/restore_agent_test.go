package main

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/custos-backup/custos/jobs"
)

// TestRestoreViaAgent runs a real agent and restores through it: the
// restore runs as a job on the agent's restore queue, the command follows
// it and the files arrive; -q prints nothing on success.
func TestRestoreViaAgent(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	dir := t.TempDir()
	writeFiles(t, dir, statusConfig)
	cfg := filepath.Join(dir, "agent.yml")
	a, _ := startAgent(t, cfg)
	waitDone(ctx, t, a, map[string]jobs.Result{"files/docs": jobs.ResultOK, "db/main": jobs.ResultOK})

	target := filepath.Join(t.TempDir(), "out")
	out, stderr, err := runCLI(ctx, "restore", "-c", cfg, "files/docs/*", "--target", target, "--via-agent")
	if err != nil {
		t.Fatalf("restore --via-agent: %v\n%s", err, stderr)
	}
	got, err := os.ReadFile(filepath.Join(target, "files", "docs", "docs", "note.txt"))
	if err != nil || string(got) != statusConfig["data/docs/note.txt"] {
		t.Errorf("restored note.txt: %q, %v", got, err)
	}
	if !strings.Contains(stderr, "restore job restore-") || !strings.Contains(stderr, " ok: ") {
		t.Errorf("restore --via-agent said:\n%s%s", out, stderr)
	}
	var restores int
	for _, j := range a.Runner().Done() {
		if j.Kind == "restore" && j.Queue == "restore" && j.Result == jobs.ResultOK {
			restores++
		}
	}
	if restores != 1 {
		t.Errorf("the agent ran %d restore job(s), want 1", restores)
	}

	// Quiet: nothing on success.
	out, stderr, err = runCLI(ctx, "-q", "restore", "-c", cfg, "files/docs/*", "--target", filepath.Join(t.TempDir(), "q"), "--via-agent")
	if err != nil || out != "" || stderr != "" {
		t.Errorf("quiet restore --via-agent: err %v, printed %q %q", err, out, stderr)
	}
	out, stderr, err = runCLI(ctx, "-q", "restore", "-c", cfg, "files/docs/*", "--target", filepath.Join(t.TempDir(), "q2"))
	if err != nil || out != "" || stderr != "" {
		t.Errorf("quiet restore: err %v, printed %q %q", err, out, stderr)
	}
	out, _, err = runCLI(ctx, "-q", "backup", "-c", cfg, "--source", "files")
	if err != nil || out != "" {
		t.Errorf("quiet backup: err %v, printed %q", err, out)
	}
	// A failing restore through the agent fails the command, naming why.
	_, _, err = runCLI(ctx, "restore", "-c", cfg, "nosuch/*", "--target", filepath.Join(t.TempDir(), "x"), "--via-agent")
	if err == nil || !strings.Contains(err.Error(), `no atom in the catalog matches "nosuch/*"`) {
		t.Errorf("restore --via-agent of nothing: %v", err)
	}
	if _, _, err := runCLI(ctx, "restore", "-c", cfg, "db/*", "--stdout", "--via-agent"); err == nil {
		t.Error("--stdout with --via-agent was accepted")
	}
}
