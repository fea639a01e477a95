package agent

import (
	"bytes"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/custos-backup/custos/metadata"
	"github.com/custos-backup/custos/repository/backend/location"
	"github.com/custos-backup/custos/repository/backend/s3"
)

// DefaultHTTPListen is where the agent serves its status page and API when
// agent.yml does not say. 7373 is not assigned to anything common.
const DefaultHTTPListen = "127.0.0.1:7373"

// jobKinds are the kinds of job that have a queue. Concurrency per kind is
// set in agent.yml under "queues".
func jobKinds() []string {
	return []string{"ingest", "restore", "replicate", "fixity", "sync", "retention"}
}

func defaultQueues() map[string]int {
	return map[string]int{"ingest": 2, "restore": 1, "replicate": 1, "fixity": 1, "sync": 1, "retention": 1}
}

// Config is the whole configuration: agent.yml plus the sources/*.yml and
// handlers/*.yml files beside it. All relative paths in it have been made
// absolute against the folder of the file that held them.
type Config struct {
	File string // agent.yml as given
	Dir  string // its folder, absolute

	Hostname       string
	WorkDir        string
	RandomSeedFile string
	Queues         map[string]int
	Repositories   []*RepositorySpec
	MetaDB         MetaDBSpec
	HTTPListen     string
	HTTP           HTTPSpec
	LogFormat      string // "text" (default) or "json"
	// OnFailureCommand runs after a job's final failure (a source's own
	// on_failure_command wins), with the outcome in its environment.
	OnFailureCommand string
	DryRun           bool
	DefaultNiceLevel int
	DefaultIOClass   int
	// Sync schedules the sync of the catalog with the repositories.
	Sync SyncSpec
	// Peers are other sites whose records the sync pulls (site to site).
	Peers []*PeerSpec

	Handlers []*HandlerSpec
	Sources  []*SourceSpec
}

// RepositorySpec names a repository the agent writes to.
type RepositorySpec struct {
	Name        string
	URL         string // relative local paths made absolute
	Password    Secret // resolved from password, password_file or password_env
	Unencrypted bool
	// NeverFrom names sources whose data must never be copied here.
	NeverFrom []string
	// Fixity, when set, schedules fixity runs on this repository.
	Fixity *FixitySpec
	// Retention, when set, runs forget (and prune) on a schedule.
	Retention *RetentionSpec
	// Archive is the S3 storage class of packs and how fixity restores
	// archived ones (storage_class, restore_tier, restore_days).
	Archive s3.Archive
	// Connections, when not 0, is how many requests readers keep in flight
	// on the repository's storage (repository.SetConnections); 0 means the
	// backend's default (16 on S3; on a local folder, by the CPUs).
	Connections int
	// CacheDir is work_dir/cache: where the snapshot and index files and tree packs of a
	// repository on S3 are kept, so that each is fetched once
	// (repository/backend/cache).
	CacheDir string

	passwordFrom string // "password_file /x" etc., for messages; never the secret
}

// Secret is a password. It prints as "***" so that it cannot reach a log or
// an error message by accident.
type Secret struct{ b []byte }

// Bytes returns the secret itself.
func (s Secret) Bytes() []byte { return s.b }

func (s Secret) String() string { return "***" }

// LogValue keeps the secret out of slog output.
func (s Secret) LogValue() slog.Value { return slog.StringValue("***") }

// MarshalJSON keeps the secret out of JSON output.
func (s Secret) MarshalJSON() ([]byte, error) { return []byte(`"***"`), nil }

// HTTPSpec secures the agent's HTTP face (status page, API, metrics).
type HTTPSpec struct {
	// Token, from http_token_file, is the bearer token every endpoint but
	// /healthz requires. It is required when http_listen is not loopback.
	Token     Secret
	TokenFile string
	// TLSCertFile and TLSKeyFile switch the listener to HTTPS.
	TLSCertFile, TLSKeyFile string
	// Pprof serves /debug/pprof to clients that are not on loopback.
	Pprof bool
	// AllowedHosts are extra names the server answers to in the Host
	// header, besides IP literals, localhost and the host name.
	AllowedHosts []string
}

