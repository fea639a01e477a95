package metadata

import (
	"context"
	"encoding/json"
	"fmt"
	"reflect"
	"testing"
	"time"
)

// startIndex runs an index over s until the test ends and waits until it
// is live.
func startIndex(t *testing.T, s *EtcdStore) *Index {
	t.Helper()
	x := NewIndex(s)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		x.Run(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	wctx, wcancel := context.WithTimeout(ctx, 30*time.Second)
	defer wcancel()
	if err := x.WaitLive(wctx); err != nil {
		t.Fatal(err)
	}
	return x
}

// sameStore is a second store on the same prefix with its own client: a
// write through it is a write by another process.
func sameStore(t *testing.T, s *EtcdStore) *EtcdStore {
	t.Helper()
	cli := newClient(t, shared.endpoint)
	t.Cleanup(func() { cli.Close() })
	o, err := NewStore(cli, Options{Prefix: s.opts.Prefix, Logger: s.log, Host: "other"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { o.Close() })
	return o
}

// findJSON is a find result as comparable text.
func findJSON(t *testing.T, bs []*Backup) string {
	t.Helper()
	b, err := json.Marshal(bs)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestIndexAgreesWithEtcd checks that the index, the store's reads of
// etcd and FindVersions give the same answer for many requests, while
// another process adds, replaces and deletes records.
func TestIndexAgreesWithEtcd(t *testing.T) {
	ctx := ctxT(t)
	s := newSharedStore(t, Options{MaxTxnOps: 8}) // small transactions: multi-step writes
	other := sameStore(t, s)
	x := startIndex(t, s)

	reqs := []FindRequest{
		{Pattern: "*"},
		{Pattern: "*", NumVersions: 3},
		{Pattern: "files"},
		{Pattern: "files/home/bob"},
		{Pattern: "files/home/b*"},
		{Pattern: "files/h*me", NumVersions: 2},
		{Pattern: "*/*/carol", NumVersions: 5},
		{Pattern: "*", Host: "h2", NumVersions: 2},
		{Pattern: "db", OlderThan: t0.Add(90 * time.Second), NumVersions: 2},
		{Pattern: "nothing/here"},
	}
	check := func(stage string) {
		t.Helper()
		for _, req := range reqs {
			want, err := s.FindAtoms(ctx, req)
			if err != nil {
				t.Fatal(err)
			}
			got, err := x.FindAtoms(ctx, req)
			if err != nil {
				t.Fatal(err)
			}
			if w, g := findJSON(t, want), findJSON(t, got); w != g {
				t.Errorf("%s: %+v: index answers\n%s\netcd answers\n%s", stage, req, g, w)
			}
			vs, err := s.FindVersions(ctx, req)
			if err != nil {
				t.Fatal(err)
			}
			xs, err := x.Versions(ctx, req)
			if err != nil {
				t.Fatal(err)
			}
			if fv, xv := versionNames(vs), versionNames(xs); !reflect.DeepEqual(fv, xv) {
				t.Errorf("%s: %+v: FindVersions %v, index %v", stage, req, fv, xv)
			}
		}
	}

	check("empty")
	for i := 0; i < 4; i++ {
		host := fmt.Sprintf("h%d", 1+i%2)
		b := mkBackup(fmt.Sprintf("b%d", i), host, t0.Add(time.Duration(i)*time.Minute))
		// Written by the other process, each seen by the next find.
		if err := other.AddDataset(ctx, b, mkDataset("files", "home", "bob", "carol", fmt.Sprintf("dir/f%d", i))); err != nil {
			t.Fatal(err)
		}
		var many []string
		for j := 0; j < 40; j++ {
			many = append(many, fmt.Sprintf("t%03d", j))
		}
		if err := other.AddDataset(ctx, b, mkDataset("db", "main", many...)); err != nil {
			t.Fatal(err)
		}
		got, err := x.FindAtoms(ctx, FindRequest{Pattern: "files/home/dir/f" + fmt.Sprint(i)})
		if err != nil {
			t.Fatal(err)
		}
		if len(flat(got)) != 1 {
			t.Fatalf("the index does not show the record the other process just wrote: %v", flat(got))
		}
	}
	check("after adds")

	// Replace an atom set (a pipe dataset added again with other atoms):
	// the old atoms disappear, in one step with the new ones appearing.
	if err := other.AddDataset(ctx, mkBackup("b3", "h2", t0.Add(3*time.Minute)), mkDataset("db", "main", "u1", "u2")); err != nil {
		t.Fatal(err)
	}
	got, err := x.FindAtoms(ctx, FindRequest{Pattern: "db/main"})
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range got {
		for _, d := range b.Datasets {
			if b.ID == "b3" && d.AtomCount != 2 {
				t.Errorf("replaced dataset still has %d atoms", d.AtomCount)
			}
			for _, a := range d.Atoms {
				if b.ID == "b3" && a.Name[0] == 't' {
					t.Errorf("atom %s of the replaced atom set is still found", a.Name)
				}
			}
		}
	}
	check("after replace")

	// Delete a dataset record (by hand, as an operator might): its
	// atoms disappear.
	dk := s.k.dataset("files", "home", t0.Add(2*time.Minute), "b2")
	if _, err := other.cli.Delete(ctx, dk); err != nil {
		t.Fatal(err)
	}
	got, err = x.FindAtoms(ctx, FindRequest{Pattern: "files/home/dir/f2"})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 0 {
		t.Errorf("atoms of a deleted dataset record are still found: %v", flat(got))
	}
	check("after delete")

	// Unrelated writes move etcd's revision without an event for the
	// index: a find still answers (it asks the watch for progress).
	for i := 0; i < 3; i++ {
		if _, err := other.cli.Put(ctx, s.k.p+nsJobs+"x", fmt.Sprint(i)); err != nil {
			t.Fatal(err)
		}
		if _, err := x.Versions(ctx, FindRequest{Pattern: "*"}); err != nil {
			t.Fatal(err)
		}
	}
}

func versionNames(vs []FoundVersion) []string {
	out := []string{}
	for _, v := range vs {
		out = append(out, v.Backup.ID+":"+v.Name+":"+v.Dataset.Handler)
	}
	return out
}
