package etcdtest

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"
	"testing"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

func client(t *testing.T, c *Cluster, eps ...string) *clientv3.Client {
	t.Helper()
	if len(eps) == 0 {
		eps = c.Endpoints()
	}
	cfg := clientv3.Config{Endpoints: eps, DialTimeout: 5 * time.Second, Logger: zap.NewNop()}
	if f := c.ClientTLS(); f != nil {
		tc, err := transport.TLSInfo{CertFile: f.CertFile, KeyFile: f.KeyFile, TrustedCAFile: f.CAFile}.ClientConfig()
		if err != nil {
			t.Fatal(err)
		}
		cfg.TLS = tc
	}
	cli, err := clientv3.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// TestClusterStopRestart: a three-member cluster replicates, survives the
// loss of its leader, keeps its data over a restart, and Close is safe
// twice.
func TestClusterStopRestart(t *testing.T) {
	ctx := ctxT(t)
	start := time.Now()
	c, err := Start(ctx, t.TempDir(), Options{Members: 3})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("3 members ready after %s", time.Since(start))
	if _, err := client(t, c).Put(ctx, "k", "v1"); err != nil {
		t.Fatal(err)
	}
	// Each member serves the value by itself (serializable read: its own
	// copy, no leader involved). A put returns once a quorum has it, so a
	// follower may apply it a moment later: wait for each.
	for i, ep := range c.Endpoints() {
		cli := client(t, c, ep)
		waitFor(t, fmt.Sprintf("member %d to serve the value", i), func() bool {
			resp, err := cli.Get(ctx, "k", clientv3.WithSerializable())
			return err == nil && len(resp.Kvs) == 1 && string(resp.Kvs[0].Value) == "v1"
		})
	}
	leader := c.Leader()
	if leader < 0 {
		t.Fatal("no leader")
	}
	if err := c.Stop(leader); err != nil {
		t.Fatal(err)
	}
	if err := c.Stop(leader); err != nil { // a stopped member stops again quietly
		t.Fatal(err)
	}
	if c.Running(leader) {
		t.Fatal("stopped member still running")
	}
	if err := c.Restart(ctx, (leader+1)%3); err == nil {
		t.Fatal("restarting a running member succeeded")
	}
	if _, err := client(t, c).Put(ctx, "k", "v2"); err != nil {
		t.Fatalf("put with one member down: %v", err)
	}
	if err := c.Restart(ctx, leader); err != nil {
		t.Fatal(err)
	}
	// The restarted member catches up on what it missed.
	waitFor(t, "the restarted member to catch up", func() bool {
		resp, err := client(t, c, c.Endpoint(leader)).Get(ctx, "k", clientv3.WithSerializable())
		return err == nil && len(resp.Kvs) == 1 && string(resp.Kvs[0].Value) == "v2"
	})
	start = time.Now()
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	t.Logf("closed after %s", time.Since(start))
	if err := c.Close(); err != nil { // embed.Etcd.Close would panic here
		t.Fatal(err)
	}
	if err := c.Restart(ctx, 0); err == nil {
		t.Fatal("restart after Close succeeded")
	}
}

// TestClusterTLS: clients need a certificate from the cluster's CA, and the
// server certificate verifies for 127.0.0.1.
func TestClusterTLS(t *testing.T) {
	ctx := ctxT(t)
	c := New(t, Options{TLS: true})
	f := c.ClientTLS()
	if f == nil || c.CA() == nil {
		t.Fatal("TLS cluster without client files or CA")
	}
	for _, p := range []string{f.CAFile, f.CertFile, f.KeyFile} {
		if _, err := os.Stat(p); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := client(t, c).Put(ctx, "k", "v"); err != nil {
		t.Fatal(err)
	}

	pool := x509.NewCertPool()
	pem, err := os.ReadFile(f.CAFile)
	if err != nil {
		t.Fatal(err)
	}
	pool.AppendCertsFromPEM(pem)
	host := c.Endpoint(0)[len("https://"):]
	cert, err := tls.LoadX509KeyPair(f.CertFile, f.KeyFile)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name   string
		cfg    *tls.Config
		wantOK bool
	}{
		{"with client certificate", &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{cert}}, true},
		{"without client certificate", &tls.Config{RootCAs: pool}, false},
		{"not trusting the CA", &tls.Config{Certificates: []tls.Certificate{cert}}, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			conn, err := tls.Dial("tcp", host, tc.cfg)
			if err == nil {
				// TLS 1.3: the server rejects a missing certificate after
				// the handshake, with an alert on the next read.
				_ = conn.SetReadDeadline(time.Now().Add(time.Second))
				_, err = conn.Read(make([]byte, 1))
				conn.Close()
				if ne, ok := err.(interface{ Timeout() bool }); ok && ne.Timeout() {
					err = nil
				}
			}
			if (err == nil) != tc.wantOK {
				t.Fatalf("err = %v, want ok=%v", err, tc.wantOK)
			}
		})
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("gave up waiting for %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