// MetaDBSpec says where the catalog lives: an embedded etcd server with its
// data under DataDir (the default), or an external cluster.
type MetaDBSpec struct {
	Embedded bool
	DataDir  string // embedded only; default work_dir/etcd
	EtcdClientSpec
	Prefix string // key prefix; "" lets the metadata package choose
}

// EtcdClientSpec is how to reach an external etcd cluster: the catalog's
// (metadb) or a peer site's.
type EtcdClientSpec struct {
	Endpoints []string
	CAFile    string
	CertFile  string
	KeyFile   string
	// ServerName overrides the host name checked in the servers'
	// certificates (default: the endpoint's host).
	ServerName string
	// Username and Password enable etcd's own authentication.
	Username string
	Password Secret // from password_file; never logged
}

// decodeFields adds the fields of an etcd client to fs.
func (e *EtcdClientSpec) decodeFields(d *decoder, dir string, fs fields) fields {
	fs["endpoints"] = func(v *yaml.Node, f string) {
		d.sequence(v, f, func(_ int, item *yaml.Node, f string) {
			var ep string
			if !d.str(item, f, &ep) {
				return
			}
			if err := checkEndpoint(ep); err != nil {
				d.errorf(item, f, "%v", err)
			}
			e.Endpoints = append(e.Endpoints, ep)
		})
	}
	fs["ca_file"] = func(v *yaml.Node, f string) { pathField(d, v, f, dir, &e.CAFile) }
	fs["cert_file"] = func(v *yaml.Node, f string) { pathField(d, v, f, dir, &e.CertFile) }
	fs["key_file"] = func(v *yaml.Node, f string) { pathField(d, v, f, dir, &e.KeyFile) }
	fs["server_name"] = func(v *yaml.Node, f string) { d.str(v, f, &e.ServerName) }
	fs["username"] = func(v *yaml.Node, f string) { d.str(v, f, &e.Username) }
	fs["password_file"] = func(v *yaml.Node, f string) {
		var pf string
		pathField(d, v, f, dir, &pf)
		if pf == "" {
			return
		}
		b, err := os.ReadFile(pf)
		if err != nil {
			d.errorf(v, f, "cannot read password file: %v", unwrapPathError(err))
			return
		}
		e.Password = Secret{bytes.TrimSuffix(b, []byte("\n"))}
	}
	return fs
}

// metadataConfig is the client part of a metadata.Config.
func (e *EtcdClientSpec) metadataConfig() metadata.Config {
	mc := metadata.Config{Endpoints: e.Endpoints, Username: e.Username, Password: string(e.Password.Bytes())}
	if e.CAFile != "" || e.CertFile != "" || e.ServerName != "" {
		mc.TLS = &metadata.TLSConfig{CAFile: e.CAFile, CertFile: e.CertFile, KeyFile: e.KeyFile, ServerName: e.ServerName}
	}
	return mc
}

// HandlerSpec is one handlers/*.yml file (or a built-in handler).
type HandlerSpec struct {
	Name   string
	Type   string // "file" or "pipe"
	Params Params
	File   string
	Line   int
}

// SourceSpec is one sources/*.yml file.
type SourceSpec struct {
	Name            string
	Handler         string
	Schedule        string // cron spec, descriptor or "@random_every <duration>"; "" = only on demand
	RunOnStart      bool   // also run once shortly after the agent starts
	Datasets        []*DatasetSpec
	DatasetsCommand string

	PreBackupCommand   string
	PostBackupCommand  string
	PreRestoreCommand  string
	PostRestoreCommand string
	OnFailureCommand   string // "" = the agent's on_failure_command

	Params     Params
	Timeout    time.Duration
	Repository string // name of a RepositorySpec; defaulted at load
	// NiceLevel and IOClass, when set, override default_nice_level and
	// default_io_class for this source's jobs and commands.
	NiceLevel *int
	IOClass   *int
	// Replicate copies the source's snapshots to other repositories
	// (a dataset's own replicate wins).
	Replicate *ReplicateSpec

	File string // file the source came from, as given
	Line int
	Dir  string // folder of that file, absolute; commands run here
}

