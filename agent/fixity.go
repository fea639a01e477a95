package agent

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/custos-backup/custos/jobs"
	"github.com/custos-backup/custos/metadata"
	"github.com/custos-backup/custos/repository"
	"github.com/custos-backup/custos/shell"
)

// Fixity algorithms as recorded in the catalog's evidence.
const (
	// AlgoPack: the pack's SHA-256 against its name, its header against
	// the index, and every blob (AEAD tag, then SHA-256 of the plaintext
	// against the blob id).
	AlgoPack = "sha256-pack+blobs"
	// AlgoFile: --deep, each file's whole-content SHA-256 against the
	// digest recorded at ingest.
	AlgoFile = "sha256-file"
)

// FixityOptions say what one fixity run covers.
type FixityOptions struct {
	All  bool `json:"all,omitempty"`  // every pack, whatever the budget
	Deep bool `json:"deep,omitempty"` // also whole-file digests of every snapshot
}

// PackDamage is one damaged pack found by a fixity run.
type PackDamage struct {
	Pack       string   `json:"pack"`
	Error      string   `json:"error"`
	Blobs      []string `json:"damaged_blobs,omitempty"`
	Snapshots  []string `json:"snapshots,omitempty"`
	Datasets   []string `json:"datasets,omitempty"`
	Atoms      []string `json:"atoms,omitempty"`
	Paths      []string `json:"paths,omitempty"`
	Healed     bool     `json:"healed"`
	HealedInto []string `json:"healed_into,omitempty"`
	HealError  string   `json:"heal_error,omitempty"`
}

// FixityRun is the outcome of one fixity run on one repository.
type FixityRun struct {
	Repository string       `json:"repository"`
	Time       time.Time    `json:"time"`
	Packs      int          `json:"packs"`         // packs in the repository
	Verified   int          `json:"packs_checked"` // packs read this run
	Checked    []string     `json:"checked"`       // their ids, in the order read
	BytesRead  int64        `json:"bytes_read"`
	Budget     int64        `json:"budget_bytes,omitempty"`
	Damaged    []PackDamage `json:"damaged"`
	// Archived are the packs chosen but not read: archived, waiting for
	// a restore.
	Archived []PackRestore           `json:"archived,omitempty"`
	Deep     *repository.DigestStats `json:"deep,omitempty"`
	Duration time.Duration           `json:"duration_ns"`
}

// Unhealed counts the damaged packs that stay damaged.
func (r *FixityRun) Unhealed() int {
	n := 0
	for _, d := range r.Damaged {
		if !d.Healed {
			n++
		}
	}
	return n
}

