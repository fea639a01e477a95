package agent

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/custos-backup/custos/jobs"
)

// startTestAgent runs a real agent on ts and returns it with its base URL.
// startTestAgent runs a real agent on ts (one attempt per job unless an
// option says otherwise), stops it when the test ends, and returns it with
// its base URL.
func startTestAgent(ctx context.Context, t *testing.T, ts *testSetup, options ...func(*RunOptions)) (*Agent, string) {
	t.Helper()
	runCtx, stop := context.WithCancel(ctx)
	started := make(chan *Agent, 1)
	addr := make(chan string, 1)
	done := make(chan error, 1)
	opts := RunOptions{Logger: testLogger(t), Started: func(a *Agent) { started <- a }, Listening: func(s string) { addr <- s },
		Retry: &jobs.RetryPolicy{MaxAttempts: 1}, StopGrace: 10 * time.Second}
	for _, o := range options {
		o(&opts)
	}
	go func() { done <- Run(runCtx, ts.cfgPath, opts) }()
	var a *Agent
	select {
	case a = <-started:
	case err := <-done:
		t.Fatalf("agent stopped: %v", err)
	}
	t.Cleanup(func() {
		stop()
		if err := <-done; err != nil {
			t.Errorf("agent: %v", err)
		}
	})
	return a, "http://" + <-addr
}

