package repository

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/custos-backup/custos/repository/backend"
)

// RetentionPolicy says which snapshots Forget keeps in each (dataset, host)
// group. Last keeps the Last newest snapshots; each other field keeps the
// newest snapshot of each of the latest N hours, days, ISO weeks, months or
// years (local time) that have a snapshot. A snapshot is kept if any rule
// keeps it. A negative count means no limit; zero disables the rule.
type RetentionPolicy struct{ Last, Hourly, Daily, Weekly, Monthly, Yearly int }

// bucketRule maps a snapshot time to the period it falls in.
type bucketRule struct {
	count  int
	bucket func(time.Time) int
}

func (p RetentionPolicy) rules() []bucketRule {
	return []bucketRule{
		{p.Hourly, func(t time.Time) int { y, m, d := t.Date(); return ((y*100+int(m))*100+d)*100 + t.Hour() }},
		{p.Daily, func(t time.Time) int { y, m, d := t.Date(); return (y*100+int(m))*100 + d }},
		{p.Weekly, func(t time.Time) int { y, w := t.ISOWeek(); return y*100 + w }},
		{p.Monthly, func(t time.Time) int { y, m, _ := t.Date(); return y*100 + int(m) }},
		{p.Yearly, func(t time.Time) int { return t.Year() }},
	}
}

type groupKey struct{ dataset, host string }

// unit is what a retention policy keeps or removes as a whole: one
// snapshot, or every snapshot of one backup of a dataset (a dataset stored
// as one snapshot per atom, all with the backup's id and time), so that a
// policy never keeps part of a backup.
type unit struct {
	snaps []*Snapshot
	time  time.Time // the newest of its snapshots
	id    ID        // the smallest id, to order units of one time
}

func unitsOf(g []*Snapshot) []*unit {
	var out []*unit
	byBackup := map[string]*unit{}
	for _, s := range g {
		u := byBackup[s.BackupID]
		if u == nil || s.BackupID == "" {
			u = &unit{time: s.Time, id: s.ID}
			out = append(out, u)
			if s.BackupID != "" {
				byBackup[s.BackupID] = u
			}
		}
		u.snaps = append(u.snaps, s)
		if s.Time.After(u.time) {
			u.time = s.Time
		}
		if slices.Compare(s.ID[:], u.id[:]) < 0 {
			u.id = s.ID
		}
	}
	return out
}

// applyPolicy splits snaps into those p keeps and those it removes, with the
// semantics of restic's forget: within each (dataset, host) group, newest
// first, keep-last keeps the first Last; a period rule keeps a snapshot when
// it is the newest of a period not yet seen by that rule, until the rule has
// kept its count. The snapshots of one backup (same backup id) count as
// one, kept or removed together. Both results are ordered oldest first;
// times are bucketed in loc.
func applyPolicy(snaps []*Snapshot, p RetentionPolicy, loc *time.Location) (keep, remove []*Snapshot) {
	groups := map[groupKey][]*Snapshot{}
	for _, s := range snaps {
		k := groupKey{s.Dataset, s.Host}
		groups[k] = append(groups[k], s)
	}
	kept := map[*Snapshot]bool{}
	for _, g := range groups {
		units := unitsOf(g)
		// Newest first; ties broken by id so the result does not depend on input order.
		slices.SortStableFunc(units, func(a, b *unit) int {
			if c := b.time.Compare(a.time); c != 0 {
				return c
			}
			return slices.Compare(a.id[:], b.id[:])
		})
		rules := p.rules()
		last := make([]int, len(rules))
		left := make([]int, len(rules))
		for i, r := range rules {
			last[i] = -1
			left[i] = r.count
		}
		for n, u := range units {
			k := p.Last < 0 || n < p.Last
			t := u.time.In(loc)
			for i, r := range rules {
				if left[i] == 0 {
					continue
				}
				if b := r.bucket(t); b != last[i] {
					last[i] = b
					if left[i] > 0 {
						left[i]--
					}
					k = true
				}
			}
			if k {
				for _, s := range u.snaps {
					kept[s] = true
				}
			}
		}
	}
	for _, s := range snaps {
		if kept[s] {
			keep = append(keep, s)
		} else {
			remove = append(remove, s)
		}
	}
	order := func(a, b *Snapshot) int {
		if c := a.Time.Compare(b.Time); c != 0 {
			return c
		}
		return slices.Compare(a.ID[:], b.ID[:])
	}
	slices.SortStableFunc(keep, order)
	slices.SortStableFunc(remove, order)
	return keep, remove
}