// Fixity verifies the packs of one repository that were verified least
// recently (never verified first), within the repository's budget unless
// opts.All, and records every verdict in the catalog. A damaged pack is
// named down to the atoms and paths that need it and healed from the other
// configured repositories; the run fails when damage remains.
func (m *Manager) Fixity(ctx context.Context, rc *RuntimeContext, repoName string, opts FixityOptions) (*FixityRun, error) {
	ps, err := m.preservation()
	if err != nil {
		return nil, err
	}
	cfg := rc.Config
	spec := cfg.Repository(repoName)
	if spec == nil {
		return nil, jobs.Permanent(fmt.Errorf("no repository %q in the configuration (there are: %s)", repoName, strings.Join(cfg.repositoryNames(), ", ")))
	}
	start := time.Now()
	run := &FixityRun{Repository: repoName, Time: start.UTC(), Damaged: []PackDamage{}, Checked: []string{}}
	if spec.Fixity != nil && !opts.All {
		run.Budget = spec.Fixity.Budget
	}
	repo, err := m.repos.Get(ctx, spec)
	if err != nil {
		return nil, err
	}
	packs, err := repo.Packs(ctx)
	if err != nil {
		return nil, fmt.Errorf("repository %s: %w", repoName, err)
	}
	run.Packs = len(packs)
	last, err := ps.ListFixityResults(ctx, repoName)
	if err != nil {
		return nil, fmt.Errorf("repository %s: the fixity cursor in the catalog: %w", repoName, err)
	}
	chosen := choosePacks(packs, last, run.Budget)
	var errs []error
	ids, waiting, err := m.thaw(ctx, repo, spec, chosen)
	if err != nil {
		if ctx.Err() != nil {
			return nil, fmt.Errorf("repository %s: %w", repoName, contextCause(ctx, err))
		}
		errs = append(errs, err)
	}
	run.Archived = waiting
	verdicts, err := repo.VerifyPacks(ctx, ids)
	if err != nil {
		return nil, fmt.Errorf("repository %s: %w", repoName, contextCause(ctx, err))
	}
	for i, v := range verdicts {
		jobs.ReportProgress(ctx, jobs.Progress{Files: int64(i + 1), TotalFiles: int64(len(verdicts)), Bytes: run.BytesRead, Current: v.Pack.Short()})
		run.Verified++
		run.Checked = append(run.Checked, v.Pack.String())
		run.BytesRead += v.BytesRead
		rec := &metadata.FixityResult{Repository: repoName, Pack: v.Pack.String(), Time: time.Now().UTC(), OK: v.OK,
			Bytes: v.BytesRead, Host: cfg.Hostname, Algorithm: AlgoPack}
		if !v.OK {
			d := m.describeDamage(ctx, ps, repo, repoName, v)
			m.heal(ctx, rc, repo, repoName, &d, ps)
			rec.Error, rec.DamagedBlobs, rec.Atoms, rec.Snapshots, rec.Paths, rec.Healed = d.Error, d.Blobs, d.Atoms, d.Snapshots, d.Paths, d.Healed
			rec.Detail = "damage confirmed by a second read"
			if d.Healed {
				rec.Detail += "; healed into " + strings.Join(d.HealedInto, ",")
			} else if d.HealError != "" {
				rec.Detail += "; not healed: " + d.HealError
			}
			run.Damaged = append(run.Damaged, d)
			m.log.Error("fixity: damaged pack", "repository", repoName, "pack", v.Pack.String(), "error", d.Error,
				"atoms", strings.Join(d.Atoms, " "), "healed", d.Healed, "heal_error", d.HealError)
		}
		if err := ps.PutFixityResult(ctx, rec); err != nil {
			errs = append(errs, fmt.Errorf("repository %s: pack %s verified, but the catalog did not take the evidence: %w", repoName, v.Pack.Short(), err))
		}
	}
	if opts.Deep {
		if err := m.deepFixity(ctx, ps, repo, run, cfg.Hostname); err != nil {
			errs = append(errs, err)
		}
	}
	run.Duration = time.Since(start)
	if n := run.Unhealed(); n > 0 {
		var names []string
		for _, d := range run.Damaged {
			if !d.Healed {
				names = append(names, fmt.Sprintf("pack %s (%s; atoms %s; %s)", shortHex(d.Pack), d.Error, strings.Join(d.Atoms, " "), d.HealError))
			}
		}
		errs = append(errs, fmt.Errorf("repository %s: %d damaged pack(s) could not be healed: %s", repoName, n, strings.Join(names, "; ")))
	}
	if run.Deep != nil && len(run.Deep.Problems) > 0 {
		errs = append(errs, fmt.Errorf("repository %s: %d file(s) do not match the digest recorded at ingest (first: %s:%s: %s)", repoName,
			len(run.Deep.Problems), shortHex(run.Deep.Problems[0].Snapshot), run.Deep.Problems[0].Path, run.Deep.Problems[0].Err))
	}
	return run, errors.Join(errs...)
}

