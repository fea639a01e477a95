package metadata

import (
	"context"
	"errors"
	"path/filepath"
	"reflect"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/custos-backup/custos/metadata/etcdtest"
)

// tlsConfig is the catalog config for a TLS test cluster with the files in f.
func tlsConfig(endpoints []string, f etcdtest.TLSFiles) Config {
	return Config{
		Endpoints:   endpoints,
		TLS:         &TLSConfig{CAFile: f.CAFile, CertFile: f.CertFile, KeyFile: f.KeyFile},
		DialTimeout: 2 * time.Second,
	}
}

// TestTLSClusterFailover runs the catalog on a real three-member etcd
// cluster that requires client certificates: it connects with the
// cluster's CA and a client certificate, keeps working while the leader is
// down, spools while the quorum is lost and flushes once it is back.
func TestTLSClusterFailover(t *testing.T) {
	ctx := ctxT(t)
	c := etcdtest.New(t, etcdtest.Options{Members: 3, TLS: true})
	cfg := tlsConfig(c.Endpoints(), *c.ClientTLS())
	for _, ep := range cfg.Endpoints {
		if !strings.HasPrefix(ep, "https://127.0.0.1:") {
			t.Fatalf("endpoint %s is not https on loopback", ep)
		}
	}
	conn, err := Connect(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if conn.Server != nil {
		t.Fatal("an external cluster connection claims an embedded server")
	}
	var depth atomic.Int64
	s, err := NewStore(conn.Client, Options{
		SpoolDir: filepath.Join(t.TempDir(), "spool"), Host: "h1", Logger: testLogger(t),
		// Long enough for a leader election on a busy host, short enough
		// that spooling during the quorum loss does not drag.
		WriteTimeout: 2 * time.Second, MinBackoff: 100 * time.Millisecond, MaxBackoff: 500 * time.Millisecond,
		OnSpoolDepth: func(d int) { depth.Store(int64(d)) },
	})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()

	find := func(want ...string) {
		t.Helper()
		got, err := s.FindAtoms(ctx, FindRequest{Pattern: "files/home/bob", NumVersions: 10})
		if err != nil {
			t.Fatalf("find: %v", err)
		}
		if f := flat(got); !reflect.DeepEqual(f, want) {
			t.Fatalf("find = %q, want %q", f, want)
		}
	}
	add := func(id string, hour int) {
		t.Helper()
		if err := s.AddDataset(ctx, mkBackup(id, "h1", t0.Add(time.Duration(hour)*time.Hour)), mkDataset("files", "home", "bob")); err != nil {
			t.Fatalf("AddDataset %s: %v", id, err)
		}
	}
	add("b1", 1)
	if d := s.SpoolDepth(); d != 0 {
		t.Fatalf("spool depth %d with a healthy cluster", d)
	}
	find("b1:files/home/bob")

	// Every write goes through the leader, and the client balances over
	// all members: the leader is the member whose loss matters.
	leader := c.Leader()
	if leader < 0 {
		t.Fatal("no leader in a running cluster")
	}
	if err := c.Stop(leader); err != nil {
		t.Fatal(err)
	}
	// Right after the loss an election may still be running: the record
	// either lands at once or goes through the spool; either way it
	// arrives.
	add("b2", 2)
	waitFor(t, "b2 to reach etcd", 30*time.Second, func() (bool, error) { return s.SpoolDepth() == 0, nil })
	find("b2:files/home/bob", "b1:files/home/bob")
	waitFor(t, "a new leader", 30*time.Second, func() (bool, error) { return c.Leader() >= 0, nil })
	add("b3", 3)
	if d := s.SpoolDepth(); d != 0 {
		t.Fatalf("spool depth %d: two of three members must take writes directly", d)
	}
	find("b3:files/home/bob", "b2:files/home/bob", "b1:files/home/bob")

	// A new connection works even when the first endpoint it is given is
	// the member that is down (the CLI starting during the outage).
	eps := []string{c.Endpoint(leader)}
	for i, ep := range c.Endpoints() {
		if i != leader {
			eps = append(eps, ep)
		}
	}
	conn2, err := Connect(ctx, tlsConfig(eps, *c.ClientTLS()))
	if err != nil {
		t.Fatalf("connect with the first endpoint down: %v", err)
	}
	s2, err := NewStore(conn2.Client, Options{Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	if b, err := s2.GetBackup(ctx, "b3"); err != nil || len(b.Datasets) != 1 {
		t.Fatalf("second connection GetBackup(b3) = %+v, %v", b, err)
	}
	s2.Close()
	if err := conn2.Close(); err != nil {
		t.Fatal(err)
	}

	// Quorum lost: the record waits in the spool and AddDataset succeeds.
	second := (leader + 1) % 3
	if err := c.Stop(second); err != nil {
		t.Fatal(err)
	}
	add("b4", 4)
	if d, hook := s.SpoolDepth(), depth.Load(); d != 1 || hook != 1 {
		t.Fatalf("spool depth %d (hook saw %d) with the quorum lost, want 1", d, hook)
	}
	if err := c.Restart(ctx, leader, second); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the spool to drain", 30*time.Second, func() (bool, error) { return s.SpoolDepth() == 0, nil })
	if hook := depth.Load(); hook != 0 {
		t.Fatalf("depth hook saw %d after the flush, want 0", hook)
	}
	find("b4:files/home/bob", "b3:files/home/bob", "b2:files/home/bob", "b1:files/home/bob")
}

// TestTLSClusterRejectsBadClients: a client the cluster does not trust, or
// that does not trust the cluster, gets an error that names the TLS
// problem within its DialTimeout instead of hanging.
func TestTLSClusterRejectsBadClients(t *testing.T) {
	c := etcdtest.New(t, etcdtest.Options{Members: 3, TLS: true})
	good := *c.ClientTLS()
	dir := t.TempDir()
	other, err := etcdtest.NewCA(dir, "other-ca")
	if err != nil {
		t.Fatal(err)
	}
	foreign, err := other.IssueClient(dir, "foreign")
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name string
		tls  *TLSConfig
		// want: words the error must contain (any of them), so that a
		// person sees it is about certificates.
		want []string
	}{
		{"no client certificate", &TLSConfig{CAFile: good.CAFile}, []string{"certificate"}},
		{"client certificate from another CA", &TLSConfig{CAFile: good.CAFile, CertFile: foreign.CertFile, KeyFile: foreign.KeyFile}, []string{"certificate"}},
		{"server not trusted", &TLSConfig{CAFile: other.CertFile, CertFile: good.CertFile, KeyFile: good.KeyFile}, []string{"certificate", "x509"}},
		{"no TLS at all", nil, []string{"https", "http"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			// The test's own deadline is far beyond DialTimeout: Connect
			// must give up on its own.
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			cfg := Config{Endpoints: c.Endpoints(), TLS: tc.tls, DialTimeout: time.Second}
			if tc.tls == nil {
				// http:// against an https server
				for i, ep := range cfg.Endpoints {
					cfg.Endpoints[i] = "http://" + strings.TrimPrefix(ep, "https://")
				}
			}
			conn, err := Connect(ctx, cfg)
			if err == nil {
				conn.Close()
				t.Fatal("connected without valid credentials")
			}
			if ctx.Err() != nil {
				t.Fatalf("Connect ran until the caller's context ended: %v", err)
			}
			t.Logf("error: %v", err)
			msg := strings.ToLower(err.Error())
			ok := false
			for _, w := range tc.want {
				ok = ok || strings.Contains(msg, w)
			}
			if !ok {
				t.Errorf("error %q names none of %q", err, tc.want)
			}
			if !strings.Contains(err.Error(), c.Endpoint(0)[len("https://"):]) {
				t.Errorf("error %q does not name the endpoints", err)
			}
		})
	}
	// The good certificate still works against the same cluster, so the
	// failures above are about the credentials.
	conn, err := Connect(ctxT(t), tlsConfig(c.Endpoints(), good))
	if err != nil {
		t.Fatal(err)
	}
	if err := conn.Close(); err != nil && !errors.Is(err, context.Canceled) {
		t.Fatal(err)
	}
}