// snapshotRemover is what forget reads and changes of a repository: its
// lock, its snapshots, the removal of one snapshot file, and how many
// requests its storage keeps in flight (Repository).
type snapshotRemover interface {
	Lock(ctx context.Context, exclusive bool) (*Lock, error)
	Snapshots(ctx context.Context) ([]*Snapshot, error)
	removeSnapshot(ctx context.Context, id ID) error
	readers(local int) int
}

// Forget applies p to every snapshot, grouped by (Dataset, Host), the
// snapshots of one backup counting as one, and removes the snapshot files
// of those it does not keep (unless dryRun). Buckets use local time. Only
// snapshot files are removed; Prune frees the data. Forget holds a shared
// lock: removing a snapshot never removes data a running backup needs, so
// it need not wait for backups, while prune's exclusive lock keeps the two
// apart. Damaged snapshot files are neither kept nor removed, only logged:
// the policy is applied to the readable snapshots (a damaged one cannot be
// restored, so it does not count towards keeping), and the damaged files
// stay for repair. Prune refuses to run while they exist.
func (r *Repository) Forget(ctx context.Context, p RetentionPolicy, dryRun bool) (keep, remove []*Snapshot, err error) {
	return forget(ctx, r, p, dryRun, time.Local)
}

// forget is Forget through its roles. It removes several snapshot files
// at once: a repository shared by many datasets loses one snapshot (or
// one per atom) of each every day, and on S3 each removal is a round trip
// or two. A removal that fails stops it with an error naming that
// snapshot: the removals already started finish, none starts after it,
// and forget run again removes the rest.
func forget(ctx context.Context, s snapshotRemover, p RetentionPolicy, dryRun bool, loc *time.Location) (keep, remove []*Snapshot, err error) {
	if !dryRun {
		lock, err := s.Lock(ctx, false)
		if err != nil {
			return nil, nil, fmt.Errorf("forget: %w", err)
		}
		defer func() { _ = lock.Unlock(context.WithoutCancel(ctx)) }()
	}
	snaps, err := s.Snapshots(ctx)
	if err != nil {
		return nil, nil, fmt.Errorf("forget: %w", err)
	}
	keep, remove = applyPolicy(snaps, p, loc)
	if dryRun {
		return keep, remove, nil
	}
	err = removeEach(ctx, len(remove), s.readers(4), func(ctx context.Context, i int) error {
		return s.removeSnapshot(ctx, remove[i].ID)
	})
	if err != nil {
		return keep, remove, fmt.Errorf("forget: %w", err)
	}
	return keep, remove, nil
}

// RemoveSnapshots removes the snapshot files of ids, under a shared lock as
// Forget does; prune frees their data later. A writer uses it to take back
// the snapshots of a unit that failed as a whole (the atoms of a dataset
// that were stored before another atom failed). Missing files are no error.
func (r *Repository) RemoveSnapshots(ctx context.Context, ids ...ID) error {
	lock, err := r.Lock(ctx, false)
	if err != nil {
		return fmt.Errorf("remove snapshots: %w", err)
	}
	defer func() { _ = lock.Unlock(context.WithoutCancel(ctx)) }()
	err = removeEach(ctx, len(ids), r.readers(4), func(ctx context.Context, i int) error {
		return r.removeSnapshot(ctx, ids[i])
	})
	if err != nil {
		return fmt.Errorf("remove snapshots: %w", err)
	}
	return nil
}

// removeSnapshot removes one snapshot file; a missing one is no error.
func (r *Repository) removeSnapshot(ctx context.Context, id ID) error {
	h := backend.Handle{Type: backend.SnapshotFile, Name: id.String()}
	if err := r.be.Remove(ctx, h); err != nil && !errors.Is(err, backend.ErrNotExist) {
		return fmt.Errorf("remove %s: %w", h, err)
	}
	return nil
}