// choosePacks picks the packs of one run: least recently verified first
// (never verified before all), ties by id, while they fit in budget (0:
// all). The first pack is always taken, so that a pack larger than the
// budget is not starved; a pack that does not fit is passed over for
// smaller ones verified no more recently than it, and leads the next run.
// So a run reads more than budget minus the largest pack unless it runs
// out of packs, and no pack is read twice while another waits.
func choosePacks(packs []repository.PackInfo, last []*metadata.FixityResult, budget int64) []repository.PackInfo {
	when := make(map[string]time.Time, len(last))
	for _, r := range last {
		if r.Algorithm == AlgoFile {
			continue
		}
		when[r.Pack] = r.Time
	}
	sorted := slices.Clone(packs)
	slices.SortFunc(sorted, func(a, b repository.PackInfo) int {
		if c := when[a.ID.String()].Compare(when[b.ID.String()]); c != 0 {
			return c
		}
		return strings.Compare(a.ID.String(), b.ID.String())
	})
	if budget <= 0 {
		return sorted
	}
	var out []repository.PackInfo
	var used int64
	var skipped *time.Time
	for _, p := range sorted {
		w := when[p.ID.String()]
		if skipped != nil && w.After(*skipped) {
			// Never verify a pack again while an older one waits.
			break
		}
		if len(out) > 0 && used+p.Size > budget {
			if skipped == nil {
				skipped = &w
			}
			continue
		}
		out = append(out, p)
		used += p.Size
	}
	return out
}

// describeDamage names what depends on a damaged pack: datasets and atoms
// (from the catalog; snapshots in a replica are mapped back through the
// replica records) and file paths.
func (m *Manager) describeDamage(ctx context.Context, ps PreservationStore, repo *repository.Repository, repoName string, v repository.PackVerdict) PackDamage {
	d := PackDamage{Pack: v.Pack.String(), Error: v.Err, Blobs: v.Blobs, Snapshots: v.Snapshots, Paths: v.Paths}
	var toPrimary map[string]string
	if recs, err := ps.ListReplicas(ctx, repoName); err == nil {
		toPrimary = make(map[string]string, len(recs))
		for _, r := range recs {
			toPrimary[r.SnapshotID] = r.SourceSnapshot
		}
	}
	for _, sid := range v.Snapshots {
		id, err := repository.ParseID(sid)
		if err != nil {
			continue
		}
		sn, err := repo.LoadSnapshot(ctx, id)
		if err != nil {
			continue
		}
		if !slices.Contains(d.Datasets, sn.Dataset) {
			d.Datasets = append(d.Datasets, sn.Dataset)
		}
		catalogID := sid
		if p := toPrimary[sid]; p != "" {
			catalogID = p
		}
		var paths []string
		for _, p := range v.Paths {
			if rest, ok := strings.CutPrefix(p, id.Short()+":"); ok {
				paths = append(paths, rest)
			}
		}
		found, err := m.catalog.FindAtoms(ctx, metadata.FindRequest{Pattern: sn.Dataset, NumVersions: 1 << 20})
		if err != nil {
			continue
		}
		for _, b := range found {
			for _, ds := range b.Datasets {
				for _, a := range ds.Atoms {
					if a.SnapshotID != catalogID && !(a.SnapshotID == "" && slices.Contains(strings.Split(ds.SnapshotID, ","), catalogID)) {
						continue
					}
					if a.Path != "" && len(paths) > 0 && !slices.ContainsFunc(paths, func(p string) bool { return p == a.Path || strings.HasPrefix(p, a.Path+"/") }) {
						continue
					}
					name := metadata.AtomName(ds.Source, ds.Name, a.Name)
					if !slices.Contains(d.Atoms, name) {
						d.Atoms = append(d.Atoms, name)
					}
				}
			}
		}
	}
	return d
}

