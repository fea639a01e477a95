// Package etcdserver runs the embedded etcd server that holds the custos
// catalog when no external cluster is configured.
//
// Layout of a data directory (all created by StartEmbedded):
//
//	etcd/      etcd's own data (WAL and bbolt database)
//	etcd.log   etcd's log (level Options.LogLevel, default "error")
//	lock       flock held while a server runs on this directory
//	sock/      0700: client.sock, the server's unix socket
//	endpoint   client URL (unix:///…/sock/client.sock), present only
//	           while a server runs
//	clean      present after a clean stop, until the next start: the
//	           database holds everything (see OpenSnapshot)
//
// Only one process serves a data directory at a time (the lock); another
// process reads the endpoint file and connects as a client. A process that
// only reads may instead, while no server runs, read the database file of
// a server that stopped cleanly (OpenSnapshot).
//
// The catalog belongs to the agent's user: clients reach the server only
// through a unix socket in a folder of mode 0700 (the data directory is
// made 0700 too), so other local users can neither read nor rewrite it;
// etcd serves no TCP client port. When the socket's path would be longer
// than a unix socket path may be, the socket lives in a 0700 folder of our
// own under the system's temporary folder instead (the endpoint file says
// where). The peer port, which a single member needs to be configured
// with but nobody talks to, is bound to 127.0.0.1 on a fresh random port
// at every start; etcd answers there only raft messages of its own cluster
// and member list queries, never keys.
package etcdserver

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"
	"go.etcd.io/etcd/server/v3/embed"
)

// ErrLocked means another process serves this data directory.
var ErrLocked = errors.New("etcdserver: data directory is in use by another server")

// File names inside the data directory.
const (
	EndpointFile = "endpoint"
	lockFile     = "lock"
	portsFile    = "ports" // written by older versions; removed
	sockDir      = "sock"
	sockFile     = "client.sock"
	etcdDir      = "etcd"
	logFile      = "etcd.log"
)

// MaxRequestBytes is the embedded server's --max-request-bytes, set
// explicitly (it is etcd's default): the catalog store sizes its
// transactions to stay well below it.
const MaxRequestBytes = 3 << 19 // 1.5 MiB

// Raft log retention of the embedded (single-member) server.
const (
	snapshotCount   = 1000
	snapshotCatchUp = 100
)

// Raft timing of the embedded (single-member) server (see start).
const (
	tickMs     = 10
	electionMs = 100
)

// Options tune the embedded server. The zero value works.
type Options struct {
	// ClientPort, when set, serves clients on 127.0.0.1:ClientPort instead
	// of the unix socket: every local user can reach that. For tests
	// that need a TCP endpoint; the agent never sets it.
	ClientPort int
	// PeerPort on 127.0.0.1; zero picks a free one at every start.
	PeerPort int
	// Name of the member; default "custos".
	Name string
	// LogLevel of etcd's log file: debug, info, warn, error; default
	// "error".
	LogLevel string
	// ReadyTimeout bounds the wait for the server to serve; default 1m.
	ReadyTimeout time.Duration
	// MaxTxnOps; default etcd's 128.
	MaxTxnOps uint
}

// Embedded is a running embedded etcd server.
type Embedded struct {
	etcd      *embed.Etcd
	dataDir   string
	endpoint  string
	lock      *os.File
	closeOnce sync.Once
	closeErr  error
}

// StartEmbedded starts a single-member etcd on loopback with its data in
// dataDir, waits until it serves, and writes its client URL to the
// endpoint file. It fails with ErrLocked when another server holds dataDir.
func StartEmbedded(ctx context.Context, dataDir string, opts Options) (*Embedded, error) {
	if opts.Name == "" {
		opts.Name = "custos"
	}
	if opts.LogLevel == "" {
		opts.LogLevel = "error"
	}
	if opts.ReadyTimeout <= 0 {
		opts.ReadyTimeout = time.Minute
	}
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		return nil, fmt.Errorf("etcdserver: data dir %s: %w", dataDir, err)
	}
	lock, err := lockDir(filepath.Join(dataDir, lockFile))
	if err != nil {
		return nil, fmt.Errorf("etcdserver: data dir %s: %w", dataDir, err)
	}
	e, err := start(ctx, dataDir, opts, lock)
	if err != nil {
		unlockDir(lock)
		return nil, err
	}
	return e, nil
}

