package repository

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/custos-backup/custos/repository/backend"
	"github.com/custos-backup/custos/repository/backend/local"
	"github.com/custos-backup/custos/repository/format"
)

// newSmallPackRepo creates a repository with the smallest pack size, so
// that a few MiB of data spread over many packs.
func newSmallPackRepo(t testing.TB, password string) (*Repository, string) {
	t.Helper()
	be, dir := newBackend(t)
	opts := InitOptions{Password: []byte(password), kdfParams: cheapKDF, PackSize: format.MinPackSize}
	if password == "" {
		opts.Unencrypted = true
	}
	r, err := Init(context.Background(), be, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = r.Close() })
	return r, dir
}

// reopen opens the repository in dir again, as another process would.
func reopen(t testing.TB, dir, password string) *Repository {
	t.Helper()
	be, err := local.Open(context.Background(), dir)
	if err != nil {
		t.Fatal(err)
	}
	r, err := Open(context.Background(), be, []byte(password))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = r.Close() })
	return r
}

// writeRandomFiles writes n files of size bytes each, named prefix-NN.bin,
// with content determined by seed.
func writeRandomFiles(t testing.TB, dir, prefix string, n, size int, seed uint64) {
	t.Helper()
	for i := range n {
		writeFile(t, filepath.Join(dir, fmt.Sprintf("%s-%02d.bin", prefix, i)), randBytes(seed+uint64(i), size), 0o644)
	}
}

func backupDir(t testing.TB, r *Repository, dir, dataset string) *Snapshot {
	t.Helper()
	sn, err := r.Backup(context.Background(), dir, nil, BackupOptions{Dataset: dataset, Host: "test"})
	if err != nil {
		t.Fatal(err)
	}
	return sn
}

