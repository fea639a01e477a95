// Package etcdserver runs the embedded etcd server that holds the custos
// catalog when no external cluster is configured.
//
// Layout of a data directory (all created by StartEmbedded):
//
//	etcd/      etcd's own data (WAL and bbolt database)
//	etcd.log   etcd's log (level Options.LogLevel, default "error")
//	lock       flock held while a server runs on this directory
//	ports      "client peer" ports, reused on the next start
//	endpoint   client URL, present only while a server runs
//
// Only one process serves a data directory at a time (the lock); another
// process reads the endpoint file and connects as a client.
package etcdserver

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
)

// ErrLocked means another process serves this data directory.
var ErrLocked = errors.New("etcdserver: data directory is in use by another server")

// File names inside the data directory.
const (
	EndpointFile = "endpoint"
	lockFile     = "lock"
	portsFile    = "ports"
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

// Options tune the embedded server. The zero value works.
type Options struct {
	// ClientPort and PeerPort on 127.0.0.1. Zero reuses the ports of the
	// previous start on this data directory when they are free, else
	// picks free ones.
	ClientPort, PeerPort int
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
	cp, pp, err := choosePorts(dataDir, opts.ClientPort, opts.PeerPort)
	if err != nil {
		return nil, err
	}
	curl := url.URL{Scheme: "http", Host: net.JoinHostPort("127.0.0.1", strconv.Itoa(cp))}
	purl := url.URL{Scheme: "http", Host: net.JoinHostPort("127.0.0.1", strconv.Itoa(pp))}

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
	if opts.MaxTxnOps > 0 {
		cfg.MaxTxnOps = opts.MaxTxnOps
	}
	if err := os.WriteFile(filepath.Join(dataDir, portsFile), []byte(fmt.Sprintf("%d %d\n", cp, pp)), 0o600); err != nil {
		return nil, fmt.Errorf("etcdserver: record ports in %s: %w", dataDir, err)
	}

	etcd, err := embed.StartEtcd(cfg)
	if err != nil {
		return nil, fmt.Errorf("etcdserver: start on %s (client %s): %w", dataDir, curl.String(), err)
	}
	e := &Embedded{etcd: etcd, dataDir: dataDir, endpoint: curl.String(), lock: lock}
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

// choosePorts returns the configured ports, else the recorded ones when
// free, else free ones.
func choosePorts(dataDir string, client, peer int) (int, int, error) {
	var rc, rp int
	if b, err := os.ReadFile(filepath.Join(dataDir, portsFile)); err == nil {
		if _, err := fmt.Sscanf(string(b), "%d %d", &rc, &rp); err != nil {
			rc, rp = 0, 0
		}
	}
	pick := func(want, recorded int) (int, error) {
		if want != 0 {
			return want, nil
		}
		if recorded > 0 && portFree(recorded) {
			return recorded, nil
		}
		return freePort()
	}
	c, err := pick(client, rc)
	if err != nil {
		return 0, 0, err
	}
	p, err := pick(peer, rp)
	for err == nil && p == c {
		p, err = freePort()
	}
	if err != nil {
		return 0, 0, err
	}
	return c, p, nil
}

func portFree(port int) bool {
	l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
	if err != nil {
		return false
	}
	_ = l.Close()
	return true
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
