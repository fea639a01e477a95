package agent

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/custos-backup/custos/jobs"
	"github.com/custos-backup/custos/metadata"
	"github.com/custos-backup/custos/repository"
	"github.com/custos-backup/custos/repository/backend/location"
	"github.com/custos-backup/custos/shell"
)

// PreservationStore is what replicate and fixity need from the catalog
// besides CatalogStore; *metadata.EtcdStore has it.
type PreservationStore interface {
	PutReplica(ctx context.Context, r *metadata.ReplicaRecord) error
	ListReplicas(ctx context.Context, repo string) ([]*metadata.ReplicaRecord, error)
	PutFixityResult(ctx context.Context, r *metadata.FixityResult) error
	ListFixityResults(ctx context.Context, repo string) ([]*metadata.FixityResult, error)
}

func (m *Manager) preservation() (PreservationStore, error) {
	ps, ok := m.catalog.(PreservationStore)
	if !ok {
		return nil, jobs.Permanent(errors.New("this catalog keeps no replica or fixity records"))
	}
	return ps, nil
}

// ReplicateResult is the outcome of copying one dataset to one repository.
type ReplicateResult struct {
	Source      string        `json:"source"`
	Dataset     string        `json:"dataset"`
	To          string        `json:"to"`
	Snapshots   int           `json:"snapshots"`         // snapshots of the dataset, all now held by To
	Written     int64         `json:"snapshots_written"` // of which this run wrote
	BlobsCopied int64         `json:"blobs_copied"`
	BytesCopied int64         `json:"bytes_copied"`
	Duration    time.Duration `json:"duration_ns"`
	Err         error         `json:"-"`
	Error       string        `json:"error,omitempty"`
}

// spaceMargin is what a replication leaves free on a local target beyond
// what it will write: index files, locks, and the rest of the host.
func spaceMargin(need int64) int64 { return need/10 + 64<<20 }

// Replicate copies every snapshot of one dataset that a target lacks to
// each repository its replicate setting names (or to only, when given),
// sending only the blobs the target lacks, and records in the catalog
// which repositories hold each snapshot. It goes on with the next target
// after a failure and returns every error at the end.
func (m *Manager) Replicate(ctx context.Context, rc *RuntimeContext, src *SourceSpec, dataset string, only []string) ([]*ReplicateResult, error) {
	name := src.Name + "/" + dataset
	spec := src.ReplicateFor(dataset)
	targets := only
	if len(targets) == 0 {
		if spec == nil {
			return nil, jobs.Permanent(fmt.Errorf("dataset %s: no replicate setting in %s", name, src.File))
		}
		targets = spec.To
	}
	ps, err := m.preservation()
	if err != nil {
		return nil, err
	}
	cfg := rc.Config
	primarySpec := cfg.Repository(src.Repository)
	if primarySpec == nil {
		return nil, jobs.Permanent(fmt.Errorf("dataset %s: repository %q is not configured", name, src.Repository))
	}
	primary, err := m.repos.Get(ctx, primarySpec)
	if err != nil {
		return nil, fmt.Errorf("dataset %s: %w", name, err)
	}
	if err := primary.Refresh(ctx); err != nil {
		return nil, fmt.Errorf("dataset %s: repository %s: %w", name, primarySpec.Name, err)
	}
	all, err := primary.Snapshots(ctx)
	if err != nil {
		return nil, fmt.Errorf("dataset %s: repository %s: %w", name, primarySpec.Name, err)
	}
	var snaps []*repository.Snapshot
	for _, s := range all {
		if s.Dataset == name {
			snaps = append(snaps, s)
		}
	}
	// Oldest first, so that each copy finds its parent already copied.
	sort.Slice(snaps, func(i, j int) bool { return snaps[i].Time.Before(snaps[j].Time) })
	var out []*ReplicateResult
	var errs []error
	for _, to := range targets {
		res := &ReplicateResult{Source: src.Name, Dataset: dataset, To: to, Snapshots: len(snaps)}
		start := time.Now()
		res.Err = m.replicateTo(ctx, rc, ps, src, name, primarySpec.Name, primary, snaps, to, res)
		res.Duration = time.Since(start)
		log := m.log.With("source", src.Name, "dataset", dataset, "to", to)
		if res.Err != nil {
			res.Error = res.Err.Error()
			errs = append(errs, res.Err)
			log.Warn("replication failed", "error", res.Err)
		} else {
			log.Info("replication done", "snapshots", res.Snapshots, "written", res.Written, "blobs_copied", res.BlobsCopied, "bytes_copied", res.BytesCopied, "duration", res.Duration.Round(time.Millisecond))
		}
		out = append(out, res)
	}
	return out, errors.Join(errs...)
}