// DatasetSpec is a dataset written out in a source file.
type DatasetSpec struct {
	Name      string
	Atoms     []AtomSpec
	Replicate *ReplicateSpec // nil: the source's
}

// AtomSpec is one atom of a dataset. For the file handler Path is the path
// under the source root (it defaults to Name); other handlers ignore it.
type AtomSpec struct {
	Name string `json:"name"`
	Path string `json:"path,omitempty"`
}

// Param is one handler or source parameter, with where it was written so
// that a handler's complaint about it can name the file and line.
type Param struct {
	Value any
	File  string
	Line  int
}

// Params are free-form handler parameters. Source params override handler
// params of the same name.
type Params map[string]Param

// LoadConfig reads agent.yml at path and the sources/ and handlers/ folders
// beside it, and checks all of it. On any problem it returns ConfigErrors
// holding every problem found (not just the first), sorted by file and line.
func LoadConfig(path string) (*Config, error) {
	var errs ConfigErrors
	cfg := load(path, &errs)
	if len(errs) > 0 {
		return nil, errs.sorted()
	}
	return cfg, nil
}

func load(path string, errs *ConfigErrors) *Config {
	absFile, err := filepath.Abs(path)
	if err != nil {
		*errs = append(*errs, &ConfigError{File: path, Msg: err.Error()})
		return nil
	}
	cfg := &Config{
		File:       path,
		Dir:        filepath.Dir(absFile),
		Queues:     defaultQueues(),
		HTTPListen: DefaultHTTPListen,
		Sync:       SyncSpec{Schedule: DefaultSyncSchedule},
	}
	root, ok := readYAML(path, errs)
	if !ok {
		return cfg
	}
	d := &decoder{file: path, errs: errs}
	cfg.decodeAgent(d, root)
	cfg.applyDefaults(d, root)
	cfg.checkPeers(d)

	dir := filepath.Dir(path)
	for _, f := range yamlFiles(filepath.Join(dir, "handlers"), errs) {
		cfg.loadHandler(f, errs)
	}
	addBuiltinHandlers(cfg)
	for _, f := range yamlFiles(filepath.Join(dir, "sources"), errs) {
		cfg.loadSource(f, errs)
	}
	cfg.checkCrossReferences(errs)
	return cfg
}

// readYAML parses one file into its document node. An empty file is a valid
// empty mapping.
func readYAML(path string, errs *ConfigErrors) (*yaml.Node, bool) {
	data, err := os.ReadFile(path)
	if err != nil {
		msg := err.Error()
		if pe, ok := err.(*os.PathError); ok {
			msg = pe.Err.Error()
		}
		*errs = append(*errs, &ConfigError{File: path, Msg: "cannot read config: " + msg})
		return nil, false
	}
	var doc yaml.Node
	dec := yaml.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&doc); err != nil {
		if err.Error() == "EOF" {
			return &yaml.Node{Kind: yaml.MappingNode, Line: 1}, true
		}
		*errs = append(*errs, yamlSyntaxError(path, err))
		return nil, false
	}
	if doc.Kind == yaml.DocumentNode && len(doc.Content) == 1 {
		return doc.Content[0], true
	}
	return &doc, true
}

