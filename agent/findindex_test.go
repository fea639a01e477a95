package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"reflect"
	"testing"
	"time"

	"github.com/custos-backup/custos/metadata"
)

// TestAgentFindSeesOtherWriters runs the agent (which answers finds from
// its in-memory index) and writes to its catalog from this process the
// way "custos backup" does, through a catalog connection of its own. Every
// write is in the agent's next answer, without waiting; an atom set that
// is replaced disappears; and the API's hand-made JSON, its runs form and
// the catalog read from etcd agree.
func TestAgentFindSeesOtherWriters(t *testing.T) {
	ctx := testContext(t)
	ts := newSetup(t, "", nil)
	runCtx, stop := context.WithCancel(ctx)
	started := make(chan *Agent, 1)
	addr := make(chan string, 1)
	done := make(chan error, 1)
	go func() {
		done <- Run(runCtx, ts.cfgPath, RunOptions{Logger: testLogger(t), Started: func(a *Agent) { started <- a }, Listening: func(s string) { addr <- s }})
	}()
	t.Cleanup(func() {
		stop()
		<-done
	})
	var a *Agent
	select {
	case a = <-started:
	case err := <-done:
		t.Fatalf("agent stopped: %v", err)
	}
	base := "http://" + <-addr
	if a.catalog.Index == nil {
		t.Fatal("the agent has no catalog index")
	}
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := a.catalog.Index.WaitLive(wctx); err != nil {
		t.Fatal(err)
	}

	// The other process: a command's own catalog connection.
	cm, cat, mgr := openTestCLI(ctx, t, ts.cfgPath, CatalogOptions{SpoolDir: CLISpoolDir(cm0(t, ts.cfgPath))})
	if cat.Index != nil {
		t.Fatal("a command's catalog has an index")
	}
	results, err := BackupNow(ctx, mgr, cm.Current(), "files", "")
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range results {
		if r.Err != nil {
			t.Fatal(r.Err)
		}
	}

	find := func(pattern string) []BackupEntry {
		t.Helper()
		var got []BackupEntry
		getJSON(ctx, t, base+"/api/backups?"+url.Values{"pattern": {pattern}}.Encode(), &got)
		var runs []EntryRun
		getJSON(ctx, t, base+"/api/backups?"+url.Values{"pattern": {pattern}, "runs": {"1"}}.Encode(), &runs)
		if ex := Expand(runs); !reflect.DeepEqual(ex, got) {
			t.Errorf("find %q: runs expand to\n%+v\nentries are\n%+v", pattern, ex, got)
		}
		found, err := cat.Store.FindAtoms(ctx, metadata.FindRequest{Pattern: pattern})
		if err != nil {
			t.Fatal(err)
		}
		if want := Flatten(found); !sameEntries(got, want) {
			t.Errorf("find %q: the agent answers\n%+v\netcd holds\n%+v", pattern, got, want)
		}
		return got
	}
	if got := find("*"); len(got) != 2 { // files/docs/docs, files/photos/photos
		t.Fatalf("after custos backup: the agent finds %+v, want the 2 atoms just written", got)
	}

	// A pipe-like dataset written, then written again with other atoms.
	b := NewBackup("other-host", time.Now())
	d := &metadata.Dataset{ID: "x", Source: "db", Name: "main", Handler: "pipe", Repository: "local"}
	for i := 0; i < 3; i++ {
		d.Atoms = append(d.Atoms, metadata.Atom{Name: fmt.Sprintf("old%d", i), SnapshotID: fmt.Sprintf("%064d", i)})
	}
	if err := cat.Store.AddDataset(ctx, b, d); err != nil {
		t.Fatal(err)
	}
	if got := find("db"); len(got) != 3 {
		t.Fatalf("the agent finds %+v, want the 3 atoms just written", got)
	}
	d.Atoms = []metadata.Atom{{Name: "new", SnapshotID: "s-new"}}
	if err := cat.Store.AddDataset(ctx, b, d); err != nil {
		t.Fatal(err)
	}
	got := find("db")
	if len(got) != 1 || got[0].Atom != "db/main/new" || got[0].SnapshotID != "s-new" {
		t.Fatalf("after the atom set was replaced the agent finds %+v, want only db/main/new", got)
	}
	find("*")
	find("files/docs/docs")
	find("nothing")
}

// sameEntries compares entries as JSON carries them (times by instant).
func sameEntries(a, b []BackupEntry) bool {
	ja, _ := json.Marshal(a)
	jb, _ := json.Marshal(b)
	return string(ja) == string(jb)
}

// TestAppendJSONString: the hand-made encoding of /api/backups writes
// strings exactly as encoding/json does.
func TestAppendJSONString(t *testing.T) {
	for _, s := range []string{"", "plain/name", `quo"te`, `back\slash`, "<b>&amp;", "tab\there", "naïve", "\u2028", "bad\xffutf8", "\x00nul"} {
		want, _ := json.Marshal(s)
		if got := appendJSONString(nil, s); string(got) != string(want) {
			t.Errorf("%q: got %s, want %s", s, got, want)
		}
	}
}