func (m *Manager) replicateTo(ctx context.Context, rc *RuntimeContext, ps PreservationStore, src *SourceSpec, name, fromName string, primary *repository.Repository, snaps []*repository.Snapshot, to string, res *ReplicateResult) error {
	dstSpec := rc.Config.Repository(to)
	switch {
	case dstSpec == nil:
		return jobs.Permanent(fmt.Errorf("dataset %s: replicate target %q is not configured", name, to))
	case to == fromName:
		return jobs.Permanent(fmt.Errorf("dataset %s: replicate target %q is the repository it is backed up to", name, to))
	case slices.Contains(dstSpec.NeverFrom, src.Name):
		// config check refuses this too; a reload may race a job.
		return jobs.Permanent(fmt.Errorf("dataset %s: repository %s refuses source %s (never_from); nothing was sent", name, to, src.Name))
	}
	if len(snaps) == 0 {
		return nil
	}
	dst, err := m.repos.Get(ctx, dstSpec)
	if err != nil {
		return fmt.Errorf("dataset %s: replica %w", name, err)
	}
	if err := m.checkSpace(ctx, primary, dst, dstSpec, snaps, name); err != nil {
		return err
	}
	st, err := repository.Copy(ctx, primary, dst, snaps, func(p repository.Progress) {
		jobs.ReportProgress(ctx, jobs.Progress{Files: p.Files, TotalFiles: p.TotalFiles, Bytes: p.Bytes, Current: p.Current})
	})
	if st != nil {
		res.Written, res.BlobsCopied, res.BytesCopied = st.Snapshots, st.BlobsCopied, st.BytesCopied
	}
	if err != nil {
		return fmt.Errorf("dataset %s: copy to %s: %w", name, to, contextCause(ctx, err))
	}
	bySrc := make(map[repository.ID]*repository.Snapshot, len(snaps))
	for _, s := range snaps {
		bySrc[s.ID] = s
	}
	var errs []error
	for _, h := range st.Held {
		sn := bySrc[h.Source]
		verr := dst.VerifyHeld(ctx, h.Dest)
		rec := &metadata.ReplicaRecord{
			Repository: to, SnapshotID: h.Dest.String(), FromRepository: fromName, SourceSnapshot: h.Source.String(),
			Source: src.Name, Dataset: strings.TrimPrefix(sn.Dataset, src.Name+"/"), BackupID: sn.BackupID,
			Time: time.Now().UTC(), Verified: verr == nil,
		}
		if h.Written {
			rec.BlobsCopied, rec.BytesCopied = st.BlobsCopied, st.BytesCopied
		}
		if verr != nil {
			errs = append(errs, fmt.Errorf("dataset %s: copy of snapshot %s in %s does not verify: %w", name, h.Source.Short(), to, verr))
		}
		if err := ps.PutReplica(ctx, rec); err != nil {
			errs = append(errs, fmt.Errorf("dataset %s: snapshot %s is held by %s, but the catalog did not take the record: %w", name, h.Source.Short(), to, err))
		}
	}
	return errors.Join(errs...)
}

