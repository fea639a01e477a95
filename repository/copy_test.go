package repository

import (
	"context"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"sync/atomic"
	"testing"

	"github.com/custos-backup/custos/internal/s3server"
	"github.com/custos-backup/custos/repository/backend"
	"github.com/custos-backup/custos/repository/backend/location"
	"github.com/custos-backup/custos/repository/format"
)

// writeTreeOfFiles writes dirs directories of files random files each.
func writeTreeOfFiles(t testing.TB, root string, dirs, files, size int, seed uint64) {
	t.Helper()
	for d := range dirs {
		writeRandomFiles(t, filepath.Join(root, fmt.Sprintf("d%02d", d)), "f", files, size, seed+uint64(d*1000))
	}
}

func restoreCompare(t *testing.T, r *Repository, sn *Snapshot, src string) {
	t.Helper()
	target := t.TempDir()
	if _, err := r.Restore(context.Background(), sn, target, RestoreOptions{}); err != nil {
		t.Fatal(err)
	}
	compareTrees(t, src, target)
}

func TestCopyToRepositoryWithOtherKey(t *testing.T) {
	for _, dstPW := range []string{"another password", ""} {
		t.Run(fmt.Sprintf("encrypted=%v", dstPW != ""), func(t *testing.T) {
			ctx := context.Background()
			src, _ := newSmallPackRepo(t, "pw")
			dst, dstDir := newSmallPackRepo(t, dstPW)
			if src.cfg.ChunkerSeed == dst.cfg.ChunkerSeed {
				t.Fatal("both repositories drew the same chunker seed")
			}
			dir := t.TempDir()
			writeTreeOfFiles(t, dir, 3, 3, 200<<10, 1)
			s1 := backupDir(t, src, dir, "a")
			writeRandomFiles(t, filepath.Join(dir, "d00"), "new", 2, 100<<10, 77)
			s2 := backupDir(t, src, dir, "a")

			st, err := Copy(ctx, src, dst, []*Snapshot{s1}, nil)
			if err != nil {
				t.Fatal(err)
			}
			if st.Snapshots != 1 || st.BlobsCopied == 0 || st.BytesCopied == 0 {
				t.Fatalf("first copy: %+v", st)
			}
			first := st.BlobsCopied
			st, err = Copy(ctx, src, dst, []*Snapshot{s1, s2}, nil)
			if err != nil {
				t.Fatal(err)
			}
			// s2 adds two files and changes the trees of d00 and the root.
			if st.Snapshots != 1 || st.BlobsCopied != 4 {
				t.Errorf("incremental copy: %+v, want 1 snapshot and 4 blobs", st)
			}
			// Copying again is a no-op.
			st, err = Copy(ctx, src, dst, []*Snapshot{s1, s2}, nil)
			if err != nil {
				t.Fatal(err)
			}
			if st.Snapshots != 0 || st.BlobsCopied != 0 {
				t.Errorf("repeated copy sent %+v", st)
			}
			if first < 9 {
				t.Errorf("first copy sent only %d blobs", first)
			}

			dst2 := reopen(t, dstDir, dstPW)
			mustCheckClean(t, dst2, true)
			snaps, err := dst2.Snapshots(ctx)
			if err != nil || len(snaps) != 2 {
				t.Fatalf("destination snapshots: %d, %v", len(snaps), err)
			}
			if snaps[1].Parent == nil || *snaps[1].Parent != snaps[0].ID {
				t.Errorf("copied snapshot's parent is not the copied parent")
			}
			if snaps[1].Tree != s2.Tree || snaps[1].Dataset != "a" || !snaps[1].Time.Equal(s2.Time) {
				t.Errorf("copied snapshot differs: %+v", snaps[1])
			}
			restoreCompare(t, dst2, snaps[1], dir)
		})
	}
}

// cancelAfterPacks wraps a real backend and cancels a context once it has
// stored a number of packs, to interrupt a copy midway.
type cancelAfterPacks struct {
	backend.Backend
	saved  atomic.Int64
	limit  int64
	cancel context.CancelFunc
}

