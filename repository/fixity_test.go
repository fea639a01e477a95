package repository

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/custos-backup/custos/internal/s3server"
	"github.com/custos-backup/custos/repository/backend"
	"github.com/custos-backup/custos/repository/backend/backendtest"
	"github.com/custos-backup/custos/repository/backend/location"
	"github.com/custos-backup/custos/repository/format"
)

// TestVerifyHealPack flips one byte inside a data blob of a pack: the
// verdict names the blob and the files that need it, a heal from a replica
// (another key, another polynomial) rewrites the pack, and afterwards
// every indexed pack verifies, the damaged one is no longer indexed, and
// a restore yields the original bytes.
func TestVerifyHealPack(t *testing.T) {
	ctx := context.Background()
	f := newCorruptionFixture(t)
	replica, _ := newSmallPackRepo(t, "other")
	if _, err := Copy(ctx, f.r, replica, []*Snapshot{f.snapA, f.snapB}, nil); err != nil {
		t.Fatal(err)
	}
	// A pack holding data of a/: the first blob of the first file.
	node, err := findNode(ctx, f.r, f.snapA.Tree, "a-01.bin")
	if err != nil {
		t.Fatal(err)
	}
	pack, pb, ok := f.r.index().Lookup(format.DataHandle(node.Content[0]))
	if !ok {
		t.Fatal("blob not indexed")
	}
	f.flip(t, packPath(pack), int64(pb.Offset)+int64(pb.Length)/2)

	r := reopen(t, f.dir, corruptPW)
	vs, err := r.VerifyPacks(ctx, []ID{pack})
	if err != nil {
		t.Fatal(err)
	}
	v := vs[0]
	if v.OK || !v.Reread || len(v.Blobs) == 0 || v.Blobs[0] != node.Content[0].String() {
		t.Fatalf("verdict does not name the damaged blob: %+v", v)
	}
	if len(v.Snapshots) != 1 || v.Snapshots[0] != f.snapA.ID.String() || !containsSuffix(v.Paths, ":a-01.bin") {
		t.Fatalf("verdict does not name snapshot and path: %+v", v)
	}

	// No replica: nothing changes and the error says so.
	if _, err := r.HealPack(ctx, pack, nil); !errors.Is(err, ErrCannotHeal) {
		t.Fatalf("heal without replica: %v", err)
	}
	res, err := r.HealPack(ctx, pack, []*Repository{replica})
	if err != nil {
		t.Fatal(err)
	}
	if res.FromReplica != 1 || len(res.NewPacks) == 0 {
		t.Fatalf("heal: %+v", res)
	}
	packs, err := r.Packs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var ids []ID
	for _, p := range packs {
		if p.ID == pack {
			t.Fatal("the damaged pack is still indexed")
		}
		ids = append(ids, p.ID)
	}
	vs, err = r.VerifyPacks(ctx, ids)
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range vs {
		if !v.OK {
			t.Fatalf("after heal: %+v", v)
		}
	}
	ds, err := r.VerifyDigests(ctx, []*Snapshot{f.snapA, f.snapB})
	if err != nil || len(ds.Problems) != 0 || ds.Files != 9 {
		t.Fatalf("digests after heal: %+v %v", ds, err)
	}
	restoreCompare(t, reopen(t, f.dir, corruptPW), f.snapA, f.srcA)
}

// TestVerifyDigestsFindsDamage: deep verification names the file whose
// blob no longer verifies.
func TestVerifyDigestsFindsDamage(t *testing.T) {
	ctx := context.Background()
	f := newCorruptionFixture(t)
	node, err := findNode(ctx, f.r, f.snapB.Tree, "b-02.bin")
	if err != nil {
		t.Fatal(err)
	}
	pack, pb, _ := f.r.index().Lookup(format.DataHandle(node.Content[len(node.Content)-1]))
	f.flip(t, packPath(pack), int64(pb.Offset)+4)
	r := reopen(t, f.dir, corruptPW)
	ds, err := r.VerifyDigests(ctx, []*Snapshot{f.snapB})
	if err != nil {
		t.Fatal(err)
	}
	if len(ds.Problems) == 0 || ds.Problems[0].Path != "b-02.bin" {
		t.Fatalf("deep verification: %+v", ds)
	}
}

func containsSuffix(ss []string, suffix string) bool {
	for _, s := range ss {
		if strings.HasSuffix(s, suffix) {
			return true
		}
	}
	return false
}

