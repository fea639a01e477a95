package agent

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"

	"github.com/custos-backup/custos/jobs"
	"github.com/custos-backup/custos/repository"
)

// DefaultRetentionSchedule is when a repository's retention runs unless
// its retention says: once a day, at an offset of its own per host and
// repository.
const DefaultRetentionSchedule = "@random_every 24h"

// RetentionSpec is a repository's retention: which snapshots forget keeps,
// when it runs, and whether prune frees the data of the others.
type RetentionSpec struct {
	Schedule string
	Policy   repository.RetentionPolicy
	Prune    bool
	// MaxUnused is prune's tolerance of unused data in partly used packs,
	// a fraction (max_unused: 5% is 0.05).
	MaxUnused float64
}

// decodeRetention reads a repository's retention: mapping. Nothing
// (retention: with no value) means none.
func decodeRetention(d *decoder, n *yaml.Node, f string) *RetentionSpec {
	if isNull(n) {
		return nil
	}
	r := &RetentionSpec{Schedule: DefaultRetentionSchedule, MaxUnused: repository.DefaultMaxUnused}
	keep := func(out *int) func(v *yaml.Node, f string) {
		return func(v *yaml.Node, f string) {
			if d.integer(v, f, out) && *out < -1 {
				d.errorf(v, f, "want a count, or -1 for no limit, got %d", *out)
			}
		}
	}
	keys := d.mapping(n, f, fields{
		"schedule": func(v *yaml.Node, f string) {
			if d.str(v, f, &r.Schedule) {
				if err := checkSchedule(r.Schedule); err != nil {
					d.errorf(v, f, "%v (leave schedule out for once a day)", err)
				}
			}
		},
		"keep_last":    keep(&r.Policy.Last),
		"keep_hourly":  keep(&r.Policy.Hourly),
		"keep_daily":   keep(&r.Policy.Daily),
		"keep_weekly":  keep(&r.Policy.Weekly),
		"keep_monthly": keep(&r.Policy.Monthly),
		"keep_yearly":  keep(&r.Policy.Yearly),
		"prune":        func(v *yaml.Node, f string) { d.boolean(v, f, &r.Prune) },
		"max_unused": func(v *yaml.Node, f string) {
			var s string
			if !d.str(v, f, &s) {
				return
			}
			mu, err := parsePercent(s)
			if err != nil {
				d.errorf(v, f, "%v", err)
				return
			}
			r.MaxUnused = mu
		},
	})
	if n.Kind != yaml.MappingNode {
		return nil
	}
	if r.Policy == (repository.RetentionPolicy{}) {
		d.errorf(n, f, "no keep_* rule: that would forget every snapshot; give at least one of keep_last, keep_hourly, keep_daily, keep_weekly, keep_monthly, keep_yearly")
	}
	if v := keys["max_unused"]; v != nil && !r.Prune {
		d.errorf(v, join(f, "max_unused"), "max_unused is prune's setting: set prune: true, or remove it")
	}
	return r
}

// parsePercent reads a percentage from 0% to 100% ("2.5%" works) or
// "unlimited" (= 100%) as a fraction. A bare number is refused, as on the
// command line: "5" and "0.05" are both plausible readings of it.
func parsePercent(s string) (float64, error) {
	t := strings.TrimSpace(s)
	if strings.EqualFold(t, "unlimited") {
		return 1, nil
	}
	if num, ok := strings.CutSuffix(t, "%"); ok {
		v, err := strconv.ParseFloat(strings.TrimSpace(num), 64)
		if err == nil && v >= 0 && v <= 100 {
			return v / 100, nil
		}
	}
	return 0, fmt.Errorf("bad value %q (want a percentage from 0%% to 100%%, e.g. 5%%, or unlimited)", s)
}

// RetentionResult is what one retention run did.
type RetentionResult struct {
	Repository string   `json:"repository"`
	Kept       int      `json:"kept"`
	Forgotten  []string `json:"forgotten"` // snapshot ids
	// Sync is the catalog's update: the records of the forgotten
	// snapshots removed (or rewritten, when a version keeps some).
	Sync  *SyncResult            `json:"sync,omitempty"`
	Prune *repository.PruneStats `json:"prune,omitempty"`
}

