package repository

import (
	"context"
	"errors"
	"strings"
	"testing"
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
	node, err := f.r.findNode(ctx, f.snapA.Tree, "a-01.bin")
	if err != nil {
		t.Fatal(err)
	}
	pack, pb, ok := f.r.index().lookup(dataHandle(node.Content[0]))
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
	node, err := f.r.findNode(ctx, f.snapB.Tree, "b-02.bin")
	if err != nil {
		t.Fatal(err)
	}
	pack, pb, _ := f.r.index().lookup(dataHandle(node.Content[len(node.Content)-1]))
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