// yamlSyntaxError turns "yaml: line 3: did not find expected key" into a
// ConfigError with the line split out.
func yamlSyntaxError(path string, err error) *ConfigError {
	msg := strings.TrimPrefix(err.Error(), "yaml: ")
	line := 0
	if n, _ := fmt.Sscanf(msg, "line %d:", &line); n == 1 {
		if i := strings.Index(msg, ":"); i >= 0 {
			msg = strings.TrimSpace(msg[i+1:])
		}
	}
	return &ConfigError{File: path, Line: line, Msg: "YAML syntax: " + msg}
}

func yamlFiles(dir string, errs *ConfigErrors) []string {
	entries, err := os.ReadDir(dir)
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		*errs = append(*errs, &ConfigError{File: dir, Msg: err.Error()})
		return nil
	}
	var out []string
	for _, e := range entries {
		n := e.Name()
		if e.IsDir() || strings.HasPrefix(n, ".") {
			continue
		}
		if strings.HasSuffix(n, ".yml") || strings.HasSuffix(n, ".yaml") {
			out = append(out, filepath.Join(dir, n))
		}
	}
	sort.Strings(out)
	return out
}

// abs makes p absolute against dir; "" stays "".
func abs(dir, p string) string {
	if p == "" || filepath.IsAbs(p) {
		return p
	}
	return filepath.Join(dir, p)
}

func (cfg *Config) decodeAgent(d *decoder, root *yaml.Node) {
	dir := cfg.Dir
	var seedFile, workDir string
	d.mapping(root, "", fields{
		"hostname": func(v *yaml.Node, f string) { d.str(v, f, &cfg.Hostname) },
		"work_dir": func(v *yaml.Node, f string) {
			if d.str(v, f, &workDir) {
				cfg.WorkDir = abs(dir, workDir)
			}
		},
		"random_seed_file": func(v *yaml.Node, f string) {
			if d.str(v, f, &seedFile) {
				cfg.RandomSeedFile = abs(dir, seedFile)
			}
		},
		"queues": func(v *yaml.Node, f string) { cfg.decodeQueues(d, v, f) },
		"sync":   func(v *yaml.Node, f string) { cfg.Sync = decodeSync(d, v, f) },
		"peers":  func(v *yaml.Node, f string) { cfg.decodePeers(d, v, f) },
		"repositories": func(v *yaml.Node, f string) {
			seen := map[string]bool{}
			d.sequence(v, f, func(_ int, item *yaml.Node, f string) {
				r := decodeRepository(d, item, f, dir)
				if r == nil {
					return
				}
				if seen[r.Name] {
					d.errorf(item, f+".name", "repository %q is defined more than once", r.Name)
					return
				}
				seen[r.Name] = true
				cfg.Repositories = append(cfg.Repositories, r)
			})
			if len(cfg.Repositories) == 0 && !isNull(v) && v.Kind == yaml.SequenceNode {
				d.errorf(v, f, "at least one repository is needed")
			}
		},
		"metadb": func(v *yaml.Node, f string) { cfg.decodeMetaDB(d, v, f) },
		"http_listen": func(v *yaml.Node, f string) {
			if d.str(v, f, &cfg.HTTPListen) {
				if err := checkListenAddr(cfg.HTTPListen); err != nil {
					d.errorf(v, f, "%v", err)
				}
			}
		},
		"http_token_file": func(v *yaml.Node, f string) {
			pathField(d, v, f, dir, &cfg.HTTP.TokenFile)
			if cfg.HTTP.TokenFile == "" {
				return
			}
			b, err := os.ReadFile(cfg.HTTP.TokenFile)
			if err != nil {
				d.errorf(v, f, "cannot read token file: %v", unwrapPathError(err))
				return
			}
			tok := bytes.TrimSpace(b)
			if len(tok) < 16 {
				d.errorf(v, f, "the token in %s is shorter than 16 characters; make one with: head -c 32 /dev/urandom | base64 > %s", cfg.HTTP.TokenFile, cfg.HTTP.TokenFile)
				return
			}
			cfg.HTTP.Token = Secret{tok}
		},
		"http_tls_cert_file": func(v *yaml.Node, f string) { pathField(d, v, f, dir, &cfg.HTTP.TLSCertFile) },
		"http_tls_key_file":  func(v *yaml.Node, f string) { pathField(d, v, f, dir, &cfg.HTTP.TLSKeyFile) },
		"http_pprof":         func(v *yaml.Node, f string) { d.boolean(v, f, &cfg.HTTP.Pprof) },
		"http_allowed_hosts": func(v *yaml.Node, f string) { d.strList(v, f, &cfg.HTTP.AllowedHosts) },
		"on_failure_command": func(v *yaml.Node, f string) { d.str(v, f, &cfg.OnFailureCommand) },
		"log_format": func(v *yaml.Node, f string) {
			if d.str(v, f, &cfg.LogFormat) && cfg.LogFormat != "text" && cfg.LogFormat != "json" {
				d.errorf(v, f, "log format must be text or json, got %q", cfg.LogFormat)
			}
		},
		"dry_run": func(v *yaml.Node, f string) { d.boolean(v, f, &cfg.DryRun) },
		"default_nice_level": func(v *yaml.Node, f string) {
			if n := decodeNiceLevel(d, v, f); n != nil {
				cfg.DefaultNiceLevel = *n
			}
		},
		"default_io_class": func(v *yaml.Node, f string) {
			if c := decodeIOClass(d, v, f); c != nil {
				cfg.DefaultIOClass = *c
			}
		},
	})
}

