// Package etcdtest starts real etcd clusters for tests: N members in this
// process (go.etcd.io/etcd/server/v3/embed) on 127.0.0.1, each with its own
// data directory and random free ports, optionally serving clients over TLS
// with client certificate authentication. Members can be stopped and
// restarted on the same ports and data, so tests can take a member or the
// quorum away and give it back.
//
// It is meant for tests only: fsync is off and the certificates are
// throwaway.
package etcdtest

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
	"testing"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	"go.etcd.io/etcd/server/v3/embed"
)

// Options shape a cluster. The zero value is one plain member.
type Options struct {
	// Members in the cluster; default 1.
	Members int
	// TLS serves clients over https and requires a client certificate
	// signed by the cluster's CA. Peers talk plain http on loopback.
	TLS bool
	// LogLevel of each member's etcd.log; default "error".
	LogLevel string
	// TickMs and ElectionMs are raft's heartbeat and election timeout;
	// default 50 and 500 (etcd's own defaults are 100 and 1000), short so
	// that a lost leader is replaced quickly, long enough for a busy host.
	TickMs, ElectionMs uint
}

// Cluster is a running test cluster.
type Cluster struct {
	dir     string
	opts    Options
	members []*member
	ca      *CA
	client  *TLSFiles

	mu     sync.Mutex // guards member state and closed
	closed bool
}

type member struct {
	name      string
	dir       string
	clientURL url.URL
	peerURL   url.URL
	etcd      *embed.Etcd // nil while stopped
	serverTLS TLSFiles
}

// New starts a cluster in a temporary directory of t, fails t when it
// cannot, and closes the cluster when t ends.
func New(t testing.TB, opts Options) *Cluster {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c, err := Start(ctx, t.TempDir(), opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := c.Close(); err != nil {
			t.Errorf("close etcd test cluster: %v", err)
		}
	})
	return c
}

// Start starts a cluster with its data, certificates and logs under dir and
// waits (bounded by ctx) until every member serves.
func Start(ctx context.Context, dir string, opts Options) (*Cluster, error) {
	if opts.Members <= 0 {
		opts.Members = 1
	}
	if opts.LogLevel == "" {
		opts.LogLevel = "error"
	}
	if opts.TickMs == 0 {
		opts.TickMs = 50
	}
	if opts.ElectionMs == 0 {
		opts.ElectionMs = 10 * opts.TickMs
	}
	c := &Cluster{dir: dir, opts: opts}
	scheme := "http"
	if opts.TLS {
		scheme = "https"
		tlsDir := filepath.Join(dir, "tls")
		if err := os.MkdirAll(tlsDir, 0o700); err != nil {
			return nil, fmt.Errorf("etcdtest: %w", err)
		}
		ca, err := NewCA(tlsDir, "ca")
		if err != nil {
			return nil, err
		}
		cl, err := ca.IssueClient(tlsDir, "client")
		if err != nil {
			return nil, err
		}
		c.ca, c.client = ca, &cl
	}
	ports, err := freePorts(2 * opts.Members)
	if err != nil {
		return nil, err
	}
	for i := range opts.Members {
		m := &member{
			name:      "m" + strconv.Itoa(i),
			dir:       filepath.Join(dir, "m"+strconv.Itoa(i)),
			clientURL: url.URL{Scheme: scheme, Host: net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[2*i]))},
			peerURL:   url.URL{Scheme: "http", Host: net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[2*i+1]))},
		}
		if err := os.MkdirAll(m.dir, 0o700); err != nil {
			return nil, fmt.Errorf("etcdtest: %w", err)
		}
		if c.ca != nil {
			if m.serverTLS, err = c.ca.IssueServer(m.dir, "server"); err != nil {
				return nil, err
			}
		}
		c.members = append(c.members, m)
	}
	all := make([]int, opts.Members)
	for i := range all {
		all[i] = i
	}
	if err := c.start(ctx, all); err != nil {
		return nil, errors.Join(err, c.Close())
	}
	return c, nil
}

// freePorts returns n distinct free ports on 127.0.0.1. All listeners stay
// open until every port is chosen, so no port is handed out twice.
func freePorts(n int) ([]int, error) {
	ports := make([]int, 0, n)
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("etcdtest: find a free port: %w", err)
		}
		defer l.Close()
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

