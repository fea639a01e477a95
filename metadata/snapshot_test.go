package metadata

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// TestReadOnlyConnectReadsTheFiles: after the embedded server stopped
// cleanly, a ReadOnly connection reads the database file without starting
// a server, and every read the commands make answers as the server did:
// finds (by the index path and by FindAtoms), backups, dataset versions
// and replica records, over datasets that were replaced (their old atom
// sets deleted), removed, and large enough to take several atom list
// chunks. Writes fail with ErrReadOnly. While a server runs, ReadOnly uses
// it.
func TestReadOnlyConnectReadsTheFiles(t *testing.T) {
	ctx := ctxT(t)
	dir := t.TempDir()
	conn, err := Connect(ctx, Config{Embedded: true, DataDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	st, err := NewStore(conn.Client, Options{Host: "h1", Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	add := func(i int, ds string, atoms int, tag string) *Backup {
		t.Helper()
		ts := t0.Add(time.Duration(i) * time.Hour)
		b := &Backup{ID: fmt.Sprintf("b%02d", i), Timestamp: ts, Host: "h1"}
		d := &Dataset{ID: b.ID + "/src/" + ds, Source: "src", Name: ds, Handler: "file", Repository: "local", SnapshotID: "snap" + tag}
		for j := range atoms {
			a := fmt.Sprintf("atom%05d", j)
			d.Atoms = append(d.Atoms, Atom{Name: a, Path: "data/" + a + tag, SnapshotID: "snap" + tag})
		}
		if err := st.AddDataset(ctx, b, d); err != nil {
			t.Fatal(err)
		}
		return b
	}
	add(0, "big", 4000, "x")
	add(1, "small", 3, "x")
	add(1, "small", 5, "y") // replaces the atom set of b01's small
	gone := add(2, "small", 2, "z")
	add(3, "other", 10, "x")
	if ok, err := st.RemoveDatasetVersion(ctx, "src", "small", gone.Timestamp, gone.ID); err != nil || !ok {
		t.Fatalf("remove: %v %v", ok, err)
	}
	if err := st.PutReplica(ctx, &ReplicaRecord{Repository: "far", SnapshotID: "snapx", Time: t0, Verified: true}); err != nil {
		t.Fatal(err)
	}

	reads := func(st *EtcdStore) []string {
		t.Helper()
		var out []string
		keep := func(what string, v any, err error) {
			if err != nil {
				t.Fatalf("%s: %v", what, err)
			}
			b, _ := json.Marshal(v)
			out = append(out, what+": "+string(b))
		}
		for _, req := range []FindRequest{
			{Pattern: "*", NumVersions: 1},
			{Pattern: "src", NumVersions: 3},
			{Pattern: "src/small/*", NumVersions: 2},
			{Pattern: "src/big/atom0399*", NumVersions: 1},
		} {
			v, err := st.FindVersions(ctx, req)
			keep(fmt.Sprintf("FindVersions %+v", req), v, err)
			a, err := st.FindAtoms(ctx, req)
			keep(fmt.Sprintf("FindAtoms %+v", req), a, err)
		}
		b, err := st.GetBackup(ctx, "b01")
		keep("GetBackup", b, err)
		bs, err := st.ListBackups(ctx, "", 10)
		keep("ListBackups", bs, err)
		dv, err := st.DatasetVersions(ctx, "src", "small", "", 10)
		keep("DatasetVersions", dv, err)
		rs, err := st.ListReplicas(ctx, "far")
		keep("ListReplicas", rs, err)
		return out
	}
	want := reads(st)

	// While the server runs, a ReadOnly connection uses it.
	ro, err := Connect(ctx, Config{Embedded: true, DataDir: dir, ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	if ro.snapshot != nil {
		t.Error("a ReadOnly connection read the files while a server runs")
	}
	ro.Close()
	st.Close()
	if err := conn.Close(); err != nil {
		t.Fatal(err)
	}

	ro, err = Connect(ctx, Config{Embedded: true, DataDir: dir, ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer ro.Close()
	if ro.Server != nil || ro.snapshot == nil {
		t.Fatalf("ReadOnly after a clean stop: server %v, snapshot %v; want the snapshot only", ro.Server, ro.snapshot)
	}
	rst, err := NewStore(ro.Client, Options{Host: "h1", Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer rst.Close()
	got := reads(rst)
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("read from the files differs from the server's:\n got %.600s\nwant %.600s", got[i], want[i])
		}
	}
	err = rst.AddDataset(ctx, &Backup{ID: "b09", Timestamp: t0, Host: "h1"}, &Dataset{ID: "b09/src/new", Source: "src", Name: "new", Handler: "file", Atoms: []Atom{{Name: "a"}}})
	if !errors.Is(err, ErrReadOnly) {
		t.Errorf("AddDataset on a read-only catalog: %v, want ErrReadOnly", err)
	}
	if _, err := ro.Client.Get(context.WithoutCancel(ctx), "x", clientv3.WithRev(1)); !errors.Is(err, ErrReadOnly) {
		t.Errorf("a read at another revision: %v, want ErrReadOnly", err)
	}
	if _, err := ro.Client.Grant(ctx, 10); !errors.Is(err, ErrReadOnly) {
		t.Errorf("a lease grant: %v, want ErrReadOnly", err)
	}
	if wr, ok := <-ro.Client.Watch(ctx, "x"); !ok || !wr.Canceled {
		t.Errorf("a watch: %+v %v, want one cancelled response", wr, ok)
	}
}
