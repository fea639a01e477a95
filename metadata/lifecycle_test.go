package metadata

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"sync/atomic"
	"testing"
	"time"

	"github.com/custos-backup/custos/metadata/etcdserver"
)

// ownServer starts a real embedded etcd for one test.
func ownServer(t *testing.T, dir string) *etcdserver.Embedded {
	t.Helper()
	srv, err := etcdserver.StartEmbedded(ctxT(t), dir, etcdserver.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	return srv
}

func TestJobStatusLease(t *testing.T) {
	ctx := ctxT(t)
	srv := ownServer(t, t.TempDir())
	ep := srv.Endpoints()[0]
	observer, err := NewStore(newClient(t, ep), Options{Host: "observer", Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer observer.Close()
	defer observer.Client().Close()

	// The agent's client is closed without revoking: the process "dies".
	agentCli := newClient(t, ep)
	agent, err := NewStore(agentCli, Options{Host: "agent1", LeaseTTL: 2 * time.Second, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	jobs := []JobStatus{
		{JobID: "j1", Kind: "ingest", Source: "files", Dataset: "home", State: "running", Progress: &JobProgress{Files: 3, Bytes: 10}},
		{JobID: "j2", Kind: "fixity", State: "waiting"},
	}
	if err := agent.PutJobStatus(ctx, "agent1", jobs); err != nil {
		t.Fatal(err)
	}
	got, err := observer.ActiveJobs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0].JobID != "j1" || got[0].Host != "agent1" || got[0].Progress.Files != 3 || got[1].JobID != "j2" {
		t.Fatalf("ActiveJobs = %+v", got)
	}
	// A new update replaces the set: j2 finished.
	if err := agent.PutJobStatus(ctx, "agent1", jobs[:1]); err != nil {
		t.Fatal(err)
	}
	if got, _ := observer.ActiveJobs(ctx); len(got) != 1 || got[0].JobID != "j1" {
		t.Fatalf("after update ActiveJobs = %+v, want only j1", got)
	}

	agentCli.Close()
	waitFor(t, "dead agent's jobs to expire", 30*time.Second, func() (bool, error) {
		got, err := observer.ActiveJobs(ctx)
		return err == nil && len(got) == 0, err
	})
	agent.Close() // the lease is gone; Close must not hang or panic

	// A clean Close revokes the lease: the entries go at once.
	clean, err := NewStore(newClient(t, ep), Options{Host: "agent2", Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer clean.Client().Close()
	if err := clean.PutJobStatus(ctx, "agent2", jobs); err != nil {
		t.Fatal(err)
	}
	if err := clean.Close(); err != nil {
		t.Fatal(err)
	}
	if got, err := observer.ActiveJobs(ctx); err != nil || len(got) != 0 {
		t.Fatalf("after Close ActiveJobs = %+v, %v; want none", got, err)
	}
	if err := clean.PutJobStatus(ctx, "agent2", jobs); !errors.Is(err, ErrClosed) {
		t.Fatalf("PutJobStatus after Close err = %v, want ErrClosed", err)
	}
}

func TestStartUpdates(t *testing.T) {
	s := newSharedStore(t, Options{Host: "agent-up"})
	var n atomic.Int64
	s.StartUpdates(ctxT(t), func() []JobStatus {
		return []JobStatus{{JobID: "tick", Kind: "ingest", Progress: &JobProgress{Files: n.Add(1)}}}
	}, 50*time.Millisecond)
	waitFor(t, "several status updates", 30*time.Second, func() (bool, error) {
		got, err := s.ActiveJobs(context.Background())
		return err == nil && len(got) == 1 && got[0].Host == "agent-up" && got[0].Progress.Files >= 3, err
	})
	s.Close()
	got, err := newSharedStore(t, Options{Prefix: s.Prefix()}).ActiveJobs(context.Background())
	if err != nil || len(got) != 0 {
		t.Fatalf("after Close ActiveJobs = %+v, %v; want none", got, err)
	}
}

// TestSpoolOutage stops etcd under a running store: AddDataset still
// succeeds into the spool, and the records appear once etcd is back on
// the same data dir and ports.
func TestSpoolOutage(t *testing.T) {
	ctx := ctxT(t)
	dir := t.TempDir()
	srv := ownServer(t, dir)
	cli := newClient(t, srv.Endpoints()[0])
	defer cli.Close()
	var lastDepth atomic.Int64
	s, err := NewStore(cli, Options{
		SpoolDir: filepath.Join(dir, "spool"), Logger: testLogger(t),
		WriteTimeout: 500 * time.Millisecond, MinBackoff: 50 * time.Millisecond, MaxBackoff: 300 * time.Millisecond,
		OnSpoolDepth: func(d int) { lastDepth.Store(int64(d)) },
	})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := s.AddDataset(ctx, mkBackup("before", "h1", t0), mkDataset("files", "home", "bob")); err != nil {
		t.Fatal(err)
	}
	if err := srv.Close(); err != nil {
		t.Fatal(err)
	}

	if err := s.AddDataset(ctx, mkBackup("during1", "h1", t0.Add(time.Hour)), mkDataset("files", "home", "bob")); err != nil {
		t.Fatalf("AddDataset during outage: %v", err)
	}
	if d := s.SpoolDepth(); d != 1 {
		t.Fatalf("spool depth = %d, want 1", d)
	}
	if err := s.AddDataset(ctx, mkBackup("during2", "h1", t0.Add(2*time.Hour)), mkDataset("files", "home", "bob")); err != nil {
		t.Fatalf("second AddDataset during outage: %v", err)
	}
	if d, hook := s.SpoolDepth(), lastDepth.Load(); d != 2 || hook != 2 {
		t.Fatalf("spool depth = %d (hook saw %d), want 2", d, hook)
	}

	srv2, err := etcdserver.StartEmbedded(ctx, dir, etcdserver.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer srv2.Close()
	if !reflect.DeepEqual(srv2.Endpoints(), srv.Endpoints()) {
		t.Fatalf("restarted on %v, want the old endpoint %v", srv2.Endpoints(), srv.Endpoints())
	}
	waitFor(t, "spool to drain", 60*time.Second, func() (bool, error) { return s.SpoolDepth() == 0, nil })
	if hook := lastDepth.Load(); hook != 0 {
		t.Fatalf("depth hook saw %d at the end, want 0", hook)
	}
	got, err := s.FindAtoms(ctx, FindRequest{Pattern: "files/home/bob", NumVersions: 5})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"during2:files/home/bob", "during1:files/home/bob", "before:files/home/bob"}
	if f := flat(got); !reflect.DeepEqual(f, want) {
		t.Fatalf("after outage find = %q, want %q", f, want)
	}
	if files, _ := os.ReadDir(filepath.Join(dir, "spool")); len(files) != 0 {
		t.Fatalf("spool dir still holds %d files", len(files))
	}
}

// TestSpoolSurvivesRestart spools with one store, which then goes away, and
// lets a new store on the same spool dir flush the record.
func TestSpoolSurvivesRestart(t *testing.T) {
	ctx := ctxT(t)
	dir := t.TempDir()
	spoolDir := filepath.Join(dir, "spool")
	srv := ownServer(t, dir)
	ep := srv.Endpoints()[0]
	if err := srv.Close(); err != nil {
		t.Fatal(err)
	}

	deadCli := newClientNoCheck(t, ep)
	s1, err := NewStore(deadCli, Options{SpoolDir: spoolDir, Logger: testLogger(t), WriteTimeout: 300 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"r1", "r2"} {
		if err := s1.AddDataset(ctx, mkBackup(id, "h1", t0), mkDataset("db", "pg", "users", "orders")); err != nil {
			t.Fatal(err)
		}
	}
	if d := s1.SpoolDepth(); d != 2 {
		t.Fatalf("depth = %d, want 2", d)
	}
	s1.Close()
	deadCli.Close()

	srv2 := ownServer(t, dir)
	cli := newClient(t, srv2.Endpoints()[0])
	defer cli.Close()
	s2, err := NewStore(cli, Options{SpoolDir: spoolDir, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	waitFor(t, "new store to flush the old spool", 60*time.Second, func() (bool, error) { return s2.SpoolDepth() == 0, nil })
	for _, id := range []string{"r1", "r2"} {
		b, err := s2.GetBackup(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		if len(b.Datasets) != 1 || len(b.Datasets[0].Atoms) != 2 {
			t.Fatalf("backup %s = %+v", id, b)
		}
	}
}

func TestSpoolSetsAsideRefusedRecord(t *testing.T) {
	ctx := ctxT(t)
	s := newSharedStore(t, Options{})
	if err := s.AddDataset(ctx, mkBackup("b1", "h1", t0), mkDataset("s", "d", "a")); err != nil {
		t.Fatal(err)
	}
	// A record spooled during an outage that conflicts with what another
	// agent wrote meanwhile.
	dir := t.TempDir()
	sp, err := openSpool(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := sp.add(spoolRecord{Backup: mkBackup("b1", "other-host", t0), Dataset: mkDataset("s", "d2", "a")}); err != nil {
		t.Fatal(err)
	}
	if err := sp.add(spoolRecord{Backup: mkBackup("b2", "h1", t0), Dataset: mkDataset("s", "d", "a")}); err != nil {
		t.Fatal(err)
	}
	s2 := newSharedStore(t, Options{Prefix: s.Prefix(), SpoolDir: dir})
	waitFor(t, "spool to drain", 60*time.Second, func() (bool, error) { return s2.SpoolDepth() == 0, nil })
	if _, err := s2.GetBackup(ctx, "b2"); err != nil {
		t.Fatalf("record behind the refused one: %v", err)
	}
	failed, _ := filepath.Glob(filepath.Join(dir, "*"+spoolFailed))
	if len(failed) != 1 {
		t.Fatalf("failed files = %v, want one", failed)
	}
}

func TestConnectEmbedded(t *testing.T) {
	ctx := ctxT(t)
	dir := t.TempDir()
	agent, err := Connect(ctx, Config{Embedded: true, DataDir: dir, Own: true})
	if err != nil {
		t.Fatal(err)
	}
	if agent.Server == nil {
		t.Fatal("agent connection does not own a server")
	}
	ep, err := etcdserver.ReadEndpoint(dir)
	if err != nil || ep != agent.Server.Endpoints()[0] {
		t.Fatalf("endpoint file = %q, %v; want %q", ep, err, agent.Server.Endpoints()[0])
	}
	as, err := NewStore(agent.Client, Options{Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	if err := as.AddDataset(ctx, mkBackup("b1", "h1", t0), mkDataset("files", "home", "bob")); err != nil {
		t.Fatal(err)
	}

	// A second "process" (the CLI) finds the agent's server.
	cliConn, err := Connect(ctx, Config{Embedded: true, DataDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	if cliConn.Server != nil {
		t.Fatal("CLI started its own server although the agent's answers")
	}
	cs, err := NewStore(cliConn.Client, Options{Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	if got, err := cs.FindAtoms(ctx, FindRequest{Pattern: "files/*"}); err != nil || len(flat(got)) != 1 {
		t.Fatalf("CLI find = %q, %v", flat(got), err)
	}
	cs.Close()
	if err := cliConn.Close(); err != nil {
		t.Fatal(err)
	}
	// The agent's server is untouched by the CLI leaving.
	if _, err := as.GetBackup(ctx, "b1"); err != nil {
		t.Fatal(err)
	}
	as.Close()
	if err := agent.Close(); err != nil {
		t.Fatal(err)
	}
	if err := agent.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if ep, _ := etcdserver.ReadEndpoint(dir); ep != "" {
		t.Fatalf("endpoint file still names %q after the server stopped", ep)
	}

	// With no agent running, the CLI serves the catalog itself; the data
	// persisted.
	cliConn, err = Connect(ctx, Config{Embedded: true, DataDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer cliConn.Close()
	if cliConn.Server == nil {
		t.Fatal("CLI did not start a server although none runs")
	}
	cs, err = NewStore(cliConn.Client, Options{Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer cs.Close()
	if b, err := cs.GetBackup(ctx, "b1"); err != nil || len(b.Datasets) != 1 {
		t.Fatalf("after restart GetBackup = %+v, %v", b, err)
	}
}

func TestConnectStaleEndpointFile(t *testing.T) {
	ctx := ctxT(t)
	dir := t.TempDir()
	// A crashed agent left an endpoint file naming a port nobody serves.
	if err := os.WriteFile(filepath.Join(dir, etcdserver.EndpointFile), []byte("http://127.0.0.1:1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	conn, err := Connect(ctx, Config{Embedded: true, DataDir: dir, DialTimeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if conn.Server == nil {
		t.Fatal("did not start a server over a stale endpoint file")
	}
}

func TestConnectConfigErrors(t *testing.T) {
	for _, cfg := range []Config{
		{},
		{Embedded: true},
		{Embedded: true, DataDir: "x", Endpoints: []string{"http://127.0.0.1:1"}},
		// TLS configured, but etcd's client would talk plain http.
		{Endpoints: []string{"https://127.0.0.1:1", "HTTP://127.0.0.1:2"}, TLS: &TLSConfig{CAFile: "ca.crt"}},
		{Endpoints: []string{"https://127.0.0.1:1"}, TLS: &TLSConfig{CertFile: "c.crt"}},
		{Endpoints: []string{"https://127.0.0.1:1"}, TLS: &TLSConfig{KeyFile: "c.key"}},
	} {
		if _, err := Connect(context.Background(), cfg); !errors.Is(err, ErrInvalid) {
			t.Errorf("Connect(%+v) err = %v, want ErrInvalid", cfg, err)
		}
	}
}

func TestConnectOwnWaitsForLock(t *testing.T) {
	dir := t.TempDir()
	srv := ownServer(t, dir)
	_ = srv
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	if _, err := Connect(ctx, Config{Embedded: true, DataDir: dir, Own: true}); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Own connect while another server runs: err = %v, want deadline exceeded", err)
	}
	if _, err := etcdserver.StartEmbedded(context.Background(), dir, etcdserver.Options{}); !errors.Is(err, etcdserver.ErrLocked) {
		t.Fatalf("second server on one dir: err = %v, want ErrLocked", err)
	}
}
