package agent

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/custos-backup/custos/jobs"
	"github.com/custos-backup/custos/metadata"
	"github.com/custos-backup/custos/metadata/etcdserver"
	"github.com/custos-backup/custos/repository"
)

// testSetup is a config tree in a temp folder: agent.yml, a repository
// under work/, a "files" source over data/ and a "db" pipe source whose
// dump is db.bin.
type testSetup struct {
	dir, cfgPath string
	files        map[string][]byte // data/ contents by slash path
	dump         []byte            // db.bin
}

func randomBytes(t *testing.T, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

// newSetup writes the tree. extra files (agent.yml, sources/...) override
// the defaults.
func newSetup(t *testing.T, schedule string, extra map[string]string) *testSetup {
	t.Helper()
	dir := t.TempDir()
	ts := &testSetup{dir: dir, cfgPath: filepath.Join(dir, "agent.yml"), files: map[string][]byte{
		"docs/a.txt":        []byte("hello custos\n"),
		"docs/sub/big.bin":  randomBytes(t, 300<<10),
		"photos/cat.jpg":    randomBytes(t, 20<<10),
		"photos/ignore.tmp": []byte("excluded"),
	}, dump: randomBytes(t, 200<<10)}
	for name, b := range ts.files {
		p := filepath.Join(dir, "data", filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "db.bin"), ts.dump, 0o644); err != nil {
		t.Fatal(err)
	}
	files := map[string]string{
		"agent.yml": `hostname: test-host
work_dir: work
repositories:
  - name: local
    url: work/repo
    password_file: pw
http_listen: 127.0.0.1:0
`,
		"pw": "test password\n",
		"sources/files.yml": `name: files
handler: file
schedule: "` + schedule + `"
params:
  root: ../data
  excludes: ["*.tmp"]
datasets:
  - name: docs
  - name: photos
    atoms:
      - name: photos
`,
		"handlers/dump.yml": `name: dump
type: pipe
params:
  backup_command: 'cat db.bin'
  restore_command: 'cat > "$CUSTOS_RESTORE_TARGET/$CUSTOS_ATOM.bin"'
`,
		"sources/db.yml": `name: db
handler: dump
schedule: "` + schedule + `"
datasets:
  - name: main
`,
	}
	for k, v := range extra {
		files[k] = v
	}
	writeTree(t, dir, files)
	return ts
}

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo}))
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(b []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(b), "\n"))
	return len(b), nil
}