// checkSpace refuses to start a copy to a local repository whose file
// system cannot take it with a margin: a copy that fills the disk fails
// late and leaves the host without space.
func (m *Manager) checkSpace(ctx context.Context, src, dst *repository.Repository, dstSpec *RepositorySpec, snaps []*repository.Snapshot, name string) error {
	loc, err := location.Parse(dstSpec.URL)
	if err != nil || loc.Kind != location.Local {
		return nil
	}
	need, err := repository.CopyNeeds(ctx, src, dst, snaps)
	if err != nil {
		return fmt.Errorf("dataset %s: estimating the space needed in %s: %w", name, dstSpec.Name, err)
	}
	free, err := m.freeSpace(loc.Path)
	if err != nil {
		return fmt.Errorf("dataset %s: free space of %s (%s): %w", name, dstSpec.Name, loc.Path, err)
	}
	if free < need+spaceMargin(need) {
		return fmt.Errorf("dataset %s: not enough space in %s (%s): the copy needs up to %s plus a margin of %s, %s are free; nothing was copied",
			name, dstSpec.Name, loc.Path, HumanBytes(need), HumanBytes(spaceMargin(need)), HumanBytes(free))
	}
	return nil
}

// statfsFree is the space on path's file system that an unprivileged
// writer may use (Bavail, not Bfree: the root reserve is not ours).
func statfsFree(path string) (int64, error) {
	var fs syscall.Statfs_t
	if err := syscall.Statfs(path, &fs); err != nil {
		return 0, err
	}
	return int64(fs.Bavail) * int64(fs.Bsize), nil
}

// ReplicateNow runs the replication of every source that has one (or of
// one source, and one of its datasets) now, in this process.
func ReplicateNow(ctx context.Context, m *Manager, rc *RuntimeContext, source, dataset string) ([]*ReplicateResult, error) {
	srcs := rc.Config.Sources
	if source != "" {
		s := rc.Source(source)
		if s == nil {
			return nil, fmt.Errorf("no source %q in the configuration", source)
		}
		srcs = []*SourceSpec{s}
	}
	var out []*ReplicateResult
	var errs []error
	found := false
	for _, s := range srcs {
		dss, err := replicatedDatasets(ctx, rc, s, false)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		for _, ds := range dss {
			if dataset != "" && ds != dataset {
				continue
			}
			found = true
			res, err := m.Replicate(ctx, rc, s, ds, nil)
			out = append(out, res...)
			if err != nil {
				errs = append(errs, err)
			}
		}
	}
	if !found && len(errs) == 0 {
		what := "no source replicates"
		if source != "" {
			what = "source " + source + " has no replicated dataset"
			if dataset != "" {
				what += " " + dataset
			}
		}
		return nil, fmt.Errorf("%s (give it replicate: {to: [...]} in its source file)", what)
	}
	return out, errors.Join(errs...)
}

// replicatedDatasets lists the datasets of s that replicate; scheduledOnly
// keeps those whose replication runs on a schedule (not after ingest).
func replicatedDatasets(ctx context.Context, rc *RuntimeContext, s *SourceSpec, scheduledOnly bool) ([]string, error) {
	if len(s.replicateTargets()) == 0 {
		return nil, nil
	}
	dss, err := Datasets(ctx, rc.Shell().WithDir(rc.Config.Dir), s)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, ds := range dss {
		r := s.ReplicateFor(ds.Name)
		if r == nil || (scheduledOnly && r.Schedule == "") {
			continue
		}
		out = append(out, ds.Name)
	}
	return out, nil
}

