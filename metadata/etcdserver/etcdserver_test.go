package etcdserver

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func put(t *testing.T, ep, k, v string) {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{ep}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	if v == "" {
		resp, err := cli.Get(ctxT(t), k)
		if err != nil || len(resp.Kvs) != 1 {
			t.Fatalf("get %s: %v %v", k, resp, err)
		}
		return
	}
	if _, err := cli.Put(ctxT(t), k, v); err != nil {
		t.Fatal(err)
	}
}

func TestEmbeddedLifecycle(t *testing.T) {
	dir := t.TempDir()
	e, err := StartEmbedded(ctxT(t), dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	ep := e.Endpoints()
	if got, _ := ReadEndpoint(dir); got != ep[0] {
		t.Fatalf("endpoint file = %q, want %q", got, ep[0])
	}
	put(t, ep[0], "k", "v")

	if _, err := StartEmbedded(ctxT(t), dir, Options{}); !errors.Is(err, ErrLocked) {
		t.Fatalf("second start on a served dir: %v, want ErrLocked", err)
	}
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	if err := e.Close(); err != nil { // embed.Etcd.Close would panic here
		t.Fatal(err)
	}
	if got, _ := ReadEndpoint(dir); got != "" {
		t.Fatalf("endpoint file after Close = %q", got)
	}
	if _, err := os.Stat(filepath.Join(dir, logFile)); err != nil {
		t.Fatalf("etcd log not in data dir: %v", err)
	}

	e2, err := StartEmbedded(ctxT(t), dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer e2.Close()
	if !reflect.DeepEqual(e2.Endpoints(), ep) {
		t.Fatalf("restart endpoints %v, want the same %v", e2.Endpoints(), ep)
	}
	put(t, ep[0], "k", "") // data persisted
}

func TestEmbeddedConfiguredPorts(t *testing.T) {
	c, err := freePort()
	if err != nil {
		t.Fatal(err)
	}
	e, err := StartEmbedded(ctxT(t), t.TempDir(), Options{ClientPort: c})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	want := "http://127.0.0.1:" + itoa(c)
	if e.Endpoints()[0] != want {
		t.Fatalf("endpoint %s, want %s", e.Endpoints()[0], want)
	}
}

func TestEmbeddedCancelledStart(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	dir := t.TempDir()
	e0, err := StartEmbedded(ctx, dir, Options{})
	switch {
	case err == nil:
		// The server may win the race and be ready first.
		e0.Close()
	case !errors.Is(err, context.Canceled):
		t.Fatalf("start with a cancelled context: %v, want context.Canceled", err)
	}
	// Whatever happened, the directory must be free again.
	e, err := StartEmbedded(ctxT(t), dir, Options{})
	if err != nil {
		t.Fatalf("directory not released after a cancelled start: %v", err)
	}
	e.Close()
}

func itoa(n int) string { return strconv.Itoa(n) }
