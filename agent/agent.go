// Package agent is the custos agent: its configuration (agent.yml with
// sources/ and handlers/ beside it; strict loading that reports every
// problem with file, line and field), the ConfigManager that swaps it on
// SIGHUP, the Manager that turns sources into backups and catalog records
// (and back, on restore), and the Agent daemon that schedules ingest jobs
// and serves the status page, JSON API and metrics.
//
// # HTTP
//
// The status page (/, with /static/status.js and .css embedded from web/)
// is static: it renders StatusReport from the event stream /api/events
// (server-sent "status" events: one on connect, one per job state change,
// one a second while jobs run) and inserts every value as text. Its
// buttons call POST /api/run?source=NAME and POST /api/jobs/{id}/cancel;
// POSTs from another origin are refused. GET /api/status, /api/jobs,
// /api/backups and /api/schedule answer JSON; /metrics and /debug/pprof/
// are there too.
package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/custos-backup/custos/jobs"
	"github.com/custos-backup/custos/metadata"
	"github.com/custos-backup/custos/shell"
)

// Agent is the daemon: it schedules each source's ingest jobs, runs them in
// queues, and serves its status over HTTP.
type Agent struct {
	cm        *ConfigManager
	catalog   *Catalog
	mgr       *Manager
	runner    *jobs.Runner
	sched     *jobs.Scheduler
	metrics   *metrics
	log       *slog.Logger
	started   time.Time
	changes   *changes                          // wakes the status event streams
	jobEvents *jobEvents                        // feeds /api/jobs/{id}/events
	backups   catalogCache[[]*metadata.Backup]  // the catalog parts of the status page
	outcomes  catalogCache[[]*metadata.Outcome] // last outcome per kind and dataset
	health    catalogCache[healthView]          // banner and repository panel

	ctx    context.Context // lives until Stop
	cancel context.CancelFunc
	wg     sync.WaitGroup // source runs listing their datasets
	hooks  sync.WaitGroup // on_failure_command runs
	worker *WorkerOptions // nil: jobs run in this process

	// catalogWarnings: what the catalog check at start or the last sync
	// found wrong between the catalog and the repositories.
	warnMu          sync.Mutex
	catalogWarnings []string
	peerWarnings    map[string][]string // by peer: its recorded reports, its last failure
}

// Options tune an Agent. The zero value works.
type Options struct {
	Logger *slog.Logger
	// Retry overrides the retry policy of ingest jobs (tests make it fast).
	Retry *jobs.RetryPolicy
	// Worker, when set, runs each job's data work in a worker process.
	Worker *WorkerOptions
}

// New builds an agent on a loaded configuration and an open catalog.
func New(cm *ConfigManager, catalog *Catalog, opts Options) *Agent {
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	a := &Agent{cm: cm, catalog: catalog, log: log, started: time.Now(), changes: newChanges(), worker: opts.Worker}
	a.metrics = newMetrics()
	a.jobEvents = newJobEvents()
	rc := cm.Current()
	a.runner = jobs.NewRunner(jobs.Options{
		Queues: jobs.QueueSpec{Workers: rc.Config.Queues},
		Retry:  opts.Retry,
		Logger: log,
		OnChange: func(s jobs.Status) {
			a.metrics.jobChanged(s)
			a.jobEvents.publish(s)
			if s.State == jobs.StateDone && (s.Result == jobs.ResultError || s.Result == jobs.ResultTimeout) {
				a.hooks.Add(1)
				go func() {
					defer a.hooks.Done()
					a.runFailureHook(s)
				}()
			}
			if s.State == jobs.StateDone {
				a.hooks.Add(1)
				go func() {
					defer a.hooks.Done()
					a.recordOutcome(s)
				}()
				a.backups.invalidate() // an ingest wrote its record before it finished
			}
			a.changes.notify()
		},
	})
	a.metrics.watchRunner(a.runner)
	a.metrics.watchSpool(catalog.Store.SpoolDepth, catalog.Store.SpoolFailed)
	a.sched = jobs.NewScheduler(jobs.SchedulerOptions{Seed: rc.Seed, Logger: log})
	a.mgr = NewManager(cm, catalog.Finder(), a.metrics, log)
	a.ctx, a.cancel = context.WithCancel(context.Background())
	return a
}

// Manager returns the agent's Manager (find and restore use it in process).
func (a *Agent) Manager() *Manager { return a.mgr }

// Runner returns the job runner (status).
func (a *Agent) Runner() *jobs.Runner { return a.runner }

// Schedule lists the scheduled sources with their next run.
func (a *Agent) Schedule() []jobs.EntryStatus { return a.sched.Entries() }