// storedPacks lists the packs in the backend with their sizes.
func storedPacks(t testing.TB, r *Repository) map[ID]int64 {
	t.Helper()
	out := map[ID]int64{}
	err := r.be.List(context.Background(), backend.PackFile, func(fi backend.FileInfo) error {
		id, err := ParseID(fi.Name)
		if err != nil {
			return err
		}
		out[id] = fi.Size
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func mustCheckClean(t testing.TB, r *Repository, readData bool) *CheckResult {
	t.Helper()
	res, err := r.Check(context.Background(), CheckOptions{ReadData: readData})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Problems) > 0 {
		t.Fatalf("check found problems in an intact repository: %+v", res.Problems)
	}
	return res
}

func TestCheckClean(t *testing.T) {
	for _, unencrypted := range []bool{false, true} {
		t.Run(fmt.Sprintf("unencrypted=%v", unencrypted), func(t *testing.T) {
			pw := "pw"
			if unencrypted {
				pw = ""
			}
			r, _ := newSmallPackRepo(t, pw)
			src := t.TempDir()
			writeRandomFiles(t, src, "r", 4, 700<<10, 1)
			writeFile(t, filepath.Join(src, "sub", "text.log"), []byte(strings.Repeat("compressible log line\n", 50000)), 0o644)
			backupDir(t, r, src, "a")
			writeRandomFiles(t, src, "s", 2, 300<<10, 50)
			backupDir(t, r, src, "a")

			res := mustCheckClean(t, r, false)
			if res.PacksChecked != 0 || res.BytesRead != 0 {
				t.Errorf("structure check read data: %+v", res)
			}
			res = mustCheckClean(t, r, true)
			packs := storedPacks(t, r)
			var total int64
			for _, n := range packs {
				total += n
			}
			if res.PacksChecked != len(packs) || res.BytesRead != total {
				t.Errorf("read-data check read %d packs / %d bytes, repository has %d / %d", res.PacksChecked, res.BytesRead, len(packs), total)
			}
			if res.Cursor != "" {
				t.Errorf("complete pass returned cursor %q", res.Cursor)
			}
		})
	}
}

func TestCheckBudgetCursor(t *testing.T) {
	ctx := context.Background()
	r, _ := newSmallPackRepo(t, "pw")
	src := t.TempDir()
	writeRandomFiles(t, src, "r", 10, 600<<10, 7)
	backupDir(t, r, src, "a")
	packs := storedPacks(t, r)
	if len(packs) < 4 {
		t.Fatalf("want several packs for this test, got %d", len(packs))
	}
	const budget = 1500 << 10
	var (
		cursor string
		calls  int
		read   int64
		seen   int
		prev   string
	)
	for {
		res, err := r.Check(ctx, CheckOptions{ReadData: true, Budget: budget, Cursor: cursor})
		if err != nil {
			t.Fatal(err)
		}
		if len(res.Problems) > 0 {
			t.Fatalf("problems: %+v", res.Problems)
		}
		calls++
		if res.PacksChecked == 0 {
			t.Fatal("a budgeted call made no progress")
		}
		if res.PacksChecked > 1 && res.BytesRead > budget {
			t.Errorf("call read %d bytes in %d packs, budget %d", res.BytesRead, res.PacksChecked, budget)
		}
		if res.Cursor != "" && res.Cursor <= prev {
			t.Errorf("cursor went from %s to %s", prev, res.Cursor)
		}
		read += res.BytesRead
		seen += res.PacksChecked
		if res.Cursor == "" {
			break
		}
		prev, cursor = res.Cursor, res.Cursor
		if calls > len(packs) {
			t.Fatal("cursor never reached the end")
		}
	}
	var total int64
	for _, n := range packs {
		total += n
	}
	if calls < 2 || seen != len(packs) || read != total {
		t.Errorf("%d calls read %d packs / %d bytes; repository has %d / %d", calls, seen, read, len(packs), total)
	}
	if _, err := r.Check(ctx, CheckOptions{ReadData: true, Cursor: "not-a-cursor"}); err == nil {
		t.Error("a malformed cursor was accepted")
	}
}

// TestCheckGarbage plants hostile objects and expects each to be named,
// without a panic.
func TestCheckGarbage(t *testing.T) {
	ctx := context.Background()
	r, dir := newSmallPackRepo(t, "pw")
	src := t.TempDir()
	writeRandomFiles(t, src, "r", 2, 200<<10, 3)
	backupDir(t, r, src, "a")

	put := func(typ backend.FileType, name string, b []byte) string {
		h := backend.Handle{Type: typ, Name: name}
		p := filepath.Join(dir, h.Path())
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		return h.Path()
	}
	var want []string
	for i, g := range [][]byte{{}, {1, 2, 3}, randBytes(99, 100), randBytes(98, 70000)} {
		want = append(want, put(backend.PackFile, format.HashID(g).String(), g))                   // hash matches, content is junk
		want = append(want, put(backend.SnapshotFile, format.HashID(g).String(), g))               // junk snapshot
		want = append(want, put(backend.IndexFile, format.HashID(append(g, byte(i))).String(), g)) // name does not match
	}
	want = append(want, put(backend.SnapshotFile, "not-an-id", []byte("x")))
	junk := randBytes(97, 5000)
	want = append(want, put(backend.PackFile, ID{0xaa}.String(), junk)) // name does not match content

	res, err := r.Check(ctx, CheckOptions{ReadData: true})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, p := range res.Problems {
		got = append(got, p.Object)
	}
	for _, w := range slices.Compact(slices.Sorted(slices.Values(want))) {
		if !slices.Contains(got, w) {
			t.Errorf("garbage object %s not reported; problems: %v", w, got)
		}
	}
}

// TestCheckUnindexedPacks: the structure check reports a pack that no index
// file lists once it is past prune's grace period (prune would delete it),
// and leaves a younger one alone (it may belong to a running backup).
func TestCheckUnindexedPacks(t *testing.T) {
	ctx := context.Background()
	now := time.Now()
	// lostIndex removes the index file of a second backup and returns the
	// packs it listed.
	lostIndex := func(t *testing.T, r *Repository) []ID {
		src := t.TempDir()
		writeRandomFiles(t, src, "lost", 2, 300<<10, 40)
		before := indexIDs(t, r)
		backupDir(t, r, src, "lost")
		var packs []ID
		for _, id := range indexIDs(t, r) {
			if slices.Contains(before, id) {
				continue
			}
			f, err := r.loadIndexFile(ctx, id)
			if err != nil {
				t.Fatal(err)
			}
			for _, p := range f.Packs {
				packs = append(packs, p.ID)
			}
			if err := r.be.Remove(ctx, backend.Handle{Type: backend.IndexFile, Name: id.String()}); err != nil {
				t.Fatal(err)
			}
		}
		if len(packs) == 0 {
			t.Fatal("the backup wrote no index file")
		}
		return packs
	}
	tests := []struct {
		name string
		// setup returns the unindexed packs it made.
		setup        func(t *testing.T, r *Repository) []ID
		at           time.Time // when check runs
		wantReported bool
		wantErr      string // in the problem's message
	}{
		{"crash leftover past the grace period", func(t *testing.T, r *Repository) []ID {
			return []ID{savePack(t, r, now.Add(-pruneGrace-time.Hour), 10)}
		}, now, true, "the next prune deletes it"},
		{"crash leftover within the grace period", func(t *testing.T, r *Repository) []ID {
			return []ID{savePack(t, r, now.Add(-10*time.Minute), 11)}
		}, now, false, ""},
		{"packs of a lost index file, just written", lostIndex, now, false, ""},
		{"packs of a lost index file, three hours later", lostIndex, now.Add(3 * time.Hour), true, "the next prune deletes it"},
		{"packs of a damaged index file, three hours later", func(t *testing.T, r *Repository) []ID {
			packs := lostIndex(t, r)
			// Put a damaged index file in place of the lost one.
			junk := randBytes(41, 500)
			if err := saveBytes(ctx, r.be, backend.Handle{Type: backend.IndexFile, Name: format.HashID(junk).String()}, junk); err != nil {
				t.Fatal(err)
			}
			return packs
		}, now.Add(3 * time.Hour), true, "a damaged index file may list it"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r, _ := newSmallPackRepo(t, "pw")
			src := t.TempDir()
			writeRandomFiles(t, src, "r", 2, 300<<10, 1)
			backupDir(t, r, src, "a")
			packs := tc.setup(t, r)
			res, err := r.check(ctx, CheckOptions{}, tc.at)
			if err != nil {
				t.Fatal(err)
			}
			for _, pack := range packs {
				var p *Problem
				for i := range res.Problems {
					if res.Problems[i].Object == packPath(pack) {
						p = &res.Problems[i]
					}
				}
				switch {
				case !tc.wantReported && p != nil:
					t.Errorf("unindexed pack within the grace period reported: %+v", *p)
				case tc.wantReported && p == nil:
					t.Errorf("unindexed pack %s not reported; problems %+v", packPath(pack), res.Problems)
				case tc.wantReported && (p.Kind != ProblemUnindexedPack || !strings.Contains(p.Err, tc.wantErr)):
					t.Errorf("problem %+v: want kind %q and a message saying %q", *p, ProblemUnindexedPack, tc.wantErr)
				}
			}
			for _, p := range res.Problems {
				if p.Kind == ProblemUnindexedPack && !slices.Contains(packs, mustParseID(t, filepath.Base(p.Object))) {
					t.Errorf("indexed pack reported as unindexed: %+v", p)
				}
			}
		})
	}
	// Prune agrees with check: it deletes the reported pack and keeps the
	// young one, after which check is clean.
	t.Run("prune deletes what check reported", func(t *testing.T) {
		r, _ := newSmallPackRepo(t, "pw")
		src := t.TempDir()
		writeRandomFiles(t, src, "r", 2, 300<<10, 1)
		backupDir(t, r, src, "a")
		old := savePack(t, r, now.Add(-pruneGrace-time.Hour), 10)
		young := savePack(t, r, now.Add(-10*time.Minute), 11)
		res, err := r.Check(ctx, CheckOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if len(res.Problems) != 1 || res.Problems[0].Object != packPath(old) {
			t.Fatalf("problems %+v, want only %s", res.Problems, packPath(old))
		}
		if _, err := r.Prune(ctx, PruneOptions{}); err != nil {
			t.Fatal(err)
		}
		stored := storedPacks(t, r)
		if _, ok := stored[old]; ok {
			t.Error("prune kept the pack check reported")
		}
		if _, ok := stored[young]; !ok {
			t.Error("prune deleted the young pack")
		}
		mustCheckClean(t, r, true)
	})
}

func mustParseID(t testing.TB, s string) ID {
	t.Helper()
	id, err := ParseID(s)
	if err != nil {
		t.Fatal(err)
	}
	return id
}
