package main

import (
	"bytes"
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/custos-backup/custos/agent"
	"github.com/custos-backup/custos/jobs"
	"github.com/custos-backup/custos/metadata"
)

// ioprioClass reads a process's I/O scheduling class (ioprio_get(2);
// /proc does not show it).
func ioprioClass(t *testing.T, pid int) int {
	t.Helper()
	const ioprioWhoProcess = 1
	v, _, errno := syscall.Syscall(syscall.SYS_IOPRIO_GET, ioprioWhoProcess, uintptr(pid), 0)
	if errno != 0 {
		t.Fatalf("ioprio_get(%d): %v", pid, errno)
	}
	return int(v) >> 13
}

// niceOf reads a process's nice level from /proc/PID/stat (field 19).
func niceOf(t *testing.T, pid int) int {
	t.Helper()
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		t.Fatal(err)
	}
	// The command name (field 2) may hold spaces: count from its end.
	fields := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+2:]))
	n, err := strconv.Atoi(fields[16]) // field 19 overall
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// workerPids lists the ingest worker processes running for config cfg.
func workerPids(cfg string) []int { return workerPidsOf(cfg, "ingest") }

// workerPidsOf lists the worker processes of one kind running for config
// cfg.
func workerPidsOf(cfg, kind string) []int {
	return pidsWhere(func(args []string) bool {
		return len(args) > 4 && args[1] == "worker" && args[2] == kind && args[4] == cfg
	})
}

// pidsWhere lists the live processes whose command line matches.
func pidsWhere(match func(args []string) bool) []int {
	var pids []int
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil || len(b) == 0 { // gone, or a zombie
			continue
		}
		if match(strings.Split(string(b), "\x00")) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// commandPids lists the live shell commands whose command line holds
// marker.
func commandPids(marker string) []int {
	return pidsWhere(func(args []string) bool { return strings.Contains(strings.Join(args, " "), marker) })
}

// TestWorkerProcesses runs a real agent whose jobs run in worker processes
// (this test binary acting as custos): the process that reads the dataset
// runs at the configured nice level and I/O class while the agent does
// not, a worker killed with SIGKILL fails its job and not the agent, and
// the next job backs up and reaches the catalog.
func TestWorkerProcesses(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{
		"agent.yml": `hostname: worker-host
work_dir: work
repositories:
  - name: local
    url: work/repo
    password_file: pw
http_listen: 127.0.0.1:0
default_nice_level: 7
default_io_class: 3
`,
		"pw":                "worker test password\n",
		"handlers/slow.yml": "name: slow\ntype: pipe\nparams:\n  backup_command: 'while [ ! -e go ]; do sleep 0.05; done; echo dumped'\n  restore_command: 'cat >/dev/null'\n",
		"sources/db.yml":    "name: db\nhandler: slow\ndatasets:\n  - name: main\n",
	})
	// The agent is given a relative path, as in the README's tour; its
	// workers run in the config's folder and must still find it.
	cfg := filepath.Join(dir, "agent.yml")
	t.Chdir(filepath.Dir(dir))
	relCfg := filepath.Join(filepath.Base(dir), "agent.yml")
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	a, _ := startAgent(t, relCfg, func(o *agent.RunOptions) {
		o.Logger = testLog(t)
		o.Worker = &agent.WorkerOptions{Binary: exe, Env: []string{"CUSTOS_TEST_AS_CUSTOS=1"}}
	})
	waitPids := func() []int {
		for {
			if pids := workerPids(cfg); len(pids) > 0 {
				return pids
			}
			select {
			case <-ctx.Done():
				t.Fatal("no worker process appeared")
			case <-time.After(20 * time.Millisecond):
			}
		}
	}
	lastResult := func(n int) jobs.Status {
		for {
			if d := a.Runner().Done(); len(d) >= n {
				return d[0]
			}
			select {
			case <-ctx.Done():
				t.Fatalf("gave up waiting for job %d", n)
			case <-time.After(50 * time.Millisecond):
			}
		}
	}

	// 1. The worker runs at nice 7 and in the idle I/O class; the agent
	// keeps its own priority. Then it is killed: its job fails.
	a.SubmitSource("db")
	pid := waitPids()[0]
	if n := niceOf(t, pid); n != 7 {
		t.Errorf("worker nice level %d, want 7", n)
	}
	if c := ioprioClass(t, pid); c != 3 {
		t.Errorf("worker I/O class %d, want 3 (idle)", c)
	}
	if n := niceOf(t, os.Getpid()); n == 7 {
		t.Errorf("the agent itself runs at nice 7")
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	st := lastResult(1)
	if st.Result != jobs.ResultError || !strings.Contains(st.Error, "worker process ended without a result") {
		t.Errorf("job of the killed worker: %s %q", st.Result, st.Error)
	}

	// 2. The agent goes on: the next run backs up and is findable.
	writeFiles(t, dir, map[string]string{"go": ""})
	a.SubmitSource("db")
	st = lastResult(2)
	if st.Result != jobs.ResultOK {
		t.Fatalf("second job: %s %q", st.Result, st.Error)
	}
	if st.Progress.Bytes == 0 {
		t.Errorf("no progress reached the agent from the worker: %+v", st.Progress)
	}
	found, err := a.Manager().Find(ctx, metadata.FindRequest{Pattern: "db/main/*"})
	if err != nil || len(found) != 1 {
		t.Errorf("find after the worker's backup: %d backups, %v", len(found), err)
	}
}

type tLogWriter struct{ t *testing.T }

func (w tLogWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func testLog(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(tLogWriter{t}, nil))
}
