package repository

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/custos-backup/custos/repository/backend"
	"github.com/custos-backup/custos/repository/backend/backendtest"
	"github.com/custos-backup/custos/repository/format"
)

// nestedTree writes a tree of directories fan levels deep, fan wide, with a
// small file in each directory, and returns how many directories (trees)
// it has, the root included.
func nestedTree(t *testing.T, dir string, fan, levels int) int {
	t.Helper()
	dirs := 1
	var fill func(p string, depth int)
	fill = func(p string, depth int) {
		writeFile(t, filepath.Join(p, "f"), randBytes(uint64(len(p)*7+depth), 2000+len(p)), 0o644)
		if depth == levels {
			return
		}
		for i := range fan {
			dirs++
			fill(filepath.Join(p, fmt.Sprintf("d%d", i)), depth+1)
		}
	}
	fill(dir, 0)
	return dirs
}

// packLoads counts the loads of chosen packs, and can break the body of
// one pack's load after some bytes.
type packLoads struct {
	backend.Backend
	mu     sync.Mutex
	count  map[string]bool // packs whose loads are counted; nil = all
	n      int
	breaks string // pack whose whole-object load breaks off
	after  int64
}

func (p *packLoads) Load(ctx context.Context, h backend.Handle, length int, offset int64) (io.ReadCloser, error) {
	rd, err := p.Backend.Load(ctx, h, length, offset)
	if h.Type != backend.PackFile || err != nil {
		return rd, err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.count == nil || p.count[h.Name] {
		p.n++
	}
	if h.Name == p.breaks && length == 0 && offset == 0 {
		return &brokenBody{ReadCloser: rd, left: p.after}, nil
	}
	return rd, nil
}

func (p *packLoads) loads() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.n
}

// brokenBody passes left bytes on and then fails, as a connection that
// breaks off would (after the backend's own resumes gave up).
type brokenBody struct {
	io.ReadCloser
	left int64
}

var errBrokenBody = errors.New("connection reset (injected)")

func (b *brokenBody) Read(p []byte) (int, error) {
	if b.left <= 0 {
		return 0, errBrokenBody
	}
	if int64(len(p)) > b.left {
		p = p[:b.left]
	}
	n, err := b.ReadCloser.Read(p)
	b.left -= int64(n)
	return n, err
}

// packTypes returns the packs of r's index that hold trees, and whether
// any pack holds both trees and data.
func packTypes(t *testing.T, r *Repository) (treePacks map[string]bool, mixed bool) {
	t.Helper()
	types := map[ID]map[BlobType]bool{}
	r.index().Each(func(h BlobHandle, pack ID) {
		if types[pack] == nil {
			types[pack] = map[BlobType]bool{}
		}
		types[pack][h.Type] = true
	})
	treePacks = map[string]bool{}
	for pack, ts := range types {
		if ts[TreeBlob] {
			treePacks[pack.String()] = true
		}
		mixed = mixed || len(ts) > 1
	}
	return treePacks, mixed
}

// TestTreesLoadByLevel: a backup keeps trees in packs of their own, and
// check, restore and ls-style walks then read a snapshot's trees with a
// request per level of the tree (per tree pack), not one per directory,
// which on remote storage costs a round trip each.
func TestTreesLoadByLevel(t *testing.T) {
	ctx := context.Background()
	r, _ := newTestRepo(t, false)
	src := filepath.Join(t.TempDir(), "src")
	const fan, levels = 5, 3
	dirs := nestedTree(t, src, fan, levels)
	// A second snapshot of the same data adds no tree pack.
	sn, err := r.Backup(ctx, src, nil, BackupOptions{Dataset: "d", Host: "h"})
	if err != nil {
		t.Fatal(err)
	}
	treePacks, mixed := packTypes(t, r)
	if mixed {
		t.Fatal("a pack holds both trees and data")
	}
	if len(treePacks) == 0 {
		t.Fatal("no tree pack")
	}
	// Each level of the tree is one load per tree pack at most.
	maxLoads := (levels + 1) * len(treePacks)
	if maxLoads >= dirs {
		t.Fatalf("the test tree is too small to tell: %d directories, %d loads allowed", dirs, maxLoads)
	}
	for _, op := range []string{"check", "restore"} {
		t.Run(op, func(t *testing.T) {
			pl := &packLoads{Backend: r.Backend(), count: treePacks}
			r2, err := Open(ctx, pl, testPassword)
			if err != nil {
				t.Fatal(err)
			}
			defer r2.Close()
			switch op {
			case "check":
				res, err := r2.Check(ctx, CheckOptions{})
				if err != nil || len(res.Problems) > 0 {
					t.Fatalf("check: %v %+v", err, res)
				}
			case "restore":
				target := filepath.Join(t.TempDir(), "out")
				if _, err := r2.Restore(ctx, sn, target, RestoreOptions{}); err != nil {
					t.Fatal(err)
				}
				compareTrees(t, src, target)
			}
			if n := pl.loads(); n == 0 || n > maxLoads {
				t.Errorf("%s read the %d trees with %d loads of tree packs, want 1 to %d", op, dirs, n, maxLoads)
			}
		})
	}
}