// Start installs the schedules, starts the scheduler and submits the sources
// marked run_on_start.
func (a *Agent) Start(ctx context.Context) error {
	rc := a.cm.Current()
	if err := a.sched.Set(a.entries(rc)); err != nil {
		return fmt.Errorf("schedules: %w", err)
	}
	a.sched.Start(a.ctx)
	a.changes.notify() // the schedule has its next times now
	a.catalog.Store.StartUpdates(a.ctx, a.activeJobs, 5*time.Second)
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		a.checkCatalog(a.ctx)
	}()
	for _, s := range rc.Config.Sources {
		if s.RunOnStart {
			a.SubmitSource(s.Name)
		}
	}
	a.startFixity(rc)
	cfg := rc.Config
	repos := make([]string, 0, len(cfg.Repositories))
	for _, r := range cfg.Repositories {
		repos = append(repos, r.Name+"="+r.URL)
	}
	catalog := "embedded etcd in " + cfg.MetaDB.DataDir
	if !cfg.MetaDB.Embedded {
		catalog = "etcd " + strings.Join(cfg.MetaDB.Endpoints, ",")
	}
	a.log.Info("agent started", "version", Version(), "pid", os.Getpid(), "host", cfg.Hostname, "config", cfg.File,
		"work_dir", cfg.WorkDir, "repositories", strings.Join(repos, " "), "catalog", catalog, "sources", len(cfg.Sources))
	for _, e := range a.sched.Entries() {
		a.log.Info("scheduled", "entry", e.Name, "schedule", e.Schedule, "next", e.Next.Format(time.RFC3339))
	}
	return nil
}

func (a *Agent) entries(rc *RuntimeContext) []jobs.Entry {
	var out []jobs.Entry
	for _, s := range rc.Config.Sources {
		if s.Schedule == "" {
			continue
		}
		name := s.Name
		out = append(out, jobs.Entry{Name: scheduleName(name), Schedule: s.Schedule, Run: func(context.Context) { a.SubmitSource(name) }})
	}
	if s := rc.Config.Sync.Schedule; s != "" {
		out = append(out, jobs.Entry{Name: syncScheduleName, Schedule: s, Run: func(context.Context) { a.submit(a.newSyncJob()) }})
	}
	out = append(out, a.peerEntries(rc)...)
	for _, r := range rc.Config.Repositories {
		if r.Retention == nil {
			continue
		}
		name := r.Name
		out = append(out, jobs.Entry{Name: retentionScheduleName(name), Schedule: r.Retention.Schedule, Run: func(context.Context) { a.submit(a.newRetentionJob(name)) }})
	}
	return append(out, a.preservationEntries(rc)...)
}

// submit queues a scheduled job that is not a source's; one still
// running from the last tick is not queued twice.
func (a *Agent) submit(j jobs.Job) {
	if _, err := a.runner.Submit(a.ctx, j); err != nil && !errors.Is(err, jobs.ErrAlreadyRunning) && a.ctx.Err() == nil {
		a.log.Error("cannot start a scheduled job", "job", j.Info().Description, "error", err)
	}
}

// Reload reads the configuration again and applies it: schedules and queue
// limits change at once; running jobs finish with the config they started
// with. On error the running configuration stays and the error is returned
// (and logged). SIGHUP calls this.
func (a *Agent) Reload() error {
	if err := a.cm.Reload(); err != nil {
		return err
	}
	defer a.changes.notify()
	rc := a.cm.Current()
	a.runner.SetQueues(jobs.QueueSpec{Workers: rc.Config.Queues})
	if err := a.sched.Set(a.entries(rc)); err != nil {
		a.log.Error("config reload: schedules not updated", "error", err)
		return fmt.Errorf("schedules: %w", err)
	}
	return nil
}

// SubmitSource lists a source's datasets and submits one ingest job per
// dataset, all belonging to one backup. It returns at once; the listing
// (which may run datasets_command) happens in the background.
func (a *Agent) SubmitSource(name string) {
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		if _, err := a.submitSource(a.ctx, name); err != nil && a.ctx.Err() == nil {
			a.log.Error("cannot start backup", "source", name, "error", err)
		}
	}()
}

// submitSource submits the ingest jobs of one source run and returns their
// ids.
func (a *Agent) submitSource(ctx context.Context, name string) ([]string, error) {
	rc := a.cm.Current()
	src := rc.Source(name)
	if src == nil {
		return nil, fmt.Errorf("no source %q in the configuration", name)
	}
	if src.DatasetsCommand != "" {
		// The command may take long or fail: it runs as a job of its own
		// (visible, cancellable, bounded by the source's timeout), which
		// then submits the datasets' jobs. The caller gets its id.
		id, err := a.runner.Submit(ctx, a.newListJob(rc, src))
		if errors.Is(err, jobs.ErrAlreadyRunning) {
			return nil, nil
		}
		if err != nil {
			return nil, fmt.Errorf("source %s: %w", src.Name, err)
		}
		return []string{id}, nil
	}
	dss, err := Datasets(ctx, rc.Shell().WithDir(rc.Config.Dir), src)
	if err != nil {
		a.metrics.sourceListFailed(name)
		return nil, err
	}
	return a.submitDatasets(ctx, rc, src, dss)
}

