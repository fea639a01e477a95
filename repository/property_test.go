package repository

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/custos-backup/custos/repository/backend"
	"github.com/custos-backup/custos/repository/backend/local"
	"github.com/custos-backup/custos/repository/format"
)

// genTree writes a random tree below root: directories (some empty) and
// files that are empty, random, copies of other files, or the encoding of
// an empty directory's tree. It returns the contents it wrote, so that a
// later step can reuse them.
func genTree(t *testing.T, rng *rand.Rand, root string) {
	t.Helper()
	var contents [][]byte
	dirs := []string{root}
	names := []string{"a", "b", "c", "dir", "x y", "ü", "0", "z.bin", "-", "..."}
	for i := range 6 + rng.IntN(14) {
		parent := dirs[rng.IntN(len(dirs))]
		name := fmt.Sprintf("%s%d", names[rng.IntN(len(names))], i)
		p := filepath.Join(parent, name)
		switch k := rng.IntN(10); {
		case k < 3:
			if err := os.MkdirAll(p, 0o755); err != nil {
				t.Fatal(err)
			}
			dirs = append(dirs, p)
			continue
		case k < 4:
			writeFile(t, p, nil, 0o644)
		case k < 5:
			writeFile(t, p, emptyTree, 0o644)
		case k < 6 && len(contents) > 0:
			writeFile(t, p, contents[rng.IntN(len(contents))], 0o644)
		default:
			size := 1 + rng.IntN(4<<10)
			if rng.IntN(5) == 0 {
				size = 200<<10 + rng.IntN(500<<10) // several chunks at times
			}
			data := randBytes(rng.Uint64(), size)
			contents = append(contents, data)
			writeFile(t, p, data, 0o644)
		}
	}
}

// treeBlobs returns the encoding of every tree blob below root.
func treeBlobs(t *testing.T, r *Repository, root ID) [][]byte {
	t.Helper()
	ctx := context.Background()
	out := [][]byte{}
	var visit func(id ID)
	visit = func(id ID) {
		b, err := r.loadBlob(ctx, TreeBlob, id, nil)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, slices.Clone(b))
		tr, err := format.DecodeTree(b)
		if err != nil {
			t.Fatal(err)
		}
		for _, n := range tr.Nodes {
			if n.Type == format.NodeDir {
				visit(n.Subtree)
			}
		}
	}
	visit(root)
	return out
}

// namedObjects returns the blob and tree ids a restore error names.
func namedObjects(err error) []ID {
	var out []ID
	var walk func(error)
	walk = func(err error) {
		if err == nil {
			return
		}
		var be *BlobError
		var te *TreeError
		switch {
		case errors.As(err, &te) && te == err:
			out = append(out, te.Tree)
		case errors.As(err, &be) && be == err:
			out = append(out, be.Blob)
		}
		switch u := err.(type) {
		case interface{ Unwrap() []error }:
			for _, e := range u.Unwrap() {
				walk(e)
			}
		case interface{ Unwrap() error }:
			walk(u.Unwrap())
		}
	}
	walk(err)
	return out
}

// damage is what the property test may do to a repository after backing
// up: nothing, drop one index entry, or flip a byte of one stored blob.
type damage int

const (
	noDamage damage = iota
	dropEntry
	flipBlob
)