func (c *Cluster) config(m *member) *embed.Config {
	cfg := embed.NewConfig()
	cfg.Name = m.name
	cfg.Dir = filepath.Join(m.dir, "data")
	cfg.ListenClientUrls = []url.URL{m.clientURL}
	cfg.AdvertiseClientUrls = []url.URL{m.clientURL}
	cfg.ListenPeerUrls = []url.URL{m.peerURL}
	cfg.AdvertisePeerUrls = []url.URL{m.peerURL}
	peers := make([]string, len(c.members))
	for i, o := range c.members {
		peers[i] = o.name + "=" + o.peerURL.String()
	}
	// Only read on the first start; a restart finds the membership in the
	// data directory.
	cfg.InitialCluster = strings.Join(peers, ",")
	cfg.InitialClusterToken = "custos-etcdtest"
	cfg.TickMs, cfg.ElectionMs = c.opts.TickMs, c.opts.ElectionMs
	cfg.LogLevel = c.opts.LogLevel
	cfg.LogOutputs = []string{filepath.Join(m.dir, "etcd.log")}
	// Test data need not survive a power cut; fsync would dominate the
	// start-up time on a busy disk.
	cfg.UnsafeNoFsync = true
	if c.ca != nil {
		cfg.ClientTLSInfo = transport.TLSInfo{
			CertFile:       m.serverTLS.CertFile,
			KeyFile:        m.serverTLS.KeyFile,
			TrustedCAFile:  m.serverTLS.CAFile,
			ClientCertAuth: true,
		}
	}
	return cfg
}

// start launches the given stopped members together (a member that
// restarts alone cannot be ready while it lacks a quorum) and waits until
// all serve or ctx ends.
func (c *Cluster) start(ctx context.Context, idx []int) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return errors.New("etcdtest: cluster is closed")
	}
	for _, i := range idx {
		if i < 0 || i >= len(c.members) {
			return fmt.Errorf("etcdtest: no member %d in a cluster of %d", i, len(c.members))
		}
		if c.members[i].etcd != nil {
			return fmt.Errorf("etcdtest: member %d is running", i)
		}
	}
	for _, i := range idx {
		m := c.members[i]
		e, err := embed.StartEtcd(c.config(m))
		if err != nil {
			return fmt.Errorf("etcdtest: start member %s (log %s): %w", m.name, filepath.Join(m.dir, "etcd.log"), err)
		}
		m.etcd = e
	}
	for _, i := range idx {
		m := c.members[i]
		select {
		case <-m.etcd.Server.ReadyNotify():
		case err := <-m.etcd.Err():
			return fmt.Errorf("etcdtest: member %s failed while starting (log %s): %w", m.name, filepath.Join(m.dir, "etcd.log"), err)
		case <-ctx.Done():
			return fmt.Errorf("etcdtest: member %s not ready (log %s): %w", m.name, filepath.Join(m.dir, "etcd.log"), ctx.Err())
		}
	}
	return nil
}

// Endpoints returns the client URLs of all members, running or not.
func (c *Cluster) Endpoints() []string {
	eps := make([]string, len(c.members))
	for i, m := range c.members {
		eps[i] = m.clientURL.String()
	}
	return eps
}

// Endpoint returns the client URL of member i.
func (c *Cluster) Endpoint(i int) string { return c.members[i].clientURL.String() }

// ClientTLS returns the files of a client certificate the cluster accepts,
// or nil when the cluster serves plain http.
func (c *Cluster) ClientTLS() *TLSFiles { return c.client }

// CA returns the cluster's certificate authority, or nil without TLS.
func (c *Cluster) CA() *CA { return c.ca }

// Dir returns the directory that holds the members' data, certificates and
// logs.
func (c *Cluster) Dir() string { return c.dir }

// Leader returns the index of the member that a running member follows
// as leader, or -1 when no running member knows one.
func (c *Cluster) Leader() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.leaderLocked()
}

func (c *Cluster) leaderLocked() int {
	for _, m := range c.members {
		if m.etcd == nil {
			continue
		}
		lead := m.etcd.Server.Leader()
		for j, o := range c.members {
			if o.etcd != nil && o.etcd.Server.MemberID() == lead {
				return j
			}
		}
	}
	return -1
}

// Running reports whether member i runs.
func (c *Cluster) Running(i int) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.members[i].etcd != nil
}

// Stop stops member i cleanly; its data and ports are kept for Restart.
// Stopping a stopped member does nothing.
func (c *Cluster) Stop(i int) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if i < 0 || i >= len(c.members) {
		return fmt.Errorf("etcdtest: no member %d in a cluster of %d", i, len(c.members))
	}
	c.members[i].stop()
	return nil
}

func (m *member) stop() {
	if m.etcd == nil {
		return
	}
	// embed.Etcd.Close panics when called twice: clear the field first.
	e := m.etcd
	m.etcd = nil
	e.Close()
	<-e.Server.StopNotify()
}

// Restart starts the given stopped members again on their old ports and
// data, all at once, and waits until they serve (which needs a quorum of
// the cluster) or ctx ends.
func (c *Cluster) Restart(ctx context.Context, members ...int) error {
	return c.start(ctx, members)
}

// Close stops every running member. Safe to call more than once.
func (c *Cluster) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.closed = true
	// A leader that stops hands its leadership to a peer first and waits
	// up to etcd's request timeout (6 s here) for that to happen: stop the
	// followers first (at once; a follower stops without waiting), so the
	// leader finds nobody to hand over to and stops at once.
	leader := c.leaderLocked()
	var wg sync.WaitGroup
	for i, m := range c.members {
		if i != leader {
			wg.Go(m.stop)
		}
	}
	wg.Wait()
	if leader >= 0 {
		c.members[leader].stop()
	}
	return nil
}
