package agent

import (
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/custos-backup/custos/jobs"
	"github.com/custos-backup/custos/metadata"
	"github.com/custos-backup/custos/repository"
)

// TestRetentionAndSyncConfig reads retention: and sync: and refuses what
// would fail or surprise at run time, naming file, line and field.
func TestRetentionAndSyncConfig(t *testing.T) {
	repoWith := func(retention string) string {
		return "work_dir: work\nrepositories:\n  - name: local\n    url: repo\n    password: secret\n    retention:\n" + retention
	}
	t.Run("valid", func(t *testing.T) {
		dir := t.TempDir()
		writeTree(t, dir, map[string]string{"agent.yml": repoWith("      schedule: '@daily'\n      keep_last: 3\n      keep_daily: 7\n      keep_weekly: 4\n      keep_monthly: -1\n      keep_hourly: 2\n      keep_yearly: 1\n      prune: true\n      max_unused: 2.5%\n") +
			"  - name: plain\n    url: plain\n    password: x\nsync:\n  schedule: '@hourly'\n"})
		cfg, err := LoadConfig(filepath.Join(dir, "agent.yml"))
		if err != nil {
			t.Fatal(err)
		}
		r := cfg.Repository("local").Retention
		want := RetentionSpec{Schedule: "@daily", Policy: repository.RetentionPolicy{Last: 3, Hourly: 2, Daily: 7, Weekly: 4, Monthly: -1, Yearly: 1}, Prune: true, MaxUnused: 0.025}
		if r == nil || *r != want {
			t.Errorf("retention = %+v, want %+v", r, want)
		}
		if cfg.Repository("plain").Retention != nil {
			t.Error("a repository without retention: got one")
		}
		if cfg.Sync.Schedule != "@hourly" {
			t.Errorf("sync schedule %q", cfg.Sync.Schedule)
		}
	})
	t.Run("defaults", func(t *testing.T) {
		dir := t.TempDir()
		writeTree(t, dir, map[string]string{"agent.yml": repoWith("      keep_last: 1\n")})
		cfg, err := LoadConfig(filepath.Join(dir, "agent.yml"))
		if err != nil {
			t.Fatal(err)
		}
		r := cfg.Repository("local").Retention
		if r.Schedule != DefaultRetentionSchedule || r.Prune || r.MaxUnused != repository.DefaultMaxUnused {
			t.Errorf("defaults: %+v", r)
		}
		if cfg.Sync.Schedule != DefaultSyncSchedule {
			t.Errorf("default sync schedule %q", cfg.Sync.Schedule)
		}
	})
	t.Run("sync only on demand", func(t *testing.T) {
		dir := t.TempDir()
		writeTree(t, dir, map[string]string{"agent.yml": goodAgent + "sync: {schedule: ''}\n"})
		cfg, err := LoadConfig(filepath.Join(dir, "agent.yml"))
		if err != nil {
			t.Fatal(err)
		}
		if cfg.Sync.Schedule != "" {
			t.Errorf("sync schedule %q, want none", cfg.Sync.Schedule)
		}
	})
	cases := []struct {
		name  string
		agent string
		want  []string
	}{
		{"no keep rule", repoWith("      prune: true\n"),
			[]string{`agent.yml:7: field "repositories[0].retention": no keep_* rule: that would forget every snapshot`}},
		{"bad counts and schedule", repoWith("      schedule: 'every day'\n      keep_last: -2\n      keep_daily: seven\n"),
			[]string{
				`agent.yml:7: field "repositories[0].retention.schedule": `,
				`agent.yml:8: field "repositories[0].retention.keep_last": want a count, or -1 for no limit, got -2`,
				`agent.yml:9: field "repositories[0].retention.keep_daily": expected a whole number, got the string "seven"`,
			}},
		{"max_unused without prune, and unparsable", repoWith("      keep_last: 1\n      max_unused: 5\n"),
			[]string{
				`agent.yml:8: field "repositories[0].retention.max_unused": bad value "5" (want a percentage`,
				`agent.yml:8: field "repositories[0].retention.max_unused": max_unused is prune's setting`,
			}},
		{"max_unused without prune", repoWith("      keep_last: 1\n      max_unused: 5%\n"),
			[]string{`agent.yml:8: field "repositories[0].retention.max_unused": max_unused is prune's setting: set prune: true`}},
		{"unknown retention field", repoWith("      keep_last: 1\n      keep_forever: true\n"),
			[]string{`agent.yml:8: field "repositories[0].retention.keep_forever": unknown field`}},
		{"retention not a mapping", repoWith("      - keep_last\n"),
			[]string{`agent.yml:7: field "repositories[0].retention": expected a mapping, got a list`}},
		{"bad sync", goodAgent + "sync:\n  schedule: '@every 0s'\n  peers: []\n",
			[]string{
				`agent.yml:7: field "sync.schedule": `,
				`agent.yml:8: field "sync.peers": unknown field`,
			}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			writeTree(t, dir, map[string]string{"agent.yml": tc.agent})
			wantConfigErrors(t, dir, tc.want)
		})
	}
}

