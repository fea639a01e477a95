package agent

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/custos-backup/custos/jobs"
)

// TestOnFailureCommand runs a real agent whose pipe dump fails, and checks
// that the source's on_failure_command ran once, after the final attempt,
// with the outcome in its environment, and that the agent's own command
// ran for the other failing source.
func TestOnFailureCommand(t *testing.T) {
	ctx := testContext(t)
	ts := newSetup(t, "@every 1h", map[string]string{
		"agent.yml": `hostname: test-host
work_dir: work
repositories:
  - name: local
    url: work/repo
    password_file: pw
http_listen: 127.0.0.1:0
on_failure_command: 'env | grep ^CUSTOS_ | sort > "agent-hook.$CUSTOS_SOURCE"'
`,
		"handlers/broken.yml": "name: broken\ntype: pipe\nparams:\n  backup_command: 'echo dump failed >&2; exit 3'\n  restore_command: 'cat >/dev/null'\n",
		"sources/db.yml": `name: db
handler: broken
datasets:
  - name: main
on_failure_command: 'env | grep ^CUSTOS_ | sort >> source-hook.out'
`,
		"sources/other.yml": "name: other\nhandler: broken\ndatasets:\n  - name: x\n",
	})
	a, _ := startTestAgent(ctx, t, ts, func(o *RunOptions) {
		o.Retry = &jobs.RetryPolicy{MaxAttempts: 2, InitialBackoff: 10 * time.Millisecond, MaxBackoff: 10 * time.Millisecond}
	})
	a.SubmitSource("db")
	a.SubmitSource("other")
	srcHook := filepath.Join(ts.dir, "source-hook.out")
	agentHook := filepath.Join(ts.dir, "agent-hook.other")
	// The shell creates the file before env writes to it: wait for the
	// whole of it (sort prints when env is done).
	waitFor(ctx, t, "both hooks", func() bool {
		b1, _ := os.ReadFile(srcHook)
		b2, _ := os.ReadFile(agentHook)
		return strings.Contains(string(b1), "CUSTOS_SOURCE=") && strings.Contains(string(b2), "CUSTOS_SOURCE=")
	})
	b, err := os.ReadFile(srcHook)
	if err != nil {
		t.Fatal(err)
	}
	got := string(b)
	for _, want := range []string{"CUSTOS_SOURCE=db\n", "CUSTOS_DATASET=main\n", "CUSTOS_RESULT=error\n", "CUSTOS_ATTEMPTS=2\n", "CUSTOS_JOB_KIND=ingest\n", "CUSTOS_HOST=test-host\n", "exit status 3"} {
		if !strings.Contains(got, want) {
			t.Errorf("source hook environment lacks %q:\n%s", want, got)
		}
	}
	if n := strings.Count(got, "CUSTOS_JOB_ID="); n != 1 {
		t.Errorf("the source hook ran %d times, want once (after the final attempt only)", n)
	}
	if _, err := os.Stat(filepath.Join(ts.dir, "agent-hook.db")); err == nil {
		t.Error("the agent's hook ran for a source with its own on_failure_command")
	}
	if b, _ := os.ReadFile(agentHook); !strings.Contains(string(b), "CUSTOS_DATASET=x\n") {
		t.Errorf("agent hook environment: %s", b)
	}
}
