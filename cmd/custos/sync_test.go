package main

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/custos-backup/custos/agent"
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
