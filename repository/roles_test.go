package repository

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/custos-backup/custos/repository/backend"
	"github.com/custos-backup/custos/repository/format"
)

// The tests here hand an operation a real repository wrapped in one of the
// roles it reads or writes through, to count what passes or to fail it.

// errRoleFault is the failure the role wrappers inject.
var errRoleFault = errors.New("connection reset (injected through a role)")

// loadFault is what a faultyLoader does to the loads it fails.
type loadFault int

const (
	faultError loadFault = iota // the load fails
	faultShort                  // the body ends halfway
	faultFlip                   // a byte in the middle of the body is flipped
)

func (f loadFault) String() string {
	return [...]string{"load fails", "body ends early", "byte flipped"}[f]
}

// faultyLoader wraps a real backend's loads: a load of the object named
// name suffers fault; every other load passes through.
type faultyLoader struct {
	packLoader
	name  string
	fault loadFault
	hits  *atomic.Int64 // loads of name
}

func (l faultyLoader) Load(ctx context.Context, h backend.Handle, length int, offset int64) (io.ReadCloser, error) {
	if h.Name != l.name {
		return l.packLoader.Load(ctx, h, length, offset)
	}
	l.hits.Add(1)
	if l.fault == faultError {
		return nil, fmt.Errorf("load %s: %w", h, errRoleFault)
	}
	rd, err := l.packLoader.Load(ctx, h, length, offset)
	if err != nil {
		return nil, err
	}
	b, err := io.ReadAll(rd)
	_ = rd.Close()
	if err != nil {
		return nil, err
	}
	switch l.fault {
	case faultShort:
		b = b[:len(b)/2]
	case faultFlip:
		b[len(b)/2] ^= 0x01
	}
	return io.NopCloser(bytes.NewReader(b)), nil
}

// faultyReads is a restore or copy source whose pack readers load through
// a faultyLoader.
type faultyReads struct {
	restoreSource
	loader faultyLoader
}

func (f faultyReads) newPackReader(keepSealed bool) *packReader {
	pr := f.restoreSource.newPackReader(keepSealed)
	l := f.loader
	l.packLoader = pr.be
	pr.be = l
	return pr
}

// packOf returns the pack holding h, failing the test if none does.
func packOf(t *testing.T, r *Repository, h BlobHandle) ID {
	t.Helper()
	pack, _, ok := r.lookupBlob(h)
	if !ok {
		t.Fatalf("%s not in the index", h)
	}
	return pack
}

