package agent

import (
	"encoding/json"
	"net/http"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/custos-backup/custos/jobs"
	"github.com/custos-backup/custos/metadata"
)

const peerAgent = `hostname: h1
work_dir: work
repositories:
  - name: local
    url: repo
    password: secret
peers:
`

// TestPeerConfig: a good peers: section loads with its defaults; every
// bad peer is refused with its file, line and field.
func TestPeerConfig(t *testing.T) {
	dir := writeTree(t, t.TempDir(), map[string]string{"agent.yml": peerAgent + `  - name: b
    endpoints: [https://etcd-b:2379]
    ca_file: ca.crt
    hosts: [b1, b2]
    schedule: "@every 1h"
  - name: c
    prefix: /site-c/
    hosts: [c1]
    overlap_revisions: 10
`})
	cfg, err := LoadConfig(filepath.Join(dir, "agent.yml"))
	if err != nil {
		t.Fatal(err)
	}
	b, c := cfg.Peer("b"), cfg.Peer("c")
	if b == nil || c == nil || cfg.Peer("d") != nil {
		t.Fatalf("peers: %+v", cfg.Peers)
	}
	if b.Prefix != "/custos/" || b.CAFile != filepath.Join(dir, "ca.crt") || !slices.Equal(b.Hosts, []string{"b1", "b2"}) || b.Schedule != "@every 1h" {
		t.Errorf("peer b: %+v", b)
	}
	if len(c.Endpoints) != 0 || c.Prefix != "/site-c/" || c.Overlap != 10 || c.Schedule != "" {
		t.Errorf("peer c: %+v", c)
	}

	cases := []struct {
		name, peers string
		want        []string
	}{
		{"no hosts", "  - name: b\n    prefix: /b/\n",
			[]string{`agent.yml:8: field "peers[0].hosts": missing: which hosts' records does peer "b" own?`}},
		{"this host", "  - name: b\n    prefix: /b/\n    hosts: [b1, h1]\n",
			[]string{`agent.yml:8: field "peers[0].hosts": peer "b" lists h1, this host`}},
		{"a host of two peers", "  - name: b\n    prefix: /b/\n    hosts: [x]\n  - name: c\n    prefix: /c/\n    hosts: [x]\n",
			[]string{`agent.yml:11: field "peers[1].hosts": host x is owned by peer "b" already`}},
		{"nowhere", "  - name: b\n    hosts: [b1]\n",
			[]string{`agent.yml:8: field "peers[0].endpoints": missing: peer "b" needs the endpoints`}},
		{"own prefix", "  - name: b\n    prefix: /custos/\n    hosts: [b1]\n",
			[]string{`agent.yml:8: field "peers[0].prefix": peer "b" has this site's own key prefix /custos/`}},
		{"bad prefix", "  - name: b\n    prefix: /b\n    hosts: [b1]\n",
			[]string{`agent.yml:9: field "peers[0].prefix": a key prefix must end with '/'`}},
		{"tls without endpoints", "  - name: b\n    prefix: /b/\n    ca_file: ca\n    hosts: [b1]\n",
			[]string{`agent.yml:10: field "peers[0].ca_file": only for a peer on its own etcd cluster`}},
		{"bad endpoint", "  - name: b\n    endpoints: [ftp://x]\n    hosts: [b1]\n",
			[]string{`agent.yml:9: field "peers[0].endpoints[0]": etcd endpoint "ftp://x"`}},
		{"bad schedule", "  - name: b\n    prefix: /b/\n    hosts: [b1]\n    schedule: sometimes\n",
			[]string{`agent.yml:11: field "peers[0].schedule": `}},
		{"twice", "  - name: b\n    prefix: /b/\n    hosts: [b1]\n  - name: b\n    prefix: /c/\n    hosts: [c1]\n",
			[]string{`agent.yml:11: field "peers[1].name": peer "b" is defined more than once`}},
		{"bad name", "  - name: a/b\n    prefix: /b/\n    hosts: [b1]\n",
			[]string{`agent.yml:8: field "peers[0].name": name "a/b" may not contain`}},
		{"unknown field", "  - name: b\n    prefix: /b/\n    hosts: [b1]\n    owner: x\n",
			[]string{`agent.yml:11: field "peers[0].owner": unknown field`}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := writeTree(t, t.TempDir(), map[string]string{"agent.yml": peerAgent + tc.peers})
			wantConfigErrors(t, dir, tc.want)
		})
	}
}