// heal rewrites a damaged pack from the other configured repositories and
// verifies what it wrote.
func (m *Manager) heal(ctx context.Context, rc *RuntimeContext, repo *repository.Repository, repoName string, d *PackDamage, ps PreservationStore) {
	var sources []*repository.Repository
	for _, spec := range rc.Config.Repositories {
		if spec.Name == repoName {
			continue
		}
		r, err := m.repos.Get(ctx, spec)
		if err != nil {
			m.log.Warn("fixity: a repository to heal from cannot be opened", "repository", spec.Name, "error", err)
			continue
		}
		sources = append(sources, r)
	}
	id, _ := repository.ParseID(d.Pack)
	res, err := repo.HealPack(ctx, id, sources)
	if err != nil {
		d.HealError = err.Error()
		if len(sources) == 0 {
			d.HealError += " (no other repository is configured)"
		}
		return
	}
	verdicts, err := repo.VerifyPacks(ctx, res.NewPacks)
	if err != nil {
		d.HealError = "healed, but the new packs could not be verified: " + err.Error()
		return
	}
	for _, v := range verdicts {
		_ = ps.PutFixityResult(ctx, &metadata.FixityResult{Repository: repoName, Pack: v.Pack.String(), Time: time.Now().UTC(), OK: v.OK,
			Bytes: v.BytesRead, Host: rc.Config.Hostname, Algorithm: AlgoPack, Error: v.Err,
			Detail: fmt.Sprintf("written by a heal of pack %s (%d blobs from the pack, %d from a replica)", id.Short(), res.FromPack, res.FromReplica)})
		if !v.OK {
			d.HealError = "the healed pack " + v.Pack.Short() + " does not verify: " + v.Err
			return
		}
		d.HealedInto = append(d.HealedInto, v.Pack.String())
	}
	d.Healed = true
}

// deepFixity re-derives every file's digest in every snapshot of the
// repository and records one result per snapshot.
func (m *Manager) deepFixity(ctx context.Context, ps PreservationStore, repo *repository.Repository, run *FixityRun, host string) error {
	snaps, err := repo.Snapshots(ctx)
	if err != nil {
		return fmt.Errorf("repository %s: --deep: %w", run.Repository, err)
	}
	total := &repository.DigestStats{Problems: []repository.DigestProblem{}}
	var errs []error
	for _, sn := range snaps {
		st, err := repo.VerifyDigests(ctx, []*repository.Snapshot{sn})
		if err != nil {
			return fmt.Errorf("repository %s: --deep: %w", run.Repository, err)
		}
		total.Files += st.Files
		total.Bytes += st.Bytes
		total.Problems = append(total.Problems, st.Problems...)
		rec := &metadata.FixityResult{Repository: run.Repository, Pack: "snapshot:" + sn.ID.String(), Time: time.Now().UTC(),
			OK: len(st.Problems) == 0, Bytes: st.Bytes, Host: host, Algorithm: AlgoFile,
			Detail: fmt.Sprintf("%d files of dataset %s", st.Files, sn.Dataset)}
		for _, p := range st.Problems {
			rec.Paths = append(rec.Paths, p.Path)
			if rec.Error == "" {
				rec.Error = p.Path + ": " + p.Err
			}
		}
		rec.Snapshots = []string{sn.ID.String()}
		if err := ps.PutFixityResult(ctx, rec); err != nil {
			errs = append(errs, err)
		}
	}
	run.Deep = total
	return errors.Join(errs...)
}

func shortHex(s string) string {
	if len(s) > 8 {
		return s[:8]
	}
	return s
}

// FixityNow runs fixity on one repository, or on every repository with a
// fixity setting (all: every configured one), in this process.
func FixityNow(ctx context.Context, m *Manager, rc *RuntimeContext, repo string, opts FixityOptions) ([]*FixityRun, error) {
	var names []string
	switch {
	case repo != "":
		names = []string{repo}
	default:
		for _, r := range rc.Config.Repositories {
			if r.Fixity != nil || opts.All {
				names = append(names, r.Name)
			}
		}
		if len(names) == 0 {
			return nil, errors.New("no repository has a fixity setting (give one, or name it with --repository, or use --all)")
		}
	}
	var out []*FixityRun
	var errs []error
	for _, n := range names {
		run, err := m.Fixity(ctx, rc, n, opts)
		if run != nil {
			out = append(out, run)
		}
		if err != nil {
			errs = append(errs, err)
		}
	}
	return out, errors.Join(errs...)
}

// RepositoryFixity is the fixity state of one repository.
type RepositoryFixity struct {
	Repository     string        `json:"repository"`
	Packs          int           `json:"packs"`
	VerifiedInTime int           `json:"packs_verified_within_period"`
	Period         time.Duration `json:"period_ns"`
	Never          int           `json:"packs_never_verified"`
	Damaged        int           `json:"packs_damaged"` // latest result failed (and not since healed)
	Oldest         time.Time     `json:"oldest_verification,omitzero"`
	Error          string        `json:"error,omitempty"`
}

