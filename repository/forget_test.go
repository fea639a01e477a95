package repository

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/custos-backup/custos/repository/backend"
	"github.com/custos-backup/custos/repository/backend/backendtest"
	"github.com/custos-backup/custos/repository/format"
)

// snapsAt builds synthetic snapshots of one group at the given UTC times
// ("2006-01-02 15:04"); ids are distinct.
func snapsAt(t *testing.T, dataset, host string, times ...string) []*Snapshot {
	t.Helper()
	var out []*Snapshot
	for i, ts := range times {
		tm, err := time.ParseInLocation("2006-01-02 15:04", ts, time.UTC)
		if err != nil {
			t.Fatal(err)
		}
		s := &Snapshot{Time: tm, Dataset: dataset, Host: host}
		s.ID = format.HashID(fmt.Appendf(nil, "%s/%s/%d/%s", dataset, host, i, ts))
		out = append(out, s)
	}
	return out
}

func timesOf(ss []*Snapshot) []string {
	out := []string{}
	for _, s := range ss {
		out = append(out, s.Dataset+"@"+s.Time.UTC().Format("2006-01-02 15:04"))
	}
	return out
}

func TestApplyPolicy(t *testing.T) {
	// One snapshot every 6 hours over 3 days, plus older ones spread over months and years.
	hist := []string{
		"2023-06-01 10:00", "2024-03-15 10:00", "2024-12-31 23:00",
		"2025-01-10 08:00", "2025-02-10 08:00", "2025-02-20 08:00",
		"2025-03-01 00:00", "2025-03-01 06:00", "2025-03-01 12:00", "2025-03-01 18:00",
		"2025-03-02 00:00", "2025-03-02 06:00", "2025-03-02 12:00", "2025-03-02 18:00",
		"2025-03-03 00:00", "2025-03-03 06:00", "2025-03-03 06:30", "2025-03-03 12:00",
	}
	tests := []struct {
		name string
		p    RetentionPolicy
		keep []string // times of kept snapshots (dataset "d")
	}{
		{"last 3", RetentionPolicy{Last: 3}, []string{"2025-03-03 06:00", "2025-03-03 06:30", "2025-03-03 12:00"}},
		{"last more than there are", RetentionPolicy{Last: 100}, hist},
		{"last unlimited", RetentionPolicy{Last: -1}, hist},
		{"hourly 3 keeps newest per hour", RetentionPolicy{Hourly: 3}, []string{"2025-03-03 00:00", "2025-03-03 06:30", "2025-03-03 12:00"}},
		{"daily 2", RetentionPolicy{Daily: 2}, []string{"2025-03-02 18:00", "2025-03-03 12:00"}},
		{"daily 4 spans months", RetentionPolicy{Daily: 4}, []string{"2025-02-20 08:00", "2025-03-01 18:00", "2025-03-02 18:00", "2025-03-03 12:00"}},
		{"weekly 2 (ISO weeks start Monday; 2025-03-03 is a Monday)", RetentionPolicy{Weekly: 2}, []string{"2025-03-02 18:00", "2025-03-03 12:00"}},
		{"monthly 3", RetentionPolicy{Monthly: 3}, []string{"2025-01-10 08:00", "2025-02-20 08:00", "2025-03-03 12:00"}},
		{"yearly 10", RetentionPolicy{Yearly: 10}, []string{"2023-06-01 10:00", "2024-12-31 23:00", "2025-03-03 12:00"}},
		{"yearly unlimited", RetentionPolicy{Yearly: -1}, []string{"2023-06-01 10:00", "2024-12-31 23:00", "2025-03-03 12:00"}},
		{"union of rules", RetentionPolicy{Last: 1, Daily: 2, Yearly: 2}, []string{"2024-12-31 23:00", "2025-03-02 18:00", "2025-03-03 12:00"}},
		{"empty policy keeps nothing", RetentionPolicy{}, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			snaps := snapsAt(t, "d", "h", hist...)
			// Shuffle the input order: the result must not depend on it.
			slices.Reverse(snaps)
			keep, remove := applyPolicy(snaps, tc.p, time.UTC)
			want := []string{}
			for _, ts := range tc.keep {
				want = append(want, "d@"+ts)
			}
			if got := timesOf(keep); !slices.Equal(got, want) {
				t.Errorf("keep = %v\nwant %v", got, want)
			}
			if len(keep)+len(remove) != len(hist) {
				t.Errorf("keep %d + remove %d != %d snapshots", len(keep), len(remove), len(hist))
			}
			for _, r := range remove {
				if slices.Contains(keep, r) {
					t.Errorf("snapshot %s both kept and removed", r.ID.Short())
				}
			}
		})
	}
}

