package main

import (
	"context"
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/custos-backup/custos/agent"
	"github.com/custos-backup/custos/jobs"
)

// TestStatusFleet runs a real agent, lets both sources run, and reads the
// fleet view from the catalog: healthy first, then with the dump failing.
func TestStatusFleet(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	dir := t.TempDir()
	writeFiles(t, dir, statusConfig)
	cfg := filepath.Join(dir, "agent.yml")
	a, _ := startAgent(t, cfg)
	waitDone(ctx, t, a, map[string]jobs.Result{"files/docs": jobs.ResultOK, "db/main": jobs.ResultOK})
	outcomesFor := func(want map[string]string) *agent.FleetReport {
		t.Helper()
		for {
			out, _, _ := runCLI(ctx, "status", "--fleet", "--json", "-c", cfg)
			var rep agent.FleetReport
			if json.Unmarshal([]byte(out), &rep) == nil {
				got := map[string]string{}
				for _, o := range rep.Outcomes {
					got[o.Host+":"+o.Kind+":"+o.Source+"/"+o.Dataset] = o.Result
				}
				match := true
				for k, v := range want {
					match = match && got[k] == v
				}
				if match {
					return &rep
				}
			}
			select {
			case <-ctx.Done():
				t.Fatalf("gave up waiting for outcomes %v; last output %s", want, out)
			case <-time.After(100 * time.Millisecond):
			}
		}
	}
	outcomesFor(map[string]string{"status-host:ingest:files/docs": "ok", "status-host:ingest:db/main": "ok"})
	out, _, err := runCLI(ctx, "status", "--fleet", "-c", cfg)
	if err != nil {
		t.Fatalf("status --fleet with every dataset ok: %v\n%s", err, out)
	}
	if !strings.Contains(out, "status-host  ingest  files/docs  ok") {
		t.Errorf("status --fleet output lacks the files/docs row:\n%s", out)
	}

	writeFiles(t, dir, map[string]string{"fail": ""})
	a.SubmitSource("db")
	outcomesFor(map[string]string{"status-host:ingest:db/main": "error"})
	out, _, err = runCLI(ctx, "status", "--fleet", "-c", cfg)
	if err == nil || !strings.Contains(err.Error(), "status-host:db/main") {
		t.Errorf("status --fleet with a failed dataset: err %v, want one naming status-host:db/main\n%s", err, out)
	}
	if !strings.Contains(out, "table users is locked") {
		t.Errorf("status --fleet does not show the failure's error:\n%s", out)
	}
}
