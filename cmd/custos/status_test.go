package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/custos-backup/custos/agent"
	"github.com/custos-backup/custos/jobs"
	"github.com/custos-backup/custos/metadata"
)

// statusConfig is a small config tree: a file source and a pipe source
// whose dump fails while the file "fail" exists beside agent.yml (pipe
// commands run in the config's folder).
var statusConfig = map[string]string{
	"agent.yml": `hostname: status-host
work_dir: work
repositories:
  - name: local
    url: work/repo
    password_file: pw
http_listen: 127.0.0.1:0
`,
	"pw":                 "status test password\n",
	"data/docs/note.txt": "hello custos status\n",
	"sources/files.yml": `name: files
handler: file
schedule: "@daily"
run_on_start: true
params:
  root: ../data
datasets:
  - name: docs
`,
	"handlers/dump.yml": `name: dump
type: pipe
params:
  backup_command: 'if [ -e fail ]; then echo "dump broke: table users is locked" >&2; exit 1; fi; echo dumped'
  restore_command: 'cat >/dev/null'
`,
	"sources/db.yml": `name: db
handler: dump
schedule: "@daily"
run_on_start: true
datasets:
  - name: main
`,
}

func writeFiles(t *testing.T, dir string, files map[string]string) {
	t.Helper()
	for name, content := range files {
		p := filepath.Join(dir, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// runCLI runs the command line in process through the cobra root, as main
// does, and returns what it printed and the error main would print.
func runCLI(ctx context.Context, args ...string) (stdout, stderr string, err error) {
	root := newRootCmd()
	var o, e bytes.Buffer
	root.SetOut(&o)
	root.SetErr(&e)
	root.SetArgs(args)
	err = root.ExecuteContext(ctx)
	return o.String(), e.String(), err
}

// startAgent runs a real agent (embedded etcd, local repository) on the
// config and returns it with its HTTP address; it stops at the test's end.
func startAgent(t *testing.T, cfgPath string, options ...func(*agent.RunOptions)) (*agent.Agent, string) {
	t.Helper()
	ctx, stop := context.WithCancel(context.Background())
	started := make(chan *agent.Agent, 1)
	addr := make(chan string, 1)
	done := make(chan error, 1)
	opts := agent.RunOptions{
		Logger:    slog.New(slog.NewTextHandler(io.Discard, nil)),
		Listening: func(s string) { addr <- s },
		Started:   func(a *agent.Agent) { started <- a },
		// One attempt: a failing dump must show as failed at once,
		// not after the default 30s backoff.
		Retry:     &jobs.RetryPolicy{MaxAttempts: 1},
		StopGrace: 5 * time.Second,
	}
	for _, o := range options {
		o(&opts)
	}
	go func() { done <- agent.Run(ctx, cfgPath, opts) }()
	var a *agent.Agent
	select {
	case a = <-started:
	case err := <-done:
		stop()
		t.Fatalf("agent stopped before it started: %v", err)
	}
	t.Cleanup(func() {
		stop()
		if err := <-done; err != nil {
			t.Errorf("agent stop: %v", err)
		}
	})
	return a, <-addr
}

// waitDone waits until the newest finished job of every dataset in want
// has the wanted result and the catalog lists the ok ones.
func waitDone(ctx context.Context, t *testing.T, a *agent.Agent, want map[string]jobs.Result) *agent.StatusReport {
	t.Helper()
	for {
		rep := a.Status(ctx)
		got := map[string]jobs.Result{}
		var errs []string
		for _, j := range rep.Done { // newest first
			name := strings.TrimPrefix(j.LockKey, ingestLockPrefix)
			if _, seen := got[name]; !seen {
				got[name] = j.Result
				if j.Error != "" {
					errs = append(errs, name+": "+j.Error)
				}
			}
		}
		inCatalog := map[string]bool{}
		for _, b := range rep.Backups {
			for _, d := range b.Datasets {
				inCatalog[d.Source+"/"+d.Name] = true
			}
		}
		ready := true
		for name, res := range want {
			ready = ready && got[name] == res && (res != jobs.ResultOK || inCatalog[name])
			if res == jobs.ResultOK && got[name] != "" && got[name] != res {
				t.Fatalf("%s: newest run %s, want ok: %q", name, got[name], errs)
			}
		}
		if ready {
			return rep
		}
		select {
		case <-ctx.Done():
			t.Fatalf("gave up waiting for results %v: have %v %q", want, got, errs)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// closedPort returns a loopback address nothing listens on.
func closedPort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// TestStatusCommand runs a real agent, lets both sources back up, and runs
// "custos status" against it: healthy, then with the dump failing, and with
// nothing listening.
func TestStatusCommand(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	dir := t.TempDir()
	writeFiles(t, dir, statusConfig)
	a, addr := startAgent(t, filepath.Join(dir, "agent.yml"))
	rep := waitDone(ctx, t, a, map[string]jobs.Result{"files/docs": jobs.ResultOK, "db/main": jobs.ResultOK})
	var snaps []string
	for _, b := range rep.Backups {
		for _, d := range b.Datasets {
			snaps = append(snaps, shortIDs(agent.SnapshotIDs(d)[0]))
		}
	}

	// The agent listens on port 0; a second agent.yml beside the first
	// (same sources/ and handlers/) names the port it got, so that -c is
	// tested reading http_listen.
	cfg := strings.Replace(statusConfig["agent.yml"], "127.0.0.1:0", addr, 1)
	writeFiles(t, dir, map[string]string{"status.yml": cfg})
	statusYML := filepath.Join(dir, "status.yml")

	notRunning := closedPort(t)
	downYML := filepath.Join(dir, "down.yml")
	writeFiles(t, dir, map[string]string{"down.yml": strings.Replace(statusConfig["agent.yml"], "127.0.0.1:0", notRunning, 1)})
	healthy := []struct {
		name    string
		args    []string
		wantErr string   // "" = exit 0
		want    []string // in stdout, or in the error
	}{
		{"text, address from -c", []string{"status", "-c", statusYML},
			"", append([]string{"custos agent on status-host", "files/docs", "db/main", "ok", "Sources (2)", "@daily (and at start)"}, snaps...)},
		{"text, --listen", []string{"status", "--listen", addr},
			"", []string{"status-host", "files/docs", "db/main"}},
		{"nothing listening", []string{"status", "--listen", notRunning},
			"no agent answers at " + notRunning + " (start it with: custos agent -c " + defaultConfig + " --listen " + notRunning + ")", nil},
		{"nothing listening, address from -c", []string{"status", "-c", downYML},
			"no agent answers at " + notRunning + " (start it with: custos agent -c " + downYML + ")", nil},
		{"a non-200 answer", []string{"status", "--listen", "http://" + addr + "/nothing"},
			"GET /nothing/api/status: 404 Not Found: 404 page not found", nil},
	}
	for _, tc := range healthy {
		t.Run(tc.name, func(t *testing.T) {
			out, _, err := runCLI(ctx, tc.args...)
			t.Logf("custos %s: err %v\n%s", strings.Join(tc.args, " "), err, out)
			if tc.wantErr == "" {
				if err != nil {
					t.Fatalf("exit non-zero: %v\n%s", err, out)
				}
				for _, w := range tc.want {
					if !strings.Contains(out, w) {
						t.Errorf("output lacks %q:\n%s", w, out)
					}
				}
				return
			}
			if err == nil {
				t.Fatalf("exit 0, want an error saying %q\n%s", tc.wantErr, out)
			}
			if msg := err.Error(); !strings.Contains(msg, tc.wantErr) || strings.Contains(msg, "\n") {
				t.Errorf("error %q: want one line saying %q", msg, tc.wantErr)
			}
		})
	}

	t.Run("a broken config", func(t *testing.T) {
		// Config problems are listed one per line, as the other commands
		// list them.
		_, _, err := runCLI(ctx, "status", "-c", filepath.Join(dir, "missing.yml"))
		if err == nil || !strings.Contains(err.Error(), "missing.yml: cannot read config") {
			t.Errorf("err = %v, want the config problem", err)
		}
	})

	t.Run("json", func(t *testing.T) {
		out, _, err := runCLI(ctx, "status", "--json", "--listen", addr)
		if err != nil {
			t.Fatal(err)
		}
		var got agent.StatusReport
		if err := json.Unmarshal([]byte(out), &got); err != nil {
			t.Fatalf("--json output does not parse: %v\n%s", err, out)
		}
		var doc any
		if err := json.Unmarshal([]byte(out), &doc); err != nil {
			t.Fatal(err)
		}
		checkKeys(t, "status --json", doc, "")
		want := a.Status(ctx)
		if got.Host != want.Host || got.Config != want.Config || !got.Started.Equal(want.Started) || got.Generation != want.Generation {
			t.Errorf("--json: host %q config %q started %v gen %d; the agent says %q %q %v %d",
				got.Host, got.Config, got.Started, got.Generation, want.Host, want.Config, want.Started, want.Generation)
		}
		if got.Version != agent.Version() || got.PID != os.Getpid() {
			t.Errorf("--json: version %q pid %d; want %q and %d", got.Version, got.PID, agent.Version(), os.Getpid())
		}
		if g, w := jobIDs(got.Done), jobIDs(want.Done); !slices.Equal(g, w) {
			t.Errorf("--json finished jobs %v, the agent has %v", g, w)
		}
		if len(got.Sources) != 2 || len(got.Backups) != len(want.Backups) {
			t.Errorf("--json: %d sources, %d backups; want 2 and %d", len(got.Sources), len(got.Backups), len(want.Backups))
		}
	})

	// Now the dump fails: the newest db/main run failed, files/docs is
	// still ok.
	writeFiles(t, dir, map[string]string{"fail": ""})
	a.SubmitSource("db")
	waitDone(ctx, t, a, map[string]jobs.Result{"files/docs": jobs.ResultOK, "db/main": jobs.ResultError})
	failing := []struct {
		name string
		args []string
		want []string // in stdout
	}{
		{"text", []string{"status", "-c", statusYML}, []string{"db/main", "FAILED (error)", "dump broke: table users is locked", "files/docs"}},
		{"json", []string{"status", "--json", "--listen", addr}, []string{`"result": "error"`, "dump broke"}},
	}
	for _, tc := range failing {
		t.Run("failing "+tc.name, func(t *testing.T) {
			out, _, err := runCLI(ctx, tc.args...)
			t.Logf("custos %s: err %v\n%s", strings.Join(tc.args, " "), err, out)
			if err == nil || !strings.Contains(err.Error(), "the last run of 1 dataset(s) failed: db/main") {
				t.Errorf("err = %v, want the failed db/main", err)
			}
			for _, w := range tc.want {
				if !strings.Contains(out, w) {
					t.Errorf("output lacks %q:\n%s", w, out)
				}
			}
			// The healthy dataset is not reported failed.
			if err != nil && strings.Contains(err.Error(), "files/docs") {
				t.Errorf("err = %v names the healthy dataset", err)
			}
		})
	}
}

func jobIDs(js []jobs.Status) []string {
	var out []string
	for _, j := range js {
		out = append(out, j.ID)
	}
	return out
}

func TestStatusURL(t *testing.T) {
	cases := []struct{ listen, want string }{
		{"127.0.0.1:7373", "http://127.0.0.1:7373/api/status"},
		{":7373", "http://127.0.0.1:7373/api/status"},
		{"0.0.0.0:7373", "http://127.0.0.1:7373/api/status"},
		{"[::]:7373", "http://[::1]:7373/api/status"},
		{"agent.example:80", "http://agent.example:80/api/status"},
		{"http://10.0.0.5:7373/", "http://10.0.0.5:7373/api/status"},
		{"7373", ""}, // no port: an error
	}
	for _, tc := range cases {
		got, err := statusURL(tc.listen)
		if (err != nil) != (tc.want == "") || got != tc.want {
			t.Errorf("statusURL(%q) = %q, %v; want %q", tc.listen, got, err, tc.want)
		}
	}
}

func TestRoundDur(t *testing.T) {
	cases := []struct {
		d    time.Duration
		want string
	}{
		{1500 * time.Millisecond, "2s"},
		{90 * time.Second, "2m"},
		{2*time.Hour + 4*time.Minute + 40*time.Second, "2h5m"},
		{3 * time.Hour, "3h"},
		{50 * time.Hour, "2d2h"},
	}
	for _, tc := range cases {
		if got := roundDur(tc.d); got != tc.want {
			t.Errorf("roundDur(%v) = %q, want %q", tc.d, got, tc.want)
		}
	}
}

// TestStatusCatalogUnreachable runs a real agent whose external etcd does
// not answer: the agent starts anyway, a backup runs and its record waits
// in the spool, and status exits non-zero naming the catalog.
func TestStatusCatalogUnreachable(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	dir := t.TempDir()
	files := map[string]string{}
	for k, v := range statusConfig {
		files[k] = v
	}
	files["agent.yml"] = strings.Replace(statusConfig["agent.yml"], "http_listen:", "metadb:\n  endpoints: [\""+closedPort(t)+"\"]\nhttp_listen:", 1)
	writeFiles(t, dir, files)
	cfg := filepath.Join(dir, "agent.yml")
	a, addr := startAgent(t, cfg)
	for a.Status(ctx).SpoolDepth == 0 {
		select {
		case <-ctx.Done():
			t.Fatal("no backup record reached the spool")
		case <-time.After(100 * time.Millisecond):
		}
	}
	_, _, err := runCLI(ctx, "status", "--listen", addr)
	if err == nil || !strings.Contains(err.Error(), "cannot reach its catalog") {
		t.Errorf("status with the catalog unreachable: %v", err)
	}
}

// TestDatasetResultNames: the run of a source's datasets_command (an
// ingest with no dataset) gets a row that says what it was, from a job in
// memory or an outcome from the catalog alike.
func TestDatasetResultNames(t *testing.T) {
	now := time.Now()
	rep := &agent.StatusReport{
		Done: []jobs.Status{{ID: "j1", Kind: "ingest", Source: "db", State: jobs.StateDone, Result: jobs.ResultOK, Finished: now}},
		Outcomes: []*metadata.Outcome{
			{Kind: "ingest", Source: "mail", JobID: "j2", Result: "failed", End: now},
			{Kind: "ingest", Source: "mail", Dataset: "spool", JobID: "j3", Result: "ok", End: now},
		},
	}
	var got []string
	for _, r := range datasetResults(rep) {
		got = append(got, r.name+"="+string(r.job.Result))
	}
	want := []string{"db (datasets_command)=ok", "mail (datasets_command)=failed", "mail/spool=ok"}
	if !slices.Equal(got, want) {
		t.Errorf("rows %q, want %q", got, want)
	}
}