func start(ctx context.Context, dataDir string, opts Options, lock *os.File) (*Embedded, error) {
	// MkdirAll leaves the mode of a folder that exists alone.
	if err := os.Chmod(dataDir, 0o700); err != nil {
		return nil, fmt.Errorf("etcdserver: data dir %s: %w", dataDir, err)
	}
	var curl url.URL
	if opts.ClientPort != 0 {
		curl = url.URL{Scheme: "http", Host: net.JoinHostPort("127.0.0.1", strconv.Itoa(opts.ClientPort))}
	} else {
		sock, err := socketPath(dataDir)
		if err != nil {
			return nil, err
		}
		curl = url.URL{Scheme: "unix", Path: sock}
	}
	pp := opts.PeerPort
	if pp == 0 {
		var err error
		if pp, err = freePort(); err != nil {
			return nil, err
		}
	}
	purl := url.URL{Scheme: "http", Host: net.JoinHostPort("127.0.0.1", strconv.Itoa(pp))}
	// An older version recorded TCP ports here; they are not used.
	_ = os.Remove(filepath.Join(dataDir, portsFile))

	cfg := embed.NewConfig()
	cfg.Name = opts.Name
	cfg.Dir = filepath.Join(dataDir, etcdDir)
	cfg.ListenClientUrls = []url.URL{curl}
	cfg.AdvertiseClientUrls = []url.URL{curl}
	cfg.ListenPeerUrls = []url.URL{purl}
	cfg.AdvertisePeerUrls = []url.URL{purl}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	cfg.LogLevel = opts.LogLevel
	cfg.LogOutputs = []string{filepath.Join(dataDir, logFile)}
	// History is only needed for watches and paged reads; keep an hour.
	cfg.AutoCompactionMode = embed.CompactorModePeriodic
	cfg.AutoCompactionRetention = "1h"
	cfg.MaxRequestBytes = MaxRequestBytes
	// A single member has no follower to catch up: a snapshot every
	// snapshotCount entries, keeping few entries after it, bounds both
	// the raft log held in memory (entries of up to MaxRequestBytes) and
	// the WAL that every start reads back.
	cfg.SnapshotCount = snapshotCount
	cfg.SnapshotCatchUpEntries = snapshotCatchUp
	// A single member elects itself once its election timeout passes,
	// randomized between one and two timeouts; etcd fast-forwards all but
	// one timeout at start, so serving waited a random 0.1 to 1 s with
	// etcd's 100 ms ticks and 1 s timeout. With no peer to hear
	// heartbeats from, short ticks cost nothing but wakeups: the wait is
	// 10 to 100 ms.
	cfg.TickMs = tickMs
	cfg.ElectionMs = electionMs
	if opts.MaxTxnOps > 0 {
		cfg.MaxTxnOps = opts.MaxTxnOps
	}
	if err := checkDB(ctx, dbPath(dataDir)); err != nil {
		return nil, err
	}
	// From here the database and WAL change: no snapshot may read them
	// until a clean stop says again that the database holds everything.
	if err := unmarkClean(dataDir); err != nil {
		return nil, err
	}
	etcd, err := embed.StartEtcd(cfg)
	if err != nil {
		return nil, fmt.Errorf("etcdserver: start on %s (client %s): %w", dataDir, endpointOf(curl), err)
	}
	e := &Embedded{etcd: etcd, dataDir: dataDir, endpoint: endpointOf(curl), lock: lock}
	timer := time.NewTimer(opts.ReadyTimeout)
	defer timer.Stop()
	select {
	case <-etcd.Server.ReadyNotify():
	case err := <-etcd.Err():
		e.closeServer()
		return nil, fmt.Errorf("etcdserver: %s failed while starting: %w", dataDir, err)
	case <-timer.C:
		e.closeServer()
		return nil, fmt.Errorf("etcdserver: %s not ready after %s (see %s)", dataDir, opts.ReadyTimeout, filepath.Join(dataDir, logFile))
	case <-ctx.Done():
		e.closeServer()
		return nil, fmt.Errorf("etcdserver: start on %s: %w", dataDir, ctx.Err())
	}
	if err := writeAtomic(filepath.Join(dataDir, EndpointFile), []byte(e.endpoint+"\n")); err != nil {
		e.closeServer()
		return nil, fmt.Errorf("etcdserver: write endpoint file in %s: %w", dataDir, err)
	}
	return e, nil
}