func (c *cancelAfterPacks) Save(ctx context.Context, h backend.Handle, rd io.ReadSeeker, size int64) error {
	err := c.Backend.Save(ctx, h, rd, size)
	if h.Type == backend.PackFile && c.saved.Add(1) == c.limit {
		c.cancel()
	}
	return err
}

func TestCopyResumesAfterInterruption(t *testing.T) {
	ctx := context.Background()
	src, _ := newSmallPackRepo(t, "pw")
	dir := t.TempDir()
	writeTreeOfFiles(t, dir, 10, 3, 300<<10, 5)
	sn := backupDir(t, src, dir, "a")
	total, _ := src.index().Count()

	be, dstDir := newBackend(t)
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	wrapped := &cancelAfterPacks{Backend: be, limit: 6, cancel: cancel}
	dst, err := Init(ctx, wrapped, InitOptions{Password: []byte("other"), kdfParams: cheapKDF, PackSize: format.MinPackSize})
	if err != nil {
		t.Fatal(err)
	}
	st1, err := copySnapshots(cctx, src, dst, []*Snapshot{sn}, nil, copyConfig{commitEvery: 1 << 20})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("interrupted copy: err %v, want context.Canceled", err)
	}
	if st1.BlobsCopied == 0 {
		t.Fatal("nothing was committed before the interruption; the test proves nothing")
	}

	// A new process resumes.
	dst2 := reopen(t, dstDir, "other")
	mustCheckClean(t, dst2, true) // unindexed packs from the interruption are fine
	st2, err := Copy(ctx, src, dst2, []*Snapshot{sn}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if st2.BlobsCopied >= int64(total) {
		t.Errorf("resumed copy sent %d blobs of %d: nothing was reused", st2.BlobsCopied, total)
	}
	if st1.BlobsCopied+st2.BlobsCopied != int64(total) {
		t.Errorf("the two runs sent %d + %d blobs, source has %d", st1.BlobsCopied, st2.BlobsCopied, total)
	}
	mustCheckClean(t, dst2, true)
	snaps, err := dst2.Snapshots(ctx)
	if err != nil || len(snaps) != 1 {
		t.Fatalf("destination snapshots: %v %v", snaps, err)
	}
	restoreCompare(t, dst2, snaps[0], dir)
}

func TestCopyLocalToS3(t *testing.T) {
	ctx := context.Background()
	srv := s3server.Start(t)
	srv.CreateBucket(t, "custos")
	srv.SetEnv(t)
	be, err := location.Create(ctx, srv.URL("custos", "replica"), location.Options{})
	if err != nil {
		t.Fatal(err)
	}
	dst, err := Init(ctx, be, InitOptions{Password: []byte("s3 password"), kdfParams: cheapKDF, PackSize: format.MinPackSize})
	if err != nil {
		t.Fatal(err)
	}
	src, _ := newSmallPackRepo(t, "pw")
	dir := t.TempDir()
	writeTreeOfFiles(t, dir, 2, 3, 400<<10, 9)
	sn := backupDir(t, src, dir, "a")
	var calls int
	st, err := Copy(ctx, src, dst, []*Snapshot{sn}, func(Progress) { calls++ })
	if err != nil {
		t.Fatal(err)
	}
	if st.Snapshots != 1 || calls == 0 {
		t.Errorf("copy stats %+v, %d progress calls", st, calls)
	}
	be2, err := location.Open(ctx, srv.URL("custos", "replica"), location.Options{})
	if err != nil {
		t.Fatal(err)
	}
	dst2, err := Open(ctx, be2, []byte("s3 password"))
	if err != nil {
		t.Fatal(err)
	}
	mustCheckClean(t, dst2, true)
	snaps, err := dst2.Snapshots(ctx)
	if err != nil || len(snaps) != 1 {
		t.Fatalf("snapshots on S3: %v %v", snaps, err)
	}
	restoreCompare(t, dst2, snaps[0], dir)
}