func (cfg *Config) decodeQueues(d *decoder, v *yaml.Node, f string) {
	fs := fields{}
	for _, kind := range jobKinds() {
		fs[kind] = func(v *yaml.Node, f string) {
			var n int
			if !d.integer(v, f, &n) {
				return
			}
			if n < 1 {
				d.errorf(v, f, "concurrency must be at least 1, got %d", n)
				return
			}
			cfg.Queues[kind] = n
		}
	}
	d.mapping(v, f, fs)
}

func decodeRepository(d *decoder, n *yaml.Node, prefix, dir string) *RepositorySpec {
	r := &RepositorySpec{}
	var pw, pwFile, pwEnv string
	keys := d.mapping(n, prefix, fields{
		"name": func(v *yaml.Node, f string) {
			if d.str(v, f, &r.Name) {
				checkName(d, v, f, r.Name)
			}
		},
		"url": func(v *yaml.Node, f string) {
			if d.str(v, f, &r.URL) {
				u, err := absURL(dir, r.URL)
				if err != nil {
					d.errorf(v, f, "%v", err)
				}
				r.URL = u
			}
		},
		"password":      func(v *yaml.Node, f string) { d.str(v, f, &pw) },
		"password_file": func(v *yaml.Node, f string) { d.str(v, f, &pwFile) },
		"password_env":  func(v *yaml.Node, f string) { d.str(v, f, &pwEnv) },
		"unencrypted":   func(v *yaml.Node, f string) { d.boolean(v, f, &r.Unencrypted) },
		"never_from":    func(v *yaml.Node, f string) { d.strList(v, f, &r.NeverFrom) },
		"fixity":        func(v *yaml.Node, f string) { r.Fixity = decodeFixity(d, v, f) },
		"retention":     func(v *yaml.Node, f string) { r.Retention = decodeRetention(d, v, f) },
		"storage_class": func(v *yaml.Node, f string) { d.str(v, f, &r.Archive.StorageClass) },
		"restore_tier":  func(v *yaml.Node, f string) { d.str(v, f, &r.Archive.RestoreTier) },
		"restore_days":  func(v *yaml.Node, f string) { decodeRestoreDays(d, v, f, &r.Archive.RestoreDays) },
		"connections": func(v *yaml.Node, f string) {
			if d.integer(v, f, &r.Connections) && (r.Connections < 1 || r.Connections > 256) {
				d.errorf(v, f, "%d: want 1 to 256 requests in flight", r.Connections)
			}
		},
	})
	if n.Kind != yaml.MappingNode {
		return nil
	}
	if keys["name"] == nil {
		d.errorf(n, join(prefix, "name"), "missing: every repository needs a name")
	}
	checkArchive(d, keys, prefix, r)
	if keys["url"] == nil {
		d.errorf(n, join(prefix, "url"), "missing: where is repository %q?", r.Name)
	}
	sources := 0
	for _, k := range []string{"password", "password_file", "password_env"} {
		if keys[k] != nil {
			sources++
		}
	}
	switch {
	case sources > 1:
		d.errorf(n, join(prefix, "password"), "give only one of password, password_file and password_env")
	case r.Unencrypted && sources > 0:
		d.errorf(n, join(prefix, "unencrypted"), "an unencrypted repository takes no password")
	case !r.Unencrypted && sources == 0:
		d.errorf(n, join(prefix, "password_file"), "missing: repository %q needs password_file, password_env or password (or unencrypted: true)", r.Name)
	case keys["password"] != nil:
		r.Password = Secret{[]byte(pw)}
		r.passwordFrom = "password"
	case keys["password_file"] != nil:
		p := abs(dir, pwFile)
		r.passwordFrom = "password_file " + p
		data, err := os.ReadFile(p)
		if err != nil {
			d.errorf(keys["password_file"], join(prefix, "password_file"), "cannot read password file: %v", unwrapPathError(err))
			break
		}
		data = bytes.TrimRight(data, "\r\n")
		if len(data) == 0 {
			d.errorf(keys["password_file"], join(prefix, "password_file"), "password file %s is empty", p)
		}
		r.Password = Secret{data}
	case keys["password_env"] != nil:
		r.passwordFrom = "password_env " + pwEnv
		val, ok := os.LookupEnv(pwEnv)
		if !ok || val == "" {
			d.errorf(keys["password_env"], join(prefix, "password_env"), "environment variable %s is not set", pwEnv)
		}
		r.Password = Secret{[]byte(val)}
	}
	return r
}