// TestVerifyHealPackS3: bit rot in a pack stored as an S3 object (on a
// real S3 server) is found, named and healed from a local replica.
func TestVerifyHealPackS3(t *testing.T) {
	ctx := context.Background()
	srv := s3server.Start(t)
	srv.CreateBucket(t, "custos")
	srv.SetEnv(t)
	be, err := location.Create(ctx, srv.URL("custos", "primary"), location.Options{})
	if err != nil {
		t.Fatal(err)
	}
	r, err := Init(ctx, be, InitOptions{Password: []byte("s3 password"), kdfParams: cheapKDF, PackSize: format.MinPackSize})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = r.Close() })
	dir := t.TempDir()
	writeRandomFiles(t, dir, "s", 3, 200<<10, 42)
	sn := backupDir(t, r, dir, "s3data")
	replica, _ := newSmallPackRepo(t, "other")
	if _, err := Copy(ctx, r, replica, []*Snapshot{sn}, nil); err != nil {
		t.Fatal(err)
	}
	node, err := findNode(ctx, r, sn.Tree, "s-01.bin")
	if err != nil {
		t.Fatal(err)
	}
	pack, pb, _ := r.index().Lookup(format.DataHandle(node.Content[0]))
	// versitygw's posix backend keeps each object as a file.
	obj := filepath.Join(srv.Dir, "custos", "primary", filepath.FromSlash(packPath(pack)))
	b, err := os.ReadFile(obj)
	if err != nil {
		t.Fatal(err)
	}
	b[int64(pb.Offset)+int64(pb.Length)/2] ^= 0xff
	if err := os.WriteFile(obj, b, 0o644); err != nil {
		t.Fatal(err)
	}
	vs, err := r.VerifyPacks(ctx, []ID{pack})
	if err != nil {
		t.Fatal(err)
	}
	if vs[0].OK || !containsSuffix(vs[0].Paths, ":s-01.bin") {
		t.Fatalf("verdict: %+v", vs[0])
	}
	res, err := r.HealPack(ctx, pack, []*Repository{replica})
	if err != nil || res.FromReplica == 0 {
		t.Fatalf("heal: %+v %v", res, err)
	}
	packs, err := r.Packs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var ids []ID
	for _, p := range packs {
		ids = append(ids, p.ID)
	}
	vs, err = r.VerifyPacks(ctx, ids)
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range vs {
		if !v.OK || v.Pack == pack {
			t.Fatalf("after heal: %+v", v)
		}
	}
	restoreCompare(t, r, sn, dir)
}

// TestCopyCancel: a copy whose context ends stops with the context's
// error and leaves the destination without the snapshot it was copying.
func TestCopyCancel(t *testing.T) {
	src, _ := newSmallPackRepo(t, "pw")
	dst, _ := newSmallPackRepo(t, "pw2")
	dir := t.TempDir()
	writeTreeOfFiles(t, dir, 3, 3, 300<<10, 5)
	sn := backupDir(t, src, dir, "a")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	_, err := Copy(ctx, src, dst, []*Snapshot{sn}, func(Progress) { cancel() })
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled copy: %v", err)
	}
	snaps, err := dst.Snapshots(context.Background())
	if err != nil || len(snaps) != 0 {
		t.Fatalf("destination after a cancelled copy: %v %v", snaps, err)
	}
}

// TestVerifyDigestsKeepsRequestsInFlight: on remote storage the deep audit
// hashes several files of several blobs at once (each of its blob reads
// waits a round trip), and still counts and judges every file.
func TestVerifyDigestsKeepsRequestsInFlight(t *testing.T) {
	ctx := context.Background()
	const conns = 4
	r, f, _ := newRecordedRepo(t, conns, 0)
	dir := t.TempDir()
	const size = 1200 << 10 // several chunks each
	writeRandomFiles(t, dir, "f", 12, size, 40)
	sn := backupDir(t, r, dir, "a")

	most := inFlightBarrier(f, 1, conns) // the root tree first
	ds, err := r.VerifyDigests(ctx, []*Snapshot{sn})
	if err != nil {
		t.Fatal(err)
	}
	if ds.Files != 12 || len(ds.Problems) != 0 || ds.Bytes != 12*size {
		t.Fatalf("deep verification: %+v", ds)
	}
	if most() < conns {
		t.Fatalf("at most %d blob reads in flight, want %d", most(), conns)
	}
}