// retentionSetup is syncSetup with a retention on the repository: keep
// the newest backup, prune everything unused.
func retentionSetup(t *testing.T) *testSetup {
	ts := syncSetup(t)
	writeTree(t, ts.dir, map[string]string{"agent.yml": `hostname: test-host
work_dir: work
repositories:
  - name: local
    url: work/repo
    password_file: pw
    retention:
      schedule: "@yearly"
      keep_last: 1
      prune: true
      max_unused: 0%
http_listen: 127.0.0.1:0
sync:
  schedule: ""
`})
	return ts
}

// backUpAll backs up every source, with a new file in docs each time so
// that each backup has data of its own for prune to free.
func backUpAll(t *testing.T, c *cliCatalog, ts *testSetup, n int) {
	t.Helper()
	ctx := testContext(t)
	for i := range n {
		if err := os.WriteFile(filepath.Join(ts.dir, "data", "docs", "new.bin"), randomBytes(t, 64<<10), 0o644); err != nil {
			t.Fatal(err)
		}
		res, err := BackupNow(ctx, c.mgr, c.cm.Current(), "", "")
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range res {
			if r.Err != nil {
				t.Fatalf("backup %d %s/%s: %v", i, r.Source, r.Dataset, r.Err)
			}
		}
	}
}

// TestRetention runs a repository's retention on real parts: forget keeps
// the newest backup of each dataset (a pipe dataset's atom snapshots
// together), the catalog drops every forgotten version at once, prune
// frees their data, and what is left restores. A second run forgets
// nothing.
func TestRetention(t *testing.T) {
	ctx := testContext(t)
	ts := retentionSetup(t)
	c := openCatalogForTest(ctx, t, ts.cfgPath)
	backUpAll(t, c, ts, 3)

	res, err := c.mgr.Retention(ctx, c.cm.Current(), c.cat.Store, "local")
	if err != nil {
		t.Fatal(err)
	}
	// 3 backups of docs, photos, main (1 snapshot each) and multi (2).
	if len(res.Forgotten) != 2*5 || res.Kept != 5 {
		t.Errorf("forgot %d and kept %d snapshots, want 10 and 5", len(res.Forgotten), res.Kept)
	}
	if res.Sync == nil || res.Sync.Count(SyncRemove) != 2*4 || len(res.Sync.Changes) != 8 {
		t.Fatalf("catalog changes: %+v", res.Sync)
	}
	if res.Prune == nil || res.Prune.BytesFreed == 0 {
		t.Errorf("prune freed nothing: %+v", res.Prune)
	}
	found, err := c.mgr.Find(ctx, metadata.FindRequest{Pattern: "*", NumVersions: 10})
	if err != nil {
		t.Fatal(err)
	}
	forgotten := map[string]bool{}
	for _, id := range res.Forgotten {
		forgotten[id] = true
	}
	entries := Flatten(found)
	if len(entries) != 5 {
		t.Errorf("find lists %d atom versions after retention, want 5 (one version of each atom)", len(entries))
	}
	for _, e := range entries {
		if forgotten[e.SnapshotID] {
			t.Errorf("find lists a forgotten snapshot: %+v", e)
		}
	}
	target := t.TempDir()
	if _, err := c.mgr.Restore(ctx, RestoreRequest{Pattern: "*", Target: target}); err != nil {
		t.Fatalf("restore after retention: %v", err)
	}
	ts.checkRestored(t, target)

	again, err := c.mgr.Retention(ctx, c.cm.Current(), c.cat.Store, "local")
	if err != nil {
		t.Fatal(err)
	}
	if len(again.Forgotten) != 0 || again.Sync != nil {
		t.Errorf("a second run forgot %v and changed the catalog %+v", again.Forgotten, again.Sync)
	}
	if _, err := c.mgr.Retention(ctx, c.cm.Current(), c.cat.Store, "nosuch"); err == nil || !jobs.IsPermanent(err) {
		t.Errorf("retention of an unknown repository: %v, want a permanent error", err)
	}
}