func TestApplyPolicyGroups(t *testing.T) {
	var snaps []*Snapshot
	snaps = append(snaps, snapsAt(t, "a", "h1", "2025-01-01 00:00", "2025-01-02 00:00", "2025-01-03 00:00")...)
	snaps = append(snaps, snapsAt(t, "a", "h2", "2025-01-01 01:00", "2025-01-04 00:00")...)
	snaps = append(snaps, snapsAt(t, "b", "h1", "2024-01-01 00:00")...)
	keep, remove := applyPolicy(snaps, RetentionPolicy{Last: 1}, time.UTC)
	want := []string{"b@2024-01-01 00:00", "a@2025-01-03 00:00", "a@2025-01-04 00:00"}
	if got := timesOf(keep); !slices.Equal(got, want) {
		t.Errorf("keep = %v, want %v (newest of each dataset/host group)", got, want)
	}
	if len(remove) != 3 {
		t.Errorf("removed %d, want 3", len(remove))
	}
}

func TestApplyPolicyLocalTime(t *testing.T) {
	// 23:30 UTC and 00:30 UTC on consecutive UTC days fall on the same day in UTC-5.
	snaps := snapsAt(t, "d", "h", "2025-05-01 23:30", "2025-05-02 00:30")
	ny := time.FixedZone("UTC-5", -5*3600)
	keep, _ := applyPolicy(snaps, RetentionPolicy{Daily: 5}, ny)
	if len(keep) != 1 || keep[0] != snaps[1] {
		t.Errorf("in UTC-5 kept %v, want only the newer snapshot", timesOf(keep))
	}
	keep, _ = applyPolicy(snaps, RetentionPolicy{Daily: 5}, time.UTC)
	if len(keep) != 2 {
		t.Errorf("in UTC kept %v, want both", timesOf(keep))
	}
}

