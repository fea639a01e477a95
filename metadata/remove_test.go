package metadata

import (
	"context"
	"errors"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// keysUnder counts every key of the store's prefix, whatever its kind.
func keysUnder(t *testing.T, s *EtcdStore) int {
	t.Helper()
	resp, err := s.cli.Get(context.Background(), s.k.p, clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		t.Fatal(err)
	}
	return int(resp.Count)
}

// TestRemoveDatasetVersion removes dataset versions of every shape: one
// of two datasets of a backup (the backup stays), the last one (the
// backup goes), a large one split over many transactions, and one that is
// not there. Find, GetBackup, ListBackups and DatasetVersions stop
// showing each at once, and no key of it stays behind.
func TestRemoveDatasetVersion(t *testing.T) {
	ctx := ctxT(t)
	s := newSharedStore(t, Options{MaxTxnOps: 16})
	ts := time.Date(2025, 3, 1, 10, 0, 0, 123, time.UTC)
	b := &Backup{ID: "b1", Timestamp: ts, Host: "h"}
	small := atomsDS("s1", "a", "b")
	other := &Dataset{ID: "b1/src/other", Source: "src", Name: "other", Handler: "file", Repository: "local", SnapshotID: "o1",
		Atoms: []Atom{{Name: "x", SnapshotID: "o1"}}}
	if err := s.AddDataset(ctx, b, small); err != nil {
		t.Fatal(err)
	}
	if err := s.AddDataset(ctx, b, other); err != nil {
		t.Fatal(err)
	}
	b2 := &Backup{ID: "b2", Timestamp: ts.Add(time.Hour), Host: "h"}
	big := atomsDS("s2", atomNames("atom", 0, 300)...) // many transactions at MaxTxnOps 16
	big.ID = "b2/src/ds"
	if err := s.AddDataset(ctx, b2, big); err != nil {
		t.Fatal(err)
	}
	before := keysUnder(t, s)

	ok, err := s.RemoveDatasetVersion(ctx, "src", "ds", ts, "b1")
	if err != nil || !ok {
		t.Fatalf("remove src/ds of b1: %v, %v", ok, err)
	}
	if got := findOf(t, s, "src/ds", "b1"); len(got) != 0 {
		t.Errorf("find still lists the removed version: %v", got)
	}
	if got := findOf(t, s, "src/other", "b1"); len(got) != 1 {
		t.Errorf("find lost the other dataset of the backup: %v", got)
	}
	got, err := s.GetBackup(ctx, "b1")
	if err != nil {
		t.Fatalf("the backup went with one of its two datasets: %v", err)
	}
	if len(got.Datasets) != 1 || got.Datasets[0].Name != "other" {
		t.Errorf("backup b1 holds %d datasets after the removal, want only other", len(got.Datasets))
	}
	// The version's 2 atom records, 1 list chunk, record and index key.
	if n := keysUnder(t, s); n != before-5 {
		t.Errorf("%d keys after removing a 2-atom version, want %d", n, before-5)
	}

	ok, err = s.RemoveDatasetVersion(ctx, "src", "other", ts, "b1")
	if err != nil || !ok {
		t.Fatalf("remove src/other of b1: %v, %v", ok, err)
	}
	if _, err := s.GetBackup(ctx, "b1"); !errors.Is(err, ErrNotFound) {
		t.Errorf("backup b1 without datasets: GetBackup says %v, want ErrNotFound", err)
	}
	list, err := s.ListBackups(ctx, "", 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 1 || list[0].ID != "b2" {
		t.Errorf("ListBackups after removing b1's datasets: %d backups, want b2 only", len(list))
	}
	hostList, err := s.ListBackups(ctx, "h", 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(hostList) != 1 {
		t.Errorf("ListBackups(host) after removing b1's datasets: %d backups, want 1", len(hostList))
	}

	ok, err = s.RemoveDatasetVersion(ctx, "src", "ds", b2.Timestamp, "b2")
	if err != nil || !ok {
		t.Fatalf("remove the large version: %v, %v", ok, err)
	}
	if n := keysUnder(t, s); n != 0 {
		t.Errorf("%d keys left after removing every version", n)
	}
	vs, err := s.DatasetVersions(ctx, "src", "ds", "", 0)
	if err != nil || len(vs) != 0 {
		t.Errorf("DatasetVersions after removal: %d, %v", len(vs), err)
	}

	ok, err = s.RemoveDatasetVersion(ctx, "src", "ds", ts, "b1")
	if err != nil || ok {
		t.Errorf("removing what is not there: %v, %v; want false, nil", ok, err)
	}
	if _, err := s.RemoveDatasetVersion(ctx, "src/x", "ds", ts, "b1"); !errors.Is(err, ErrInvalid) {
		t.Errorf("bad source name: %v, want ErrInvalid", err)
	}
}

// TestRemoveKeepsBackupGainingADataset: a dataset added to the backup
// between the removal's read and its delete keeps the backup record; the
// guard sends the removal round again.
func TestRemoveKeepsBackupGainingADataset(t *testing.T) {
	ctx := ctxT(t)
	s := newSharedStore(t, Options{})
	ts := time.Date(2025, 3, 1, 10, 0, 0, 0, time.UTC)
	b := &Backup{ID: "b1", Timestamp: ts, Host: "h"}
	if err := s.AddDataset(ctx, b, atomsDS("s1", "a")); err != nil {
		t.Fatal(err)
	}
	added := false
	s.kv = &hookKV{KV: s.cli.KV, beforeTxn: func() {
		if added {
			return
		}
		added = true
		other := &Dataset{ID: "b1/src/late", Source: "src", Name: "late", Handler: "file", Repository: "local", Atoms: []Atom{{Name: "x", SnapshotID: "l1"}}}
		if err := (&EtcdStore{cli: s.cli, kv: s.cli.KV, opts: s.opts, k: s.k, log: s.log, runCtx: ctx}).write(ctx, b, other); err != nil {
			t.Error(err)
		}
	}}
	ok, err := s.RemoveDatasetVersion(ctx, "src", "ds", ts, "b1")
	if err != nil || !ok {
		t.Fatalf("remove: %v, %v", ok, err)
	}
	got, err := s.GetBackup(ctx, "b1")
	if err != nil {
		t.Fatalf("the backup went although a dataset was added to it: %v", err)
	}
	if len(got.Datasets) != 1 || got.Datasets[0].Name != "late" {
		t.Errorf("backup holds %+v, want only the late dataset", got.Datasets)
	}
}

// hookKV calls beforeTxn before the second transaction it is asked for:
// the first is the removal's read, the second its guarded delete.
type hookKV struct {
	clientv3.KV
	n         int
	beforeTxn func()
}

func (h *hookKV) Txn(ctx context.Context) clientv3.Txn {
	h.n++
	if h.n == 2 {
		h.beforeTxn()
	}
	return h.KV.Txn(ctx)
}