// filesIn returns the slash paths of the regular files below dir.
func filesIn(t *testing.T, dir string) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		out = append(out, filepath.ToSlash(rel))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// TestRestoreThroughFaultyPackSource restores through a pack source whose
// reads of one data pack fail in several ways: the restore must name a
// blob of that pack, the pack and only files that need it, and write every
// other file byte-exact.
func TestRestoreThroughFaultyPackSource(t *testing.T) {
	ctx := context.Background()
	r, _ := newSmallPackRepo(t, "pw")
	src := t.TempDir()
	writeTreeOfFiles(t, src, 3, 3, 300<<10, 11)
	writeFile(t, filepath.Join(src, "empty"), nil, 0o600)
	sn := backupDir(t, r, src, "d")

	// The pack of the first file's first blob fails; the files that need
	// a blob of it are the ones that may fail.
	files := filesIn(t, src)
	first, err := findNode(ctx, r, sn.Tree, "d00/f-00.bin")
	if err != nil {
		t.Fatal(err)
	}
	victim := packOf(t, r, format.DataHandle(first.Content[0]))
	needs := map[string]bool{}
	for _, f := range files {
		n, err := findNode(ctx, r, sn.Tree, f)
		if err != nil {
			t.Fatal(err)
		}
		for _, id := range n.Content {
			needs[f] = needs[f] || packOf(t, r, format.DataHandle(id)) == victim
		}
	}
	if n := countTrue(needs); n == 0 || n == len(files) {
		t.Fatalf("%d of %d files need the victim pack; the test proves nothing", n, len(files))
	}
	inVictim := map[ID]bool{}
	r.index().Each(func(h BlobHandle, pack ID) {
		if pack == victim {
			inVictim[h.ID] = true
		}
	})

	for _, tc := range []struct {
		fault  loadFault
		wantIs error // nil: a verification failure, no sentinel
		allOf  bool  // every file that needs the pack fails
	}{
		{faultError, errRoleFault, true},
		{faultShort, io.ErrUnexpectedEOF, false},
		{faultFlip, nil, false},
	} {
		t.Run(tc.fault.String(), func(t *testing.T) {
			var hits atomic.Int64
			rs := faultyReads{restoreSource: r, loader: faultyLoader{name: victim.String(), fault: tc.fault, hits: &hits}}
			target := t.TempDir()
			root, err := os.OpenRoot(target)
			if err != nil {
				t.Fatal(err)
			}
			defer func() { _ = root.Close() }()
			st, err := restoreRoot(ctx, rs, sn, root, RestoreOptions{})
			if err == nil {
				t.Fatalf("restore through a failing pack source succeeded (%d loads of the pack)", hits.Load())
			}
			var be *BlobError
			if !errors.As(err, &be) || be.Pack != victim || !inVictim[be.Blob] {
				t.Fatalf("error %v does not carry a blob of pack %s", err, victim.Short())
			}
			if tc.wantIs != nil && !errors.Is(err, tc.wantIs) {
				t.Errorf("error %v does not wrap %v", err, tc.wantIs)
			}
			msg := err.Error()
			for _, want := range []string{be.Blob.String(), victim.String()} {
				if !strings.Contains(msg, want) {
					t.Errorf("error does not name %s: %v", want, err)
				}
			}
			failed := 0
			for _, f := range files {
				named := strings.Contains(msg, fmt.Sprintf("%q", f))
				want, _ := os.ReadFile(filepath.Join(src, f))
				got, gerr := os.ReadFile(filepath.Join(target, f))
				switch {
				case named && !needs[f]:
					t.Errorf("file %s needs nothing of the pack but is reported: %v", f, err)
				case named:
					failed++
				case tc.allOf && needs[f]:
					t.Errorf("file %s needs the failing pack but is not reported", f)
				case gerr != nil || !bytes.Equal(got, want):
					t.Errorf("file %s is not reported and not restored byte-exact (err %v)", f, gerr)
				}
			}
			if failed == 0 {
				t.Errorf("no file is reported: %v", err)
			}
			if st == nil || st.Files != int64(len(files)-failed) {
				t.Errorf("stats %+v, want %d files restored", st, len(files)-failed)
			}
		})
	}
}

// blobCounter is RestoreFile's source with its blob loads counted and,
// from the load of blob fail on, failed.
type blobCounter struct {
	fileSource
	fail  ID
	mu    sync.Mutex
	loads []ID
}

func (b *blobCounter) loadBlob(ctx context.Context, t BlobType, id ID, buf []byte) ([]byte, error) {
	b.mu.Lock()
	b.loads = append(b.loads, id)
	b.mu.Unlock()
	if id == b.fail {
		return nil, &BlobError{Blob: id, Type: t, Err: errRoleFault}
	}
	return b.fileSource.loadBlob(ctx, t, id, buf)
}

