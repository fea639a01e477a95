package etcdserver

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// rangeCase is one read, as a server and a snapshot answer it.
type rangeCase struct {
	key, end string
	limit    int64
	keysOnly bool
}

func (rc rangeCase) opts() []clientv3.OpOption {
	var o []clientv3.OpOption
	if rc.end != "" {
		o = append(o, clientv3.WithRange(rc.end))
	}
	if rc.limit > 0 {
		o = append(o, clientv3.WithLimit(rc.limit))
	}
	if rc.keysOnly {
		o = append(o, clientv3.WithKeysOnly())
	}
	return o
}

func fmtKVs(kvs []*mvccpb.KeyValue, count int64) string {
	var b strings.Builder
	fmt.Fprintf(&b, "count %d\n", count)
	for _, kv := range kvs {
		fmt.Fprintf(&b, "%q=%q create %d mod %d version %d lease %d\n", kv.Key, kv.Value, kv.CreateRevision, kv.ModRevision, kv.Version, kv.Lease)
	}
	return b.String()
}

// TestSnapshotReadsWhatTheServerServed: keys put, overwritten, deleted
// (one by one and by range), written in transactions and partly compacted
// away read the same from the database file of a cleanly stopped server
// as from the server, for single keys, ranges, limits and keys-only
// reads; the snapshot's revision is the server's last.
func TestSnapshotReadsWhatTheServerServed(t *testing.T) {
	dir := t.TempDir()
	e, err := StartEmbedded(ctxT(t), dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: e.Endpoints(), DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	ctx := ctxT(t)
	for i := range 300 {
		if _, err := cli.Put(ctx, fmt.Sprintf("/p/a/%03d", i), strings.Repeat("v", i)); err != nil {
			t.Fatal(err)
		}
	}
	mid, err := cli.Put(ctx, "/p/b/x", "1")
	if err != nil {
		t.Fatal(err)
	}
	for i := range 300 {
		switch i % 3 {
		case 0:
			_, err = cli.Put(ctx, fmt.Sprintf("/p/a/%03d", i), "again")
		case 1:
			_, err = cli.Delete(ctx, fmt.Sprintf("/p/a/%03d", i))
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	if _, err := cli.Txn(ctx).Then(clientv3.OpPut("/p/b/x", "2"), clientv3.OpPut("/p/b/y", "3"), clientv3.OpDelete("/p/a/2", clientv3.WithPrefix())).Commit(); err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Compact(ctx, mid.Header.Revision, clientv3.WithCompactPhysical()); err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Delete(ctx, "/p/b/y"); err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Put(ctx, "/p/b/y", "4"); err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Put(ctx, "/p", "top"); err != nil {
		t.Fatal(err)
	}
	last, err := cli.Put(ctx, "/p/c", "")
	if err != nil {
		t.Fatal(err)
	}
	cases := []rangeCase{
		{key: "/p/", end: "/p0"},
		{key: "/p/a/", end: "/p/a0", limit: 7},
		{key: "/p/a/1", end: "/p/a/2", keysOnly: true},
		{key: "/p/a/003"},
		{key: "/p/a/004"},
		{key: "/p/b/x"},
		{key: "/p/b/y"},
		{key: "/p/c"},
		{key: "/p/b/", end: "\x00"},
		{key: "/p/a/2", end: "/p/a/3"},
		{key: "/q", end: "/r"},
		{key: "/p/a/29", end: "/p/d", limit: 5},
		{key: "/p/b/y", end: "/p/d"},
		{key: "\x00", end: "\x00"},
		{key: "/p"},
	}
	want := make([]string, len(cases))
	for i, rc := range cases {
		resp, err := cli.Get(ctx, rc.key, rc.opts()...)
		if err != nil {
			t.Fatal(err)
		}
		want[i] = fmtKVs(resp.Kvs, resp.Count)
	}
	cli.Close()

	if _, err := OpenSnapshot(dir); !errors.Is(err, ErrLocked) {
		t.Fatalf("snapshot while the server runs: %v, want ErrLocked", err)
	}
	if _, err := os.Stat(filepath.Join(dir, cleanFile)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("a running server's data dir has a clean file: %v", err)
	}
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}

	s, err := OpenSnapshot(dir)
	if err != nil {
		t.Fatal(err)
	}
	if s.Rev() != last.Header.Revision {
		t.Errorf("snapshot revision %d, want the server's last %d", s.Rev(), last.Header.Revision)
	}
	for i, rc := range cases {
		kvs, count := s.Range([]byte(rc.key), []byte(rc.end), rc.limit, rc.keysOnly)
		if got := fmtKVs(kvs, count); got != want[i] {
			t.Errorf("%+v: snapshot reads\n%s\nthe server read\n%s", rc, got, want[i])
		}
	}
	if _, err := StartEmbedded(ctxT(t), dir, Options{}); !errors.Is(err, ErrLocked) {
		t.Fatalf("server start while a snapshot is open: %v, want ErrLocked", err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	// Open again: the snapshot did not spoil the clean state.
	s, err = OpenSnapshot(dir)
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
}

// TestSnapshotNeedsACleanStop: without the clean file, or when the WAL or
// the database changed after it was written (a server ran since, an
// older version without the clean file, a crash), OpenSnapshot refuses
// with ErrNotClean, and a server starts as usual.
func TestSnapshotNeedsACleanStop(t *testing.T) {
	dir := t.TempDir()
	e, err := StartEmbedded(ctxT(t), dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	put(t, e.Endpoints()[0], "k", "v")
	e.Close()
	wals, err := filepath.Glob(filepath.Join(dir, etcdDir, "member", "wal", "*.wal"))
	if err != nil || len(wals) == 0 {
		t.Fatalf("no WAL files: %v", err)
	}
	later := time.Now().Add(time.Minute)
	for _, tc := range []struct {
		name   string
		change func() error
	}{
		{"no clean file", func() error { return os.Remove(filepath.Join(dir, cleanFile)) }},
		{"WAL written since", func() error { return os.Chtimes(wals[len(wals)-1], later, later) }},
		{"database written since", func() error { return os.Chtimes(dbPath(dir), later, later) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if s, err := OpenSnapshot(dir); err != nil {
				t.Fatalf("snapshot before the change: %v", err)
			} else {
				s.Close()
			}
			if err := tc.change(); err != nil {
				t.Fatal(err)
			}
			if s, err := OpenSnapshot(dir); !errors.Is(err, ErrNotClean) {
				if err == nil {
					s.Close()
				}
				t.Fatalf("snapshot after the change: %v, want ErrNotClean", err)
			}
			// A server start and clean stop makes it clean again.
			e, err := StartEmbedded(ctxT(t), dir, Options{})
			if err != nil {
				t.Fatal(err)
			}
			put(t, e.Endpoints()[0], "k", "")
			e.Close()
		})
	}
}

// TestSnapshotOfDamagedDatabase: random bytes in the database file of a
// cleanly stopped server, with the clean file still matching (damage that
// changes no modification time, as bit rot does): OpenSnapshot fails with
// ErrDamaged naming the file instead of panicking or faulting.
func TestSnapshotOfDamagedDatabase(t *testing.T) {
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
	for i := range 3000 {
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
	fi, err := os.Stat(dbPath(dir))
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(5, 6))
	for _, tc := range []struct {
		name     string
		off, len int
	}{
		{"meta pages", 0, 16 << 10},
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
			if err := os.Chtimes(dbPath(dir), fi.ModTime(), fi.ModTime()); err != nil {
				t.Fatal(err)
			}
			s, err := OpenSnapshot(dir)
			if err == nil {
				s.Close()
				t.Fatal("a snapshot of a damaged database opened")
			}
			if !errors.Is(err, ErrDamaged) || !strings.Contains(err.Error(), dbPath(dir)) {
				t.Fatalf("snapshot of a damaged database: %v, want ErrDamaged naming the file", err)
			}
			t.Logf("reported: %v", err)
			// The data directory is free again.
			if err := os.WriteFile(dbPath(dir), good, 0o600); err != nil {
				t.Fatal(err)
			}
			if err := os.Chtimes(dbPath(dir), fi.ModTime(), fi.ModTime()); err != nil {
				t.Fatal(err)
			}
			s, err = OpenSnapshot(dir)
			if err != nil {
				t.Fatalf("snapshot of the restored database: %v", err)
			}
			s.Close()
		})
	}
}