// TestAgentPeerSyncJobs runs a real agent with a peer on another prefix of
// its catalog: a sync job for the peer (POST /api/jobs) pulls the peer's
// records, which the agent's find sees; a conflict shows in the status
// until the reports are cleared; the sync job syncs the peers too; an
// unknown peer is refused.
func TestAgentPeerSyncJobs(t *testing.T) {
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
peers:
  - name: b
    prefix: /site-b/
    hosts: [b1]
`})
	a, base := startTestAgent(ctx, t, ts)
	peer, err := metadata.NewStore(a.catalog.Store.Client(), metadata.Options{Prefix: "/site-b/", Host: "b1"})
	if err != nil {
		t.Fatal(err)
	}
	defer peer.Close()
	put := func(st *metadata.EtcdStore, id, repo string) {
		t.Helper()
		d := &metadata.Dataset{ID: id, Source: "mail", Name: id, Handler: "file", Repository: repo, Atoms: []metadata.Atom{{Name: "inbox"}}}
		if err := st.AddDataset(ctx, &metadata.Backup{ID: id, Host: "b1", Timestamp: time.Date(2025, 5, 1, 0, 0, 0, 0, time.UTC)}, d); err != nil {
			t.Fatal(err)
		}
	}
	run := func(body string, want int) jobs.Status {
		t.Helper()
		code, b := apiCall(ctx, t, http.MethodPost, base+"/api/jobs", body)
		if code != want {
			t.Fatalf("POST /api/jobs %s: %d %s, want %d", body, code, b, want)
		}
		if code != http.StatusCreated {
			return jobs.Status{}
		}
		var created struct{ ID string }
		if err := json.Unmarshal(b, &created); err != nil {
			t.Fatal(err)
		}
		s, err := a.Runner().Wait(ctx, created.ID)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	repos := func() map[string]string {
		t.Helper()
		found, err := a.Manager().Find(ctx, metadata.FindRequest{Pattern: "mail"})
		if err != nil {
			t.Fatal(err)
		}
		out := map[string]string{}
		for _, e := range Flatten(found) {
			out[e.Atom] = e.Repository
		}
		return out
	}
	put(peer, "p1", "b-repo")
	if s := run(`{"kind": "sync", "peer": "b"}`, http.StatusCreated); s.Result != jobs.ResultOK || s.Queue != "sync" {
		t.Fatalf("peer sync job: %+v", s)
	}
	if got := repos(); got["mail/p1/inbox"] != "b-repo" {
		t.Fatalf("find after the peer sync: %v", got)
	}
	put(a.catalog.Store, "p1", "changed-here")
	put(peer, "p1", "changed-there")
	if s := run(`{"kind": "sync", "peer": "b"}`, http.StatusCreated); s.Result != jobs.ResultOK {
		t.Fatalf("peer sync job: %+v", s)
	}
	var st StatusReport
	getJSON(ctx, t, base+"/api/status", &st)
	if !slices.ContainsFunc(st.CatalogWarnings, func(w string) bool { return strings.HasPrefix(w, "peer b: 1 conflict(s)") }) {
		t.Errorf("status after a conflict: %q", st.CatalogWarnings)
	}
	if got := repos(); got["mail/p1/inbox"] != "changed-there" {
		t.Errorf("after the conflict find lists %v, want the peer's version", got)
	}
	// The sync job (repositories, then every peer).
	put(peer, "p2", "b-repo")
	run(`{"kind": "sync"}`, http.StatusCreated)
	if got := repos(); got["mail/p2/inbox"] != "b-repo" {
		t.Errorf("the sync job did not sync the peer: %v", got)
	}
	if _, err := a.catalog.Store.ClearPeerReports(ctx, "b"); err != nil {
		t.Fatal(err)
	}
	run(`{"kind": "sync", "peer": "b"}`, http.StatusCreated)
	if w := a.Status(ctx).CatalogWarnings; slices.ContainsFunc(w, func(w string) bool { return strings.Contains(w, "peer b") }) {
		t.Errorf("status after the reports were cleared: %q", w)
	}
	run(`{"kind": "sync", "peer": "nope"}`, http.StatusNotFound)
}
