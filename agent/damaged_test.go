package agent

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/custos-backup/custos/jobs"
	"github.com/custos-backup/custos/metadata/etcdserver"
)

// TestDamagedCatalogKeepsBackupsRunning: random bytes in the embedded
// catalog's database (a real one, with records) neither stop nor crash the
// agent. It says what is wrong and what to do, on the status report, and
// its scheduled backups go on with their records spooled.
func TestDamagedCatalogKeepsBackupsRunning(t *testing.T) {
	ctx := testContext(t)
	ts := newSetup(t, "@every 1s", nil)
	dataDir := cm0(t, ts.cfgPath).MetaDB.DataDir

	// A catalog with some data, then damaged.
	srv, err := etcdserver.StartEmbedded(ctx, dataDir, etcdserver.Options{})
	if err != nil {
		t.Fatal(err)
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: srv.Endpoints(), Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 2000; i++ {
		if _, err := cli.Put(ctx, fmt.Sprintf("/custos/x/%05d", i), strings.Repeat("v", 1000)); err != nil {
			t.Fatal(err)
		}
	}
	cli.Close()
	srv.Close()
	db := filepath.Join(dataDir, "etcd", "member", "snap", "db")
	b, err := os.ReadFile(db)
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(3, 4))
	for i := 16 << 10; i < 512<<10; i++ {
		b[i] = byte(rng.Uint32())
	}
	if err := os.WriteFile(db, b, 0o600); err != nil {
		t.Fatal(err)
	}

	runCtx, stop := context.WithCancel(ctx)
	started := make(chan *Agent, 1)
	done := make(chan error, 1)
	go func() {
		done <- Run(runCtx, ts.cfgPath, RunOptions{Logger: testLogger(t), Started: func(a *Agent) { started <- a }})
	}()
	var a *Agent
	select {
	case a = <-started:
	case err := <-done:
		t.Fatalf("the agent stopped on a damaged catalog: %v", err)
	}
	waitFor(ctx, t, "a backup done with its record spooled", func() bool {
		ok := false
		for _, j := range a.Runner().Status().Done {
			ok = ok || (j.Result == jobs.ResultOK && strings.HasPrefix(j.Description, "back up "))
		}
		return ok && a.catalog.Store.SpoolDepth() > 0
	})
	rep := a.Status(ctx)
	for _, want := range []string{"damaged", db, "move " + dataDir + " aside", "spool"} {
		if !strings.Contains(rep.CatalogError, want) {
			t.Errorf("the status report's catalog error does not say %q: %s", want, rep.CatalogError)
		}
	}
	stop()
	if err := <-done; err != nil {
		t.Errorf("the agent stopped with %v", err)
	}
}
