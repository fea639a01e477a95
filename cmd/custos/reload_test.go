package main

import (
	"context"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestReloadCommand runs a real agent and reloads it with "custos reload",
// then breaks a source file and checks that the agent refuses it, names
// the problem, and keeps the old configuration.
func TestReloadCommand(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	dir := t.TempDir()
	writeFiles(t, dir, statusConfig)
	a, addr := startAgent(t, filepath.Join(dir, "agent.yml"))
	// reload.yml names the port the agent got; sources/ are shared.
	writeFiles(t, dir, map[string]string{"reload.yml": strings.Replace(statusConfig["agent.yml"], "127.0.0.1:0", addr, 1)})

	out, _, err := runCLI(ctx, "reload", "-c", filepath.Join(dir, "reload.yml"))
	if err != nil {
		t.Fatalf("custos reload: %v", err)
	}
	if !strings.Contains(out, "generation 2") {
		t.Errorf("custos reload printed %q, want generation 2", out)
	}
	if g := a.Status(ctx).Generation; g != 2 {
		t.Errorf("agent generation %d after reload, want 2", g)
	}

	if err := os.WriteFile(filepath.Join(dir, "sources", "bad.yml"), []byte("name: bad\nhandler: nope\ndatasets: [{name: x}]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err = agentClient{listen: addr}.call(ctx, http.MethodPost, "/api/reload", "")
	if err == nil || !strings.Contains(err.Error(), `field "handler": unknown handler "nope"`) || !strings.Contains(err.Error(), "422") {
		t.Errorf("reload of a broken config: %v, want a 422 naming the field", err)
	}
	if g := a.Status(ctx).Generation; g != 2 {
		t.Errorf("agent generation %d after a refused reload, want 2 still", g)
	}
}