// DatasetCopy is one copy of a dataset version.
type DatasetCopy struct {
	Repository string    `json:"repository"`
	Snapshots  []string  `json:"snapshots"`
	Replica    bool      `json:"replica"`
	Copied     time.Time `json:"replicated_at,omitzero"` // replicas: when the copy was last confirmed
	Verified   bool      `json:"verified"`               // replicas: the copy verified when recorded
	// ProvenSince is the oldest pack verification of the repository: every
	// pack, this copy's included, was proven intact since then (zero when
	// a pack was never verified).
	ProvenSince time.Time `json:"proven_since,omitzero"`
	Intact      bool      `json:"intact"` // no pack of the repository is known damaged
}

// DatasetFixity is the copies of the newest version of one dataset.
type DatasetFixity struct {
	Dataset  string        `json:"dataset"`
	BackupID string        `json:"backup_id"`
	Time     time.Time     `json:"time"`
	Copies   []DatasetCopy `json:"copies"`
}

// FixityReport answers "when was this dataset last proven intact, and in
// which copies?".
type FixityReport struct {
	Repositories []RepositoryFixity `json:"repositories"`
	Datasets     []DatasetFixity    `json:"datasets"`
}

// FixityReportFor builds the report for the datasets matching pattern.
func (m *Manager) FixityReportFor(ctx context.Context, rc *RuntimeContext, pattern string) (*FixityReport, error) {
	ps, err := m.preservation()
	if err != nil {
		return nil, err
	}
	rep := &FixityReport{Repositories: []RepositoryFixity{}, Datasets: []DatasetFixity{}}
	byRepo := map[string]RepositoryFixity{}
	now := time.Now()
	for _, spec := range rc.Config.Repositories {
		rf := RepositoryFixity{Repository: spec.Name, Period: defaultFixityPeriod}
		if spec.Fixity != nil {
			rf.Period = spec.Fixity.Period
		}
		repo, err := m.repos.Get(ctx, spec)
		var packs []repository.PackInfo
		if err == nil {
			packs, err = repo.Packs(ctx)
		}
		if err != nil {
			rf.Error = err.Error()
			rep.Repositories = append(rep.Repositories, rf)
			byRepo[spec.Name] = rf
			continue
		}
		results, err := ps.ListFixityResults(ctx, spec.Name)
		if err != nil {
			return nil, err
		}
		latest := make(map[string]*metadata.FixityResult, len(results))
		for _, r := range results {
			latest[r.Pack] = r
		}
		rf.Packs = len(packs)
		for i, p := range packs {
			r := latest[p.ID.String()]
			switch {
			case r == nil:
				rf.Never++
			case !r.OK:
				rf.Damaged++
			case now.Sub(r.Time) <= rf.Period:
				rf.VerifiedInTime++
			}
			if r != nil && (i == 0 || rf.Oldest.IsZero() || r.Time.Before(rf.Oldest)) && rf.Never == 0 {
				rf.Oldest = r.Time
			}
		}
		if rf.Never > 0 {
			rf.Oldest = time.Time{}
		}
		rep.Repositories = append(rep.Repositories, rf)
		byRepo[spec.Name] = rf
	}
	held, err := m.HeldIn(ctx)
	if err != nil {
		return nil, err
	}
	found, err := m.catalog.FindAtoms(ctx, metadata.FindRequest{Pattern: cmp.Or(pattern, "*"), NumVersions: 1})
	if err != nil {
		return nil, err
	}
	seen := map[string]bool{}
	for _, b := range found {
		for _, d := range b.Datasets {
			key := d.Source + "/" + d.Name + "\x00" + b.ID
			if seen[key] {
				continue
			}
			seen[key] = true
			df := DatasetFixity{Dataset: d.Source + "/" + d.Name, BackupID: b.ID, Time: b.Timestamp}
			snaps := SnapshotIDs(d)
			own := byRepo[d.Repository]
			df.Copies = append(df.Copies, DatasetCopy{Repository: d.Repository, Snapshots: snaps, ProvenSince: own.Oldest, Intact: own.Damaged == 0 && own.Error == "", Verified: true})
			replicas := map[string]*DatasetCopy{}
			var order []string
			for _, s := range snaps {
				for _, rec := range held[s] {
					c := replicas[rec.Repository]
					if c == nil {
						rf := byRepo[rec.Repository]
						c = &DatasetCopy{Repository: rec.Repository, Replica: true, Verified: true, ProvenSince: rf.Oldest, Intact: rf.Damaged == 0 && rf.Error == ""}
						replicas[rec.Repository] = c
						order = append(order, rec.Repository)
					}
					c.Snapshots = append(c.Snapshots, rec.SnapshotID)
					c.Verified = c.Verified && rec.Verified
					if c.Copied.IsZero() || rec.Time.Before(c.Copied) {
						c.Copied = rec.Time
					}
				}
			}
			for _, r := range order {
				if len(replicas[r].Snapshots) == len(snaps) {
					df.Copies = append(df.Copies, *replicas[r])
				}
			}
			rep.Datasets = append(rep.Datasets, df)
		}
	}
	slices.SortFunc(rep.Datasets, func(a, b DatasetFixity) int { return strings.Compare(a.Dataset, b.Dataset) })
	return rep, nil
}