// submitDatasets submits one ingest job per dataset, all parts of one
// backup, and returns their ids; datasets already running are skipped.
func (a *Agent) submitDatasets(ctx context.Context, rc *RuntimeContext, src *SourceSpec, dss []Dataset) ([]string, error) {
	b := NewBackup(rc.Config.Hostname, time.Now())
	var ids []string
	for _, ds := range dss {
		id, err := a.runner.Submit(ctx, a.newIngestJob(rc, src, b, ds))
		if errors.Is(err, jobs.ErrAlreadyRunning) {
			continue
		}
		if err != nil {
			return ids, fmt.Errorf("dataset %s/%s: %w", src.Name, ds.Name, err)
		}
		ids = append(ids, id)
	}
	return ids, nil
}

// newListJob runs a source's datasets_command as a job on the ingest
// queue, then submits the ingest jobs of the datasets it printed.
func (a *Agent) newListJob(rc *RuntimeContext, src *SourceSpec) jobs.Job {
	return jobs.New(jobs.Info{
		Kind:        "ingest",
		LockKey:     "list:" + src.Name,
		IfLocked:    jobs.LockSkip,
		Description: "list the datasets of " + src.Name,
		Source:      src.Name,
	}, func(ctx context.Context) error {
		ctx = shell.ContextWithLogger(ctx, jobs.Logger(ctx))
		dss, err := Datasets(ctx, rc.SourceShell(src).WithDir(rc.Config.Dir), src)
		if err != nil {
			a.metrics.sourceListFailed(src.Name)
			return err
		}
		ids, err := a.submitDatasets(a.ctx, rc, src, dss)
		jobs.Logger(ctx).Info("datasets listed", "datasets", len(dss), "jobs", strings.Join(ids, ","))
		return err
	})
}

// newIngestJob is the job that backs up one dataset of a source as part
// of backup b.
func (a *Agent) newIngestJob(rc *RuntimeContext, src *SourceSpec, b *metadata.Backup, ds Dataset) jobs.Job {
	return jobs.New(jobs.Info{
		Kind:        "ingest",
		LockKey:     "ingest:" + src.Name + "/" + ds.Name,
		IfLocked:    jobs.LockSkip, // a schedule must not pile up runs of a slow dataset
		Description: "back up " + src.Name + "/" + ds.Name,
		Source:      src.Name,
		Dataset:     ds.Name,
		Timeout:     src.Timeout,
	}, func(ctx context.Context) error {
		// Command output in the log then names the job, source and
		// dataset.
		ctx = shell.ContextWithLogger(ctx, jobs.Logger(ctx))
		var res *DatasetResult
		if a.worker != nil {
			res = a.ingestInWorker(ctx, rc, src, b, ds)
		} else {
			res = a.mgr.Ingest(ctx, rc, src, b, ds)
		}
		if res.Err != nil {
			return res.Err
		}
		a.afterIngest(rc, src, ds.Name)
		return nil
	})
}

// activeJobs is what the agent publishes in the catalog about its running
// jobs (bound to a lease: they vanish if the agent dies).
func (a *Agent) activeJobs() []metadata.JobStatus {
	host := a.cm.Current().Config.Hostname
	var out []metadata.JobStatus
	for _, s := range a.runner.Running() {
		p := s.Progress
		out = append(out, metadata.JobStatus{
			Host: host, JobID: s.ID, Kind: s.Kind, Source: s.Source, Dataset: s.Dataset, State: string(s.State), StartedAt: s.Started, Message: s.Description,
			Progress: &metadata.JobProgress{Files: p.Files, Bytes: p.Bytes, TotalFiles: p.TotalFiles, TotalBytes: p.TotalBytes, Current: p.Current},
		})
	}
	return out
}

// Stop stops the scheduler, cancels running jobs and waits for them (until
// ctx ends), then closes the repositories. The catalog is the caller's.
func (a *Agent) Stop(ctx context.Context) error {
	var errs []error
	errs = append(errs, a.sched.Stop(ctx))
	a.cancel()
	a.wg.Wait()
	errs = append(errs, a.runner.Close(ctx))
	a.hooks.Wait() // the runner is closed: no job can fail anew
	errs = append(errs, a.mgr.Close())
	return errors.Join(errs...)
}

