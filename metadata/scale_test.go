package metadata

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// mailDataset is one dataset of n atoms, one per mailbox, all in one
// snapshot: what the file handler records for a mail spool.
func mailDataset(source, name string, n int) *Dataset {
	snap := strings.Repeat("ab", 32)
	d := &Dataset{ID: "x/" + source + "/" + name, Source: source, Name: name, Handler: "file", Repository: "local", SnapshotID: snap}
	d.Atoms = make([]Atom, n)
	for i := range d.Atoms {
		mb := fmt.Sprintf("user%06d", i)
		d.Atoms[i] = Atom{Name: mb, Path: "var/spool/mail/" + mb, SnapshotID: snap}
	}
	return d
}

// TestLargeDataset is the mail host of issue 10: a dataset far larger
// than one etcd request is recorded directly (not spooled), a reader never
// sees part of it, and a later small dataset is recorded as usual.
func TestLargeDataset(t *testing.T) {
	for _, n := range []int{20_000, 100_000} {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
			defer cancel()
			s := newSharedStore(t, Options{SpoolDir: t.TempDir()})
			b := mkBackup("b1", "h1", t0)
			d := mailDataset("mail", "spool", n)
			// A reader between the atom batches and the switch sees no
			// atom of the new version.
			seen := -1
			s.testHook = func(ctx context.Context, step string) error {
				if step == stepAtomsWritten {
					got, err := s.FindAtoms(ctx, FindRequest{Pattern: "mail/spool/user00000*"})
					if err != nil {
						return err
					}
					seen = len(flat(got))
				}
				return nil
			}
			r, err := s.RecordDataset(ctx, b, d)
			if err != nil || r.Spooled {
				t.Fatalf("RecordDataset of %d atoms = %+v, %v; want written to etcd", n, r, err)
			}
			if seen != 0 {
				t.Fatalf("before the switch a reader saw %d atoms of the new version, want 0", seen)
			}
			s.testHook = nil
			r, err = s.RecordDataset(ctx, mkBackup("b2", "h1", t0.Add(time.Hour)), mkDataset("docs", "home", "alice"))
			if err != nil || r.Spooled {
				t.Fatalf("the next record = %+v, %v; want written to etcd", r, err)
			}
			got, err := s.FindAtoms(ctx, FindRequest{Pattern: "*"})
			if err != nil {
				t.Fatal(err)
			}
			if f := flat(got); len(f) != n+1 || f[0] != "b2:docs/home/alice" || f[1] != "b1:mail/spool/user000000" {
				t.Fatalf("find * = %d atoms (%.3q...), want %d", len(f), f, n+1)
			}
			one, err := s.FindAtoms(ctx, FindRequest{Pattern: fmt.Sprintf("mail/spool/user%06d", n-1)})
			if err != nil {
				t.Fatal(err)
			}
			if f := flat(one); len(f) != 1 || one[0].Datasets[0].AtomCount != n {
				t.Fatalf("find of the last atom = %q (%+v)", f, one)
			}
			full, err := s.GetBackup(ctx, "b1")
			if err != nil {
				t.Fatal(err)
			}
			if ds := full.Datasets; len(ds) != 1 || len(ds[0].Atoms) != n || ds[0].Atoms[n-1] != d.Atoms[n-1] {
				t.Fatalf("GetBackup: %d datasets, want 1 of %d atoms", len(ds), n)
			}
			list, err := s.ListBackups(ctx, "h1", 0)
			if err != nil {
				t.Fatal(err)
			}
			if len(list) != 2 || list[1].Datasets[0].AtomCount != n || list[1].Datasets[0].Atoms != nil {
				t.Fatalf("ListBackups = %+v, want 2 backups, counts without atoms", list)
			}
			if d := s.SpoolDepth(); d != 0 {
				t.Fatalf("spool depth %d, want 0", d)
			}
		})
	}
}