// newFixityJob is the job that runs fixity on one repository.
func (a *Agent) newFixityJob(rc *RuntimeContext, repo string, opts FixityOptions) jobs.Job {
	return jobs.New(jobs.Info{
		Kind:        "fixity",
		LockKey:     "fixity:" + repo,
		IfLocked:    jobs.LockSkip,
		Description: "fixity " + repo,
		Retry:       &jobs.RetryPolicy{MaxAttempts: 1}, // the next run picks up where this one stopped
	}, func(ctx context.Context) error {
		ctx = shell.ContextWithLogger(ctx, jobs.Logger(ctx))
		if a.worker == nil {
			_, err := a.mgr.Fixity(ctx, rc, repo, opts)
			return err
		}
		// A repository's job: the default priority.
		spec := WorkerSpec{Kind: kindFixity, Repository: repo, Fixity: opts}
		_, err := a.runInWorker(ctx, rc, rc.Shell(), spec, "fixity of repository "+repo)
		return err
	})
}

// preservationEntries are the schedules of replication and fixity.
func (a *Agent) preservationEntries(rc *RuntimeContext) []jobs.Entry {
	var out []jobs.Entry
	for _, s := range rc.Config.Sources {
		name := s.Name
		if s.Replicate != nil && s.Replicate.Schedule != "" {
			out = append(out, jobs.Entry{Name: "replicate/" + name, Schedule: s.Replicate.Schedule, Run: func(context.Context) { a.submitReplicateLogged(name) }})
		}
		for _, ds := range s.Datasets {
			if ds.Replicate != nil && ds.Replicate.Schedule != "" && (s.Replicate == nil || ds.Replicate.Schedule != s.Replicate.Schedule) {
				dsName := ds.Name
				out = append(out, jobs.Entry{Name: "replicate/" + name + "/" + dsName, Schedule: ds.Replicate.Schedule, Run: func(context.Context) {
					rc := a.cm.Current()
					if src := rc.Source(name); src != nil {
						if _, err := a.runner.Submit(a.ctx, a.newReplicateJob(rc, src, dsName)); err != nil && !errors.Is(err, jobs.ErrAlreadyRunning) {
							a.log.Error("cannot start replication", "source", name, "dataset", dsName, "error", err)
						}
					}
				}})
			}
		}
	}
	for _, r := range rc.Config.Repositories {
		if r.Fixity == nil || r.Fixity.Schedule == "" {
			continue
		}
		repo := r.Name
		out = append(out, jobs.Entry{Name: "fixity/" + repo, Schedule: r.Fixity.Schedule, Run: func(context.Context) { a.submitFixityLogged(repo) }})
	}
	return out
}

