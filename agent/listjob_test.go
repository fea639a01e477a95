package agent

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/custos-backup/custos/jobs"
)

// TestDatasetsCommandRunsAsJob: a source's datasets_command runs as a job
// of its own. POST /api/run answers at once with that job's id; the job
// lists the datasets and submits their backups; a command that never ends
// is stopped by the source's timeout, visible as a failed job.
func TestDatasetsCommandRunsAsJob(t *testing.T) {
	ctx := testContext(t)
	ts := newSetup(t, "@every 1h", map[string]string{
		"sources/listed.yml": "name: listed\nhandler: dump\ndatasets_command: 'sleep 0.3; echo one; echo two'\n",
		"sources/stuck.yml":  "name: stuck\nhandler: dump\ndatasets_command: 'exec sleep 1000.625'\ntimeout: 1s\n",
	})
	a, base := startTestAgent(ctx, t, ts)

	run := func(source string) []string {
		t.Helper()
		start := time.Now()
		code, body := apiCall(ctx, t, "POST", base+"/api/run?source="+source, "")
		if code != http.StatusOK {
			t.Fatalf("POST /api/run?source=%s: %d %s", source, code, body)
		}
		if d := time.Since(start); d > 5*time.Second {
			t.Errorf("POST /api/run?source=%s took %s: it waited for datasets_command", source, d)
		}
		var ans struct{ Jobs []string }
		if err := json.Unmarshal(body, &ans); err != nil || len(ans.Jobs) != 1 {
			t.Fatalf("POST /api/run?source=%s: %s, want one job id", source, body)
		}
		return ans.Jobs
	}
	wait := func(id string) jobs.Status {
		t.Helper()
		st, err := a.Runner().Wait(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		return st
	}

	list := wait(run("listed")[0])
	if list.Result != jobs.ResultOK || !strings.HasPrefix(list.Description, "list the datasets of listed") {
		t.Fatalf("list job: %+v", list)
	}
	waitFor(ctx, t, "both listed datasets backed up", func() bool {
		ok := map[string]bool{}
		for _, j := range a.Runner().Done() {
			if j.Source == "listed" && j.Result == jobs.ResultOK && j.Dataset != "" {
				ok[j.Dataset] = true
			}
		}
		return ok["one"] && ok["two"]
	})

	stuck := wait(run("stuck")[0])
	if stuck.Result == jobs.ResultOK || !strings.Contains(stuck.Error, "still running after 1s") {
		t.Errorf("stuck list job: %s %q, want a failure naming the timeout", stuck.Result, stuck.Error)
	}
	if pids := processesWith("1000.625"); len(pids) > 0 {
		t.Errorf("the stuck datasets_command still runs: %v", pids)
	}
}