// endpointOf is the client URL as the etcd client takes it
// (unix:///path for a socket).
func endpointOf(u url.URL) string {
	if u.Scheme == "unix" {
		return "unix://" + u.Path
	}
	return u.String()
}

// Endpoints returns the client URLs.
func (e *Embedded) Endpoints() []string { return []string{e.endpoint} }

// DataDir returns the data directory.
func (e *Embedded) DataDir() string { return e.dataDir }

// Err reports fatal server errors while it runs.
func (e *Embedded) Err() <-chan error { return e.etcd.Err() }

// Close removes the endpoint file, stops the server and releases the data
// directory. Safe to call more than once (embed.Etcd.Close is not).
func (e *Embedded) Close() error {
	e.closeOnce.Do(func() {
		p := filepath.Join(e.dataDir, EndpointFile)
		if b, err := os.ReadFile(p); err == nil && strings.TrimSpace(string(b)) == e.endpoint {
			if err := os.Remove(p); err != nil {
				e.closeErr = fmt.Errorf("etcdserver: remove endpoint file: %w", err)
			}
		}
		e.etcd.Close()
		// etcd's Close committed the database: it holds every write the
		// server acknowledged. Still under the lock, so no other server
		// ran in between.
		markClean(e.dataDir)
		unlockDir(e.lock)
	})
	return e.closeErr
}

func (e *Embedded) closeServer() {
	e.closeOnce.Do(func() { e.etcd.Close() })
}

// ReadEndpoint returns the client URL written by the server that runs on
// dataDir, or "" when there is none. The URL may be stale after a crash;
// callers check that it answers.
func ReadEndpoint(dataDir string) (string, error) {
	b, err := os.ReadFile(filepath.Join(dataDir, EndpointFile))
	if errors.Is(err, os.ErrNotExist) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("etcdserver: read endpoint file in %s: %w", dataDir, err)
	}
	return strings.TrimSpace(string(b)), nil
}

// maxSocketPath is the longest unix socket path that Linux and the BSDs
// accept (sun_path is 108 and 104 bytes, with a NUL).
const maxSocketPath = 100

// socketPath returns the client socket's path: dataDir/sock/client.sock,
// or, when that is too long for a unix socket, a folder of this user's own
// under the temporary folder, named after dataDir. Either folder is 0700
// and checked to be ours, so no other user can reach the socket.
func socketPath(dataDir string) (string, error) {
	abs, err := filepath.Abs(dataDir)
	if err != nil {
		return "", fmt.Errorf("etcdserver: data dir %s: %w", dataDir, err)
	}
	dir := filepath.Join(abs, sockDir)
	if len(dir)+len("/"+sockFile) > maxSocketPath {
		sum := sha256.Sum256([]byte(abs))
		dir = filepath.Join(os.TempDir(), fmt.Sprintf("custos-etcd-%d-%s", os.Getuid(), hex.EncodeToString(sum[:6])))
	}
	if err := privateDir(dir); err != nil {
		return "", fmt.Errorf("etcdserver: socket folder: %w", err)
	}
	return filepath.Join(dir, sockFile), nil
}

// privateDir creates dir with mode 0700, or makes sure that the folder
// that is there is a folder (not a link), ours, and 0700.
func privateDir(dir string) error {
	if err := os.Mkdir(dir, 0o700); err != nil && !errors.Is(err, os.ErrExist) {
		return err
	}
	fi, err := os.Lstat(dir)
	if err != nil {
		return err
	}
	if !fi.IsDir() {
		return fmt.Errorf("%s is not a folder", dir)
	}
	if uid, ok := ownerOf(fi); ok && uid != os.Getuid() {
		return fmt.Errorf("%s belongs to user %d, not to us (%d)", dir, uid, os.Getuid())
	}
	if fi.Mode().Perm() != 0o700 {
		if err := os.Chmod(dir, 0o700); err != nil {
			return err
		}
	}
	return nil
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("etcdserver: find a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func writeAtomic(p string, data []byte) error {
	tmp := p + ".tmp"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, p)
}

