package metadata

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/custos-backup/custos/metadata/etcdserver"
)

// shared is one real embedded etcd for the tests that do not stop or
// restart their server; each test uses its own key prefix.
var shared struct {
	endpoint string
}

func TestMain(m *testing.M) {
	os.Exit(runMain(m))
}

func runMain(m *testing.M) int {
	dir, err := os.MkdirTemp("", "custos-metadata-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	srv, err := etcdserver.StartEmbedded(context.Background(), dir, etcdserver.Options{})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer srv.Close()
	shared.endpoint = srv.Endpoints()[0]
	return m.Run()
}

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func newClient(t *testing.T, endpoints ...string) *clientv3.Client {
	t.Helper()
	cli, err := dial(context.Background(), Config{DialTimeout: 10 * time.Second}, endpoints)
	if err != nil {
		t.Fatal(err)
	}
	return cli
}

// newSharedStore returns a store on the shared server with a key prefix of
// its own.
func newSharedStore(t *testing.T, opts Options) *EtcdStore {
	t.Helper()
	cli := newClient(t, shared.endpoint)
	t.Cleanup(func() { cli.Close() })
	if opts.Prefix == "" {
		// Unique per call, so -count=N runs do not see earlier data.
		opts.Prefix = fmt.Sprintf("/test/%s/%d/", t.Name(), time.Now().UnixNano())
	}
	if opts.Logger == nil {
		opts.Logger = testLogger(t)
	}
	if opts.Host == "" {
		opts.Host = "testhost"
	}
	s, err := NewStore(cli, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// countingKV wraps the real KV and records every range read.
type countingKV struct {
	clientv3.KV
	mu     sync.Mutex
	ranges [][2]string
	read   int
}

func (c *countingKV) Get(ctx context.Context, key string, opts ...clientv3.OpOption) (*clientv3.GetResponse, error) {
	op := clientv3.OpGet(key, opts...)
	resp, err := c.KV.Get(ctx, key, opts...)
	c.mu.Lock()
	defer c.mu.Unlock()
	c.ranges = append(c.ranges, [2]string{string(op.KeyBytes()), string(op.RangeBytes())})
	if err == nil {
		c.read += len(resp.Kvs)
	}
	return resp, err
}

func (c *countingKV) reset() {
	c.mu.Lock()
	c.ranges, c.read = nil, 0
	c.mu.Unlock()
}

func waitFor(t *testing.T, what string, limit time.Duration, cond func() (bool, error)) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for {
		ok, err := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("gave up waiting for %s after %s (last error: %v)", what, limit, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// newClientNoCheck opens a client without checking that anything answers.
func newClientNoCheck(t *testing.T, endpoint string) *clientv3.Client {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{endpoint}, DialTimeout: time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	return cli
}