func unwrapPathError(err error) error {
	if pe, ok := err.(*os.PathError); ok {
		return fmt.Errorf("%s: %w", pe.Path, pe.Err)
	}
	return err
}

// absURL checks a repository location and makes a local one absolute
// against dir. It parses before it joins: joining first would turn a
// mistyped scheme ("S3:https://...", "file:///x") into a folder named after
// it, and the backup would "succeed" into that folder.
func absURL(dir, u string) (string, error) {
	loc, err := location.Parse(u)
	if err != nil {
		return u, err
	}
	if loc.Kind != location.Local {
		return u, nil
	}
	if strings.HasPrefix(u, "local:") {
		return "local:" + abs(dir, loc.Path), nil
	}
	return abs(dir, loc.Path), nil
}

// checkListenAddr rejects an http_listen the server could never bind, so
// config check finds it instead of the agent's start.
func checkListenAddr(addr string) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("listen address %q: want host:port, e.g. 127.0.0.1:7373", addr)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
		return fmt.Errorf("listen address %q: port must be a number from 0 to 65535", addr)
	}
	if host != "" && net.ParseIP(host) == nil && !validHostname(host) {
		return fmt.Errorf("listen address %q: %q is neither an IP address nor a host name", addr, host)
	}
	return nil
}

// validHostname accepts RFC 1123 host names (letters, digits, hyphens and
// dots), which is what a listener or an etcd endpoint can resolve.
func validHostname(h string) bool {
	if len(h) > 253 {
		return false
	}
	for _, label := range strings.Split(strings.TrimSuffix(h, "."), ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for _, c := range label {
			if !(c == '-' || c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z') {
				return false
			}
		}
	}
	return true
}