// TestAgentSyncAndRetentionJobs runs a real agent next to a repository
// whose catalog was lost: it says so at start (log and status), a sync
// job submitted through the API rebuilds the catalog and clears the
// warning, and a retention job through the API forgets and drops the
// old versions from the catalog.
func TestAgentSyncAndRetentionJobs(t *testing.T) {
	ctx := testContext(t)
	ts := retentionSetup(t)
	c := openCatalogForTest(ctx, t, ts.cfgPath)
	backUpAll(t, c, ts, 2)
	c.close()
	if err := os.RemoveAll(filepath.Join(ts.dir, "work", "etcd")); err != nil {
		t.Fatal(err)
	}

	a, base := startTestAgent(ctx, t, ts)
	waitFor(ctx, t, "the catalog warning at start", func() bool { return len(a.Status(ctx).CatalogWarnings) > 0 })
	var st StatusReport
	getJSON(ctx, t, base+"/api/status", &st)
	if len(st.CatalogWarnings) != 1 || !strings.Contains(st.CatalogWarnings[0], "empty") || !strings.Contains(st.CatalogWarnings[0], "8 dataset version(s)") {
		t.Errorf("catalog_warnings at start: %q", st.CatalogWarnings)
	}

	run := func(body string) jobs.Status {
		t.Helper()
		code, b := apiCall(ctx, t, http.MethodPost, base+"/api/jobs", body)
		if code != http.StatusCreated {
			t.Fatalf("POST /api/jobs %s: %d %s", body, code, b)
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
	if s := run(`{"kind": "sync"}`); s.Result != jobs.ResultOK || s.Queue != "sync" {
		t.Fatalf("sync job: %+v", s)
	}
	if w := a.Status(ctx).CatalogWarnings; len(w) != 0 {
		t.Errorf("warnings after the sync: %q", w)
	}
	count := func() int {
		found, err := a.Manager().Find(ctx, metadata.FindRequest{Pattern: "*", NumVersions: 10})
		if err != nil {
			t.Fatal(err)
		}
		return len(Flatten(found))
	}
	if n := count(); n != 10 {
		t.Errorf("find after the sync job: %d atom versions, want 10", n)
	}

	if s := run(`{"kind": "retention", "repository": "local"}`); s.Result != jobs.ResultOK || s.Queue != "retention" {
		t.Fatalf("retention job: %+v", s)
	}
	if n := count(); n != 5 {
		t.Errorf("find after the retention job: %d atom versions, want 5", n)
	}
	for body, want := range map[string]int{
		`{"kind": "retention"}`:                     http.StatusBadRequest,
		`{"kind": "retention", "repository": "no"}`: http.StatusNotFound,
	} {
		if code, b := apiCall(ctx, t, http.MethodPost, base+"/api/jobs", body); code != want {
			t.Errorf("POST /api/jobs %s: %d %s, want %d", body, code, b, want)
		}
	}
	var sched []jobs.EntryStatus
	getJSON(ctx, t, base+"/api/schedule", &sched)
	names := map[string]string{}
	for _, e := range sched {
		names[e.Name] = e.Schedule
	}
	if names["retention/local"] != "@yearly" {
		t.Errorf("schedule: %v, want retention/local @yearly", names)
	}
	if _, ok := names[syncScheduleName]; ok {
		t.Errorf("sync is scheduled although sync.schedule is empty: %v", names)
	}
}