// waitFor polls cond until it holds or ctx ends. Only the test deadline
// bounds it: the machine is shared and slow at times.
func waitFor(ctx context.Context, t *testing.T, what string, cond func() bool) {
	t.Helper()
	for !cond() {
		select {
		case <-ctx.Done():
			t.Fatalf("gave up waiting for %s: %v", what, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func testContext(t *testing.T) context.Context {
	ctx := context.Background()
	if d, ok := t.Deadline(); ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithDeadline(ctx, d.Add(-5*time.Second))
		t.Cleanup(cancel)
	}
	return ctx
}

// checkRestored compares what a restore wrote with the originals.
func (ts *testSetup) checkRestored(t *testing.T, target string) {
	t.Helper()
	for name, want := range ts.files {
		ds := strings.SplitN(name, "/", 2)[0]
		p := filepath.Join(target, "files", ds, filepath.FromSlash(name))
		got, err := os.ReadFile(p)
		if strings.HasSuffix(name, ".tmp") {
			if err == nil {
				t.Errorf("%s: excluded file was restored", name)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		if !bytes.Equal(got, want) {
			t.Errorf("%s: restored %d bytes differ from the original %d bytes", name, len(got), len(want))
		}
	}
	got, err := os.ReadFile(filepath.Join(target, "db", "main", "main.bin"))
	if err != nil {
		t.Fatalf("pipe atom: %v", err)
	}
	if !bytes.Equal(got, ts.dump) {
		t.Errorf("pipe atom: restored %d bytes differ from the dump's %d bytes", len(got), len(ts.dump))
	}
}

func getJSON(ctx context.Context, t *testing.T, url string, v any) {
	t.Helper()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s", url, resp.Status)
	}
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
}

// TestAgentEndToEnd runs the daemon with a fast schedule against a real
// embedded etcd and a real repository, waits for both sources to be in the
// catalog, and restores them byte for byte: once through the running
// agent's catalog and once, after it stopped, the way the CLI does with no
// agent running.
func TestAgentEndToEnd(t *testing.T) {
	ctx := testContext(t)
	ts := newSetup(t, "@every 1s", nil)
	log := testLogger(t)

	runCtx, stop := context.WithCancel(ctx)
	started := make(chan *Agent, 1)
	addr := make(chan string, 1)
	done := make(chan error, 1)
	go func() {
		done <- Run(runCtx, ts.cfgPath, RunOptions{Logger: log, Started: func(a *Agent) { started <- a }, Listening: func(s string) { addr <- s }})
	}()
	var a *Agent
	select {
	case a = <-started:
	case err := <-done:
		t.Fatalf("agent stopped: %v", err)
	}
	base := "http://" + <-addr

	want := []string{"db/main/main", "files/docs/docs", "files/photos/photos"}
	waitFor(ctx, t, "both sources in the catalog", func() bool {
		found, err := a.Manager().Find(ctx, metadata.FindRequest{Pattern: "*"})
		if err != nil {
			t.Logf("find: %v", err)
			return false
		}
		names := map[string]bool{}
		for _, e := range Flatten(found) {
			names[e.Atom] = true
		}
		for _, w := range want {
			if !names[w] {
				return false
			}
		}
		return true
	})

	// The HTTP API shows the same.
	var backups []BackupEntry
	getJSON(ctx, t, base+"/api/backups?pattern=*", &backups)
	if len(backups) != len(want) {
		t.Errorf("/api/backups: got %d atoms, want %d: %+v", len(backups), len(want), backups)
	}
	var js map[string][]jobs.Status
	getJSON(ctx, t, base+"/api/jobs", &js)
	if len(js["history"]) == 0 {
		t.Errorf("/api/jobs: no finished jobs in the history: %+v", js)
	}
	for _, k := range []string{"pending", "running", "history"} {
		if _, ok := js[k]; !ok {
			t.Errorf("/api/jobs: no %q list", k)
		}
	}
	metricsBody := httpGet(ctx, t, base+"/metrics")
	for _, m := range []string{`custos_jobs_total{kind="ingest",result="ok"}`, "custos_catalog_spool_depth 0", `custos_ingest_bytes_total{source="db"}`} {
		if !strings.Contains(metricsBody, m) {
			t.Errorf("/metrics lacks %s", m)
		}
	}
	var st StatusReport
	getJSON(ctx, t, base+"/api/status", &st)
	if st.Host != "test-host" || len(st.Sources) != 2 || len(st.Backups) == 0 {
		t.Errorf("/api/status: host %q, %d sources, %d backups; want test-host, 2 sources and some backups", st.Host, len(st.Sources), len(st.Backups))
	}
	found := false
	for _, j := range st.Done {
		found = found || j.Description == "back up db/main"
	}
	if !found {
		t.Errorf("/api/status does not list the db/main job among the finished ones")
	}

	target := t.TempDir()
	restored, err := a.Manager().Restore(ctx, RestoreRequest{Pattern: "*", Target: target})
	if err != nil {
		t.Fatalf("restore while the agent runs: %v", err)
	}
	if len(restored) != len(want) {
		t.Errorf("restored %d atoms, want %d", len(restored), len(want))
	}
	ts.checkRestored(t, target)

	stop()
	if err := <-done; err != nil {
		t.Fatalf("agent stop: %v", err)
	}

	// No agent now: the CLI path opens the embedded catalog itself.
	cm, err := NewConfigManager(ts.cfgPath, log)
	if err != nil {
		t.Fatal(err)
	}
	cat, err := OpenCatalog(ctx, cm.Current().Config, CatalogOptions{Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	defer cat.Close()
	if cat.Embedded() == nil {
		t.Error("with no agent running, the command should run the embedded catalog itself")
	}
	mgr := NewManager(cm, cat.Store, nil, log)
	defer mgr.Close()
	target2 := t.TempDir()
	if _, err := mgr.Restore(ctx, RestoreRequest{Pattern: "files/*", Target: target2}); err != nil {
		t.Fatal(err)
	}
	if _, err := mgr.Restore(ctx, RestoreRequest{Pattern: "db/main/main", Target: target2}); err != nil {
		t.Fatal(err)
	}
	ts.checkRestored(t, target2)

	// --stdout for pipe atoms.
	var out bytes.Buffer
	if _, err := mgr.Restore(ctx, RestoreRequest{Pattern: "db", Stdout: &out}); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(out.Bytes(), ts.dump) {
		t.Errorf("restore to stdout: got %d bytes, want the %d-byte dump", out.Len(), len(ts.dump))
	}
}

func httpGet(ctx context.Context, t *testing.T, url string) string {
	t.Helper()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// openTestCLI opens config, catalog and manager the way the backup, find
// and restore commands do.
func openTestCLI(ctx context.Context, t *testing.T, path string, co CatalogOptions) (*ConfigManager, *Catalog, *Manager) {
	t.Helper()
	log := testLogger(t)
	cm, err := NewConfigManager(path, log)
	if err != nil {
		t.Fatal(err)
	}
	co.Logger = log
	cat, err := OpenCatalog(ctx, cm.Current().Config, co)
	if err != nil {
		t.Fatal(err)
	}
	mgr := NewManager(cm, cat.Store, nil, log)
	t.Cleanup(func() {
		mgr.Close()
		cat.Close()
	})
	return cm, cat, mgr
}

// TestPipeFailureRecordsNothing: a dump that fails half-way, or is killed,
// fails its job and leaves no catalog record.
func TestPipeFailureRecordsNothing(t *testing.T) {
	cases := []struct{ name, cmd string }{
		{"exit non-zero after output", `head -c 100000 db.bin; exit 3`},
		{"killed by a signal mid-stream", `head -c 100000 db.bin; kill -9 $$`},
		{"fails before any output", `exit 1`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ctx := testContext(t)
			ts := newSetup(t, "@daily", map[string]string{
				"handlers/dump.yml": "name: dump\ntype: pipe\nparams:\n  backup_command: '" + tc.cmd + "'\n  restore_command: 'cat >/dev/null'\n",
			})
			cm, cat, mgr := openTestCLI(ctx, t, ts.cfgPath, CatalogOptions{SpoolDir: CLISpoolDir(cm0(t, ts.cfgPath))})
			res, err := BackupNow(ctx, mgr, cm.Current(), "db", "")
			if err != nil {
				t.Fatal(err)
			}
			if len(res) != 1 || res[0].Err == nil {
				t.Fatalf("want one failed dataset, got %+v", res)
			}
			if res[0].Record != nil {
				t.Errorf("a failed dump produced a record: %+v", res[0].Record)
			}
			found, err := cat.Store.FindAtoms(ctx, metadata.FindRequest{Pattern: "db"})
			if err != nil {
				t.Fatal(err)
			}
			if len(found) != 0 {
				t.Errorf("the catalog holds a failed dump: %+v", found[0].Datasets[0])
			}
			if d := cat.Store.SpoolDepth(); d != 0 {
				t.Errorf("spool holds %d records for a failed dump", d)
			}
		})
	}
}

func cm0(t *testing.T, path string) *Config {
	cfg, err := LoadConfig(path)
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// TestEtcdOutageDuringBackup stops etcd while a backup runs: the backup
// still completes, its record waits in the spool, and appears in the catalog
// once etcd is back.
func TestEtcdOutageDuringBackup(t *testing.T) {
	ctx := testContext(t)
	ts := newSetup(t, "@daily", map[string]string{
		"sources/db.yml": `name: db
handler: dump
datasets:
  - name: main
pre_backup_command: 'touch started; while [ ! -f go-on ]; do sleep 0.05; done'
`,
	})
	cfg := cm0(t, ts.cfgPath)
	// This test runs the etcd server itself so that it can stop and restart
	// it; the command connects to it as a client, as it does to an agent's.
	srv, err := etcdserver.StartEmbedded(ctx, cfg.MetaDB.DataDir, etcdserver.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { srv.Close() }()
	cm, cat, mgr := openTestCLI(ctx, t, ts.cfgPath, CatalogOptions{
		SpoolDir: CLISpoolDir(cfg),
		Store: func(o *metadata.Options) {
			o.WriteTimeout = 2 * time.Second
			o.MinBackoff = 200 * time.Millisecond
			o.MaxBackoff = time.Second
		},
	})
	if cat.Embedded() != nil {
		t.Fatal("the command should have connected to the running server, not started its own")
	}

	type result struct {
		res []*DatasetResult
		err error
	}
	done := make(chan result, 1)
	go func() {
		res, err := BackupNow(ctx, mgr, cm.Current(), "db", "")
		done <- result{res, err}
	}()
	waitFor(ctx, t, "the backup to start", func() bool {
		_, err := os.Stat(filepath.Join(ts.dir, "started"))
		return err == nil
	})
	if err := srv.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(ts.dir, "go-on"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	r := <-done
	if r.err != nil || len(r.res) != 1 || r.res[0].Err != nil {
		t.Fatalf("the backup must complete while etcd is down: %v %+v", r.err, r.res)
	}
	if d := cat.Store.SpoolDepth(); d != 1 {
		t.Fatalf("spool depth %d, want the 1 record waiting for etcd", d)
	}

	srv, err = etcdserver.StartEmbedded(ctx, cfg.MetaDB.DataDir, etcdserver.Options{})
	if err != nil {
		t.Fatal(err)
	}
	waitFor(ctx, t, "the spooled record to reach the catalog", func() bool {
		found, err := cat.Store.FindAtoms(ctx, metadata.FindRequest{Pattern: "db/main/main"})
		return err == nil && len(found) == 1
	})
	// The spool file goes just after the catalog write: wait for it too.
	waitFor(ctx, t, "the spool to empty after the flush", func() bool { return cat.Store.SpoolDepth() == 0 })
	// And the record is good: it restores.
	target := t.TempDir()
	if _, err := mgr.Restore(ctx, RestoreRequest{Pattern: "db", Target: target}); err != nil {
		t.Fatal(err)
	}
	got, _ := os.ReadFile(filepath.Join(target, "db", "main", "main.bin"))
	if !bytes.Equal(got, ts.dump) {
		t.Errorf("restored dump differs")
	}
}

// TestRestoreCannotEscapeTarget feeds restore catalog records whose names
// try to leave the target, and a tree whose entry is "../evil".
func TestRestoreCannotEscapeTarget(t *testing.T) {
	ctx := testContext(t)
	ts := newSetup(t, "@daily", nil)
	cm, cat, mgr := openTestCLI(ctx, t, ts.cfgPath, CatalogOptions{})
	res, err := BackupNow(ctx, mgr, cm.Current(), "", "")
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range res {
		if r.Err != nil {
			t.Fatal(r.Err)
		}
	}
	byName := map[string]*DatasetResult{}
	for _, r := range res {
		byName[r.Source+"/"+r.Dataset] = r
	}
	fileRec, pipeRec := byName["files/docs"].Record, byName["db/main"].Record

	// The repository itself, asked to store a stream called "../evil",
	// refuses before it writes anything: a tree never holds such a name.
	// (A forged tree that does is refused on restore:
	// repository.TestRestoreNeverEscapes.)
	repo, err := mgr.repos.Get(ctx, cm.Current().Config.DefaultRepository())
	if err != nil {
		t.Fatal(err)
	}
	before, err := repo.Snapshots(ctx)
	if err != nil {
		t.Fatal(err)
	}
	evil, err := repo.BackupStream(ctx, "../evil", strings.NewReader("gotcha"), backupOpts("db/main", "test-host"))
	if err == nil || !strings.Contains(err.Error(), `invalid name "../evil"`) {
		t.Errorf("BackupStream of a stream named ../evil: snapshot %v, error %v; want it refused, naming it", evil, err)
	}
	if after, err := repo.Snapshots(ctx); err != nil || len(after) != len(before) {
		t.Errorf("BackupStream of ../evil left %d snapshots (had %d): %v", len(after), len(before), err)
	}

	hostile := []struct {
		name string
		d    metadata.Dataset
	}{
		{"file atom path with ..", metadata.Dataset{Source: "files", Name: "docs", Handler: "file", Repository: "local", SnapshotID: fileRec.SnapshotID,
			Atoms: []metadata.Atom{{Name: "docs", Path: "../../../evil"}}}},
		{"file atom absolute path", metadata.Dataset{Source: "files", Name: "docs", Handler: "file", Repository: "local", SnapshotID: fileRec.SnapshotID,
			Atoms: []metadata.Atom{{Name: "docs", Path: "/etc"}}}},
		{"pipe atom name with ..", metadata.Dataset{Source: "db", Name: "main", Handler: "pipe", Repository: "local", SnapshotID: pipeRec.SnapshotID,
			Atoms: []metadata.Atom{{Name: "../../evil"}}}},
	}
	for i, h := range hostile {
		t.Run(h.name, func(t *testing.T) {
			outer := t.TempDir()
			target := filepath.Join(outer, "a", "b", "target")
			// The hostile record replaces the real one of the same backup,
			// so that it passes the cross-check with its snapshot and the
			// restore meets the hostile names themselves.
			id, err := repository.ParseID(strings.Split(h.d.SnapshotID, ",")[0])
			if err != nil {
				t.Fatal(err)
			}
			snap, err := repo.LoadSnapshot(ctx, id)
			if err != nil {
				t.Fatal(err)
			}
			b := &metadata.Backup{ID: snap.BackupID, Host: snap.Host, Timestamp: snap.Time}
			d := h.d
			d.ID = b.ID
			if err := cat.Store.AddDataset(ctx, b, &d); err != nil {
				t.Fatal(err)
			}
			_, err = mgr.Restore(ctx, RestoreRequest{Pattern: d.Source + "/" + d.Name, Host: snap.Host, Target: target})
			if err == nil {
				t.Errorf("restore of a hostile record succeeded")
			} else if strings.Contains(err.Error(), "rebuild the catalog from the repository") {
				t.Errorf("the cross-check stopped it, so confinement was not tested: %v", err)
			}
			t.Logf("restore (%d): %v", i, err)
			checkNothingOutside(t, outer, target)
		})
	}
	// Hostile source and dataset names never become paths either. The
	// catalog may refuse to record them; whatever is recorded (by an older
	// version, or straight into etcd) the restore refuses for its name.
	b := &metadata.Backup{ID: "hostile-names", Host: "evil-host", Timestamp: time.Now()}
	dotdot := metadata.Dataset{ID: b.ID, Source: "..", Name: "..", Handler: "file", Repository: "local", SnapshotID: fileRec.SnapshotID, Atoms: []metadata.Atom{{Name: "docs"}}}
	const refused = `".." is not a usable name`
	outer := t.TempDir()
	target := filepath.Join(outer, "t")
	switch err := cat.Store.AddDataset(ctx, b, &dotdot); {
	case err == nil:
		_, err := mgr.Restore(ctx, RestoreRequest{Pattern: "*", Host: "evil-host", Target: target})
		if err == nil || !strings.Contains(err.Error(), refused) {
			t.Errorf("restore of a recorded dataset named ../..: %v; want it refused for its name", err)
		}
	case !errors.Is(err, metadata.ErrInvalid):
		t.Errorf("recording a dataset named ../..: %v; want it recorded or refused as invalid", err)
	}
	_, err = mgr.restoreDataset(ctx, mgr.cm.Current(), RestoreRequest{Target: target}, b, &dotdot)
	if err == nil || !strings.Contains(err.Error(), refused) {
		t.Errorf("restore of a dataset named ../..: %v; want it refused for its name", err)
	}
	checkNothingOutside(t, outer, target)
}

// checkNothingOutside fails if any file under outer is not under target.
func checkNothingOutside(t *testing.T, outer, target string) {
	t.Helper()
	_ = filepath.Walk(outer, func(p string, info os.FileInfo, err error) error {
		if err == nil && !info.IsDir() && !strings.HasPrefix(p, target+string(filepath.Separator)) {
			t.Errorf("restore wrote %s outside the target", p)
		}
		return nil
	})
	for _, p := range []string{"/etc/evil", "/evil", filepath.Join(filepath.Dir(outer), "evil")} {
		if _, err := os.Stat(p); err == nil {
			t.Errorf("%s exists", p)
		}
	}
}

func backupOpts(dataset, host string) repository.BackupOptions {
	return repository.BackupOptions{Dataset: dataset, Host: host, NoParent: true}
}

// TestWrongPasswordNeverReinitialises: a repository that exists is never
// initialised again because the password is wrong; the backup fails and
// says why, without the password.
func TestWrongPasswordNeverReinitialises(t *testing.T) {
	ctx := testContext(t)
	ts := newSetup(t, "@daily", nil)
	cm, _, mgr := openTestCLI(ctx, t, ts.cfgPath, CatalogOptions{})
	res, err := BackupNow(ctx, mgr, cm.Current(), "files", "docs")
	if err != nil || res[0].Err != nil {
		t.Fatalf("first backup: %v %+v", err, res)
	}
	mgr.Close()
	writeTree(t, ts.dir, map[string]string{"pw": "another password\n"})
	cm2, err := NewConfigManager(ts.cfgPath, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	mgr2 := NewManager(cm2, mgr.catalog, nil, testLogger(t))
	defer mgr2.Close()
	res, err = BackupNow(ctx, mgr2, cm2.Current(), "files", "docs")
	if err != nil {
		t.Fatal(err)
	}
	if res[0].Err == nil || !strings.Contains(res[0].Err.Error(), "wrong password") || !jobs.IsPermanent(res[0].Err) {
		t.Fatalf("want a permanent wrong-password error, got %v", res[0].Err)
	}
	if strings.Contains(res[0].Err.Error(), "another password") {
		t.Error("the password is in the error message")
	}
	// The old password still opens it: it was not re-created.
	writeTree(t, ts.dir, map[string]string{"pw": "test password\n"})
	cm3, err := NewConfigManager(ts.cfgPath, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	mgr3 := NewManager(cm3, mgr.catalog, nil, testLogger(t))
	defer mgr3.Close()
	target := t.TempDir()
	if _, err := mgr3.Restore(ctx, RestoreRequest{Pattern: "files/docs", Target: target}); err != nil {
		t.Fatalf("restore with the original password: %v", err)
	}
}

// TestRestoreRefusesPlantedSymlinks plants symlinks in the restore target
// at every level a restore creates or writes (the source folder, the
// dataset folder, a folder and a file of the snapshot) and checks that
// nothing is ever written through them: a folder that is a symlink fails
// the restore with an error naming it, a file that is a symlink is
// replaced by the restored file. (What a pipe source's restore_command
// does inside its folder is that command's business: "cat > $DIR/x"
// follows a link planted at x.)
func TestRestoreRefusesPlantedSymlinks(t *testing.T) {
	ctx := testContext(t)
	ts := newSetup(t, "@daily", nil)
	cm, _, mgr := openTestCLI(ctx, t, ts.cfgPath, CatalogOptions{})
	res, err := BackupNow(ctx, mgr, cm.Current(), "", "")
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range res {
		if r.Err != nil {
			t.Fatal(r.Err)
		}
	}
	cases := []struct {
		name    string
		pattern string
		link    string // slash path below the target that is planted as a symlink
		inside  bool   // the link points to another folder inside the target
		named   string // "" = the restore succeeds; else the error says this path is a symlink
	}{
		{"source folder, file dataset", "files/docs", "files", false, "files"},
		{"dataset folder, file dataset", "files/docs", "files/docs", false, "files/docs"},
		{"source folder, pipe dataset", "db/main", "db", false, "db"},
		{"dataset folder, pipe dataset", "db/main", "db/main", false, "db/main"},
		{"dataset folder pointing inside the target", "files/docs", "files/docs", true, "files/docs"},
		{"folder of the snapshot", "files/docs", "files/docs/docs/sub", false, `"docs/sub"`},
		{"file of the snapshot", "files/docs", "files/docs/docs/a.txt", false, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			outer := t.TempDir()
			target := filepath.Join(outer, "t")
			elsewhere := filepath.Join(outer, "elsewhere")
			if tc.inside {
				elsewhere = filepath.Join(target, "other")
			}
			if err := os.MkdirAll(elsewhere, 0o755); err != nil {
				t.Fatal(err)
			}
			sentinel := filepath.Join(elsewhere, "sentinel")
			if err := os.WriteFile(sentinel, []byte("untouched"), 0o644); err != nil {
				t.Fatal(err)
			}
			link := filepath.Join(target, filepath.FromSlash(tc.link))
			if err := os.MkdirAll(filepath.Dir(link), 0o755); err != nil {
				t.Fatal(err)
			}
			to := elsewhere
			if strings.HasSuffix(tc.link, ".txt") {
				to = sentinel
			}
			if err := os.Symlink(to, link); err != nil {
				t.Fatal(err)
			}
			done, err := mgr.Restore(ctx, RestoreRequest{Pattern: tc.pattern, Host: "test-host", Target: target})
			t.Logf("restore: %v", err)
			if tc.named == "" {
				if err != nil {
					t.Fatalf("restore: %v", err)
				}
				fi, err := os.Lstat(link)
				if err != nil || !fi.Mode().IsRegular() {
					t.Fatalf("%s after restore: %v %v, want the restored regular file", link, fi, err)
				}
				want := ts.files["docs/a.txt"]
				if got, _ := os.ReadFile(link); !bytes.Equal(got, want) {
					t.Errorf("%s holds %d bytes, want the %d restored ones", link, len(got), len(want))
				}
			} else {
				if err == nil {
					t.Errorf("restore through the symlink %s succeeded (%v)", link, done)
				}
				if msg := err.Error(); !strings.Contains(msg, tc.named+" is a symbolic link") {
					t.Errorf("error %q does not say that %s is a symbolic link", msg, tc.named)
				}
			}
			entries, err := os.ReadDir(elsewhere)
			if err != nil {
				t.Fatal(err)
			}
			if len(entries) != 1 || entries[0].Name() != "sentinel" {
				t.Errorf("restore wrote into %s: %v", elsewhere, entries)
			}
			if b, _ := os.ReadFile(sentinel); string(b) != "untouched" {
				t.Errorf("restore wrote %d bytes into %s through the link", len(b), sentinel)
			}
		})
	}
}
