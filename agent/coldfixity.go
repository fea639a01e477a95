package agent

import (
	"context"
	"errors"
	"fmt"

	"github.com/custos-backup/custos/repository"
	"github.com/custos-backup/custos/repository/backend"
)

// Restore states of an archived pack in a fixity run.
const (
	ArchiveRestoreRequested = "restore requested"
	ArchiveRestoreOngoing   = "restore in progress"
	ArchiveRestoreFailed    = "restore request failed"
	ArchiveStateUnknown     = "storage state unknown"
)

// PackRestore is a pack a fixity run did not read because it sits in an
// archive storage class and no restored copy is readable yet. It is not
// damage: a later run reads it once the restore is done.
type PackRestore struct {
	Pack         string `json:"pack"`
	StorageClass string `json:"storage_class"`
	State        string `json:"state"`
	Tier         string `json:"tier,omitempty"`
	Error        string `json:"error,omitempty"`
}

// thaw splits the packs chosen for a run of a repository with an
// archive storage class into those readable now and those waiting for a
// restore, asking for a restore of each archived pack that has none under
// way. The pending restore is not remembered in the catalog: S3 says it
// (x-amz-restore: ongoing-request="true"), and a pack not read keeps its
// place at the head of the fixity queue, so the next run asks S3 again
// and reads it once its copy is readable.
func (m *Manager) thaw(ctx context.Context, repo *repository.Repository, spec *RepositorySpec, packs []repository.PackInfo) ([]repository.ID, []PackRestore, error) {
	ids := make([]repository.ID, 0, len(packs))
	ar, ok := backend.AsArchiver(repo.Backend())
	if spec.Archive.StorageClass == "" || !ok {
		for _, p := range packs {
			ids = append(ids, p.ID)
		}
		return ids, nil, nil
	}
	tier := spec.Archive.RestoreTier
	if tier == "" {
		tier = "Standard"
	}
	var waiting []PackRestore
	var errs []error
	for _, p := range packs {
		h := backend.Handle{Type: backend.PackFile, Name: p.ID.String()}
		st, err := ar.ArchiveState(ctx, h)
		switch {
		case errors.Is(err, backend.ErrNotExist) || (err == nil && st.Readable()):
			// A missing pack is read, and found missing, as damage.
			ids = append(ids, p.ID)
			continue
		case err != nil:
			if ctx.Err() != nil {
				return nil, nil, ctx.Err()
			}
			waiting = append(waiting, PackRestore{Pack: p.ID.String(), State: ArchiveStateUnknown, Error: err.Error()})
			errs = append(errs, fmt.Errorf("repository %s: pack %s: %w", spec.Name, p.ID.Short(), err))
			continue
		}
		w := PackRestore{Pack: p.ID.String(), StorageClass: st.StorageClass, State: ArchiveRestoreOngoing}
		if st.Restore != backend.RestoreOngoing {
			w.State, w.Tier = ArchiveRestoreRequested, tier
			if err := ar.RequestRestore(ctx, h); err != nil {
				w.State, w.Error = ArchiveRestoreFailed, err.Error()
				errs = append(errs, fmt.Errorf("repository %s: pack %s is archived (%s) and the restore request failed: %w", spec.Name, p.ID.Short(), st.StorageClass, err))
			} else {
				m.log.Info("fixity: restore requested for an archived pack; a later run verifies it", "repository", spec.Name, "pack", p.ID.String(), "storage_class", st.StorageClass, "tier", tier)
			}
		}
		waiting = append(waiting, w)
	}
	return ids, waiting, errors.Join(errs...)
}
