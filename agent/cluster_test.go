package agent

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/custos-backup/custos/metadata"
	"github.com/custos-backup/custos/metadata/etcdtest"
)

// TestAgentOnExternalTLSCluster points metadb at a real three-member etcd
// cluster that requires client certificates (endpoints and ca/cert/key
// files relative to agent.yml): the agent backs up a file source into it,
// runs no embedded server, and a command opening the catalog with the same
// config finds and restores the record.
func TestAgentOnExternalTLSCluster(t *testing.T) {
	ctx := testContext(t)
	c := etcdtest.New(t, etcdtest.Options{Members: 3, TLS: true})
	f := c.ClientTLS()

	var eps strings.Builder
	for _, ep := range c.Endpoints() {
		eps.WriteString("    - " + ep + "\n")
	}
	ts := newSetup(t, "", map[string]string{
		"agent.yml": `hostname: test-host
work_dir: work
repositories:
  - name: local
    url: work/repo
    password_file: pw
http_listen: 127.0.0.1:0
metadb:
  endpoints:
` + eps.String() + `  ca_file: tls/ca.crt
  cert_file: tls/agent.crt
  key_file: tls/agent.key
`,
		"sources/files.yml": `name: files
handler: file
run_on_start: true
params:
  root: ../data
  excludes: ["*.tmp"]
datasets:
  - name: docs
  - name: photos
    atoms:
      - name: photos
`,
	})
	// The certificate files live next to agent.yml, as a site would keep
	// them; the config names them relative to its folder.
	if err := os.MkdirAll(filepath.Join(ts.dir, "tls"), 0o700); err != nil {
		t.Fatal(err)
	}
	for src, dst := range map[string]string{f.CAFile: "ca.crt", f.CertFile: "agent.crt", f.KeyFile: "agent.key"} {
		b, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(ts.dir, "tls", dst), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	cfg := cm0(t, ts.cfgPath)
	if cfg.MetaDB.Embedded || len(cfg.MetaDB.Endpoints) != 3 || cfg.MetaDB.CAFile != filepath.Join(ts.dir, "tls", "ca.crt") {
		t.Fatalf("metadb config = %+v", cfg.MetaDB)
	}

	runCtx, stop := context.WithCancel(ctx)
	started := make(chan *Agent, 1)
	done := make(chan error, 1)
	go func() {
		done <- Run(runCtx, ts.cfgPath, RunOptions{Logger: testLogger(t), Started: func(a *Agent) { started <- a }})
	}()
	agentDone := false
	defer func() {
		if !agentDone {
			stop()
			<-done
		}
	}()
	select {
	case <-started:
	case err := <-done:
		agentDone = true
		t.Fatalf("agent stopped: %v", err)
	}

	// The command's own connection, with the same agent.yml.
	_, cat, mgr := openTestCLI(ctx, t, ts.cfgPath, CatalogOptions{})
	if cat.Embedded() != nil {
		t.Fatal("a catalog on an external cluster started an embedded server")
	}
	var found []*metadata.Backup
	waitFor(ctx, t, "the agent's backup of files in the cluster", func() bool {
		var err error
		found, err = cat.Store.FindAtoms(ctx, metadata.FindRequest{Pattern: "files"})
		if err != nil {
			t.Logf("find: %v", err)
		}
		return err == nil && len(found) == 1 && len(found[0].Datasets) == 2
	})
	b := found[0]
	if b.Host != "test-host" {
		t.Errorf("backup host %q, want test-host", b.Host)
	}
	for _, d := range b.Datasets {
		if d.Repository != "local" || len(d.Atoms) != 1 || d.Atoms[0].SnapshotID == "" {
			t.Errorf("dataset %s/%s = %+v", d.Source, d.Name, d)
		}
	}

	stop()
	agentDone = true
	if err := <-done; err != nil {
		t.Fatalf("agent stop: %v", err)
	}
	if _, err := os.Stat(filepath.Join(ts.dir, "work", "etcd")); !os.IsNotExist(err) {
		t.Errorf("the agent made an embedded catalog folder although metadb names a cluster (stat: %v)", err)
	}

	// The record is good: the command restores from it, byte for byte.
	target := t.TempDir()
	if _, err := mgr.Restore(ctx, RestoreRequest{Pattern: "files/*", Target: target}); err != nil {
		t.Fatal(err)
	}
	for name, want := range ts.files {
		ds := strings.SplitN(name, "/", 2)[0]
		got, err := os.ReadFile(filepath.Join(target, "files", ds, filepath.FromSlash(name)))
		if strings.HasSuffix(name, ".tmp") {
			if err == nil {
				t.Errorf("%s: excluded file was restored", name)
			}
			continue
		}
		if err != nil || !bytes.Equal(got, want) {
			t.Errorf("%s: restored %d bytes (%v), want the original %d", name, len(got), err, len(want))
		}
	}
}