func TestForget(t *testing.T) {
	ctx := context.Background()
	r, _ := newSmallPackRepo(t, "pw")
	base := time.Date(2025, 6, 1, 12, 0, 0, 0, time.Local)
	var made []*Snapshot
	for i := range 5 {
		for _, ds := range []string{"a", "b"} {
			sn, err := r.BackupStream(ctx, "f", strings.NewReader(fmt.Sprint(ds, i)), BackupOptions{Dataset: ds, Host: "h", Time: base.AddDate(0, 0, i)})
			if err != nil {
				t.Fatal(err)
			}
			made = append(made, sn)
		}
	}
	keep, remove, err := r.Forget(ctx, RetentionPolicy{Last: 2}, true)
	if err != nil {
		t.Fatal(err)
	}
	if len(keep) != 4 || len(remove) != 6 {
		t.Fatalf("dry run: keep %d remove %d, want 4 and 6", len(keep), len(remove))
	}
	if all, _ := r.Snapshots(ctx); len(all) != 10 {
		t.Fatalf("dry run removed snapshots: %d left", len(all))
	}
	keep, remove, err = r.Forget(ctx, RetentionPolicy{Last: 2}, false)
	if err != nil {
		t.Fatal(err)
	}
	left, err := r.Snapshots(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var got []ID
	for _, s := range left {
		got = append(got, s.ID)
	}
	want := []ID{made[6].ID, made[7].ID, made[8].ID, made[9].ID}
	byHex := func(a, b ID) int { return strings.Compare(a.String(), b.String()) }
	slices.SortFunc(got, byHex)
	slices.SortFunc(want, byHex)
	if !slices.Equal(got, want) || len(keep) != 4 || len(remove) != 6 {
		t.Errorf("after forget: %d left %v, want the two newest of each dataset", len(left), got)
	}
	// The repository still checks clean (snapshot files only were removed).
	mustCheckClean(t, r, true)
}

// TestApplyPolicyKeepsBackupsWhole: a dataset stored as one snapshot per
// atom has several snapshots of one backup. keep-last 1 keeps the newest
// backup with all its atoms, not the newest snapshot of the group; a
// snapshot without a backup id still counts on its own.
func TestApplyPolicyKeepsBackupsWhole(t *testing.T) {
	var snaps []*Snapshot
	for i, b := range []string{"2025-01-01 00:00", "2025-01-02 00:00", "2025-01-03 00:00"} {
		atoms := snapsAt(t, "db/main", "h", b, b, b)
		for _, s := range atoms {
			s.BackupID = fmt.Sprintf("backup-%d", i)
		}
		snaps = append(snaps, atoms...)
	}
	loose := snapsAt(t, "db/main", "h", "2025-01-02 12:00")
	snaps = append(snaps, loose...)
	tests := []struct {
		p    RetentionPolicy
		keep []string
	}{
		{RetentionPolicy{Last: 1}, []string{"2025-01-03 00:00", "2025-01-03 00:00", "2025-01-03 00:00"}},
		{RetentionPolicy{Last: 2}, []string{"2025-01-02 12:00", "2025-01-03 00:00", "2025-01-03 00:00", "2025-01-03 00:00"}},
		{RetentionPolicy{Daily: 2}, []string{"2025-01-02 12:00", "2025-01-03 00:00", "2025-01-03 00:00", "2025-01-03 00:00"}},
		{RetentionPolicy{Last: 3}, []string{"2025-01-02 00:00", "2025-01-02 00:00", "2025-01-02 00:00", "2025-01-02 12:00", "2025-01-03 00:00", "2025-01-03 00:00", "2025-01-03 00:00"}},
	}
	for _, tc := range tests {
		keep, remove := applyPolicy(snaps, tc.p, time.UTC)
		var want []string
		for _, ts := range tc.keep {
			want = append(want, "db/main@"+ts)
		}
		if got := timesOf(keep); !slices.Equal(got, want) {
			t.Errorf("%+v: keep = %v\nwant %v", tc.p, got, want)
		}
		if len(keep)+len(remove) != len(snaps) {
			t.Errorf("%+v: keep %d + remove %d != %d", tc.p, len(keep), len(remove), len(snaps))
		}
	}
}

// failingRemover is forget's repository, failing the removal of one
// snapshot and recording the removals it lets through.
type failingRemover struct {
	snapshotRemover
	fail ID

	mu      sync.Mutex
	removed []ID
}

func (f *failingRemover) removeSnapshot(ctx context.Context, id ID) error {
	if id == f.fail {
		return fmt.Errorf("remove snapshots/%s: %w", id, errRoleFault)
	}
	if err := f.snapshotRemover.removeSnapshot(ctx, id); err != nil {
		return err
	}
	f.mu.Lock()
	f.removed = append(f.removed, id)
	f.mu.Unlock()
	return nil
}

// TestForgetThroughSnapshotRemover: a removal that fails stops forget with
// an error naming the snapshot, which stays; none of the kept ones is
// touched; the repository still checks clean (forget never goes below
// snapshot files); and forget run again removes what is left.
func TestForgetThroughSnapshotRemover(t *testing.T) {
	ctx := context.Background()
	r, _ := newSmallPackRepo(t, "pw")
	base := time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)
	for i := range 5 {
		if _, err := r.BackupStream(ctx, "f", strings.NewReader(fmt.Sprint(i)), BackupOptions{Dataset: "a", Host: "h", Time: base.AddDate(0, 0, i)}); err != nil {
			t.Fatal(err)
		}
	}
	keep, plan, err := forget(ctx, r, RetentionPolicy{Last: 1}, true, time.UTC)
	if err != nil || len(plan) != 4 || len(keep) != 1 {
		t.Fatalf("dry run: %d to keep, %d to remove, %v", len(keep), len(plan), err)
	}
	fr := &failingRemover{snapshotRemover: r, fail: plan[2].ID}
	_, _, err = forget(ctx, fr, RetentionPolicy{Last: 1}, false, time.UTC)
	if !errors.Is(err, errRoleFault) || !strings.Contains(err.Error(), plan[2].ID.String()) {
		t.Fatalf("forget with the third removal failing: %v, want the fault naming %s", err, plan[2].ID.Short())
	}
	left, err := r.Snapshots(ctx)
	if err != nil {
		t.Fatal(err)
	}
	have := map[ID]bool{}
	for _, sn := range left {
		have[sn.ID] = true
	}
	if !have[keep[0].ID] || !have[plan[2].ID] {
		t.Errorf("after the failed forget: kept snapshot there %v, failed one there %v; want both", have[keep[0].ID], have[plan[2].ID])
	}
	for _, id := range fr.removed {
		if have[id] {
			t.Errorf("snapshot %s was removed, but is still listed", id.Short())
		}
	}
	if len(left) != 5-len(fr.removed) {
		t.Errorf("%d snapshots left after %d removals of 5", len(left), len(fr.removed))
	}
	mustCheckClean(t, r, true)
	if _, removed, err := forget(ctx, r, RetentionPolicy{Last: 1}, false, time.UTC); err != nil || len(removed) != 5-1-len(fr.removed) {
		t.Fatalf("forget again: removed %d, %v", len(removed), err)
	}
	if left, err := r.Snapshots(ctx); err != nil || len(left) != 1 || left[0].ID != keep[0].ID {
		t.Fatalf("after forget again: %d snapshots, %v; want only the kept one", len(left), err)
	}
	mustCheckClean(t, r, true)
}

// TestForgetRemovesSeveralAtOnce: forget removes snapshot files several at
// a time (a repository shared by many datasets loses hundreds a day, each
// a round trip or two on S3).
func TestForgetRemovesSeveralAtOnce(t *testing.T) {
	ctx := context.Background()
	r, f := newFaultyRepo(t)
	base := time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)
	for i := range 4 {
		if _, err := r.BackupStream(ctx, "f", strings.NewReader(fmt.Sprint(i)), BackupOptions{Dataset: "a", Host: "h", Time: base.AddDate(0, 0, i)}); err != nil {
			t.Fatal(err)
		}
	}
	// The first two removals run at once.
	f.Add(&backendtest.Rule{Op: backendtest.OpRemove, Type: backend.SnapshotFile, Times: 2, Before: together(2)})
	if _, removed, err := r.Forget(ctx, RetentionPolicy{Last: 1}, false); err != nil || len(removed) != 3 {
		t.Fatalf("forget: removed %d, %v", len(removed), err)
	}
	if left, err := r.Snapshots(ctx); err != nil || len(left) != 1 {
		t.Fatalf("after forget: %d snapshots, %v", len(left), err)
	}
}
