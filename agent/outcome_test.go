package agent

import (
	"context"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/custos-backup/custos/jobs"
	"github.com/custos-backup/custos/metadata"
)

// TestOutcomesOutliveRestart runs a real agent, lets one dataset succeed
// and one fail, restarts the agent, and checks that its status still
// knows both outcomes (from the catalog), with their results.
func TestOutcomesOutliveRestart(t *testing.T) {
	ctx := testContext(t)
	ts := newSetup(t, "@every 1h", map[string]string{
		"handlers/broken.yml": "name: broken\ntype: pipe\nparams:\n  backup_command: 'exit 4'\n  restore_command: 'cat >/dev/null'\n",
		"sources/bad.yml":     "name: bad\nhandler: broken\ndatasets:\n  - name: x\n",
	})
	run := func(body func(a *Agent)) {
		runCtx, stop := context.WithCancel(ctx)
		started := make(chan *Agent, 1)
		done := make(chan error, 1)
		go func() {
			done <- Run(runCtx, ts.cfgPath, RunOptions{Logger: testLogger(t), Started: func(a *Agent) { started <- a }, Retry: &jobs.RetryPolicy{MaxAttempts: 1}})
		}()
		select {
		case a := <-started:
			body(a)
		case err := <-done:
			t.Fatalf("agent stopped: %v", err)
		}
		stop()
		if err := <-done; err != nil {
			t.Errorf("agent: %v", err)
		}
	}
	find := func(os []*metadata.Outcome, source, dataset string) *metadata.Outcome {
		for _, o := range os {
			if o.Kind == "ingest" && o.Source == source && o.Dataset == dataset {
				return o
			}
		}
		return nil
	}
	run(func(a *Agent) {
		a.SubmitSource("db")
		a.SubmitSource("bad")
		waitFor(ctx, t, "both outcomes in the catalog", func() bool {
			a.outcomes.invalidate()
			os := a.Status(ctx).Outcomes
			return find(os, "db", "main") != nil && find(os, "bad", "x") != nil
		})
		// The counters alerting rules need.
		rec := httptest.NewRecorder()
		req := httptest.NewRequest("GET", "/metrics", nil)
		req.Host = "127.0.0.1:7373"
		a.Handler().ServeHTTP(rec, req)
		for _, want := range []string{
			`custos_job_failures_total{dataset="x",kind="ingest",source="bad"} 1`,
			`custos_job_last_outcome_ok{dataset="x",kind="ingest",source="bad"} 0`,
			`custos_job_last_outcome_ok{dataset="main",kind="ingest",source="db"} 1`,
			`custos_job_last_success_timestamp_seconds{dataset="main",kind="ingest",source="db"} `,
		} {
			if !strings.Contains(rec.Body.String(), want) {
				t.Errorf("/metrics lacks %s", want)
			}
		}
	})
	run(func(a *Agent) {
		rep := a.Status(ctx)
		if len(rep.Done) != 0 {
			t.Fatalf("a fresh agent has %d finished jobs in memory", len(rep.Done))
		}
		ok, bad := find(rep.Outcomes, "db", "main"), find(rep.Outcomes, "bad", "x")
		if ok == nil || ok.Result != "ok" || ok.Host != "test-host" || ok.Bytes == 0 || ok.Attempts != 1 {
			t.Errorf("db/main after restart: %+v", ok)
		}
		if bad == nil || bad.Result != "error" || bad.Error == "" || bad.End.IsZero() {
			t.Errorf("bad/x after restart: %+v", bad)
		}
	})
}