// runFailureHook runs on_failure_command (the source's, else the agent's)
// through the Shell after a job's final failure, so an operator can page
// or mail without scraping logs. The outcome is in the environment, never
// on the command line.
func (a *Agent) runFailureHook(s jobs.Status) {
	rc := a.cm.Current()
	command := rc.Config.OnFailureCommand
	if src := rc.Source(s.Source); src != nil && src.OnFailureCommand != "" {
		command = src.OnFailureCommand
	}
	if command == "" {
		return
	}
	env := []string{
		"CUSTOS_JOB_ID=" + s.ID, "CUSTOS_JOB_KIND=" + s.Kind, "CUSTOS_HOST=" + rc.Config.Hostname,
		"CUSTOS_SOURCE=" + s.Source, "CUSTOS_DATASET=" + s.Dataset,
		"CUSTOS_RESULT=" + string(s.Result), "CUSTOS_ERROR=" + s.Error,
		"CUSTOS_ATTEMPTS=" + strconv.Itoa(s.Attempts),
		"CUSTOS_STARTED=" + s.Started.UTC().Format(time.RFC3339), "CUSTOS_FINISHED=" + s.Finished.UTC().Format(time.RFC3339),
	}
	ctx, cancel := context.WithTimeout(a.ctx, failureHookTimeout)
	defer cancel()
	log := a.log.With("job", s.ID, "source", s.Source, "dataset", s.Dataset)
	if err := rc.Shell().WithEnv(env...).WithDir(rc.Config.Dir).WithLogger(log).Run(ctx, command); err != nil {
		log.Error("on_failure_command failed", "error", err)
	}
}

// failureHookTimeout bounds on_failure_command: a hung mailer must not
// pile up processes, one per failed job.
const failureHookTimeout = 5 * time.Minute

// recordOutcome writes a finished job's outcome to the catalog, retrying
// while etcd is unreachable, for a bounded time: an outcome is evidence
// for people, not data; the backup record itself is spooled.
func (a *Agent) recordOutcome(s jobs.Status) {
	o := &metadata.Outcome{
		Host: a.cm.Current().Config.Hostname, Kind: s.Kind, Source: s.Source, Dataset: s.Dataset, JobID: s.ID,
		Start: s.Started, End: s.Finished, Result: string(s.Result), Error: s.Error, Bytes: s.Progress.Bytes, Attempts: s.Attempts,
	}
	if o.End.IsZero() {
		o.End = time.Now()
	}
	policy := jobs.RetryPolicy{MaxAttempts: 5, InitialBackoff: time.Second, MaxBackoff: 15 * time.Second}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(a.ctx), outcomeTimeout)
	defer cancel()
	for attempt := 1; ; attempt++ {
		actx, cancel := context.WithTimeout(ctx, outcomeAttemptTimeout)
		err := a.catalog.Store.PutOutcome(actx, o)
		cancel()
		if err == nil {
			a.outcomes.invalidate()
			a.health.invalidate()
			a.changes.notify()
			return
		}
		if attempt >= policy.MaxAttempts || errors.Is(err, metadata.ErrInvalid) {
			a.log.Warn("job outcome not recorded in the catalog", "job", s.ID, "source", s.Source, "dataset", s.Dataset, "error", err)
			return
		}
		select {
		case <-ctx.Done():
			a.log.Warn("job outcome not recorded in the catalog", "job", s.ID, "source", s.Source, "dataset", s.Dataset, "error", err)
			return
		case <-a.ctx.Done():
			// Stopping: one attempt was made; do not hold the stop up.
			a.log.Warn("job outcome not recorded in the catalog", "job", s.ID, "source", s.Source, "dataset", s.Dataset, "error", err)
			return
		case <-time.After(policy.Delay(attempt)):
		}
	}
}

// outcomeTimeout bounds the retries of one outcome write (and so how long
// a stopping agent waits for them).
const outcomeTimeout = 20 * time.Second

// outcomeAttemptTimeout bounds one write of an outcome, so that a stopping
// agent whose catalog is down waits for one attempt, not for all.
const outcomeAttemptTimeout = 3 * time.Second

// recordSetAside turns a spooled catalog record that the catalog refused
// for good into a failed ingest outcome of its dataset: the job reported ok
// when the record was spooled, but that backup is not findable, and the
// status, the banner, the fleet view and the metrics must say so.
func (a *Agent) recordSetAside(f metadata.FailedRecord) {
	a.log.Error("a backup's catalog record was refused for good; that backup is not findable", "backup", f.BackupID, "source", f.Source, "dataset", f.Dataset, "reason", f.Reason, "kept_in", f.File)
	st := jobs.Status{ID: "catalog-" + f.BackupID, Kind: "ingest", Source: f.Source, Dataset: f.Dataset, State: jobs.StateDone,
		Result: jobs.ResultError, Error: "the backup's catalog record was refused for good and set aside (" + f.File + "): " + f.Reason,
		Started: f.Time, Finished: f.Time, Attempts: 1}
	a.metrics.jobChanged(st)
	a.hooks.Add(1)
	go func() {
		defer a.hooks.Done()
		a.recordOutcome(st)
	}()
}