func apiCall(ctx context.Context, t *testing.T, method, url, body string) (int, []byte) {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

// TestJobsAPI drives the job API of a real agent: refusals that start
// nothing, an ingest followed through its event stream, a restore as a
// job, and a cancel that leaves no process behind.
func TestJobsAPI(t *testing.T) {
	ctx := testContext(t)
	ts := newSetup(t, "@every 1h", map[string]string{
		"handlers/slow.yml": "name: slow\ntype: pipe\nparams:\n  backup_command: 'exec sleep 37.25'\n  restore_command: 'cat >/dev/null'\n",
		"sources/slow.yml":  "name: slow\nhandler: slow\ndatasets:\n  - name: main\n",
	})
	a, base := startTestAgent(ctx, t, ts)

	refused := []struct {
		name, body string
		want       int
	}{
		{"malformed JSON", `{"kind": "ingest",`, 400},
		{"unknown field", `{"kind": "ingest", "source": "files", "dataset": "docs", "colour": 1}`, 400},
		{"no kind", `{"source": "files"}`, 400},
		{"unknown kind", `{"kind": "defrag", "source": "files"}`, 400},
		{"unknown source", `{"kind": "ingest", "source": "nope", "dataset": "docs"}`, 404},
		{"unknown dataset", `{"kind": "ingest", "source": "files", "dataset": "nope"}`, 404},
		{"ingest without dataset", `{"kind": "ingest", "source": "files"}`, 400},
		{"restore without target", `{"kind": "restore", "pattern": "files/*"}`, 400},
		{"restore to a relative target", `{"kind": "restore", "pattern": "files/*", "target": "out"}`, 400},
	}
	for _, tc := range refused {
		code, body := apiCall(ctx, t, "POST", base+"/api/jobs", tc.body)
		var e struct{ Error string }
		if code != tc.want || json.Unmarshal(body, &e) != nil || e.Error == "" {
			t.Errorf("%s: %d %s, want %d with a message", tc.name, code, body, tc.want)
		}
	}
	if s := a.runner.Status(); len(s.Pending)+len(s.Running)+len(s.Done) != 0 {
		t.Fatalf("refused requests started jobs: %+v", s)
	}

	// An ingest, followed through its events.
	code, body := apiCall(ctx, t, "POST", base+"/api/jobs", `{"kind": "ingest", "source": "files", "dataset": "docs"}`)
	var created struct {
		ID string `json:"id"`
	}
	if code != http.StatusCreated || json.Unmarshal(body, &created) != nil || created.ID == "" {
		t.Fatalf("POST ingest: %d %s", code, body)
	}
	final := followEvents(ctx, t, base+"/api/jobs/"+created.ID+"/events")
	if final.Result != jobs.ResultOK || final.Kind != "ingest" || final.Source != "files" || final.Dataset != "docs" {
		t.Fatalf("ingest job ended %+v", final)
	}

	// A restore as a job.
	target := t.TempDir()
	code, body = apiCall(ctx, t, "POST", base+"/api/jobs", `{"kind": "restore", "source": "files", "dataset": "docs", "target": "`+target+`"}`)
	if code != http.StatusCreated || json.Unmarshal(body, &created) != nil {
		t.Fatalf("POST restore: %d %s", code, body)
	}
	var st jobs.Status
	waitFor(ctx, t, "the restore job", func() bool {
		code, body := apiCall(ctx, t, "GET", base+"/api/jobs/"+created.ID, "")
		return code == 200 && json.Unmarshal(body, &st) == nil && st.State == jobs.StateDone
	})
	if st.Result != jobs.ResultOK || st.Queue != "restore" {
		t.Fatalf("restore job: %+v", st)
	}
	got, err := os.ReadFile(filepath.Join(target, "files", "docs", "docs", "a.txt"))
	if err != nil || !bytes.Equal(got, ts.files["docs/a.txt"]) {
		t.Errorf("restored a.txt: %q, %v", got, err)
	}

	// Cancel: the job ends cancelled and its command is gone.
	code, body = apiCall(ctx, t, "POST", base+"/api/jobs", `{"kind": "ingest", "source": "slow", "dataset": "main"}`)
	if code != http.StatusCreated || json.Unmarshal(body, &created) != nil {
		t.Fatalf("POST slow ingest: %d %s", code, body)
	}
	waitFor(ctx, t, "the slow command to run", func() bool { return len(processesWith("37.25")) > 0 })
	code, body = apiCall(ctx, t, "DELETE", base+"/api/jobs/"+created.ID, "")
	if code != 200 || json.Unmarshal(body, &st) != nil || st.State != jobs.StateDone || st.Result != jobs.ResultCanceled {
		t.Fatalf("DELETE: %d %s, want the job done and canceled", code, body)
	}
	if pids := processesWith("37.25"); len(pids) > 0 {
		t.Errorf("processes of the cancelled job still run: %v", pids)
	}
	if code, _ := apiCall(ctx, t, "GET", base+"/api/jobs/no-such-job", ""); code != 404 {
		t.Errorf("GET an unknown job: %d, want 404", code)
	}
}

// followEvents reads a job's event stream to its end and returns the last
// status, checking that the states only move forward.
func followEvents(ctx context.Context, t *testing.T, url string) jobs.Status {
	t.Helper()
	req, _ := http.NewRequestWithContext(ctx, "GET", url, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "text/event-stream" {
		t.Fatalf("GET %s: %s %s", url, resp.Status, resp.Header.Get("Content-Type"))
	}
	var last jobs.Status
	n := 0
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		data, ok := strings.CutPrefix(sc.Text(), "data: ")
		if !ok {
			continue
		}
		var st jobs.Status
		if err := json.Unmarshal([]byte(data), &st); err != nil {
			t.Fatalf("event data: %v: %s", err, data)
		}
		if st.ID == "" {
			continue // a "lost" event
		}
		if order(st.State) < order(last.State) {
			t.Errorf("state went back from %s to %s", last.State, st.State)
		}
		last = st
		n++
	}
	if n == 0 || last.State != jobs.StateDone {
		t.Fatalf("the stream ended after %d events in state %q", n, last.State)
	}
	return last
}

func order(s jobs.State) int {
	switch s {
	case jobs.StatePending:
		return 1
	case jobs.StateRunning, jobs.StateRetrying:
		return 2
	case jobs.StateDone:
		return 3
	}
	return 0
}

// processesWith lists the pids whose command line has an argument equal
// to arg.
func processesWith(arg string) []string {
	var pids []string
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		for _, a := range bytes.Split(b, []byte{0}) {
			if string(a) == arg {
				pids = append(pids, e.Name())
			}
		}
	}
	return pids
}

// TestJobEventsSlowSubscriber: a subscriber that never reads loses events
// and is told how many; publishing never waits for it, and another
// subscriber gets every event.
func TestJobEventsSlowSubscriber(t *testing.T) {
	e := newJobEvents()
	stuck, unsub1 := e.subscribe("j")
	defer unsub1()
	reader, unsub2 := e.subscribe("j")
	defer unsub2()
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; i < 200; i++ {
			e.publish(jobs.Status{ID: "j", Attempts: i})
			if st := <-reader.ch; st.Attempts != i {
				t.Errorf("the reading subscriber got event %d, want %d", st.Attempts, i)
			}
		}
	}()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("publish blocked on a subscriber that does not read")
	}
	if lost := stuck.takeLost(); lost != 200-jobEventBuffer {
		t.Errorf("the stuck subscriber lost %d events, want %d", lost, 200-jobEventBuffer)
	}
	e.publish(jobs.Status{ID: "other"}) // no subscribers: nothing happens
}
