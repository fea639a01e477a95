package main

import (
	"context"
	"encoding/json"
	"maps"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/custos-backup/custos/agent"
	"github.com/custos-backup/custos/metadata"
	"github.com/custos-backup/custos/metadata/etcdserver"
)

var syncConfig = map[string]string{
	"agent.yml": `hostname: sync-host
work_dir: work
repositories:
  - name: local
    url: work/repo
    password_file: pw
http_listen: 127.0.0.1:0
`,
	"pw":                 "sync test password\n",
	"data/docs/note.txt": "hello custos sync\n",
	"sources/files.yml": `name: files
handler: file
params:
  root: ../data
datasets:
  - name: docs
`,
	"handlers/dump.yml": `name: dump
type: pipe
params:
  backup_command: 'echo dumped $CUSTOS_ATOM'
  restore_command: 'cat >/dev/null'
`,
	"sources/db.yml": `name: db
handler: dump
datasets:
  - name: main
    atoms: [{name: users}, {name: orders}]
`,
}

// TestSyncCommand runs custos sync as a user would: after the catalog's
// data folder is deleted, find lists nothing; sync --report says what it
// would add and adds nothing; sync rebuilds the catalog so that find
// --json lists the same atom versions; a second sync changes nothing.
// After repo forget, sync drops the versions whose snapshots are gone.
func TestSyncCommand(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	dir := t.TempDir()
	writeFiles(t, dir, syncConfig)
	cfg := filepath.Join(dir, "agent.yml")
	run := func(args ...string) string {
		t.Helper()
		out, errOut, err := runCLI(ctx, args...)
		if err != nil {
			t.Fatalf("custos %s: %v\n%s%s", strings.Join(args, " "), err, out, errOut)
		}
		return out
	}
	find := func() []agent.BackupEntry {
		t.Helper()
		var got []agent.BackupEntry
		if err := json.Unmarshal([]byte(run("find", "*", "--versions", "10", "--json", "-c", cfg)), &got); err != nil {
			t.Fatal(err)
		}
		return got
	}
	run("backup", "-c", cfg)
	run("backup", "-c", cfg)
	before := find()
	if len(before) != 6 {
		t.Fatalf("find lists %d atom versions after two backups, want 6: %+v", len(before), before)
	}

	if err := os.RemoveAll(filepath.Join(dir, "work", "etcd")); err != nil {
		t.Fatal(err)
	}
	if got := find(); len(got) != 0 {
		t.Fatalf("find after the catalog was deleted: %+v", got)
	}
	out := run("sync", "--report", "-c", cfg)
	if strings.Count(out, "would add") != 4 || !strings.Contains(out, "4 would be added, 0 removed, 0 rewritten") {
		t.Errorf("sync --report on a lost catalog:\n%s", out)
	}
	if got := find(); len(got) != 0 {
		t.Fatalf("sync --report changed the catalog: %+v", got)
	}
	out = run("sync", "-c", cfg)
	if !strings.Contains(out, "4 were added, 0 removed, 0 rewritten") {
		t.Errorf("sync on a lost catalog:\n%s", out)
	}
	after := find()
	b1, _ := json.Marshal(before)
	b2, _ := json.Marshal(after)
	if string(b1) != string(b2) {
		t.Errorf("find --json after the rebuild differs:\nbefore %s\nafter  %s", b1, b2)
	}
	if out := run("sync", "-c", cfg); !strings.Contains(out, "0 were added, 0 removed, 0 rewritten") {
		t.Errorf("second sync:\n%s", out)
	}

	run("repo", "forget", "--keep-last", "1", "-r", filepath.Join(dir, "work", "repo"), "-p", filepath.Join(dir, "pw"))
	out = run("sync", "-c", cfg)
	if !strings.Contains(out, "0 were added, 2 removed, 0 rewritten") {
		t.Errorf("sync after forget:\n%s", out)
	}
	got := find()
	if len(got) != 3 {
		t.Errorf("find after forget and sync lists %d atom versions, want the 3 of the newest backup: %+v", len(got), got)
	}
	// Each source's run is a backup of its own: the newest per dataset.
	dataset := func(atom string) string { return atom[:strings.LastIndex(atom, "/")] }
	newest := map[string]time.Time{}
	for _, e := range before {
		if e.Time.After(newest[dataset(e.Atom)]) {
			newest[dataset(e.Atom)] = e.Time
		}
	}
	for _, e := range got {
		if !e.Time.Equal(newest[dataset(e.Atom)]) {
			t.Errorf("find lists a forgotten version: %+v", e)
		}
	}

	if _, _, err := runCLI(ctx, "sync", "--repository", "nosuch", "-c", cfg); err == nil || !strings.Contains(err.Error(), `no repository "nosuch"`) {
		t.Errorf("sync of an unknown repository: %v", err)
	}
}