// TestClientRefusedRequestIsPermanent: a request the gRPC client refuses
// as too large is ErrInvalid, not spooled (it could never pass).
func TestClientRefusedRequestIsPermanent(t *testing.T) {
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{shared.endpoint}, DialTimeout: 10 * time.Second,
		Logger: zap.NewNop(), MaxCallSendMsgSize: 64 << 10})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	s, err := NewStore(cli, Options{Prefix: fmt.Sprintf("/test/%s/%d/", t.Name(), time.Now().UnixNano()),
		SpoolDir: t.TempDir(), Logger: testLogger(t), Host: "h", MaxTxnOps: 10_000})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	r, err := s.RecordDataset(ctxT(t), mkBackup("b1", "h", t0), mailDataset("mail", "spool", 2000))
	if !errors.Is(err, ErrInvalid) || r.Spooled || s.SpoolDepth() != 0 {
		t.Fatalf("RecordDataset = %+v, %v (depth %d); want ErrInvalid, not spooled", r, err, s.SpoolDepth())
	}
}

// TestSpoolPoisonRecord puts one record that can never be written in the
// middle of a spool of good ones: it is set aside with its reason, the
// records behind it go through, and the count survives a restart.
func TestSpoolPoisonRecord(t *testing.T) {
	huge := mkDataset("s", "big", "a")
	huge.Repository = strings.Repeat("r", maxTxnBytes) // one key and value above any request
	for _, tc := range []struct {
		name   string
		poison func(sp *spool) error
		reason string
	}{
		{"conflict", func(sp *spool) error {
			return sp.add(spoolRecord{Backup: mkBackup("b0", "other-host", t0), Dataset: mkDataset("s", "d2", "a")})
		}, "conflict"},
		{"too large", func(sp *spool) error {
			return sp.add(spoolRecord{Backup: mkBackup("big", "h1", t0), Dataset: huge})
		}, "more than one etcd request may hold"},
		{"unreadable", func(sp *spool) error {
			sp.seq++
			name := fmt.Sprintf("%020d%s", sp.seq, spoolExt)
			sp.names = append(sp.names, name)
			return os.WriteFile(filepath.Join(sp.dir, name), []byte("{half"), 0o600)
		}, "not a record"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := ctxT(t)
			s := newSharedStore(t, Options{})
			if err := s.AddDataset(ctx, mkBackup("b0", "h1", t0), mkDataset("s", "d", "a")); err != nil {
				t.Fatal(err)
			}
			dir := t.TempDir()
			sp, err := openSpool(dir, nil)
			if err != nil {
				t.Fatal(err)
			}
			good := func(i int) {
				if err := sp.add(spoolRecord{Backup: mkBackup(fmt.Sprintf("g%d", i), "h1", t0.Add(time.Duration(i)*time.Hour)), Dataset: mkDataset("s", "d", "a")}); err != nil {
					t.Fatal(err)
				}
			}
			good(1)
			good(2)
			if err := tc.poison(sp); err != nil {
				t.Fatal(err)
			}
			good(3)
			good(4)
			s2 := newSharedStore(t, Options{Prefix: s.Prefix(), SpoolDir: dir, MinBackoff: 20 * time.Millisecond})
			waitFor(t, "spool to drain", 60*time.Second, func() (bool, error) { return s2.SpoolDepth() == 0, nil })
			for i := 1; i <= 4; i++ {
				if _, err := s2.GetBackup(ctx, fmt.Sprintf("g%d", i)); err != nil {
					t.Fatalf("good record %d: %v", i, err)
				}
			}
			failed, err := s2.FailedRecords()
			if err != nil {
				t.Fatal(err)
			}
			if len(failed) != 1 || s2.SpoolFailed() != 1 || !strings.Contains(failed[0].Reason, tc.reason) || failed[0].Time.IsZero() {
				t.Fatalf("failed records = %+v (count %d), want one with reason %q", failed, s2.SpoolFailed(), tc.reason)
			}
			if again, err := openSpool(dir, nil); err != nil || again.failedCount() != 1 || again.depth() != 0 {
				t.Fatalf("reopened spool: %d failed, %d pending, %v; want 1 and 0", again.failedCount(), again.depth(), err)
			}
		})
	}
}