// TestRestoreFileThroughBlobLoader streams one file through a blob loader
// that fails at one blob: the writer must get exactly the bytes before
// it, the error must name the file and the blob, and the loads must not
// run far ahead of the writer.
func TestRestoreFileThroughBlobLoader(t *testing.T) {
	ctx := context.Background()
	r, _ := newSmallPackRepo(t, "pw")
	src := t.TempDir()
	data := randBytes(5, 5<<20)
	writeFile(t, filepath.Join(src, "big.bin"), data, 0o600)
	sn := backupDir(t, r, src, "d")
	n, err := findNode(ctx, r, sn.Tree, "big.bin")
	if err != nil {
		t.Fatal(err)
	}
	if len(n.Content) < 4 {
		t.Fatalf("file has %d blobs; the test needs more", len(n.Content))
	}
	const ahead = 4 // RestoreFile's read-ahead
	for _, tc := range []struct {
		name   string
		failAt int // index into the content; -1 for none
	}{
		{"no failure", -1},
		{"first blob", 0},
		{"middle blob", len(n.Content) / 2},
		{"last blob", len(n.Content) - 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			bc := &blobCounter{fileSource: r}
			var prefix int
			if tc.failAt >= 0 {
				bc.fail = n.Content[tc.failAt]
				for _, id := range n.Content[:tc.failAt] {
					_, pb, _ := r.lookupBlob(format.DataHandle(id))
					prefix += int(pb.RawLength)
				}
			}
			var out bytes.Buffer
			err := restoreFileFrom(ctx, bc, sn, "big.bin", &out)
			bc.mu.Lock()
			loads := slices.Clone(bc.loads)
			bc.mu.Unlock()
			if tc.failAt < 0 {
				if err != nil || !bytes.Equal(out.Bytes(), data) {
					t.Fatalf("restore: err %v, %d of %d bytes right", err, out.Len(), len(data))
				}
				if len(loads) != len(n.Content) {
					t.Errorf("%d blob loads for %d blobs", len(loads), len(n.Content))
				}
				return
			}
			if !errors.Is(err, errRoleFault) || !strings.Contains(err.Error(), `"big.bin"`) || !strings.Contains(err.Error(), bc.fail.String()) {
				t.Fatalf("error %v, want the injected failure naming the file and blob %s", err, bc.fail.Short())
			}
			if !bytes.Equal(out.Bytes(), data[:prefix]) {
				t.Errorf("writer got %d bytes, want exactly the %d before the failing blob", out.Len(), prefix)
			}
			if len(loads) > tc.failAt+1+ahead {
				t.Errorf("%d blob loads for a failure at blob %d: the read-ahead ran past %d", len(loads), tc.failAt, ahead)
			}
		})
	}
}

// countingDest is the copier's destination with the blobs handed to its
// saver counted by handle.
type countingDest struct {
	copyDest
	mu    sync.Mutex
	saved map[BlobHandle]int
}

func (d *countingDest) saveVerified(t BlobType, id ID, data []byte) error {
	d.mu.Lock()
	d.saved[BlobHandle{Type: t, ID: id}]++
	d.mu.Unlock()
	return d.copyDest.saveVerified(t, id, data)
}