// TestSyncPeerCommand runs custos sync --peer between this site's
// embedded catalog and a peer site's etcd server of its own: --report
// changes nothing; a sync pulls the peer's records, which find lists; a
// record both sites changed is a conflict, taken from the peer and listed
// with both versions by --report until --clear-reports; this site's own
// records stay as they are.
func TestSyncPeerCommand(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	srv, err := etcdserver.StartEmbedded(ctx, t.TempDir(), etcdserver.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	conn, err := metadata.Connect(ctx, metadata.Config{Endpoints: srv.Endpoints()})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	peerStore, err := metadata.NewStore(conn.Client, metadata.Options{Prefix: "/site-b/", Host: "b1"})
	if err != nil {
		t.Fatal(err)
	}
	defer peerStore.Close()
	put := func(st *metadata.EtcdStore, id, host, repo string) {
		t.Helper()
		d := &metadata.Dataset{ID: id, Source: "mail", Name: "box-" + id, Handler: "file", Repository: repo,
			Atoms: []metadata.Atom{{Name: "inbox", Path: "inbox"}}}
		if err := st.AddDataset(ctx, &metadata.Backup{ID: id, Host: host, Timestamp: time.Date(2025, 5, 1, 0, 0, 0, 0, time.UTC)}, d); err != nil {
			t.Fatal(err)
		}
	}
	put(peerStore, "p1", "b1", "b-repo")
	put(peerStore, "p2", "b1", "b-repo")
	put(peerStore, "ours", "sync-host", "b-copy") // the peer's copy of a record of ours

	dir := t.TempDir()
	files := map[string]string{}
	for k, v := range syncConfig {
		files[k] = v
	}
	files["agent.yml"] += "peers:\n  - name: b\n    endpoints: [" + srv.Endpoints()[0] + "]\n    prefix: /site-b/\n    hosts: [b1]\n"
	writeFiles(t, dir, files)
	cfgPath := filepath.Join(dir, "agent.yml")
	cfg, err := agent.LoadConfig(cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	// This site's own record, and (below) a change to one of the peer's.
	withCatalog := func(fn func(*metadata.EtcdStore)) {
		t.Helper()
		cat, err := agent.OpenCatalog(ctx, cfg, agent.CatalogOptions{})
		if err != nil {
			t.Fatal(err)
		}
		fn(cat.Store)
		if err := cat.Close(); err != nil {
			t.Fatal(err)
		}
	}
	withCatalog(func(st *metadata.EtcdStore) { put(st, "ours", "sync-host", "local") })
	run := func(args ...string) string {
		t.Helper()
		out, errOut, err := runCLI(ctx, args...)
		if err != nil {
			t.Fatalf("custos %s: %v\n%s%s", strings.Join(args, " "), err, out, errOut)
		}
		return out
	}
	found := func() map[string]string { // dataset -> repository
		t.Helper()
		var got []agent.BackupEntry
		if err := json.Unmarshal([]byte(run("find", "mail", "--json", "-c", cfgPath)), &got); err != nil {
			t.Fatal(err)
		}
		out := map[string]string{}
		for _, e := range got {
			out[strings.TrimSuffix(e.Atom, "/inbox")] = e.Repository
		}
		return out
	}
	rep := run("sync", "-c", cfgPath, "--peer", "b", "--report")
	if !strings.Contains(rep, "would take") || !strings.Contains(rep, "2 would be taken") {
		t.Errorf("report:\n%s", rep)
	}
	if got := found(); len(got) != 1 {
		t.Fatalf("after --report find lists %v, want only this site's record", got)
	}
	out := run("sync", "-c", cfgPath, "--peer", "b")
	want := map[string]string{"mail/box-p1": "b-repo", "mail/box-p2": "b-repo", "mail/box-ours": "local"}
	if got := found(); !maps.Equal(got, want) {
		t.Fatalf("after the sync find lists %v, want %v\n%s", got, want, out)
	}
	// Both sites change box-p1: a conflict; the peer's wins.
	withCatalog(func(st *metadata.EtcdStore) { put(st, "p1", "b1", "changed-here") })
	put(peerStore, "p1", "b1", "changed-there")
	out = run("sync", "-c", cfgPath, "--peer", "b", "--json")
	var res metadata.PeerSyncResult
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		t.Fatal(err)
	}
	if res.Count(metadata.PeerConflict) != 1 || len(res.Recorded) != 1 {
		t.Fatalf("conflict sync: %s", out)
	}
	if c := res.Recorded[0]; c.Current == nil || c.Target == nil || c.Current.Dataset.Repository != "changed-here" || c.Target.Dataset.Repository != "changed-there" {
		t.Errorf("the recorded conflict does not carry both versions: %+v", c)
	}
	want["mail/box-p1"] = "changed-there"
	if got := found(); !maps.Equal(got, want) {
		t.Fatalf("after the conflict find lists %v, want %v", got, want)
	}
	rep = run("sync", "-c", cfgPath, "--peer", "b", "--report")
	t.Logf("custos sync --peer b --report:\n%s", rep)
	if !strings.Contains(rep, "Recorded") || !strings.Contains(rep, "changed-here") || !strings.Contains(rep, "changed-there") {
		t.Errorf("--report does not list the conflict with both versions:\n%s", rep)
	}
	run("sync", "-c", cfgPath, "--peer", "b", "--clear-reports")
	if rep := run("sync", "-c", cfgPath, "--peer", "b", "--report"); strings.Contains(rep, "Recorded") {
		t.Errorf("--clear-reports left the reports:\n%s", rep)
	}
	if _, errOut, err := runCLI(ctx, "sync", "-c", cfgPath, "--peer", "nope"); err == nil || !strings.Contains(err.Error()+errOut, `no peer "nope"`) {
		t.Errorf("an unknown peer: %v %s", err, errOut)
	}
}