// ErrDamaged means that the catalog database cannot be read: etcd would
// fail, or panic, on it.
var ErrDamaged = errors.New("the catalog database is damaged")

// dbPath is etcd's bbolt database inside the data directory.
func dbPath(dataDir string) string {
	return filepath.Join(dataDir, etcdDir, "member", "snap", "db")
}

// checkEnv makes a process that starts with it set check the database it
// names and exit (see init): bbolt panics on some damage in goroutines of
// its own, which no recover catches, so the check runs in a child process.
const checkEnv = "CUSTOS_ETCDSERVER_CHECK_DB"

func init() {
	// The child side of checkDB. Any binary that can start the embedded
	// server links this package, so os.Executable can always check.
	if p := os.Getenv(checkEnv); p != "" {
		if err := checkDBHere(p); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(3)
		}
		os.Exit(0)
	}
}

// checkDB reads etcd's database the way etcd does when it starts, in a
// child process (this program again, with checkEnv set), so that damage
// that would make etcd panic, in goroutines that no caller can recover,
// is an ErrDamaged here instead of the end of the agent.
func checkDB(ctx context.Context, p string) error {
	fi, err := os.Stat(p)
	if errors.Is(err, os.ErrNotExist) || (err == nil && fi.Size() == 0) {
		return nil // a new catalog
	}
	if err != nil {
		return fmt.Errorf("etcdserver: %s: %w", p, err)
	}
	exe, err := os.Executable()
	if err != nil {
		return fmt.Errorf("etcdserver: check %s: %w", p, err)
	}
	cmd := exec.CommandContext(ctx, exe)
	cmd.Env = append(os.Environ(), checkEnv+"="+p)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	err = cmd.Run()
	if err == nil {
		return nil
	}
	if ctx.Err() != nil {
		return fmt.Errorf("etcdserver: check %s: %w", p, ctx.Err())
	}
	var ee *exec.ExitError
	if !errors.As(err, &ee) {
		return fmt.Errorf("etcdserver: check %s: %w", p, err)
	}
	return fmt.Errorf("%w: %s: %s", ErrDamaged, p, checkReason(stderr.String()))
}

// checkReason picks the line that says what is wrong from the child's
// output: its error, or the message of its panic.
func checkReason(out string) string {
	lines := strings.Split(strings.TrimSpace(out), "\n")
	for _, l := range lines {
		if m, ok := strings.CutPrefix(l, "panic: "); ok {
			return strings.TrimSpace(m)
		}
	}
	if len(lines) > 0 && lines[0] != "" {
		return lines[0]
	}
	return "the check failed without a message"
}

// checkDBHere opens the database read-only, checks its pages and free
// list (which loads the free list as etcd does) and reads every bucket,
// key and value.
func checkDBHere(p string) (err error) {
	// A page that points outside the mapped file faults instead of
	// panicking unless told to.
	debug.SetPanicOnFault(true)
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("%v", r)
		}
	}()
	db, err := bolt.Open(p, 0o600, &bolt.Options{ReadOnly: true, Timeout: 5 * time.Second})
	if err != nil {
		return err
	}
	defer db.Close()
	var walk func(b *bolt.Bucket) error
	walk = func(b *bolt.Bucket) error {
		return b.ForEach(func(k, v []byte) error {
			if v == nil {
				if nb := b.Bucket(k); nb != nil {
					return walk(nb)
				}
			}
			return nil
		})
	}
	return db.View(func(tx *bolt.Tx) error {
		// Drained to the end: Check reads the database in a goroutine
		// that must be done before the transaction ends.
		var first error
		for cerr := range tx.Check() {
			if first == nil {
				first = cerr
			}
		}
		if first != nil {
			return first
		}
		return tx.ForEach(func(_ []byte, b *bolt.Bucket) error { return walk(b) })
	})
}
