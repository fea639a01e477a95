package agent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/custos-backup/custos/jobs"
	"github.com/custos-backup/custos/shell"
)

// writeTree writes files (slash paths relative to dir) and returns dir.
func writeTree(t *testing.T, dir string, files map[string]string) string {
	t.Helper()
	for name, body := range files {
		p := filepath.Join(dir, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

const goodAgent = `work_dir: work
repositories:
  - name: local
    url: repo
    password: secret
`

const goodSource = `name: home
handler: file
schedule: "@daily"
params:
  root: /srv
datasets:
  - name: alice
    atoms:
      - name: docs
`

func TestConfigErrors(t *testing.T) {
	cases := []struct {
		name  string
		files map[string]string
		want  []string // every message, in order (sorted by file and line)
	}{
		{
			name:  "unknown field in a source",
			files: map[string]string{"sources/home.yml": strings.Replace(goodSource, "schedule:", "schedul:", 1)},
			want:  []string{`sources/home.yml:3: field "schedul": unknown field`},
		},
		{
			name:  "bad cron spec",
			files: map[string]string{"sources/home.yml": strings.Replace(goodSource, `"@daily"`, `"61 * * * *"`, 1)},
			want:  []string{`sources/home.yml:3: field "schedule": `},
		},
		{
			name:  "bad random_every duration",
			files: map[string]string{"sources/home.yml": strings.Replace(goodSource, `"@daily"`, `"@random_every soon"`, 1)},
			want:  []string{`sources/home.yml:3: field "schedule": `},
		},
		{
			name:  "unknown handler",
			files: map[string]string{"sources/home.yml": strings.Replace(goodSource, "handler: file", "handler: mysql", 1)},
			want:  []string{`sources/home.yml:2: field "handler": unknown handler "mysql"`},
		},
		{
			name:  "unknown repository",
			files: map[string]string{"sources/home.yml": goodSource + "repository: offsite\n"},
			want:  []string{`sources/home.yml:10: field "repository": unknown repository "offsite" (known: local)`},
		},
		{
			name: "duplicate source names",
			files: map[string]string{
				"sources/a.yml": goodSource,
				"sources/b.yml": goodSource,
			},
			want: []string{`sources/b.yml:1: field "name": source "home" is already defined in `},
		},
		{
			name:  "duplicate dataset in a source",
			files: map[string]string{"sources/home.yml": goodSource + "  - name: alice\n"},
			want:  []string{`sources/home.yml:10: field "datasets[1].name": dataset "alice" is defined more than once`},
		},
		{
			name:  "duplicate atom in a dataset",
			files: map[string]string{"sources/home.yml": goodSource + "      - name: docs\n"},
			want:  []string{`sources/home.yml:10: field "datasets[0].atoms[1].name": atom "docs" is defined more than once`},
		},
		{
			name: "duplicate handler names",
			files: map[string]string{
				"handlers/a.yml": "name: dump\ntype: pipe\nparams: {backup_command: a, restore_command: b}\n",
				"handlers/b.yml": "name: dump\ntype: pipe\nparams: {backup_command: a, restore_command: b}\n",
			},
			want: []string{`handlers/b.yml:1: field "name": handler "dump" is already defined in `},
		},
		{
			name:  "connections out of range",
			files: map[string]string{"agent.yml": goodAgent + "    connections: 0\n"},
			want:  []string{`agent.yml:6: field "repositories[0].connections": 0: want 1 to 256 requests in flight`},
		},
		{
			name:  "duplicate repository names",
			files: map[string]string{"agent.yml": goodAgent + "  - name: local\n    url: other\n    password: x\n"},
			want:  []string{`agent.yml:6: field "repositories[1].name": repository "local" is defined more than once`},
		},
		{
			name:  "bad types",
			files: map[string]string{"agent.yml": goodAgent + "dry_run: maybe\ndefault_nice_level: high\nqueues:\n  ingest: two\n"},
			want: []string{
				`agent.yml:6: field "dry_run": expected true or false, got the string "maybe"`,
				`agent.yml:7: field "default_nice_level": expected a whole number, got the string "high"`,
				`agent.yml:9: field "queues.ingest": expected a whole number, got the string "two"`,
			},
		},
		{
			name:  "bad timeout and datasets not a list",
			files: map[string]string{"sources/home.yml": "name: home\nhandler: file\nparams: {root: /srv}\ndatasets: alice\ntimeout: soon\n"},
			want: []string{
				`sources/home.yml:4: field "datasets": expected a list, got the string "alice"`,
				`sources/home.yml:5: field "timeout": expected a duration like 30m or 2h, got "soon"`,
			},
		},
		{
			name:  "unknown queue kind and unknown agent field",
			files: map[string]string{"agent.yml": goodAgent + "queues:\n  backup: 2\nlisten: 1.2.3.4:5\n"},
			want: []string{
				`agent.yml:7: field "queues.backup": unknown field`,
				`agent.yml:8: field "listen": unknown field`,
			},
		},
		{
			name: "many errors at once, across files",
			files: map[string]string{
				"agent.yml":        goodAgent + "dry_run: 3\n",
				"sources/home.yml": strings.Replace(goodSource, "handler: file", "handler: nope", 1) + "colour: blue\n",
				"handlers/x.yml":   "name: x\ntype: tape\n",
			},
			want: []string{
				`agent.yml:6: field "dry_run": expected true or false, got "3"`,
				`handlers/x.yml:2: field "type": unknown handler type "tape"`,
				`sources/home.yml:2: field "handler": unknown handler "nope"`,
				`sources/home.yml:10: field "colour": unknown field`,
			},
		},
		{
			name:  "handler param problems point at the param",
			files: map[string]string{"sources/home.yml": strings.Replace(goodSource, "  root: /srv", "  root: /srv\n  exclude: ['*.o']", 1)},
			want:  []string{`sources/home.yml:6: field "params.exclude": unknown param for the file handler`},
		},
		{
			name:  "file handler without root",
			files: map[string]string{"sources/home.yml": strings.Replace(goodSource, "params:\n  root: /srv\n", "", 1)},
			want:  []string{`sources/home.yml:1: field "params.root": missing: the file handler "file" needs it`},
		},
		{
			name:  "pipe handler without commands",
			files: map[string]string{"handlers/dump.yml": "name: dump\ntype: pipe\nparams:\n  backup_command: 'pg_dump db'\n", "sources/db.yml": "name: db\nhandler: dump\ndatasets: [{name: main}]\n"},
			want:  []string{`sources/db.yml:1: field "params.restore_command": missing: the pipe handler "dump" needs it`},
		},
		{
			name:  "atom path escaping the root",
			files: map[string]string{"sources/home.yml": goodSource + "        path: ../../etc\n"},
			want:  []string{`sources/home.yml:10: field "datasets[0].atoms[0].path": atom path "../../etc" must be relative`},
		},
		{
			name:  "names that cannot be part of an atom path",
			files: map[string]string{"sources/home.yml": strings.Replace(goodSource, "name: alice", "name: al/ice", 1)},
			want:  []string{`sources/home.yml:7: field "datasets[0].name": name "al/ice" may not contain`},
		},
		{
			name:  "both datasets and datasets_command",
			files: map[string]string{"sources/home.yml": goodSource + "datasets_command: ls\n"},
			want:  []string{`sources/home.yml:10: field "datasets_command": give either datasets or datasets_command, not both`},
		},
		{
			name:  "yaml syntax error",
			files: map[string]string{"sources/home.yml": "name: home\n  handler: [file\n"},
			want:  []string{`sources/home.yml:2: YAML syntax: `},
		},
		{
			name:  "password from an unset environment variable",
			files: map[string]string{"agent.yml": strings.Replace(goodAgent, "password: secret", "password_env: CUSTOS_TEST_UNSET_VARIABLE", 1)},
			want:  []string{`agent.yml:5: field "repositories[0].password_env": environment variable CUSTOS_TEST_UNSET_VARIABLE is not set`},
		},
		{
			name:  "missing work_dir and repositories",
			files: map[string]string{"agent.yml": "hostname: h\n"},
			want: []string{
				`agent.yml:1: field "work_dir": missing`,
				`agent.yml:1: field "repositories": missing: at least one repository is needed`,
			},
		},
		{
			name:  "bad repository url",
			files: map[string]string{"agent.yml": strings.Replace(goodAgent, "url: repo", "url: 's3:ftp://x/y'", 1)},
			want:  []string{`agent.yml:4: field "repositories[0].url": `},
		},
		{
			name:  "mistyped repository schemes",
			files: map[string]string{"agent.yml": goodAgent + "  - name: a\n    url: 'S3:https://s3.example.com/b'\n    password: x\n  - name: b\n    url: 'https://s3.example.com/b'\n    password: x\n  - name: c\n    url: 'file:///srv/repo'\n    password: x\n  - name: d\n    url: 'locl:/x'\n    password: x\n"},
			want: []string{
				`agent.yml:7: field "repositories[1].url": repository location "S3:https://s3.example.com/b": unknown kind "S3"`,
				`agent.yml:10: field "repositories[2].url": repository location "https://s3.example.com/b": unknown kind "https"`,
				`agent.yml:13: field "repositories[3].url": repository location "file:///srv/repo": unknown kind "file"`,
				`agent.yml:16: field "repositories[4].url": repository location "locl:/x": unknown kind "locl"`,
			},
		},
		{
			name:  "settings that would fail at run time",
			files: map[string]string{"agent.yml": goodAgent + "default_nice_level: 100\nhttp_listen: not an address\nmetadb:\n  endpoints: ['not a url', '127.0.0.1:2379', 'http://10.0.0.1:2379']\n"},
			want: []string{
				`agent.yml:6: field "default_nice_level": nice level must be between -20 and 19, got 100`,
				`agent.yml:7: field "http_listen": listen address "not an address": want host:port`,
				`agent.yml:9: field "metadb.endpoints[0]": etcd endpoint "not a url": want host:port`,
			},
		},
		{
			name:  "source priority out of range",
			files: map[string]string{"sources/home.yml": goodSource + "nice_level: 20\nio_class: 4\n"},
			want: []string{
				`sources/home.yml:10: field "nice_level": nice level must be between -20 and 19, got 20`,
				`sources/home.yml:11: field "io_class": io class must be 0 (none), 1 (realtime), 2 (best-effort) or 3 (idle), got 4`,
			},
		},
		{
			name:  "port out of range",
			files: map[string]string{"agent.yml": goodAgent + "http_listen: 127.0.0.1:99999\n"},
			want:  []string{`agent.yml:6: field "http_listen": listen address "127.0.0.1:99999": port must be a number from 0 to 65535`},
		},
		{
			name:  "unknown log format",
			files: map[string]string{"agent.yml": goodAgent + "log_format: xml\n"},
			want:  []string{`agent.yml:6: field "log_format": log format must be text or json, got "xml"`},
		},
		{
			name:  "every zero seconds",
			files: map[string]string{"sources/home.yml": strings.Replace(goodSource, `"@daily"`, `"@every 0s"`, 1)},
			want:  []string{`sources/home.yml:3: field "schedule": schedule "@every 0s": @every 0s is shorter than 1s`},
		},
		{
			name:  "listening off loopback without a token",
			files: map[string]string{"agent.yml": goodAgent + "http_listen: 0.0.0.0:7373\n"},
			want:  []string{`agent.yml:6: field "http_listen": 0.0.0.0:7373 is reachable from other hosts: set http_token_file`},
		},
		{
			name:  "a short token and half a TLS pair",
			files: map[string]string{"agent.yml": goodAgent + "http_token_file: tok\nhttp_tls_cert_file: cert.pem\n", "tok": "short\n"},
			want: []string{
				`agent.yml:6: field "http_token_file": the token in `,
				`agent.yml:7: field "http_tls_cert_file": http_tls_cert_file and http_tls_key_file go together`,
			},
		},
		{
			name:  "metadb with endpoints and embedded",
			files: map[string]string{"agent.yml": goodAgent + "metadb:\n  embedded: true\n  endpoints: [http://10.0.0.1:2379]\n"},
			want:  []string{`agent.yml:8: field "metadb.endpoints": an embedded catalog takes no endpoints`},
		},
		{
			name:  "unknown storage class",
			files: map[string]string{"agent.yml": goodAgent + "  - name: cold\n    url: s3:http://127.0.0.1:9/b\n    password: x\n    storage_class: glacier\n"},
			want:  []string{`agent.yml:9: field "repositories[1].storage_class": unknown storage class "glacier"`},
		},
		{
			name:  "restore tier the class has not",
			files: map[string]string{"agent.yml": goodAgent + "  - name: cold\n    url: s3:http://127.0.0.1:9/b\n    password: x\n    storage_class: DEEP_ARCHIVE\n    restore_tier: Expedited\n"},
			want:  []string{`agent.yml:10: field "repositories[1].restore_tier": DEEP_ARCHIVE has no Expedited restores`},
		},
		{
			name:  "restore days out of range",
			files: map[string]string{"agent.yml": goodAgent + "  - name: cold\n    url: s3:http://127.0.0.1:9/b\n    password: x\n    storage_class: GLACIER\n    restore_days: 0\n"},
			want:  []string{`agent.yml:10: field "repositories[1].restore_days": restore_days must be a number of days from 1 to 30000, not 0`},
		},
		{
			name:  "monthly fixity of an archive whose restores last the default week",
			files: map[string]string{"agent.yml": goodAgent + "  - name: cold\n    url: s3:http://127.0.0.1:9/b\n    password: x\n    storage_class: GLACIER\n    fixity: {schedule: \"@monthly\"}\n"},
			want:  []string{`agent.yml:10: field "repositories[1].fixity.schedule": restored packs stay readable for 7 days, but fixity runs ("@monthly") can be 31 days apart`},
		},
		{
			name:  "restore days shorter than the week between fixity runs",
			files: map[string]string{"agent.yml": goodAgent + "  - name: cold\n    url: s3:http://127.0.0.1:9/b\n    password: x\n    storage_class: GLACIER\n    restore_days: 3\n    fixity: {schedule: \"@weekly\"}\n"},
			want:  []string{`agent.yml:10: field "repositories[1].restore_days": restored packs stay readable for 3 days, but fixity runs ("@weekly") can be 7 days apart`},
		},
		{
			name:  "restore tier without an archive class",
			files: map[string]string{"agent.yml": goodAgent + "  - name: cold\n    url: s3:http://127.0.0.1:9/b\n    password: x\n    restore_tier: Bulk\n"},
			want:  []string{`agent.yml:9: field "repositories[1].restore_tier": restore_tier needs an archive storage_class`},
		},
		{
			name:  "storage class on a local repository",
			files: map[string]string{"agent.yml": goodAgent + "    storage_class: GLACIER\n"},
			want:  []string{`agent.yml:6: field "repositories[0].storage_class": only S3 repositories have storage classes; local is a local repository`},
		},
		{
			name:  "metadb TLS on the embedded catalog",
			files: map[string]string{"agent.yml": goodAgent + "metadb:\n  embedded: true\n  ca_file: ca.pem\n"},
			want:  []string{`agent.yml:8: field "metadb.ca_file": only for an external etcd cluster (set endpoints)`},
		},
		{
			name:  "metadb username without password",
			files: map[string]string{"agent.yml": goodAgent + "metadb:\n  endpoints: [https://10.0.0.1:2379]\n  username: custos\n"},
			want:  []string{`agent.yml:8: field "metadb.username": username and password_file go together`},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			files := map[string]string{"agent.yml": goodAgent}
			for k, v := range tc.files {
				files[k] = v
			}
			writeTree(t, dir, files)
			wantConfigErrors(t, dir, tc.want)
		})
	}
}

func TestConfigDefaultsAndRelativePaths(t *testing.T) {
	dir := t.TempDir()
	writeTree(t, dir, map[string]string{
		"agent.yml":        goodAgent + "metadb: embedded\n",
		"pw":               "from-file\n",
		"sources/home.yml": strings.Replace(goodSource, "root: /srv", "root: ../data", 1),
	})
	cfg, err := LoadConfig(filepath.Join(dir, "agent.yml"))
	if err != nil {
		t.Fatal(err)
	}
	host, _ := os.Hostname()
	checks := []struct{ name, got, want string }{
		{"hostname", cfg.Hostname, host},
		{"work_dir", cfg.WorkDir, filepath.Join(dir, "work")},
		{"random_seed_file", cfg.RandomSeedFile, filepath.Join(dir, "work", "seed")},
		{"metadb data dir", cfg.MetaDB.DataDir, filepath.Join(dir, "work", "etcd")},
		{"repository url", cfg.Repositories[0].URL, filepath.Join(dir, "repo")},
		{"http listen", cfg.HTTPListen, DefaultHTTPListen},
		{"source repository", cfg.Sources[0].Repository, "local"},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s: got %q, want %q", c.name, c.got, c.want)
		}
	}
	if !cfg.MetaDB.Embedded {
		t.Error("metadb: want embedded")
	}
	if cfg.Queues["ingest"] != 2 {
		t.Errorf("default ingest concurrency: got %d", cfg.Queues["ingest"])
	}
	if c := cfg.Repositories[0].Connections; c != 0 {
		t.Errorf("default connections: got %d, want 0 (the backend's own)", c)
	}
	// The file handler's root is relative to the source file's folder.
	h, err := NewHandler(cfg.Handler("file"), cfg.Sources[0])
	if err != nil {
		t.Fatal(err)
	}
	if h.Type() != "file" {
		t.Errorf("handler type %q", h.Type())
	}
}

func TestPasswordNeverPrinted(t *testing.T) {
	dir := t.TempDir()
	writeTree(t, dir, map[string]string{
		"agent.yml": strings.Replace(goodAgent, "password: secret", "password_file: pw", 1),
		"pw":        "hunter2-very-secret\n",
	})
	cfg, err := LoadConfig(filepath.Join(dir, "agent.yml"))
	if err != nil {
		t.Fatal(err)
	}
	r := cfg.Repositories[0]
	if string(r.Password.Bytes()) != "hunter2-very-secret" {
		t.Fatalf("password from file: got %q", r.Password.Bytes())
	}
	for _, s := range []string{r.Password.String(), fmtV(r), fmtV(*r)} {
		if strings.Contains(s, "hunter2") {
			t.Errorf("password leaked: %s", s)
		}
	}
}

func TestExampleConfigLoads(t *testing.T) {
	cfg, err := LoadConfig("../config.d/agent.yml")
	if err != nil {
		t.Fatalf("the shipped example config must load:\n%v", err)
	}
	if cfg.Source("example-files") == nil || cfg.Source("example-db") == nil {
		t.Fatalf("example sources missing: %+v", cfg.Sources)
	}
	repoRoot, _ := filepath.Abs("..")
	if cfg.WorkDir != filepath.Join(repoRoot, "work") {
		t.Errorf("example work_dir %s: want the gitignored %s", cfg.WorkDir, filepath.Join(repoRoot, "work"))
	}
	for _, s := range cfg.Sources {
		if !s.RunOnStart {
			t.Errorf("example source %s should run on start so the tour works within a minute", s.Name)
		}
	}
}

func TestParseDatasets(t *testing.T) {
	ds, err := ParseDatasets([]byte("# comment\n\npeople\nshop orders customers=db/customers\n"))
	if err != nil {
		t.Fatal(err)
	}
	if len(ds) != 2 || ds[0].Name != "people" || len(ds[0].Atoms) != 1 || ds[0].Atoms[0].Name != "people" {
		t.Fatalf("got %+v", ds)
	}
	if ds[1].Atoms[1].Name != "customers" || ds[1].Atoms[1].Path != "db/customers" {
		t.Fatalf("got %+v", ds[1])
	}
	for _, bad := range []string{"a\na\n", "../x\n", "a b b\n", "a b=../../etc\n", "a/b\n"} {
		if _, err := ParseDatasets([]byte(bad)); err == nil {
			t.Errorf("%q: want an error", bad)
		}
	}
}

func fmtV(v any) string { return fmt.Sprintf("%v %+v", v, v) }

// TestDatasetsCommandBounds runs real datasets_commands: a normal one, one
// that never stops printing and one that never ends. The last two are
// stopped with an error that says why, instead of growing the agent or
// holding the caller for good.
func TestDatasetsCommandBounds(t *testing.T) {
	cases := []struct {
		name    string
		command string
		timeout time.Duration
		want    []string // dataset names
		wantErr string
	}{
		{"a listing", `printf 'a\nb x y=sub/y\n'`, 0, []string{"a", "b"}, ""},
		{"runaway output", `yes d`, 0, nil, "printed more than 16 MiB"},
		{"never ends", `sleep 1000`, 300 * time.Millisecond, nil, "still running after 300ms"},
		{"fails", `echo half; exit 3`, 0, nil, "exit status 3"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			src := &SourceSpec{Name: "s", DatasetsCommand: tc.command, Timeout: tc.timeout}
			ds, err := Datasets(context.Background(), shell.New(shell.Options{Dir: t.TempDir()}), src)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want one containing %q", err, tc.wantErr)
				}
				if !strings.Contains(err.Error(), "source s: datasets_command") {
					t.Errorf("err = %v, want it to name the source and field", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var names []string
			for _, d := range ds {
				names = append(names, d.Name)
			}
			if fmt.Sprint(names) != fmt.Sprint(tc.want) {
				t.Errorf("datasets %v, want %v", names, tc.want)
			}
		})
	}
}

// TestSourcePriority: a source's nice_level and io_class override the
// defaults for its jobs, each on its own, and other sources and the
// repository jobs keep the defaults.
func TestSourcePriority(t *testing.T) {
	dir := t.TempDir()
	writeTree(t, dir, map[string]string{
		"agent.yml":        goodAgent + "default_nice_level: 7\ndefault_io_class: 3\n",
		"sources/home.yml": goodSource,
		"sources/nice.yml": strings.Replace(goodSource, "name: home", "name: nice", 1) + "nice_level: 12\n",
		"sources/io.yml":   strings.Replace(goodSource, "name: home", "name: io", 1) + "io_class: 2\n",
		"sources/zero.yml": strings.Replace(goodSource, "name: home", "name: zero", 1) + "nice_level: 0\nio_class: 0\n",
	})
	cm, err := NewConfigManager(filepath.Join(dir, "agent.yml"), testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	rc := cm.Current()
	cases := []struct {
		source      string
		nice, class int
	}{
		{"home", 7, 3},
		{"nice", 12, 3},
		{"io", 7, 2},
		{"zero", 0, 0}, // set to 0: the agent's own, not the default
		{"", 7, 3},     // a repository's job
	}
	for _, c := range cases {
		o := rc.SourceShell(rc.Source(c.source)).Options()
		if o.NiceLevel != c.nice || o.IOClass != c.class {
			t.Errorf("source %q: nice %d, I/O class %d; want %d, %d", c.source, o.NiceLevel, o.IOClass, c.nice, c.class)
		}
	}
}

func TestRepositoryConnections(t *testing.T) {
	dir := writeTree(t, t.TempDir(), map[string]string{"agent.yml": goodAgent + "    connections: 8\n"})
	cfg, err := LoadConfig(filepath.Join(dir, "agent.yml"))
	if err != nil {
		t.Fatal(err)
	}
	if c := cfg.Repositories[0].Connections; c != 8 {
		t.Errorf("connections: got %d, want 8", c)
	}
}

// TestConfigErrorsMessageIsBounded: one mistake repeated in every item of
// a long list does not make every command that fails on the config print
// thousands of lines; the count of the rest is given.
func TestConfigErrorsMessageIsBounded(t *testing.T) {
	cases := []struct{ n, lines int }{{1, 1}, {maxErrorLines, maxErrorLines}, {maxErrorLines + 1, maxErrorLines + 1}, {20000, maxErrorLines + 1}}
	for _, tc := range cases {
		var es ConfigErrors
		for i := range tc.n {
			es = append(es, &ConfigError{File: "sources/mail.yml", Line: i + 1, Field: "datasets[0].atoms", Msg: "expected a mapping"})
		}
		msg := es.Error()
		if got := strings.Count(msg, "\n") + 1; got != tc.lines {
			t.Errorf("%d errors: %d lines, want %d", tc.n, got, tc.lines)
		}
		if more := tc.n - maxErrorLines; more > 0 && !strings.HasSuffix(msg, fmt.Sprintf("... and %d more problem(s)", more)) {
			t.Errorf("%d errors: the message does not count the rest: ...%s", tc.n, msg[max(0, len(msg)-80):])
		}
	}
}

// wantConfigErrors loads dir/agent.yml and checks that it fails with
// exactly the errors want, each given by its start (file relative to dir).
func wantConfigErrors(t *testing.T, dir string, want []string) {
	t.Helper()
	_, err := LoadConfig(filepath.Join(dir, "agent.yml"))
	var ce ConfigErrors
	if !errors.As(err, &ce) {
		t.Fatalf("want ConfigErrors, got %v", err)
	}
	var got []string
	for _, e := range ce {
		got = append(got, strings.TrimPrefix(e.Error(), dir+"/"))
	}
	if len(got) != len(want) {
		t.Fatalf("got %d errors, want %d:\n%s", len(got), len(want), strings.Join(got, "\n"))
	}
	for i := range got {
		if !strings.HasPrefix(got[i], want[i]) {
			t.Errorf("error %d:\n got  %s\n want %s...", i, got[i], want[i])
		}
	}
}

func TestLongestGapBetweenFixityRuns(t *testing.T) {
	from := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	cases := []struct {
		spec string
		want time.Duration
	}{
		{"@daily", 24 * time.Hour},
		{"@weekly", 7 * 24 * time.Hour},
		{"@monthly", 31 * 24 * time.Hour},
		{"0 3 * * 1,4", 4 * 24 * time.Hour},
		{"@every 36h", 36 * time.Hour},
		{"@random_every 240h", 10 * 24 * time.Hour},
		{"0 3 1 1,7 *", 184 * 24 * time.Hour},
	}
	for _, tc := range cases {
		sched, err := jobs.ParseSchedule(tc.spec)
		if err != nil {
			t.Fatalf("%s: %v", tc.spec, err)
		}
		if got := longestGap(sched, from); got != tc.want {
			t.Errorf("%s: longest gap %v, want %v", tc.spec, got, tc.want)
		}
	}
}

func TestArchiveRestoreDaysCoverFixityGap(t *testing.T) {
	dir := t.TempDir()
	cfg := goodAgent + "  - name: cold\n    url: s3:http://127.0.0.1:9/b\n    password: x\n    storage_class: DEEP_ARCHIVE\n    restore_days: 8\n    fixity: {schedule: \"@weekly\"}\n"
	if err := os.WriteFile(filepath.Join(dir, "agent.yml"), []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadConfig(filepath.Join(dir, "agent.yml")); err != nil {
		t.Fatalf("restore_days 8 covers weekly fixity runs, yet: %v", err)
	}
}
