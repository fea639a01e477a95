package agent

import (
	"encoding/json"
	"fmt"
	"net/http"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// TestSyncJobSweeps: the agent's sync job also removes the atom sets that
// no catalog record names (laid out as metadata KEYS.md says: a crashed
// first write of a backup), once an earlier sweep's mark is old enough,
// and leaves its own mark.
func TestSyncJobSweeps(t *testing.T) {
	ctx := testContext(t)
	ts := newSetup(t, "", map[string]string{"agent.yml": `hostname: test-host
work_dir: work
repositories:
  - name: local
    url: work/repo
    password_file: pw
http_listen: 127.0.0.1:0
sync:
  schedule: ""
`})
	a, base := startTestAgent(ctx, t, ts)
	cli, p := a.catalog.Store.Client(), a.catalog.Store.Prefix()
	leftover := []string{
		p + "dataset-atoms/files/docs\x009000000000000000000/crashed\x000123456789abcdef\x00000000",
		p + "atom/files/docs/a\x009000000000000000000/crashed\x000123456789abcdef",
	}
	var rev int64
	for _, k := range leftover {
		r, err := cli.Put(ctx, k, "[]")
		if err != nil {
			t.Fatal(err)
		}
		rev = r.Header.Revision
	}
	stateKey := p + "sweep\x00state"
	state := fmt.Sprintf(`{"marks":[{"revision":%d,"time":%q}]}`, rev, time.Now().Add(-2*time.Hour).UTC().Format(time.RFC3339Nano))
	if _, err := cli.Put(ctx, stateKey, state); err != nil {
		t.Fatal(err)
	}
	code, b := apiCall(ctx, t, http.MethodPost, base+"/api/jobs", `{"kind": "sync"}`)
	if code != http.StatusCreated {
		t.Fatalf("POST /api/jobs: %d %s", code, b)
	}
	var created struct{ ID string }
	if err := json.Unmarshal(b, &created); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Runner().Wait(ctx, created.ID); err != nil {
		t.Fatal(err)
	}
	for _, k := range leftover {
		if r, err := cli.Get(ctx, k, clientv3.WithCountOnly()); err != nil || r.Count != 0 {
			t.Fatalf("leftover %q after the sync job: %d, %v", k, r.Count, err)
		}
	}
	var st struct{ Marks []struct{ Revision int64 } }
	r, err := cli.Get(ctx, stateKey)
	if err != nil || len(r.Kvs) != 1 {
		t.Fatalf("sweep state: %v", err)
	}
	if err := json.Unmarshal(r.Kvs[0].Value, &st); err != nil || len(st.Marks) != 2 || st.Marks[1].Revision <= rev {
		t.Fatalf("sweep state after the sync job: %s (%v), want the old mark and the job's", r.Kvs[0].Value, err)
	}
}