// Retention applies a repository's retention: forget removes the
// snapshots the policy does not keep (the snapshots of one backup
// together), the catalog drops their records at once (a sync of that
// repository that also removes other hosts' records naming them), and,
// when prune is set, prune frees their data.
// The catalog goes before prune, so that what find lists stops pointing
// at removed snapshots as early as it can.
func (m *Manager) Retention(ctx context.Context, rc *RuntimeContext, store SyncStore, name string) (*RetentionResult, error) {
	spec := rc.Config.Repository(name)
	if spec == nil {
		return nil, jobs.Permanent(fmt.Errorf("retention: no repository %q in the configuration", name))
	}
	if spec.Retention == nil {
		return nil, jobs.Permanent(fmt.Errorf("retention: repository %s has no retention settings", name))
	}
	if err := repositoryExists(ctx, spec); err != nil {
		return nil, fmt.Errorf("retention: %w", err)
	}
	repo, err := m.repos.Get(ctx, spec)
	if err != nil {
		return nil, fmt.Errorf("retention: %w", err)
	}
	res := &RetentionResult{Repository: name, Forgotten: []string{}}
	jobs.ReportProgress(ctx, jobs.Progress{Current: "forget in repository " + name})
	keep, remove, err := repo.Forget(ctx, spec.Retention.Policy, false)
	for _, s := range remove {
		res.Forgotten = append(res.Forgotten, s.ID.String())
	}
	res.Kept = len(keep)
	if err != nil {
		// Some snapshots may be gone already: the catalog must still
		// drop them, so go on to the sync.
		err = fmt.Errorf("retention: repository %s: %w", name, err)
	}
	if len(remove) > 0 {
		forgotten := map[string]bool{}
		for _, id := range res.Forgotten {
			forgotten[id] = true
		}
		var serr error
		res.Sync, serr = m.Sync(ctx, rc, store, SyncOptions{Repositories: []string{name}, Forgotten: forgotten})
		if serr != nil {
			err = errors.Join(err, fmt.Errorf("retention: forgot %d snapshot(s) of repository %s, but the catalog may still list some of them (the next sync removes them): %w", len(remove), name, serr))
		}
	}
	// Prune runs every time, not only after a forget: a run whose prune
	// failed (a backup held the repository) is retried, and its retry
	// forgets nothing.
	if spec.Retention.Prune && err == nil {
		jobs.ReportProgress(ctx, jobs.Progress{Current: "prune repository " + name})
		res.Prune, err = repo.Prune(ctx, repository.PruneOptions{MaxUnused: spec.Retention.MaxUnused})
		if err != nil {
			err = fmt.Errorf("retention: repository %s: %w", name, err)
		}
	}
	return res, err
}

// retentionScheduleName is the scheduler entry of a repository's
// retention.
func retentionScheduleName(repo string) string { return "retention/" + repo }

// retention runs a repository's retention, in a worker process when the
// agent has them (at the default priority: it is the repository's job).
func (a *Agent) retention(ctx context.Context, name string) (*RetentionResult, error) {
	rc := a.cm.Current()
	if a.worker == nil {
		return a.mgr.Retention(ctx, rc, a.catalog.Store, name)
	}
	wr, err := a.runInWorker(ctx, rc, rc.Shell(), WorkerSpec{Kind: kindRetention, Repository: name}, "retention of repository "+name)
	if wr == nil {
		return nil, err
	}
	return wr.Retention, err
}

// newRetentionJob runs a repository's retention on the retention queue,
// one at a time per repository.
func (a *Agent) newRetentionJob(name string) jobs.Job {
	return jobs.New(jobs.Info{
		Kind:        "retention",
		LockKey:     "retention:" + name,
		IfLocked:    jobs.LockSkip,
		Description: "retention of repository " + name,
	}, func(ctx context.Context) error {
		res, err := a.retention(ctx, name)
		if res != nil {
			attrs := []any{"repository", name, "kept", res.Kept, "forgotten", len(res.Forgotten)}
			if res.Sync != nil {
				attrs = append(attrs, "catalog_removed", res.Sync.Count(SyncRemove), "catalog_rewritten", res.Sync.Count(SyncRewrite))
			}
			if res.Prune != nil {
				attrs = append(attrs, "packs_deleted", res.Prune.PacksDeleted, "bytes_freed", res.Prune.BytesFreed)
			}
			jobs.Logger(ctx).Info("retention done", attrs...)
			jobs.ReportProgress(ctx, jobs.Progress{Files: int64(len(res.Forgotten))})
		}
		a.backups.invalidate()
		return err
	})
}