// newReplicateJob is the job that replicates one dataset.
func (a *Agent) newReplicateJob(rc *RuntimeContext, src *SourceSpec, dataset string) jobs.Job {
	return jobs.New(jobs.Info{
		Kind:        "replicate",
		LockKey:     "replicate:" + src.Name + "/" + dataset,
		IfLocked:    jobs.LockSkip,
		Description: "replicate " + src.Name + "/" + dataset,
		Source:      src.Name,
		Dataset:     dataset,
	}, func(ctx context.Context) error {
		ctx = shell.ContextWithLogger(ctx, jobs.Logger(ctx))
		if a.worker == nil {
			_, err := a.mgr.Replicate(ctx, rc, src, dataset, nil)
			return err
		}
		spec := WorkerSpec{Kind: kindReplicate, Source: src.Name, Dataset: dataset}
		_, err := a.runInWorker(ctx, rc, rc.SourceShell(src), spec, "replicate "+src.Name+"/"+dataset)
		return err
	})
}

// submitReplicate submits the replicate jobs of a source (all its
// replicated datasets, or only the scheduled ones) and returns their ids.
func (a *Agent) submitReplicate(ctx context.Context, name string, scheduledOnly bool) ([]string, error) {
	rc := a.cm.Current()
	src := rc.Source(name)
	if src == nil {
		return nil, fmt.Errorf("no source %q in the configuration", name)
	}
	dss, err := replicatedDatasets(ctx, rc, src, scheduledOnly)
	if err != nil {
		return nil, err
	}
	if len(dss) == 0 {
		return nil, fmt.Errorf("source %s replicates nothing (give it replicate: {to: [...]})", name)
	}
	var ids []string
	for _, ds := range dss {
		id, err := a.runner.Submit(ctx, a.newReplicateJob(rc, src, ds))
		if errors.Is(err, jobs.ErrAlreadyRunning) {
			continue
		}
		if err != nil {
			return ids, fmt.Errorf("replicate %s/%s: %w", name, ds, err)
		}
		ids = append(ids, id)
	}
	return ids, nil
}

// afterIngest queues the replication that follows an ingest (a dataset
// whose replicate has no schedule).
func (a *Agent) afterIngest(rc *RuntimeContext, src *SourceSpec, dataset string) {
	r := src.ReplicateFor(dataset)
	if r == nil || r.Schedule != "" || rc.Config.DryRun {
		return
	}
	if _, err := a.runner.Submit(a.ctx, a.newReplicateJob(rc, src, dataset)); err != nil && !errors.Is(err, jobs.ErrAlreadyRunning) && a.ctx.Err() == nil {
		a.log.Error("cannot queue the replication after ingest", "source", src.Name, "dataset", dataset, "error", err)
	}
}

// HeldIn maps each snapshot id (as the catalog records it, in the
// dataset's own repository) to the replica repositories holding a verified
// copy, from the replica records of every configured repository.
func (m *Manager) HeldIn(ctx context.Context) (map[string][]*metadata.ReplicaRecord, error) {
	ps, err := m.preservation()
	if err != nil {
		return nil, err
	}
	out := map[string][]*metadata.ReplicaRecord{}
	for _, r := range m.cm.Current().Config.Repositories {
		recs, err := ps.ListReplicas(ctx, r.Name)
		if err != nil {
			return nil, err
		}
		for _, rec := range recs {
			key := rec.SourceSnapshot
			if key == "" {
				key = rec.SnapshotID
			}
			out[key] = append(out[key], rec)
		}
	}
	return out, nil
}

// AddHoldings fills in where each atom version is held: its own
// repository first, then the replicas that hold a verified copy.
func (m *Manager) AddHoldings(ctx context.Context, entries []BackupEntry) error {
	held, err := m.HeldIn(ctx)
	if err != nil {
		return err
	}
	for i := range entries {
		e := &entries[i]
		e.HeldIn = []string{e.Repository}
		for _, s := range strings.Split(e.SnapshotID, ",") {
			for _, rec := range held[strings.TrimSpace(s)] {
				if rec.Verified && !slices.Contains(e.HeldIn, rec.Repository) {
					e.HeldIn = append(e.HeldIn, rec.Repository)
				}
			}
		}
	}
	return nil
}