// TestRestoreIncludeBelowSharedSubtree: a subtree whose id appears at two
// depths is entered at both, so that an include below the deeper one finds
// its files although the tree was loaded (and filtered otherwise) for the
// shallower one. (Backups of
// real files do not share subtrees within a snapshot, as inodes and ctimes
// differ; a written-by-hand repository may.)
func TestRestoreIncludeBelowSharedSubtree(t *testing.T) {
	ctx := context.Background()
	r, _ := newTestRepo(t, false)
	w, err := r.beginWrite(ctx, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer w.end()
	w.start()
	data := randBytes(5, 3000)
	dataID, err := w.saver.saveCopy(DataBlob, data)
	if err != nil {
		t.Fatal(err)
	}
	node := func(name string, sub ID) format.Node {
		n := format.Node{Name: name, Type: format.NodeDir, Mode: 0o700, UID: uint32(os.Getuid()), GID: uint32(os.Getgid()), Links: 1, Subtree: sub}
		if sub.IsNull() {
			n.Type, n.Mode, n.Content, n.Size, n.Digest = format.NodeFile, 0o600, []ID{dataID}, uint64(len(data)), ID(sha256.Sum256(data))
		}
		return n
	}
	tree := func(nodes ...format.Node) ID {
		id, err := w.saver.saveCopy(TreeBlob, format.EncodeTree(&format.Tree{Nodes: nodes}))
		if err != nil {
			t.Fatal(err)
		}
		return id
	}
	sub := tree(node("file", ID{}))
	same := tree(node("other", ID{}), node("sub", sub))
	a := tree(node("same", same))
	deeper := tree(node("same", same))
	b := tree(node("deeper", deeper))
	root := tree(node("a", a), node("b", b))
	if _, err := w.commit(); err != nil {
		t.Fatal(err)
	}
	sn := &Snapshot{Tree: root, Dataset: "d", Host: "h", Time: time.Now()}
	if err := w.saveSnapshot(sn); err != nil {
		t.Fatal(err)
	}
	target := filepath.Join(t.TempDir(), "out")
	if _, err := r.Restore(ctx, sn, target, RestoreOptions{Include: []string{"a/same/other", "b/deeper/same/sub"}}); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"a/same/other", "b/deeper/same/sub/file"} {
		got, err := os.ReadFile(filepath.Join(target, p))
		if err != nil || !bytes.Equal(got, data) {
			t.Errorf("restored %s: %v, %d bytes, want %d", p, err, len(got), len(data))
		}
	}
	if _, err := os.Stat(filepath.Join(target, "a/same/sub")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("a/same/sub is not included, yet: %v", err)
	}
}