func (a *Agent) submitReplicateLogged(source string) {
	if _, err := a.submitReplicate(a.ctx, source, true); err != nil && a.ctx.Err() == nil {
		a.log.Error("cannot start replication", "source", source, "error", err)
	}
}

func (a *Agent) submitFixityLogged(repo string) {
	rc := a.cm.Current()
	if _, err := a.runner.Submit(a.ctx, a.newFixityJob(rc, repo, FixityOptions{})); err != nil && !errors.Is(err, jobs.ErrAlreadyRunning) && a.ctx.Err() == nil {
		a.log.Error("cannot start fixity", "repository", repo, "error", err)
	}
}

// serveRunPreservation is POST /api/run?kind=replicate&source=NAME and
// POST /api/run?kind=fixity&repository=NAME[&all=1&deep=1].
func (a *Agent) serveRunPreservation(w http.ResponseWriter, r *http.Request, kind string) {
	q := r.URL.Query()
	rc := a.cm.Current()
	switch kind {
	case "replicate":
		name := q.Get("source")
		if rc.Source(name) == nil {
			httpError(w, http.StatusNotFound, "no source "+strconv.Quote(name))
			return
		}
		ids, err := a.submitReplicate(r.Context(), name, false)
		if err != nil {
			httpError(w, http.StatusUnprocessableEntity, err.Error())
			return
		}
		writeJSON(w, map[string]any{"kind": kind, "source": name, "jobs": ids})
	case "fixity":
		name := q.Get("repository")
		if rc.Config.Repository(name) == nil {
			httpError(w, http.StatusNotFound, "no repository "+strconv.Quote(name))
			return
		}
		opts := FixityOptions{All: q.Get("all") == "1" || q.Get("all") == "true", Deep: q.Get("deep") == "1" || q.Get("deep") == "true"}
		id, err := a.runner.Submit(a.ctx, a.newFixityJob(rc, name, opts))
		if errors.Is(err, jobs.ErrAlreadyRunning) {
			httpError(w, http.StatusConflict, err.Error())
			return
		}
		if err != nil {
			httpError(w, http.StatusServiceUnavailable, err.Error())
			return
		}
		writeJSON(w, map[string]any{"kind": kind, "repository": name, "jobs": []string{id}})
	}
}

// startFixity runs the fixity of repositories marked run_on_start once the
// agent's first ingests and replications are through (at most
// startFixityWait after the start), so that the first run has their packs
// to verify.
func (a *Agent) startFixity(rc *RuntimeContext) {
	var repos []string
	for _, r := range rc.Config.Repositories {
		if r.Fixity != nil && r.Fixity.RunOnStart {
			repos = append(repos, r.Name)
		}
	}
	if len(repos) == 0 {
		return
	}
	ingests := false
	for _, s := range rc.Config.Sources {
		ingests = ingests || s.RunOnStart
	}
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		deadline := time.NewTimer(startFixityWait)
		defer deadline.Stop()
		tick := time.NewTicker(500 * time.Millisecond)
		defer tick.Stop()
		for !a.startWorkDone(ingests) {
			select {
			case <-a.ctx.Done():
				return
			case <-deadline.C:
				a.log.Info("starting fixity while the first backups still run")
			case <-tick.C:
				continue
			}
			break
		}
		for _, r := range repos {
			a.submitFixityLogged(r)
		}
	}()
}

// startFixityWait bounds how long the start's fixity waits for ingests.
const startFixityWait = 45 * time.Second

// startWorkDone reports whether no ingest or replication is pending or
// running, and (when ingests were started) at least one has finished.
func (a *Agent) startWorkDone(ingests bool) bool {
	st := a.runner.Status()
	for _, j := range append(st.Pending, st.Running...) {
		if j.Kind == "ingest" || j.Kind == "replicate" {
			return false
		}
	}
	if !ingests {
		return true
	}
	for _, j := range st.Done {
		if j.Kind == "ingest" {
			return true
		}
	}
	return false
}