// TestVerifyDigestsOneBlobFilesByPack: files of one blob (whose digest is
// the blob's id) are verified by reading their packs, nearby blobs with one
// request, not a request per file; a damaged one is still named.
func TestVerifyDigestsOneBlobFilesByPack(t *testing.T) {
	ctx := context.Background()
	r, f, dir := newRecordedRepo(t, 8, 0)
	src := t.TempDir()
	writeRandomFiles(t, src, "f", 40, 8<<10, 50)
	writeFile(t, filepath.Join(src, "same-as-f-03.bin"), randBytes(53, 8<<10), 0o644) // one blob, two files
	sn := backupDir(t, r, src, "a")
	packs := storedPacks(t, r)

	f.Reset()
	ds, err := r.VerifyDigests(ctx, []*Snapshot{sn})
	if err != nil || ds.Files != 41 || ds.Bytes != 41*8<<10 || len(ds.Problems) != 0 {
		t.Fatalf("deep verification: %+v %v", ds, err)
	}
	if loads := packReads(f); loads > 1+len(packs) { // the root tree, then a request per pack
		t.Errorf("%d pack reads for 41 one-blob files in %d packs", packReads(f), len(packs))
	}

	node, err := findNode(ctx, r, sn.Tree, "f-03.bin")
	if err != nil {
		t.Fatal(err)
	}
	pack, pb, _ := r.index().Lookup(format.DataHandle(node.Content[0]))
	p := filepath.Join(dir, filepath.FromSlash(packPath(pack)))
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	b[pb.Offset+20] ^= 1
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	ds, err = r.VerifyDigests(ctx, []*Snapshot{sn})
	if err != nil {
		t.Fatal(err)
	}
	var paths []string
	for _, pr := range ds.Problems {
		paths = append(paths, pr.Path)
	}
	if ds.Files != 41 || strings.Join(paths, " ") != "f-03.bin same-as-f-03.bin" {
		t.Fatalf("with f-03.bin's blob damaged: %d files, problems at %v, want both files that hold it, in walk order", ds.Files, paths)
	}
}

// TestVerifyDigestsReadsAheadInAFile: a file spread over several packs has
// a few of its runs read at once while the first is hashed, and damage in
// a run read ahead still names the file.
func TestVerifyDigestsReadsAheadInAFile(t *testing.T) {
	ctx := context.Background()
	r, f, dir := newRecordedRepo(t, 8, format.MinPackSize)
	src := t.TempDir()
	const size = 6 << 20
	writeFile(t, filepath.Join(src, "big.bin"), randBytes(60, size), 0o644)
	sn := backupDir(t, r, src, "a")
	node, err := findNode(ctx, r, sn.Tree, "big.bin")
	if err != nil {
		t.Fatal(err)
	}
	runs, err := r.fileRuns(node)
	if err != nil || len(runs) < digestWindow {
		t.Fatalf("the file is in %d runs (%v), want at least %d", len(runs), err, digestWindow)
	}

	most := inFlightBarrier(f, 1, digestWindow) // the root tree first
	ds, err := r.VerifyDigests(ctx, []*Snapshot{sn})
	if err != nil || ds.Files != 1 || ds.Bytes != size || len(ds.Problems) != 0 {
		t.Fatalf("deep verification: %+v %v", ds, err)
	}
	if most() < digestWindow {
		t.Errorf("at most %d of the file's runs read at once, want %d", most(), digestWindow)
	}
	f.Reset()

	// Damage the last run's pack: found, though that run was read ahead.
	last := runs[len(runs)-1]
	p := filepath.Join(dir, filepath.FromSlash(packPath(last.pack)))
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	b[last.entries[0].Offset+30] ^= 1
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	ds, err = r.VerifyDigests(ctx, []*Snapshot{sn})
	if err != nil || len(ds.Problems) != 1 || ds.Problems[0].Path != "big.bin" || !strings.Contains(ds.Problems[0].Err, last.pack.Short()) {
		t.Fatalf("with the last run damaged: %+v %v, want big.bin named with pack %s", ds, err, last.pack.Short())
	}
}

// inFlightBarrier holds the pack reads f sees (after the first skip) until
// n of them are in flight at once, or 2 s pass: read fewer at a time, they
// wait out the timer. most reports the most reads that were in flight.
func inFlightBarrier(f *backendtest.Faulty, skip, n int) (most func() int) {
	var (
		mu             sync.Mutex
		inFlight, peak int
		arrived        = make(chan struct{})
		released       bool
	)
	f.Add(&backendtest.Rule{Op: backendtest.OpLoad, Type: backend.PackFile, Skip: skip,
		Before: func(ctx context.Context, _ backend.Handle) error {
			mu.Lock()
			inFlight++
			peak = max(peak, inFlight)
			if inFlight == n && !released {
				released = true
				close(arrived)
			}
			mu.Unlock()
			select {
			case <-arrived:
			case <-time.After(2 * time.Second):
			case <-ctx.Done():
			}
			return nil
		},
		After: func(context.Context, backend.Handle, error) error {
			mu.Lock()
			inFlight--
			mu.Unlock()
			return nil
		},
	})
	return func() int {
		mu.Lock()
		defer mu.Unlock()
		return peak
	}
}

// packReads counts the pack reads f has recorded.
func packReads(f *backendtest.Faulty) int {
	n := 0
	for _, c := range f.Calls() {
		if c.Op == backendtest.OpLoad && c.Handle.Type == backend.PackFile {
			n++
		}
	}
	return n
}
