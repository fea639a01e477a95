package agent

import (
	"context"
	"log/slog"
	"strings"
	"sync"
	"testing"

	"github.com/custos-backup/custos/metadata"
)

// signalWriter passes log lines to the test log and closes seen the first
// time a line contains want.
type signalWriter struct {
	t    *testing.T
	want string
	once sync.Once
	seen chan struct{}
}

func (w *signalWriter) Write(b []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(b), "\n"))
	if strings.Contains(string(b), w.want) {
		w.once.Do(func() { close(w.seen) })
	}
	return len(b), nil
}

// TestCatalogSharing: the catalog is opened through metadata.Connect. An
// agent started while a command serves the embedded catalog (no agent was
// running when the command began) waits for the command to finish instead
// of failing, says so in its log, and then serves the catalog itself; a
// command started while the agent runs uses the agent's server.
func TestCatalogSharing(t *testing.T) {
	ctx := testContext(t)
	ts := newSetup(t, "@daily", map[string]string{
		"sources/db.yml": `name: db
handler: dump
run_on_start: true
datasets:
  - name: main
`,
	})
	_, cliCat, _ := openTestCLI(ctx, t, ts.cfgPath, CatalogOptions{})
	if cliCat.Embedded() == nil {
		t.Fatal("with no agent running, the command should serve the embedded catalog itself")
	}

	w := &signalWriter{t: t, want: "waiting for the embedded catalog", seen: make(chan struct{})}
	runCtx, stop := context.WithCancel(ctx)
	started := make(chan *Agent, 1)
	done := make(chan error, 1)
	go func() {
		done <- Run(runCtx, ts.cfgPath, RunOptions{Logger: slog.New(slog.NewTextHandler(w, nil)), Started: func(a *Agent) { started <- a }})
	}()
	defer func() {
		stop()
		if err := <-done; err != nil {
			t.Errorf("agent stop: %v", err)
		}
	}()
	select {
	case <-w.seen:
	case a := <-started:
		t.Fatalf("the agent started (%v) while a command served its embedded catalog", a)
	case err := <-done:
		t.Fatalf("the agent gave up instead of waiting for the command: %v", err)
	case <-ctx.Done():
		t.Fatal("the agent neither started nor said that it waits")
	}
	if err := cliCat.Close(); err != nil {
		t.Fatal(err)
	}
	var a *Agent
	select {
	case a = <-started:
	case err := <-done:
		t.Fatalf("the agent stopped after the command freed the catalog: %v", err)
	}
	if a.catalog.Embedded() == nil {
		t.Error("the agent does not serve the embedded catalog")
	}

	// A command now uses the agent's server, and sees its backup.
	_, cat2, mgr2 := openTestCLI(ctx, t, ts.cfgPath, CatalogOptions{})
	if cat2.Embedded() != nil {
		t.Error("with the agent running, the command started its own embedded server")
	}
	waitFor(ctx, t, "the agent's run_on_start backup, seen by the command", func() bool {
		found, err := mgr2.Find(ctx, metadata.FindRequest{Pattern: "db/main"})
		return err == nil && len(found) == 1
	})
}
