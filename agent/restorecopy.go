package agent

import (
	"context"
	"errors"
	"fmt"

	"github.com/custos-backup/custos/metadata"
	"github.com/custos-backup/custos/repository"
)

// restoreCopy chooses the copy of a dataset version to restore from: the
// repository named by req.Repository, else the dataset's own repository,
// and when that cannot be opened, lacks a snapshot or holds it incomplete
// (a tree that does not verify, a blob no longer indexed), each replica
// that holds a verified copy (replica records), in turn. It returns the
// repository with the snapshots loaded from it, cross-checked with the
// record.
func (m *Manager) restoreCopy(ctx context.Context, rc *RuntimeContext, req RestoreRequest, b *metadata.Backup, d *metadata.Dataset) (*repository.Repository, []*repository.Snapshot, error) {
	name := d.Source + "/" + d.Name
	ids := SnapshotIDs(d)
	if req.Repository == "" || req.Repository == d.Repository {
		repo, snaps, err := m.loadCopy(ctx, rc, d.Repository, ids, name, b)
		if err == nil || req.Repository != "" {
			return repo, snaps, err
		}
		errs := []error{err}
		replicas, rerr := m.replicaCopies(ctx, ids)
		if rerr != nil {
			return nil, nil, errors.Join(err, fmt.Errorf("looking for replicas: %w", rerr))
		}
		for _, r := range replicas {
			repo, snaps, rerr := m.loadCopy(ctx, rc, r.repo, r.ids, name, b)
			if rerr == nil {
				m.log.Warn("restoring from a replica: the primary copy cannot be used", "dataset", name, "backup", b.ID, "primary", d.Repository, "replica", r.repo, "error", err)
				return repo, snaps, nil
			}
			errs = append(errs, rerr)
		}
		return nil, nil, errors.Join(errs...)
	}
	replicas, err := m.replicaCopies(ctx, ids)
	if err != nil {
		return nil, nil, fmt.Errorf("dataset %s: looking for replicas: %w", name, err)
	}
	for _, r := range replicas {
		if r.repo == req.Repository {
			return m.loadCopy(ctx, rc, r.repo, r.ids, name, b)
		}
	}
	return nil, nil, fmt.Errorf("dataset %s in backup %s: repository %s holds no verified copy of it (the catalog has no replica record)", name, b.ID, req.Repository)
}

type replicaCopy struct {
	repo string
	ids  []string // snapshot ids in that repository, in the order of the primary's
}

// replicaCopies lists the repositories holding a verified copy of every
// one of the snapshots ids.
func (m *Manager) replicaCopies(ctx context.Context, ids []string) ([]replicaCopy, error) {
	held, err := m.HeldIn(ctx)
	if err != nil {
		return nil, err
	}
	byRepo := map[string][]string{}
	var order []string
	for _, id := range ids {
		for _, rec := range held[id] {
			if !rec.Verified {
				continue
			}
			if _, ok := byRepo[rec.Repository]; !ok {
				order = append(order, rec.Repository)
			}
			byRepo[rec.Repository] = append(byRepo[rec.Repository], rec.SnapshotID)
		}
	}
	var out []replicaCopy
	for _, r := range order {
		if len(byRepo[r]) == len(ids) {
			out = append(out, replicaCopy{repo: r, ids: byRepo[r]})
		}
	}
	return out, nil
}

// loadCopy opens one repository and loads, cross-checks and checks for
// completeness the snapshots ids of dataset name.
func (m *Manager) loadCopy(ctx context.Context, rc *RuntimeContext, repoName string, ids []string, name string, b *metadata.Backup) (*repository.Repository, []*repository.Snapshot, error) {
	repoSpec := rc.Config.Repository(repoName)
	if repoSpec == nil {
		return nil, nil, fmt.Errorf("dataset %s: it is stored in repository %q, which this configuration does not define", name, repoName)
	}
	repo, err := m.repos.Get(ctx, repoSpec)
	if err != nil {
		return nil, nil, fmt.Errorf("dataset %s: %w", name, err)
	}
	_ = repo.Refresh(ctx)
	var snaps []*repository.Snapshot
	for _, s := range ids {
		id, err := repository.ParseID(s)
		if err != nil {
			return nil, nil, fmt.Errorf("dataset %s in backup %s: bad snapshot id %q in the catalog: %w", name, b.ID, s, err)
		}
		snap, err := repo.LoadSnapshot(ctx, id)
		if err != nil {
			return nil, nil, fmt.Errorf("dataset %s in backup %s: snapshot %s in repository %s: %w", name, b.ID, id.Short(), repoSpec.Name, err)
		}
		if err := crossCheck(snap, name, b); err != nil {
			return nil, nil, fmt.Errorf("dataset %s in backup %s: snapshot %s in repository %s %w; refusing to restore it (run custos sync to rebuild the catalog from the repository)", name, b.ID, id.Short(), repoSpec.Name, err)
		}
		if err := repo.VerifyHeld(ctx, id); err != nil {
			return nil, nil, fmt.Errorf("dataset %s in backup %s: repository %s: %w", name, b.ID, repoSpec.Name, err)
		}
		snaps = append(snaps, snap)
	}
	return repo, snaps, nil
}