// checkEndpoint accepts what etcd's client dials: host:port, or an http(s)
// or unix URL.
func checkEndpoint(ep string) error {
	if rest, ok := strings.CutPrefix(ep, "unix://"); ok && rest != "" {
		return nil
	}
	hostport := ep
	if strings.Contains(ep, "://") {
		u, err := url.Parse(ep)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || (u.Path != "" && u.Path != "/") || u.User != nil {
			return fmt.Errorf("etcd endpoint %q: want host:port or http(s)://host:port", ep)
		}
		hostport = u.Host
	}
	if err := checkListenAddr(hostport); err != nil {
		return fmt.Errorf("etcd endpoint %q: want host:port or http(s)://host:port", ep)
	}
	if h, _, _ := net.SplitHostPort(hostport); h == "" {
		return fmt.Errorf("etcd endpoint %q: no host", ep)
	}
	return nil
}

func (cfg *Config) decodeMetaDB(d *decoder, v *yaml.Node, f string) {
	if v.Kind == yaml.ScalarNode && v.Value == "embedded" {
		cfg.MetaDB.Embedded = true
		return
	}
	m := &cfg.MetaDB
	keys := d.mapping(v, f, m.EtcdClientSpec.decodeFields(d, cfg.Dir, fields{
		"embedded": func(v *yaml.Node, f string) { d.boolean(v, f, &m.Embedded) },
		"data_dir": func(v *yaml.Node, f string) { pathField(d, v, f, cfg.Dir, &m.DataDir) },
		"prefix":   func(v *yaml.Node, f string) { d.str(v, f, &m.Prefix) },
	}))
	if m.Embedded || len(m.Endpoints) == 0 {
		// The embedded server speaks plain http on loopback: TLS or auth
		// settings here would be silently ignored, so say so.
		for _, k := range []string{"ca_file", "cert_file", "key_file", "server_name", "username", "password_file"} {
			if keys[k] != nil {
				d.errorf(keys[k], join(f, k), "only for an external etcd cluster (set endpoints); the embedded catalog listens on loopback without TLS")
			}
		}
	}
	if (m.Username == "") != (len(m.Password.b) == 0) && len(m.Endpoints) > 0 {
		at, k := keys["username"], "username"
		if at == nil {
			at, k = keys["password_file"], "password_file"
		}
		d.errorf(at, join(f, k), "username and password_file go together")
	}
	if m.Embedded && len(m.Endpoints) > 0 {
		d.errorf(keys["endpoints"], join(f, "endpoints"), "an embedded catalog takes no endpoints (remove embedded: true to use an external etcd)")
	}
	if !m.Embedded && len(m.Endpoints) == 0 {
		if keys["embedded"] != nil {
			d.errorf(keys["embedded"], join(f, "endpoints"), "embedded: false needs endpoints of an etcd cluster")
		} else {
			m.Embedded = true
		}
	}
	if len(m.Endpoints) > 0 && m.DataDir != "" {
		d.errorf(keys["data_dir"], join(f, "data_dir"), "data_dir is for the embedded catalog only")
	}
	if (m.CertFile == "") != (m.KeyFile == "") {
		d.errorf(v, join(f, "cert_file"), "cert_file and key_file go together")
	}
}

func pathField(d *decoder, v *yaml.Node, f, dir string, out *string) {
	var s string
	if d.str(v, f, &s) {
		*out = abs(dir, s)
	}
}

// checkName rejects names that cannot be one element of the atom namespace
// "source/dataset/atom", or that could turn into a path outside a folder.
func checkName(d *decoder, v *yaml.Node, f, name string) bool {
	if err := validName(name); err != nil {
		d.errorf(v, f, "%v", err)
		return false
	}
	return true
}

func validName(name string) error {
	switch {
	case name == "":
		return fmt.Errorf("a name cannot be empty")
	case name == "." || name == "..":
		return fmt.Errorf("%q is not a usable name", name)
	case strings.ContainsAny(name, "/\\*?[]{} \t\r\n\x00"):
		return fmt.Errorf("name %q may not contain '/', '\\', spaces or glob characters", name)
	}
	return nil
}