// TestPropertyCheckAgreesWithRestore backs up generated trees twice, the
// second time with files whose bytes are the tree blobs of the first (so
// data and tree blobs share ids), sometimes damages the repository, and
// then holds check --read-data against a full restore: when check passes,
// the restore is byte-exact; when restore fails, check fails and names
// every object restore names.
func TestPropertyCheckAgreesWithRestore(t *testing.T) {
	const iterations = 18
	for seed := range uint64(iterations) {
		t.Run(fmt.Sprintf("seed=%d", seed), func(t *testing.T) {
			ctx := context.Background()
			rng := rand.New(rand.NewPCG(seed, 42))
			r, dir := newSmallPackRepo(t, "pw")
			src := t.TempDir()
			genTree(t, rng, src)
			first := backupDir(t, r, src, "t/p")
			// Files equal to every tree of the first backup, in a new
			// directory so that those trees stay as they are.
			for i, b := range treeBlobs(t, r, first.Tree) {
				writeFile(t, filepath.Join(src, "trees", fmt.Sprintf("t%02d", i)), b, 0o644)
			}
			sn := backupDir(t, r, src, "t/p")

			dmg := damage(seed % 3)
			if dmg != noDamage {
				damageRandomBlob(t, r, dir, rng, sn, dmg)
			}

			fresh, _, err := OpenTolerant(ctx, mustOpenBackend(t, dir), []byte("pw"))
			if err != nil {
				t.Fatal(err)
			}
			res, err := fresh.Check(ctx, CheckOptions{ReadData: true})
			if err != nil {
				t.Fatal(err)
			}
			target := t.TempDir()
			_, rerr := fresh.Restore(ctx, sn, target, RestoreOptions{})
			if len(res.Problems) == 0 {
				if rerr != nil {
					t.Fatalf("check passed, restore failed: %v", rerr)
				}
				compareTrees(t, src, target)
			}
			if rerr != nil {
				if len(res.Problems) == 0 {
					t.Fatalf("restore failed but check passed: %v", rerr)
				}
				named := namedObjects(rerr)
				if len(named) == 0 {
					t.Fatalf("restore error names no blob or tree: %v", rerr)
				}
				var reported []string
				for _, p := range res.Problems {
					reported = append(reported, p.Blobs...)
				}
				for _, id := range named {
					if !slices.Contains(reported, id.String()) {
						t.Errorf("restore names %s, which check does not report: %v; check: %+v", id.Short(), rerr, res.Problems)
					}
				}
			}
			if dmg != noDamage && len(res.Problems) == 0 {
				t.Errorf("damage %d went unnoticed by check", dmg)
			}
		})
	}
}

func mustOpenBackend(t *testing.T, dir string) backend.Backend {
	t.Helper()
	be, err := local.Open(context.Background(), dir)
	if err != nil {
		t.Fatal(err)
	}
	return be
}