// TestCheckStreamBreaksOff: check streams packs through verification; a
// read that breaks off midway is a problem of that pack, named, with its
// blobs counted as damaged, and the other packs are checked as usual.
func TestCheckStreamBreaksOff(t *testing.T) {
	ctx := context.Background()
	r, _ := newTestRepo(t, false)
	src := filepath.Join(t.TempDir(), "src")
	writeFile(t, filepath.Join(src, "big"), randBytes(9, 6<<20), 0o644) // more than one 4 MiB pack
	if _, err := r.Backup(ctx, src, nil, BackupOptions{Dataset: "d", Host: "h"}); err != nil {
		t.Fatal(err)
	}
	packs := r.index().Packs()
	if len(packs) < 3 {
		t.Fatalf("want several packs, got %d", len(packs))
	}
	treePacks, _ := packTypes(t, r)
	var victim PackInfo
	for _, p := range packs {
		if !treePacks[p.ID.String()] && p.Size > victim.Size {
			victim = p
		}
	}
	pl := &packLoads{Backend: r.Backend(), breaks: victim.ID.String(), after: victim.Size / 2}
	r2, err := Open(ctx, pl, testPassword)
	if err != nil {
		t.Fatal(err)
	}
	defer r2.Close()
	res, err := r2.Check(ctx, CheckOptions{ReadData: true})
	if err != nil {
		t.Fatal(err)
	}
	if res.PacksChecked != len(packs) {
		t.Errorf("checked %d packs, want %d", res.PacksChecked, len(packs))
	}
	if len(res.Problems) != 1 {
		t.Fatalf("want one problem, got %+v", res.Problems)
	}
	p := res.Problems[0]
	if p.Object != packPath(victim.ID) || !strings.Contains(p.Err, "reading pack") || !strings.Contains(p.Err, errBrokenBody.Error()) {
		t.Errorf("problem %+v: want the broken pack %s named with the read error", p, packPath(victim.ID))
	}
	if len(p.Blobs) == 0 || len(p.Paths) == 0 {
		t.Errorf("problem %+v: want its blobs and the file that needs them", p)
	}
}

// unwrapper is a wrapper that exposes what it wraps, as the retry wrapper
// does, but not its methods beyond Backend's.
type unwrapper struct{ backend.Backend }

func (u unwrapper) Unwrap() backend.Backend { return u.Backend }

type withConns struct {
	backend.Backend
	n int
}

func (w withConns) Connections() int { return w.n }

// TestConnections: the requests readers keep in flight come from
// SetConnections, else from the backend (through wrappers that unwrap),
// else from the reader's own choice for a local folder.
func TestConnections(t *testing.T) {
	mem := backendtest.NewMem()
	cases := []struct {
		name string
		be   backend.Backend
		set  int
		want int
	}{
		{"local folder: the reader's own", mem, 0, 3},
		{"backend says", withConns{mem, 16}, 0, 16},
		{"through a wrapper", unwrapper{withConns{mem, 12}}, 0, 12},
		{"wrapper of a backend that says nothing", unwrapper{mem}, 0, 3},
		{"set overrides the backend", unwrapper{withConns{mem, 12}}, 5, 5},
		{"set on a local folder", mem, 7, 7},
		{"set to 0: the default again", withConns{mem, 16}, 0, 16},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := newRepository(c.be, &format.Config{}, nil)
			r.SetConnections(c.set)
			if got := r.readers(3); got != c.want {
				t.Errorf("readers = %d, want %d", got, c.want)
			}
		})
	}
}

// TestCopyReadsByPack: copy reads the source's blobs by pack, nearby ones
// with one request, not a request per blob, and the copy restores whole.
func TestCopyReadsByPack(t *testing.T) {
	ctx := context.Background()
	src, _ := newTestRepo(t, false)
	dir := filepath.Join(t.TempDir(), "src")
	nestedTree(t, dir, 4, 3) // 85 directories, a file in each
	sn, err := src.Backup(ctx, dir, nil, BackupOptions{Dataset: "d", Host: "h"})
	if err != nil {
		t.Fatal(err)
	}
	blobs, packs := src.index().Count()
	pl := &packLoads{Backend: src.Backend()}
	src2, err := Open(ctx, pl, testPassword)
	if err != nil {
		t.Fatal(err)
	}
	defer src2.Close()
	dst, _ := newTestRepo(t, false)
	if _, err := Copy(ctx, src2, dst, []*Snapshot{sn}, nil); err != nil {
		t.Fatal(err)
	}
	// Trees: a load per level and tree pack; data: a load per data pack.
	if n := pl.loads(); n == 0 || n > 4*packs+packs {
		t.Errorf("copy read %d blobs of %d packs with %d loads, want at most %d", blobs, packs, n, 5*packs)
	}
	if n := pl.loads(); n >= blobs/2 {
		t.Errorf("copy read %d blobs with %d loads: about one per blob", blobs, n)
	}
	snaps, err := dst.Snapshots(ctx)
	if err != nil || len(snaps) != 1 {
		t.Fatalf("destination snapshots: %v %v", snaps, err)
	}
	target := filepath.Join(t.TempDir(), "out")
	if _, err := dst.Restore(ctx, snaps[0], target, RestoreOptions{}); err != nil {
		t.Fatal(err)
	}
	compareTrees(t, dir, target)
}
