package main

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/custos-backup/custos/agent"
)

// TestSyncCommandSweeps: custos sync also removes the atom sets that no
// catalog record names (laid out as KEYS.md says: a crashed first write
// of a backup), once an earlier sweep's mark is old enough, says so, and
// the next sync has nothing to remove. --report removes nothing.
func TestSyncCommandSweeps(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	dir := t.TempDir()
	writeFiles(t, dir, syncConfig)
	cfgPath := filepath.Join(dir, "agent.yml")
	run := func(args ...string) string {
		t.Helper()
		out, errOut, err := runCLI(ctx, args...)
		if err != nil {
			t.Fatalf("custos %s: %v\n%s%s", strings.Join(args, " "), err, out, errOut)
		}
		return out
	}
	run("backup", "-c", cfgPath)
	cfg, err := agent.LoadConfig(cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	cat, err := agent.OpenCatalog(ctx, cfg, agent.CatalogOptions{})
	if err != nil {
		t.Fatal(err)
	}
	p := cat.Store.Prefix()
	version := "files/docs\x009000000000000000000/crashed"
	leftover := []string{
		p + "dataset-atoms/" + version + "\x000123456789abcdef\x00000000",
		p + "atom/files/docs/note.txt\x009000000000000000000/crashed\x000123456789abcdef",
	}
	var rev int64
	for _, k := range leftover {
		r, err := cat.Store.Client().Put(ctx, k, "[]")
		if err != nil {
			t.Fatal(err)
		}
		rev = r.Header.Revision
	}
	// An earlier sweep, two hours ago, after the crash.
	state := fmt.Sprintf(`{"marks":[{"revision":%d,"time":%q}]}`, rev, time.Now().Add(-2*time.Hour).UTC().Format(time.RFC3339Nano))
	if _, err := cat.Store.Client().Put(ctx, p+"sweep\x00state", state); err != nil {
		t.Fatal(err)
	}
	if err := cat.Close(); err != nil {
		t.Fatal(err)
	}
	count := func() int64 {
		t.Helper()
		cat, err := agent.OpenCatalog(ctx, cfg, agent.CatalogOptions{})
		if err != nil {
			t.Fatal(err)
		}
		defer cat.Close()
		n := int64(0)
		for _, k := range leftover {
			r, err := cat.Store.Client().Get(ctx, k, clientv3.WithCountOnly())
			if err != nil {
				t.Fatal(err)
			}
			n += r.Count
		}
		return n
	}

	if out := run("sync", "--report", "-c", cfgPath); strings.Contains(out, "catalog sweep") || count() != 2 {
		t.Fatalf("sync --report swept:\n%s", out)
	}
	out := run("sync", "-c", cfgPath)
	if !strings.Contains(out, "catalog sweep: 1 unused atom set(s) removed, 2 key(s)") {
		t.Fatalf("sync did not report the sweep:\n%s", out)
	}
	if n := count(); n != 0 {
		t.Fatalf("%d leftover keys after the sync", n)
	}
	if out := run("sync", "-c", cfgPath); strings.Contains(out, "catalog sweep") {
		t.Fatalf("second sync swept again:\n%s", out)
	}
	if out := run("find", "*", "-c", cfgPath); !strings.Contains(out, "files/docs/docs") || !strings.Contains(out, "db/main/users") {
		t.Fatalf("find after the sweep:\n%s", out)
	}
}
