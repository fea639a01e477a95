package agent

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/custos-backup/custos/jobs"
)

// TestReload: a valid change takes effect for new jobs while a job's
// RuntimeContext keeps the view it started with; an invalid change keeps
// the running configuration.
func TestReload(t *testing.T) {
	ts := newSetup(t, "@daily", nil)
	cm, err := NewConfigManager(ts.cfgPath, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	running := cm.Current() // what a job that started now holds
	changed := cm.Changed()

	extra := "name: extra\nhandler: file\nparams: {root: ../data}\ndatasets: [{name: all}]\n"
	writeTree(t, ts.dir, map[string]string{"sources/extra.yml": extra})
	if err := cm.Reload(); err != nil {
		t.Fatalf("valid reload: %v", err)
	}
	select {
	case <-changed:
	default:
		t.Error("Changed() was not closed by a successful reload")
	}
	now := cm.Current()
	if now.Generation != running.Generation+1 || now.Source("extra") == nil || now.Handler("extra") == nil {
		t.Fatalf("reload did not take effect: generation %d, extra source %v", now.Generation, now.Source("extra"))
	}
	if running.Source("extra") != nil || len(running.Config.Sources) != 2 {
		t.Error("a job's RuntimeContext changed under it")
	}

	// Now break it: the previous (valid) config stays.
	writeTree(t, ts.dir, map[string]string{"sources/extra.yml": extra + "schedul: oops\n"})
	err = cm.Reload()
	if err == nil || !strings.Contains(err.Error(), `sources/extra.yml:5: field "schedul": unknown field`) {
		t.Fatalf("invalid reload: want the error with file, line and field, got %v", err)
	}
	if cm.Current() != now {
		t.Error("an invalid reload replaced the running configuration")
	}
}

// TestAgentReloadUpdatesSchedule goes through Run's reload channel (what
// SIGHUP feeds): a new source appears in the scheduler; a broken config
// changes nothing.
func TestAgentReloadUpdatesSchedule(t *testing.T) {
	ctx := testContext(t)
	ts := newSetup(t, "@daily", nil)
	reload := make(chan struct{})
	started := make(chan *Agent, 1)
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		done <- Run(runCtx, ts.cfgPath, RunOptions{Logger: testLogger(t), Reload: reload, Started: func(a *Agent) { started <- a }})
	}()
	var a *Agent
	select {
	case a = <-started:
	case err := <-done:
		t.Fatal(err)
	}
	entries := func() map[string]string {
		out := map[string]string{}
		for _, e := range a.Schedule() {
			out[e.Name] = e.Schedule
		}
		return out
	}
	if got := entries(); len(got) != 3 || got["ingest/db"] != "@daily" || got["ingest/files"] != "@daily" || got["sync"] != DefaultSyncSchedule {
		t.Fatalf("schedule before reload: %v", got)
	}
	writeTree(t, ts.dir, map[string]string{"sources/extra.yml": "name: extra\nhandler: file\nschedule: '@hourly'\nparams: {root: ../data}\ndatasets: [{name: all}]\n"})
	reload <- struct{}{}
	waitFor(ctx, t, "the new source in the schedule", func() bool { return entries()["ingest/extra"] == "@hourly" })

	writeTree(t, ts.dir, map[string]string{"sources/extra.yml": "name: extra\nhandler: nope\nschedule: '@weekly'\n"})
	gen := a.cm.Current().Generation
	reload <- struct{}{}
	reload <- struct{}{} // the second send returns once the first reload is done
	if a.cm.Current().Generation != gen || entries()["ingest/extra"] != "@hourly" {
		t.Errorf("a broken config was applied: generation %d->%d, schedule %v", gen, a.cm.Current().Generation, entries())
	}
	stop()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// TestRandomEveryOffsetPerHost: the agent's @random_every offsets come from
// its seed file: the same on every start of one host, different on another.
func TestRandomEveryOffsetPerHost(t *testing.T) {
	ctx := testContext(t)
	next := func(seedFile string) time.Time {
		t.Helper()
		ts := newSetup(t, "@random_every 24h", nil)
		if seedFile != "" {
			writeTree(t, ts.dir, map[string]string{"agent.yml": strings.Replace(mustRead(t, ts.cfgPath), "work_dir: work", "work_dir: work\nrandom_seed_file: "+seedFile, 1)})
		}
		cm, err := NewConfigManager(ts.cfgPath, testLogger(t))
		if err != nil {
			t.Fatal(err)
		}
		a := &Agent{cm: cm, log: testLogger(t)}
		sched := jobs.NewScheduler(jobs.SchedulerOptions{Seed: cm.Current().Seed, Logger: a.log})
		if err := sched.Set(a.entries(cm.Current())); err != nil {
			t.Fatal(err)
		}
		sched.Start(ctx)
		defer sched.Stop(ctx)
		for _, e := range sched.Entries() {
			if e.Name == scheduleName("files") {
				return e.Next
			}
		}
		t.Fatal("no schedule entry for source files")
		return time.Time{}
	}
	shared := filepath.Join(t.TempDir(), "seed")
	hostA1 := next(shared)
	hostA2 := next(shared) // same host (same seed file), another start
	hostB := next("")      // another host: its own work_dir, its own seed
	if !hostA1.Equal(hostA2) {
		t.Errorf("one host, two starts: next runs %v and %v differ", hostA1, hostA2)
	}
	if hostA1.Equal(hostB) {
		t.Errorf("two hosts got the same offset (%v); a 1 in 86400 chance, or the seed is not used", hostA1)
	}
	if _, err := os.Stat(shared); err != nil {
		t.Errorf("seed file not created: %v", err)
	}
}

func mustRead(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
