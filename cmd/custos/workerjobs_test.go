package main

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/custos-backup/custos/agent"
	"github.com/custos-backup/custos/jobs"
)

// TestWorkerJobs runs a real agent whose jobs run in worker processes
// (this test binary acting as custos) and shows every kind leaving the
// agent's process: an ingest and the replication it queues complete and
// the replica record appears; a restore submitted through the job API
// runs at the configured nice level and I/O class, and DELETE leaves none
// of its processes behind; a second restore writes the data; a source
// with its own nice_level and io_class gets them; fixity and sync run
// in workers too.
func TestWorkerJobs(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 150*time.Second)
	defer cancel()
	dir := t.TempDir()
	target := t.TempDir()
	writeFiles(t, dir, map[string]string{
		"agent.yml": `hostname: worker-host
work_dir: work
repositories:
  - name: local
    url: work/repo
    password_file: pw
  - name: offsite
    url: work/offsite
    password_file: pw
http_listen: 127.0.0.1:0
default_nice_level: 7
default_io_class: 3
`,
		"pw": "worker test password\n",
		// The restore command waits for a file, and names itself with a
		// marker, so that the test finds it in /proc.
		"handlers/dump.yml": "name: dump\ntype: pipe\nparams:\n  backup_command: 'echo dumped'\n  restore_command: 'while [ ! -e go-restore ]; do sleep 0.05; done; : restore-marker; cat >\"$CUSTOS_RESTORE_TARGET/out\"'\n",
		"handlers/slow.yml": "name: slow\ntype: pipe\nparams:\n  backup_command: 'while [ ! -e go-prio ]; do sleep 0.05; done; : prio-marker; echo slow'\n  restore_command: 'cat >/dev/null'\n",
		"sources/db.yml":    "name: db\nhandler: dump\ndatasets:\n  - name: main\nreplicate:\n  to: [offsite]\n",
		"sources/prio.yml":  "name: prio\nhandler: slow\nnice_level: 12\nio_class: 2\ndatasets:\n  - name: x\n",
	})
	cfg := filepath.Join(dir, "agent.yml")
	trace := filepath.Join(t.TempDir(), "trace")
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	a, _ := startAgent(t, cfg, func(o *agent.RunOptions) {
		o.Logger = testLog(t)
		o.Worker = &agent.WorkerOptions{Binary: exe, Env: []string{"CUSTOS_TEST_AS_CUSTOS=1", "CUSTOS_TEST_TRACE=" + trace}}
	})
	srv := httptest.NewServer(a.Handler())
	defer srv.Close()

	poll := func(what string, cond func() bool) {
		t.Helper()
		for !cond() {
			select {
			case <-ctx.Done():
				t.Fatalf("gave up waiting for %s", what)
			case <-time.After(20 * time.Millisecond):
			}
		}
	}
	// finished waits for the n-th finished job of a kind and source.
	finished := func(kind, source string, n int) jobs.Status {
		t.Helper()
		var last jobs.Status
		poll(kind+" job of "+source, func() bool {
			count := 0
			for _, st := range a.Runner().Done() {
				if st.Kind == kind && st.Source == source {
					if count == 0 {
						last = st
					}
					count++
				}
			}
			return count >= n
		})
		return last
	}
	api := func(method, path, body string) (int, jobs.Status) {
		t.Helper()
		req, err := http.NewRequestWithContext(ctx, method, srv.URL+path, strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", method, path, err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		var out struct {
			jobs.Status
			Job *jobs.Status `json:"job"`
		}
		if err := json.Unmarshal(b, &out); err != nil {
			t.Fatalf("%s %s: %d %s", method, path, resp.StatusCode, b)
		}
		if out.Job != nil {
			return resp.StatusCode, *out.Job
		}
		return resp.StatusCode, out.Status
	}
	checkPriority := func(what string, pid, nice, class int) {
		t.Helper()
		if n := niceOf(t, pid); n != nice {
			t.Errorf("%s (pid %d): nice level %d, want %d", what, pid, n, nice)
		}
		if c := ioprioClass(t, pid); c != class {
			t.Errorf("%s (pid %d): I/O class %d, want %d", what, pid, c, class)
		}
	}
	firstPid := func(what string, list func() []int) int {
		t.Helper()
		var pids []int
		poll(what, func() bool { pids = list(); return len(pids) > 0 })
		return pids[0]
	}

	// 1. An ingest, then the replication it queues, both in workers.
	a.SubmitSource("db")
	if st := finished("ingest", "db", 1); st.Result != jobs.ResultOK {
		t.Fatalf("ingest: %s %q", st.Result, st.Error)
	}
	if st := finished("replicate", "db", 1); st.Result != jobs.ResultOK {
		t.Fatalf("replicate in a worker: %s %q", st.Result, st.Error)
	}
	held, err := a.Manager().HeldIn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var replicas []string
	for _, recs := range held {
		for _, r := range recs {
			if r.Source == "db" && r.Dataset == "main" && r.Verified {
				replicas = append(replicas, r.Repository)
			}
		}
	}
	if len(replicas) != 1 || replicas[0] != "offsite" {
		t.Errorf("replica records of db/main after the worker's replication: %v (all: %v)", replicas, held)
	}

	// 2. A restore through the API runs in a worker at nice 7 and in the
	// idle I/O class, and so does its restore command; DELETE cancels it
	// and leaves neither behind.
	code, st := api("POST", "/api/jobs", `{"kind": "restore", "source": "db", "dataset": "main", "target": "`+target+`"}`)
	if code != http.StatusCreated {
		t.Fatalf("POST restore: %d %+v", code, st)
	}
	worker := firstPid("the restore worker", func() []int { return workerPidsOf(cfg, "restore") })
	command := firstPid("the restore command", func() []int { return commandPids("restore-marker") })
	checkPriority("restore worker", worker, 7, 3)
	checkPriority("restore command", command, 7, 3)
	code, final := api("DELETE", "/api/jobs/"+st.ID, "")
	if code != http.StatusOK || final.State != jobs.StateDone || final.Result != jobs.ResultCanceled {
		t.Errorf("DELETE of the restore: %d %s %s %q", code, final.State, final.Result, final.Error)
	}
	if left := append(workerPidsOf(cfg, "restore"), commandPids("restore-marker")...); len(left) > 0 {
		t.Errorf("processes left after DELETE of the restore job: %v", left)
	}

	// 3. A restore that may go on writes the data.
	writeFiles(t, dir, map[string]string{"go-restore": ""})
	_, st = api("POST", "/api/jobs", `{"kind": "restore", "source": "db", "dataset": "main", "target": "`+target+`"}`)
	if got, err := a.Runner().Wait(ctx, st.ID); err != nil || got.Result != jobs.ResultOK {
		t.Fatalf("restore in a worker: %s %q %v", got.Result, got.Error, err)
	}
	if b, err := os.ReadFile(filepath.Join(target, "db", "main", "out")); err != nil || string(b) != "dumped\n" {
		t.Errorf("restored data: %q %v", b, err)
	}

	// 4. A source with its own nice_level and io_class: its worker and
	// the command that produces its data run at them.
	a.SubmitSource("prio")
	worker = firstPid("the prio ingest worker", func() []int { return workerPids(cfg) })
	command = firstPid("the prio backup command", func() []int { return commandPids("prio-marker") })
	checkPriority("prio ingest worker", worker, 12, 2)
	checkPriority("prio backup command", command, 12, 2)
	writeFiles(t, dir, map[string]string{"go-prio": ""})
	if st := finished("ingest", "prio", 1); st.Result != jobs.ResultOK {
		t.Fatalf("prio ingest: %s %q", st.Result, st.Error)
	}

	// 5. Fixity and sync, repository-level jobs, in workers.
	resp, err := http.Post(srv.URL+"/api/run?kind=fixity&repository=local", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	var run struct{ Jobs []string }
	err = json.NewDecoder(resp.Body).Decode(&run)
	resp.Body.Close()
	if err != nil || len(run.Jobs) != 1 {
		t.Fatalf("POST /api/run?kind=fixity: %d %+v %v", resp.StatusCode, run, err)
	}
	if got, err := a.Runner().Wait(ctx, run.Jobs[0]); err != nil || got.Result != jobs.ResultOK || got.Progress.TotalFiles == 0 {
		t.Errorf("fixity in a worker: %s %q %+v %v", got.Result, got.Error, got.Progress, err)
	}
	_, st = api("POST", "/api/jobs", `{"kind": "sync"}`)
	if got, err := a.Runner().Wait(ctx, st.ID); err != nil || got.Result != jobs.ResultOK {
		t.Errorf("sync in a worker: %s %q %v", got.Result, got.Error, err)
	}

	// Every job above ran in a worker process of its kind.
	b, err := os.ReadFile(trace)
	if err != nil {
		t.Fatal(err)
	}
	ran := map[string]int{}
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		if f := strings.Fields(line); len(f) > 1 && f[0] == "worker" {
			ran[f[1]]++
		}
	}
	want := map[string]int{"ingest": 2, "replicate": 1, "restore": 2, "fixity": 1, "sync": 1}
	for kind, n := range want {
		if ran[kind] < n {
			t.Errorf("%d %s worker process(es) ran, want at least %d (all: %v)", ran[kind], kind, n, ran)
		}
	}
}