// damageRandomBlob drops the index entry of, or flips a byte in, one blob
// that sn references (a data blob or a tree blob, chosen by rng).
func damageRandomBlob(t *testing.T, r *Repository, dir string, rng *rand.Rand, sn *Snapshot, d damage) {
	t.Helper()
	ctx := context.Background()
	var refs []BlobHandle
	refs = append(refs, format.TreeHandle(sn.Tree))
	err := r.walkTree(ctx, sn.Tree, func(_ string, n *format.Node) error {
		switch n.Type {
		case format.NodeDir:
			refs = append(refs, format.TreeHandle(n.Subtree))
		case format.NodeFile:
			for _, c := range n.Content {
				refs = append(refs, format.DataHandle(c))
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	h := refs[rng.IntN(len(refs))]
	switch d {
	case dropEntry:
		dropIndexEntry(t, r, h)
	case flipBlob:
		pack, pb, ok := r.index().Lookup(h)
		if !ok {
			t.Fatalf("%s not indexed", h)
		}
		p := filepath.Join(dir, packPath(pack))
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		b[int64(pb.Offset)+int64(pb.Length)/2] ^= 0x40
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// TestBlobReadComparesSHA256: an index entry, validly sealed, that points
// a blob's id at another blob of the same size must make restore and check
// fail naming the blob, and must never restore the other blob's bytes.
// Encryption alone does not tie content to id; only the SHA-256 comparison
// when a blob is read does.
func TestBlobReadComparesSHA256(t *testing.T) {
	ctx := context.Background()
	r, dir := newSmallPackRepo(t, "pw")
	src := t.TempDir()
	wantA, other := randBytes(1, 3000), randBytes(2, 3000) // incompressible, same sealed size
	writeFile(t, filepath.Join(src, "a"), wantA, 0o644)
	writeFile(t, filepath.Join(src, "b"), other, 0o644)
	sn := backupDir(t, r, src, "t/sha")
	a, b := format.DataHandle(format.HashID(wantA)), format.DataHandle(format.HashID(other))
	bPack, bEntry, ok := r.index().Lookup(b)
	if !ok {
		t.Fatal("b not indexed")
	}

	// A new index file, superseding the old, in which a's entry is b's
	// location under a's id.
	f := &format.IndexFile{}
	var old []ID
	err := r.forEachIndexFile(ctx, false, func(id ID, in *format.IndexFile) error {
		old = append(old, id)
		for _, p := range in.Packs {
			p.Blobs = slices.DeleteFunc(slices.Clone(p.Blobs), func(pb format.PackedBlob) bool { return pb.Handle() == a })
			if p.ID == bPack {
				forged := bEntry
				forged.ID = a.ID
				p.Blobs = append(p.Blobs, forged)
				slices.SortFunc(p.Blobs, func(x, y format.PackedBlob) int { return int(x.Offset) - int(y.Offset) })
			}
			f.Packs = append(f.Packs, p)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	f.Supersedes = old
	if _, err := r.saveIndexFile(ctx, f); err != nil {
		t.Fatal(err)
	}
	forged := reopen(t, dir, "pw")
	if p, _, _ := forged.index().Lookup(a); p != bPack {
		t.Fatal("test setup: the forged entry is not what the index uses")
	}

	target := t.TempDir()
	_, err = forged.Restore(ctx, sn, target, RestoreOptions{})
	// Restore reads a pack's blobs in one pass by offset; with two entries
	// at one offset it may stop at the second one short of bytes (EOF)
	// before any hash is compared, so only the failure naming a is
	// certain here. RestoreFile and check below read a's entry alone.
	if !slices.Contains(namedObjects(err), a.ID) {
		t.Errorf("restore through a forged entry: %v, want an error naming %s", err, a.ID.Short())
	}
	if got, _ := os.ReadFile(filepath.Join(target, "a")); bytes.Equal(got, other) {
		t.Error("restore wrote the other blob's bytes as a")
	}
	var buf bytes.Buffer
	err = forged.RestoreFile(ctx, sn, "a", &buf)
	if !slices.Contains(namedObjects(err), a.ID) || !strings.Contains(err.Error(), "SHA-256") {
		t.Errorf("RestoreFile through a forged entry: %v, want an error naming %s and its SHA-256", err, a.ID.Short())
	}
	if bytes.Contains(buf.Bytes(), other) {
		t.Error("RestoreFile wrote the other blob's bytes")
	}
	res, err := forged.Check(ctx, CheckOptions{ReadData: true})
	if err != nil {
		t.Fatal(err)
	}
	p := findProblem(t, res, packPath(bPack))
	if !slices.Contains(p.Blobs, a.ID.String()) || !strings.Contains(p.Err, "SHA-256") {
		t.Errorf("check does not name blob %s and its SHA-256 mismatch: %+v", a.ID.Short(), p)
	}
	if slices.Contains(p.Blobs, b.ID.String()) {
		t.Errorf("check blames blob %s, which is intact: %+v", b.ID.Short(), p)
	}
}

// TestSealNonceFresh: sealing the same plaintext twice, by every sealing
// path, gives different bytes. A fixed nonce would repeat them (and with
// GCM, reveal the XOR of plaintexts and allow forgeries).
func TestSealNonceFresh(t *testing.T) {
	r, _ := newTestRepo(t, false)
	plain := []byte("the same plaintext, sealed twice")
	if a, b := r.seal.Seal(nil, plain), r.seal.Seal(nil, plain); bytes.Equal(a, b) || bytes.Equal(a[:format.NonceSize], b[:format.NonceSize]) {
		t.Error("seal repeated its nonce")
	}
	inPlace := func() []byte {
		buf := make([]byte, format.NonceSize+len(plain), format.NonceSize+len(plain)+format.TagSize)
		copy(buf[format.NonceSize:], plain)
		return r.seal.SealInPlace(buf)
	}
	if a, b := inPlace(), inPlace(); bytes.Equal(a, b) || bytes.Equal(a[:format.NonceSize], b[:format.NonceSize]) {
		t.Error("sealInPlace repeated its nonce")
	}
	// Through the repository: two index files with the same content are
	// different objects, and one blob backed up twice with one key is
	// stored as different bytes.
	ctx := context.Background()
	f := &format.IndexFile{}
	i1, err1 := r.saveIndexFile(ctx, f)
	i2, err2 := r.saveIndexFile(ctx, f)
	if err := errors.Join(err1, err2); err != nil {
		t.Fatal(err)
	}
	if i1 == i2 {
		t.Error("two index files with the same content were sealed to the same bytes")
	}
	src := t.TempDir()
	writeFile(t, filepath.Join(src, "f"), plain, 0o644)
	backupDir(t, r, src, "t/n1")
	other, _ := newTestRepo(t, false)
	other.seal = r.seal // same key
	backupDir(t, other, src, "t/n1")
	stored := func(r *Repository) []byte {
		pack, pb, ok := r.index().Lookup(format.DataHandle(format.HashID(plain)))
		if !ok {
			t.Fatal("blob not indexed")
		}
		b, err := loadRange(ctx, r.be, backend.Handle{Type: backend.PackFile, Name: pack.String()}, int64(pb.Offset), int(pb.Length))
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	if bytes.Equal(stored(r), stored(other)) {
		t.Error("the same blob sealed twice with the same key gave the same bytes")
	}
}