func (cfg *Config) applyDefaults(d *decoder, root *yaml.Node) {
	if cfg.Hostname == "" {
		h, err := os.Hostname()
		if err != nil {
			d.errorf(root, "hostname", "not set, and the system hostname is unknown: %v", err)
		}
		cfg.Hostname = h
	}
	if cfg.WorkDir == "" {
		d.errorf(root, "work_dir", "missing: the agent needs a folder of its own for its state")
	}
	if cfg.RandomSeedFile == "" && cfg.WorkDir != "" {
		cfg.RandomSeedFile = filepath.Join(cfg.WorkDir, "seed")
	}
	if cfg.WorkDir != "" {
		for _, r := range cfg.Repositories {
			r.CacheDir = filepath.Join(cfg.WorkDir, "cache")
		}
	}
	if !cfg.MetaDB.Embedded && len(cfg.MetaDB.Endpoints) == 0 {
		cfg.MetaDB.Embedded = true
	}
	if cfg.MetaDB.Embedded && cfg.MetaDB.DataDir == "" && cfg.WorkDir != "" {
		cfg.MetaDB.DataDir = filepath.Join(cfg.WorkDir, "etcd")
	}
	if len(cfg.Repositories) == 0 {
		if _, ok := mappingKey(root, "repositories"); !ok {
			d.errorf(root, "repositories", "missing: at least one repository is needed")
		}
	}
	cfg.checkHTTP(d, root)
}

// checkHTTP refuses an HTTP face that anyone on the network could drive:
// off loopback, the API starts and cancels jobs and reads the catalog.
func (cfg *Config) checkHTTP(d *decoder, root *yaml.Node) {
	at := func(key string) *yaml.Node {
		if v, ok := mappingKey(root, key); ok {
			return v
		}
		return root
	}
	if (cfg.HTTP.TLSCertFile == "") != (cfg.HTTP.TLSKeyFile == "") {
		d.errorf(at("http_tls_cert_file"), "http_tls_cert_file", "http_tls_cert_file and http_tls_key_file go together")
	}
	if checkListenAddr(cfg.HTTPListen) == nil && !IsLoopbackListen(cfg.HTTPListen) && len(cfg.HTTP.Token.b) == 0 {
		if _, set := mappingKey(root, "http_token_file"); !set {
			d.errorf(at("http_listen"), "http_listen", "%s is reachable from other hosts: set http_token_file (a file holding a bearer token) or listen on 127.0.0.1", cfg.HTTPListen)
		}
	}
}

// IsLoopbackListen reports whether a listen address only accepts
// connections from this host.
func IsLoopbackListen(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

func mappingKey(n *yaml.Node, key string) (*yaml.Node, bool) {
	if n == nil || n.Kind != yaml.MappingNode {
		return nil, false
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		if n.Content[i].Value == key {
			return n.Content[i+1], true
		}
	}
	return nil, false
}

// DefaultRepository is the repository a source writes to when it names
// none: the one called "local", or else the first.
func (cfg *Config) DefaultRepository() *RepositorySpec {
	for _, r := range cfg.Repositories {
		if r.Name == "local" {
			return r
		}
	}
	if len(cfg.Repositories) > 0 {
		return cfg.Repositories[0]
	}
	return nil
}

// Repository returns the named repository, or nil.
func (cfg *Config) Repository(name string) *RepositorySpec {
	for _, r := range cfg.Repositories {
		if r.Name == name {
			return r
		}
	}
	return nil
}

// Source returns the named source, or nil.
func (cfg *Config) Source(name string) *SourceSpec {
	for _, s := range cfg.Sources {
		if s.Name == name {
			return s
		}
	}
	return nil
}

// Handler returns the named handler, or nil.
func (cfg *Config) Handler(name string) *HandlerSpec {
	for _, h := range cfg.Handlers {
		if h.Name == name {
			return h
		}
	}
	return nil
}
