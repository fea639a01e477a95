package etcdserver

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// TestDamagedDatabaseIsAnError writes random bytes into a real catalog
// database and starts the server on it: the start fails with ErrDamaged
// (bbolt would otherwise panic inside etcd, in a goroutine, and take the
// process down: this test would not get to its end). The start after the
// database is restored works.
func TestDamagedDatabaseIsAnError(t *testing.T) {
	dir := t.TempDir()
	e, err := StartEmbedded(ctxT(t), dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: e.Endpoints(), DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	val := strings.Repeat("v", 1000)
	for i := 0; i < 3000; i++ {
		if _, err := cli.Put(ctxT(t), fmt.Sprintf("/custos/atom/%06d", i), val); err != nil {
			t.Fatal(err)
		}
	}
	cli.Close()
	e.Close()
	good, err := os.ReadFile(dbPath(dir))
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("database of %d bytes", len(good))

	rng := rand.New(rand.NewPCG(1, 2))
	for _, tc := range []struct {
		name     string
		off, len int
	}{
		{"meta pages", 0, 16 << 10},
		{"first data pages", 16 << 10, 64 << 10},
		{"among the keys", 1 << 20, 256 << 10},
	} {
		t.Run(tc.name, func(t *testing.T) {
			bad := append([]byte(nil), good...)
			for i := tc.off; i < tc.off+tc.len && i < len(bad); i++ {
				bad[i] = byte(rng.Uint32())
			}
			if err := os.WriteFile(dbPath(dir), bad, 0o600); err != nil {
				t.Fatal(err)
			}
			e, err := StartEmbedded(ctxT(t), dir, Options{})
			if err == nil {
				e.Close()
				t.Fatal("the server started on a damaged database")
			}
			if !errors.Is(err, ErrDamaged) {
				t.Fatalf("start on a damaged database: %v, want ErrDamaged", err)
			}
			t.Logf("reported: %v", err)
			if !strings.Contains(err.Error(), dbPath(dir)) {
				t.Errorf("the error does not name the file: %v", err)
			}
			// The data directory is free again.
			if err := os.WriteFile(dbPath(dir), good, 0o600); err != nil {
				t.Fatal(err)
			}
			e, err = StartEmbedded(ctxT(t), dir, Options{})
			if err != nil {
				t.Fatalf("start on the restored database: %v", err)
			}
			e.Close()
		})
	}
}