// snapshotBlobs returns every blob sn references, trees included.
func snapshotBlobs(t *testing.T, r *Repository, sn *Snapshot) map[BlobHandle]bool {
	t.Helper()
	out := map[BlobHandle]bool{format.TreeHandle(sn.Tree): true}
	err := r.walkTree(context.Background(), sn.Tree, func(_ string, n *format.Node) error {
		switch n.Type {
		case format.NodeDir:
			out[format.TreeHandle(n.Subtree)] = true
		case format.NodeFile:
			for _, id := range n.Content {
				out[format.DataHandle(id)] = true
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// TestCopyThroughRoles copies through a destination that counts what its
// saver receives, and through a source whose reads of one pack fail.
func TestCopyThroughRoles(t *testing.T) {
	ctx := context.Background()
	src, _ := newSmallPackRepo(t, "pw")
	dir := t.TempDir()
	writeTreeOfFiles(t, dir, 3, 2, 200<<10, 21)
	// The same content twice within a snapshot, and in another directory.
	dup := randBytes(99, 300<<10)
	writeFile(t, filepath.Join(dir, "d00", "dup1"), dup, 0o600)
	writeFile(t, filepath.Join(dir, "d01", "dup2"), dup, 0o600)
	s1 := backupDir(t, src, dir, "a")
	writeRandomFiles(t, filepath.Join(dir, "d02"), "new", 2, 150<<10, 77)
	s2 := backupDir(t, src, dir, "a")
	b1, b2 := snapshotBlobs(t, src, s1), snapshotBlobs(t, src, s2)

	// The pack of a blob only s2 has fails in the failing case.
	var only2 BlobHandle
	for h := range b2 {
		if h.Type == DataBlob && !b1[h] {
			only2 = h
		}
	}
	victim := packOf(t, src, only2)

	for _, tc := range []struct {
		name    string
		before  []*Snapshot // copied first, unwrapped
		copy    []*Snapshot
		fail    bool // the source's reads of victim fail
		want    map[BlobHandle]bool
		wantErr bool
	}{
		{name: "into an empty destination", copy: []*Snapshot{s1, s2}, want: union(b1, b2)},
		{name: "after the parent", before: []*Snapshot{s1}, copy: []*Snapshot{s1, s2}, want: minus(b2, b1)},
		{name: "again", before: []*Snapshot{s1, s2}, copy: []*Snapshot{s1, s2}, want: map[BlobHandle]bool{}},
		{name: "source pack fails", before: []*Snapshot{s1}, copy: []*Snapshot{s2}, fail: true, wantErr: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dst, _ := newSmallPackRepo(t, "other")
			if len(tc.before) > 0 {
				if _, err := Copy(ctx, src, dst, tc.before, nil); err != nil {
					t.Fatal(err)
				}
			}
			var hits atomic.Int64
			dest := &countingDest{saved: map[BlobHandle]int{}}
			cfg := copyConfig{commitEvery: 1 << 20, wrapDest: func(d copyDest) copyDest { dest.copyDest = d; return dest }}
			if tc.fail {
				cfg.wrapSource = func(s copySource) copySource {
					return faultyReads{restoreSource: s, loader: faultyLoader{name: victim.String(), fault: faultError, hits: &hits}}
				}
			}
			st, err := copySnapshots(ctx, src, dst, tc.copy, nil, cfg)
			if tc.wantErr {
				var be *BlobError
				if !errors.Is(err, errRoleFault) || !errors.As(err, &be) || be.Pack != victim || !b2[BlobHandle{Type: be.Type, ID: be.Blob}] {
					t.Fatalf("copy through a failing source: %v, want the injected failure naming a blob of pack %s", err, victim.Short())
				}
				if snaps, err := dst.Snapshots(ctx); err != nil || len(snaps) != len(tc.before) {
					t.Errorf("destination holds %d snapshots (err %v), want only the %d copied before", len(snaps), err, len(tc.before))
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			for h, n := range dest.saved {
				if n != 1 || !tc.want[h] {
					t.Errorf("%s saved %d times, want it saved %v", h, n, tc.want[h])
				}
			}
			for h := range tc.want {
				if dest.saved[h] == 0 {
					t.Errorf("%s, which the destination lacked, was not saved", h)
				}
			}
			if st.BlobsCopied != int64(len(tc.want)) {
				t.Errorf("stats say %d blobs copied, want %d", st.BlobsCopied, len(tc.want))
			}
			mustCheckClean(t, dst, true)
		})
	}
}

func countTrue(m map[string]bool) int {
	n := 0
	for _, v := range m {
		if v {
			n++
		}
	}
	return n
}

func union(a, b map[BlobHandle]bool) map[BlobHandle]bool {
	out := map[BlobHandle]bool{}
	for h := range a {
		out[h] = true
	}
	for h := range b {
		out[h] = true
	}
	return out
}

func minus(a, b map[BlobHandle]bool) map[BlobHandle]bool {
	out := map[BlobHandle]bool{}
	for h := range a {
		if !b[h] {
			out[h] = true
		}
	}
	return out
}

// faultyOpener is check's opener of keyed objects with the opening of one
// index file or snapshot failed.
type faultyOpener struct {
	objectOpener
	fail ID
}

func (o faultyOpener) openIndexFile(id ID, b []byte) (*format.IndexFile, error) {
	if id == o.fail {
		return nil, fmt.Errorf("open index %s: %w", id.Short(), errRoleFault)
	}
	return o.objectOpener.openIndexFile(id, b)
}

func (o faultyOpener) openSnapshot(id ID, b []byte) (*Snapshot, error) {
	if id == o.fail {
		return nil, fmt.Errorf("open snapshot %s: %w", id.Short(), errRoleFault)
	}
	return o.objectOpener.openSnapshot(id, b)
}

// faultyPackSource is check's pack source with its readers' loads of one
// object failed.
type faultyPackSource struct {
	packSource
	loader faultyLoader
}

func (f faultyPackSource) newPackReader(keepSealed bool) *packReader {
	pr := f.packSource.newPackReader(keepSealed)
	l := f.loader
	l.packLoader = pr.be
	pr.be = l
	return pr
}

// faultyBackend is check's backend with the loads of one object failed.
type faultyBackend struct {
	checkBackend
	loader faultyLoader
}

func (b faultyBackend) Load(ctx context.Context, h backend.Handle, length int, offset int64) (io.ReadCloser, error) {
	return b.loader.Load(ctx, h, length, offset)
}

// TestCheckThroughFaultyRoles fails one object through each role check
// reads with: check must report that object by its path, with the cause,
// and name the snapshot that depends on it.
func TestCheckThroughFaultyRoles(t *testing.T) {
	ctx := context.Background()
	r, _ := newSmallPackRepo(t, "pw")
	dir := t.TempDir()
	writeTreeOfFiles(t, dir, 2, 2, 300<<10, 31)
	sn := backupDir(t, r, dir, "a")
	mustCheckClean(t, r, true)

	node, err := findNode(ctx, r, sn.Tree, "d01/f-01.bin")
	if err != nil {
		t.Fatal(err)
	}
	dataPack := packOf(t, r, format.DataHandle(node.Content[0]))
	treePack := packOf(t, r, format.TreeHandle(sn.Tree))
	idx, err := r.listIDs(ctx, backend.IndexFile, nil)
	if err != nil || len(idx) == 0 {
		t.Fatalf("index files: %v, %v", idx, err)
	}
	path := func(t backend.FileType, id ID) string { return backend.Handle{Type: t, Name: id.String()}.Path() }

	for _, tc := range []struct {
		name     string
		readData bool
		wrap     func(s checkSource, hits *atomic.Int64) checkSource
		object   string // the problem's object
		cause    string // in the problem's message
		snapshot bool   // the problem names sn
	}{
		{
			name: "index file through the opener",
			wrap: func(s checkSource, _ *atomic.Int64) checkSource {
				s.objectOpener = faultyOpener{objectOpener: s.objectOpener, fail: idx[0]}
				return s
			},
			object: path(backend.IndexFile, idx[0]), cause: errRoleFault.Error(),
		},
		{
			name: "snapshot through the opener",
			wrap: func(s checkSource, _ *atomic.Int64) checkSource {
				s.objectOpener = faultyOpener{objectOpener: s.objectOpener, fail: sn.ID}
				return s
			},
			object: path(backend.SnapshotFile, sn.ID), cause: errRoleFault.Error(), snapshot: true,
		},
		{
			name: "tree pack through the pack source",
			wrap: func(s checkSource, hits *atomic.Int64) checkSource {
				s.packSource = faultyPackSource{packSource: s.packSource, loader: faultyLoader{name: treePack.String(), fault: faultError, hits: hits}}
				return s
			},
			object: path(backend.PackFile, treePack), cause: errRoleFault.Error(), snapshot: true,
		},
		{
			name: "data pack through the backend", readData: true,
			wrap: func(s checkSource, hits *atomic.Int64) checkSource {
				s.be = faultyBackend{checkBackend: s.be, loader: faultyLoader{packLoader: s.be, name: dataPack.String(), fault: faultError, hits: hits}}
				return s
			},
			object: path(backend.PackFile, dataPack), cause: errRoleFault.Error(), snapshot: true,
		},
		{
			name: "data pack flipped through the backend", readData: true,
			wrap: func(s checkSource, hits *atomic.Int64) checkSource {
				s.be = faultyBackend{checkBackend: s.be, loader: faultyLoader{packLoader: s.be, name: dataPack.String(), fault: faultFlip, hits: hits}}
				return s
			},
			object: path(backend.PackFile, dataPack), cause: "does not match its name", snapshot: true,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var hits atomic.Int64
			res, err := checkFrom(ctx, tc.wrap(r.checkSource(), &hits), r.log, CheckOptions{ReadData: tc.readData}, time.Now())
			if err != nil {
				t.Fatal(err)
			}
			var p *Problem
			for i := range res.Problems {
				if res.Problems[i].Object == tc.object {
					p = &res.Problems[i]
				}
			}
			if p == nil {
				t.Fatalf("no problem names %s (%d loads through the wrapper): %+v", tc.object, hits.Load(), res.Problems)
			}
			if !strings.Contains(p.Err, tc.cause) {
				t.Errorf("problem %q does not carry the cause %q", p.Err, tc.cause)
			}
			if tc.snapshot && !slices.Contains(p.Snapshots, sn.ID.String()) {
				t.Errorf("problem %+v does not name snapshot %s", p, sn.ID.Short())
			}
		})
	}
	// The wrappers failed only what they were told to: unwrapped, the
	// repository is still clean.
	mustCheckClean(t, r, true)
}

// levelCounter is prune's tree loader, counting its calls and failing the
// load of one tree.
type levelCounter struct {
	treeLoader
	calls int
	fail  ID
}

func (l *levelCounter) loadTrees(ctx context.Context, ids []ID, keepRaw bool) (map[ID]loadedTree, error) {
	l.calls++
	out, err := l.treeLoader.loadTrees(ctx, ids, keepRaw)
	if _, ok := out[l.fail]; ok {
		out[l.fail] = loadedTree{err: fmt.Errorf("load tree %s: %w", l.fail, errRoleFault)}
	}
	return out, err
}

// TestPruneUsedBlobsThroughTreeLoader: prune finds what snapshots use with
// one tree load per level of the deepest snapshot (not one per directory),
// finds exactly what a walk of each snapshot finds, and a tree that fails
// to load stops it, naming the snapshot.
func TestPruneUsedBlobsThroughTreeLoader(t *testing.T) {
	ctx := context.Background()
	r, _ := newTestRepo(t, false)
	dir := t.TempDir()
	writeTreeOfFiles(t, dir, 3, 2, 20<<10, 5) // root/dNN/files: two levels of trees
	s1 := backupDir(t, r, dir, "a")
	deep := filepath.Join(dir, "x", "y", "z")
	writeRandomFiles(t, deep, "f", 2, 10<<10, 6) // four levels now
	s2 := backupDir(t, r, dir, "b")
	want := union(snapshotBlobs(t, r, s1), snapshotBlobs(t, r, s2))

	var zTree ID
	if err := r.walkTree(ctx, s2.Tree, func(p string, n *format.Node) error {
		if p == "x/y/z" {
			zTree = n.Subtree
		}
		return nil
	}); err != nil || zTree == (ID{}) {
		t.Fatalf("no tree for x/y/z in the second snapshot: %v", err)
	}

	for _, tc := range []struct {
		name      string
		fail      ID
		wantCalls int
	}{
		{name: "clean", wantCalls: 4}, // the roots; x and the dNN; y; z
		{name: "a deep tree fails", fail: zTree},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := &levelCounter{treeLoader: r, fail: tc.fail}
			used, err := usedBlobs(ctx, l, []*Snapshot{s1, s2})
			if tc.fail != (ID{}) {
				if !errors.Is(err, errRoleFault) || !strings.Contains(err.Error(), s2.ID.Short()) {
					t.Fatalf("usedBlobs with tree %s failing: %v, want the fault naming snapshot %s", tc.fail.Short(), err, s2.ID.Short())
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if l.calls != tc.wantCalls {
				t.Errorf("%d tree loads, want %d (one per level)", l.calls, tc.wantCalls)
			}
			if len(used) != len(want) {
				t.Errorf("%d blobs used, want %d", len(used), len(want))
			}
			for h := range want {
				if !used[h] {
					t.Errorf("%s is referenced but not counted as used", h)
				}
			}
		})
	}
}
