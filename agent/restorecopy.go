package agent

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/custos-backup/custos/metadata"
	"github.com/custos-backup/custos/repository"
)

// restoreFrom is the copy of a dataset version a restore reads.
type restoreFrom struct {
	name  string // repository
	repo  *repository.Repository
	snaps []*repository.Snapshot
	// why is set when this is a replica because the dataset's own copy
	// could not be used: what was wrong with it.
	why string
}

// restoreCopy chooses the copy of a dataset version to restore from: the
// repository named by req.Repository, else the dataset's own repository,
// and when that cannot be opened, lacks a snapshot or holds it incomplete
// (a tree that does not verify, a blob no longer indexed), each replica
// that holds a verified copy (replica records), in turn. It returns the
// repository with the snapshots loaded from it, cross-checked with the
// record.
func (m *Manager) restoreCopy(ctx context.Context, rc *RuntimeContext, req RestoreRequest, b *metadata.Backup, d *metadata.Dataset) (*restoreFrom, error) {
	name := d.Source + "/" + d.Name
	ids := SnapshotIDs(d)
	if req.Repository == "" || req.Repository == d.Repository {
		from, err := m.loadCopy(ctx, rc, d.Repository, ids, name, b)
		if err == nil || req.Repository != "" {
			return from, err
		}
		errs := []error{err}
		replicas, rerr := m.replicaCopies(ctx, ids)
		if rerr != nil {
			return nil, errors.Join(err, fmt.Errorf("looking for replicas: %w", rerr))
		}
		for _, r := range replicas {
			from, rerr := m.loadCopy(ctx, rc, r.repo, r.ids, name, b)
			if rerr == nil {
				m.log.Warn("restoring from a replica: the primary copy cannot be used", "dataset", name, "backup", b.ID, "primary", d.Repository, "replica", r.repo, "error", err)
				from.why = fmt.Sprintf("the copy in %s cannot be used: %v", d.Repository, err)
				return from, nil
			}
			errs = append(errs, rerr)
		}
		return nil, errors.Join(errs...)
	}
	replicas, err := m.replicaCopies(ctx, ids)
	if err != nil {
		return nil, fmt.Errorf("dataset %s: looking for replicas: %w", name, err)
	}
	for _, r := range replicas {
		if r.repo == req.Repository {
			return m.loadCopy(ctx, rc, r.repo, r.ids, name, b)
		}
	}
	return nil, fmt.Errorf("dataset %s in backup %s: repository %s holds no verified copy of it (the catalog has no replica record)", name, b.ID, req.Repository)
}

// restoreData runs a dataset's restore (run) from the chosen copy. When
// that copy's file data turns out damaged or unreadable midway (a data
// blob that fails verification or cannot be loaded: nothing a check
// before the restore sees without reading every byte) and no repository
// was pinned, it runs the whole restore again from each other copy that
// a replica record says is verified, in turn, until one restores cleanly.
// A restore into files or through restore_command can be run again: a
// file is replaced whole, the command is fed the whole stream anew. One
// to standard output cannot take back what it wrote, so it fails, naming
// a replica to restore from. It returns the copy that restored.
func (m *Manager) restoreData(ctx context.Context, rc *RuntimeContext, req RestoreRequest, b *metadata.Backup, d *metadata.Dataset, from *restoreFrom, run func(*restoreFrom) error) (*restoreFrom, error) {
	name := d.Source + "/" + d.Name
	err := run(from)
	be := damagedData(err)
	if be == nil || req.Repository != "" {
		return from, err
	}
	replicas, rerr := m.replicaCopies(ctx, SnapshotIDs(d))
	if rerr != nil {
		return from, errors.Join(err, fmt.Errorf("looking for replicas: %w", rerr))
	}
	tried := []string{from.name}
	replicas = slices.DeleteFunc(replicas, func(r replicaCopy) bool { return r.repo == from.name || r.repo == d.Repository })
	if len(replicas) == 0 {
		return from, fmt.Errorf("repository %s holds damaged file data of %s (%s), and no replica holds a verified copy of it: %w", from.name, name, damageName(be), err)
	}
	if req.Stdout != nil {
		return from, fmt.Errorf("repository %s holds damaged file data of %s (%s) and what was written to standard output is incomplete: restore again from a replica with --repository %s: %w", from.name, name, damageName(be), replicas[0].repo, err)
	}
	errs := []error{err}
	for _, r := range replicas {
		next, lerr := m.loadCopy(ctx, rc, r.repo, r.ids, name, b)
		if lerr != nil {
			errs = append(errs, lerr)
			continue
		}
		next.why = fmt.Sprintf("the copy in %s holds damaged file data (%s)", from.name, damageName(be))
		m.log.Warn("restoring again from a replica: file data of the copy read first is damaged", "dataset", name, "backup", b.ID, "damaged", from.name, "object", damageName(be), "replica", r.repo)
		tried = append(tried, r.repo)
		err = run(next)
		if err == nil {
			return next, nil
		}
		errs = append(errs, err)
		if be = damagedData(err); be == nil {
			return next, errors.Join(errs...)
		}
		from = next
	}
	return from, fmt.Errorf("every copy of %s holds damaged file data (tried %s): %w", name, strings.Join(tried, ", "), errors.Join(errs...))
}

// damagedData returns the data blob error in err, if any: file content
// the copy could not deliver, as opposed to a failing target or command.
func damagedData(err error) *repository.BlobError {
	var be *repository.BlobError
	if errors.As(err, &be) && be.Type == repository.DataBlob {
		return be
	}
	return nil
}

// damageName names the damaged object: the blob and the pack holding it.
func damageName(be *repository.BlobError) string {
	if be.Pack.IsNull() {
		return "data blob " + be.Blob.String()
	}
	return "data blob " + be.Blob.String() + " in pack " + be.Pack.String()
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
func (m *Manager) loadCopy(ctx context.Context, rc *RuntimeContext, repoName string, ids []string, name string, b *metadata.Backup) (*restoreFrom, error) {
	repoSpec := rc.Config.Repository(repoName)
	if repoSpec == nil {
		return nil, fmt.Errorf("dataset %s: it is stored in repository %q, which this configuration does not define", name, repoName)
	}
	repo, err := m.repos.Get(ctx, repoSpec)
	if err != nil {
		return nil, fmt.Errorf("dataset %s: %w", name, err)
	}
	_ = repo.Refresh(ctx)
	var snaps []*repository.Snapshot
	for _, s := range ids {
		id, err := repository.ParseID(s)
		if err != nil {
			return nil, fmt.Errorf("dataset %s in backup %s: bad snapshot id %q in the catalog: %w", name, b.ID, s, err)
		}
		snap, err := repo.LoadSnapshot(ctx, id)
		if err != nil {
			return nil, fmt.Errorf("dataset %s in backup %s: snapshot %s in repository %s: %w", name, b.ID, id.Short(), repoSpec.Name, err)
		}
		if err := crossCheck(snap, name, b); err != nil {
			return nil, fmt.Errorf("dataset %s in backup %s: snapshot %s in repository %s %w; refusing to restore it (run custos sync to rebuild the catalog from the repository)", name, b.ID, id.Short(), repoSpec.Name, err)
		}
		if err := repo.VerifyHeld(ctx, id); err != nil {
			return nil, fmt.Errorf("dataset %s in backup %s: repository %s: %w", name, b.ID, repoSpec.Name, err)
		}
		snaps = append(snaps, snap)
	}
	return &restoreFrom{name: repoSpec.Name, repo: repo, snaps: snaps}, nil
}
