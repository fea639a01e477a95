package repository

import (
	"context"
	"testing"
)

func TestStats(t *testing.T) {
	ctx := context.Background()
	r, _ := newSmallPackRepo(t, "pw")
	src := t.TempDir()
	writeRandomFiles(t, src, "f", 3, 200<<10, 1)
	backupDir(t, r, src, "a")
	backupDir(t, r, src, "a") // same data: no new blobs
	st, err := r.Stats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	packs := storedPacks(t, r)
	var stored int64
	for _, n := range packs {
		stored += n
	}
	// 3 file blobs and one root tree (both snapshots share it).
	if st.Snapshots != 2 || st.Blobs != 4 || st.Packs != len(packs) || st.PackBytes != stored {
		t.Errorf("stats %+v; repository has 2 snapshots, 4 blobs, %d packs of %d bytes", st, len(packs), stored)
	}
	if st.LogicalBytes != 2*3*200<<10 {
		t.Errorf("logical bytes %d, want %d", st.LogicalBytes, 2*3*200<<10)
	}
}
