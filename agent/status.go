package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/custos-backup/custos/jobs"
	"github.com/custos-backup/custos/metadata"
)

// StatusReport is everything the status page shows, as GET /api/status
// returns it and /api/events streams it.
type StatusReport struct {
	Host       string    `json:"host"`
	Version    string    `json:"version"`
	PID        int       `json:"pid"`
	Config     string    `json:"config"`
	Generation int       `json:"generation"`
	DryRun     bool      `json:"dry_run,omitempty"`
	Now        time.Time `json:"now"`     // the agent's clock: the page counts ages from it
	Started    time.Time `json:"started"` // when the agent started
	SpoolDepth int       `json:"spool_depth"`
	// SpoolFailed lists catalog records that etcd can never take, set
	// aside in the spool: their backups are not findable.
	SpoolFailed []metadata.FailedRecord `json:"spool_failed"`

	Sources []SourceStatus `json:"sources"`
	Pending []jobs.Status  `json:"pending"`
	Running []jobs.Status  `json:"running"`
	Done    []jobs.Status  `json:"done"` // newest first, at most statusDoneLimit

	// Backups are this host's newest backups in the catalog, newest first.
	Backups []*metadata.Backup `json:"backups"`
	// Outcomes are the newest outcome of every kind and dataset of this
	// host from the catalog: they outlive a restart, unlike Done.
	Outcomes []*metadata.Outcome `json:"outcomes"`
	// Health lists what is wrong, for the page's banner; empty when all
	// is well.
	Health []Problem `json:"health"`
	// Repositories are the configured repositories with the catalog's
	// totals and fixity evidence.
	Repositories []RepositoryPanel `json:"repositories"`
	// CatalogError says why Backups may be missing or stale.
	CatalogError string `json:"catalog_error,omitempty"`
	// CatalogWarnings say where the catalog and the repositories
	// disagree (an empty or incomplete catalog, records of forgotten
	// snapshots), as the check at start or the last sync found it; a
	// sync repairs them.
	CatalogWarnings []string `json:"catalog_warnings"`
}

// SourceStatus is one configured source and its schedule.
type SourceStatus struct {
	Name       string    `json:"name"`
	Handler    string    `json:"handler"`
	Repository string    `json:"repository"`
	Schedule   string    `json:"schedule,omitempty"` // "" = only on demand
	RunOnStart bool      `json:"run_on_start,omitempty"`
	Next       time.Time `json:"next,omitzero"`
	Prev       time.Time `json:"prev,omitzero"`
}

const (
	statusDoneLimit    = 30
	statusBackupsLimit = 15
	// backupsMaxAge bounds how stale the catalog part of a report may be;
	// a finished job makes it stale at once.
	backupsMaxAge = 10 * time.Second
	// backupsTimeout keeps a status request fast while etcd is away.
	backupsTimeout = 2 * time.Second
	// progressInterval is how often the event stream sends a report while
	// jobs run (their byte counters move without any state change).
	progressInterval = time.Second
	// heartbeatInterval keeps idle event streams open through proxies.
	heartbeatInterval = 15 * time.Second
)

// changes wakes event streams when something they show changed.
type changes struct {
	mu sync.Mutex
	ch chan struct{}
}

func newChanges() *changes { return &changes{ch: make(chan struct{})} }

// wait returns a channel that is closed at the next notify.
func (c *changes) wait() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.ch
}

func (c *changes) notify() {
	c.mu.Lock()
	defer c.mu.Unlock()
	close(c.ch)
	c.ch = make(chan struct{})
}

// catalogCache keeps a catalog part of the status report (backups,
// outcomes), so that every open page polling once a second does not become
// an etcd range read.
type catalogCache[T any] struct {
	// stale is apart from mu: the runner's OnChange sets it and must not
	// wait for a refresh in progress.
	stale   atomic.Bool
	mu      sync.Mutex
	fetched time.Time
	val     T
	err     error
}

func (c *catalogCache[T]) invalidate() { c.stale.Store(true) }

// get returns the cached value, refreshing it when it is old or stale. The
// lock is held during the refresh so that concurrent requests share one.
func (c *catalogCache[T]) get(ctx context.Context, fetch func(context.Context) (T, error)) (T, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.stale.Load() && !c.fetched.IsZero() && time.Since(c.fetched) < backupsMaxAge {
		return c.val, c.err
	}
	// Cleared before the read: a job that finishes during it marks the
	// cache stale again.
	c.stale.Store(false)
	// Not the caller's cancellation: the result is shared, and one page
	// closing must not leave "context canceled" for the others to see.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), backupsTimeout)
	defer cancel()
	v, err := fetch(ctx)
	c.fetched = time.Now()
	if err != nil {
		// Keep showing what was there; the page says it may be stale.
		c.err = err
		return c.val, err
	}
	c.val, c.err = v, nil
	return v, nil
}

// Status builds the status report.
func (a *Agent) Status(ctx context.Context) *StatusReport {
	rc := a.cm.Current()
	cfg := rc.Config
	s := a.runner.Status()
	done := s.Done
	if len(done) > statusDoneLimit {
		done = done[:statusDoneLimit]
	}
	r := &StatusReport{
		Host: cfg.Hostname, Version: Version(), PID: os.Getpid(), Config: cfg.File, Generation: rc.Generation, DryRun: cfg.DryRun,
		Now: time.Now(), Started: a.started, SpoolDepth: a.catalog.Store.SpoolDepth(),
		Sources: []SourceStatus{}, Pending: nonNil(s.Pending), Running: nonNil(s.Running), Done: nonNil(done),
		CatalogWarnings: a.currentCatalogWarnings(),
	}
	sched := map[string]jobs.EntryStatus{}
	for _, e := range a.Schedule() {
		sched[e.Name] = e
	}
	for _, src := range cfg.Sources {
		e := sched[scheduleName(src.Name)]
		r.Sources = append(r.Sources, SourceStatus{
			Name: src.Name, Handler: src.Handler, Repository: src.Repository,
			Schedule: src.Schedule, RunOnStart: src.RunOnStart, Next: e.Next, Prev: e.Prev,
		})
	}
	r.SpoolFailed, _ = a.catalog.Store.FailedRecords()
	if r.SpoolFailed == nil {
		r.SpoolFailed = []metadata.FailedRecord{}
	}
	// The catalog parts are read side by side: with the catalog down each
	// waits out its timeout, and the report must still come in time.
	var (
		wg                 sync.WaitGroup
		backupsErr, outErr error
	)
	wg.Go(func() {
		r.Backups, backupsErr = a.backups.get(ctx, func(ctx context.Context) ([]*metadata.Backup, error) {
			return a.catalog.Store.ListBackups(ctx, cfg.Hostname, statusBackupsLimit)
		})
	})
	wg.Go(func() {
		r.Outcomes, outErr = a.outcomes.get(ctx, func(ctx context.Context) ([]*metadata.Outcome, error) {
			return a.catalog.Store.LastOutcomes(ctx, cfg.Hostname)
		})
	})
	wg.Wait()
	if r.Backups == nil {
		r.Backups = []*metadata.Backup{}
	}
	if r.Outcomes == nil {
		r.Outcomes = []*metadata.Outcome{}
	}
	for _, err := range []error{backupsErr, outErr} {
		if err != nil && r.CatalogError == "" {
			r.CatalogError = err.Error()
		}
	}
	if a.catalog.Damaged != nil {
		r.CatalogError = a.catalog.Damaged.Error()
	}
	var hv healthView
	if r.CatalogError == "" {
		// Only with the catalog answering: it reads more of it.
		var err error
		hv, err = a.health.get(ctx, func(ctx context.Context) (healthView, error) {
			return a.loadHealth(ctx, cfg, r.Outcomes)
		})
		if err != nil {
			r.CatalogError = err.Error()
		}
	}
	r.Repositories = hv.repositories
	if r.Repositories == nil {
		r.Repositories = []RepositoryPanel{}
	}
	r.Health = problems(r, hv)
	return r
}

func (a *Agent) serveStatusJSON(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, a.Status(r.Context()))
}

// serveCancel cancels a pending or running job: POST /api/jobs/{id}/cancel.
func (a *Agent) serveCancel(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if err := a.runner.Cancel(id); err != nil {
		httpError(w, http.StatusNotFound, fmt.Sprintf("no pending or running job %q", id))
		return
	}
	writeJSON(w, map[string]string{"job": id, "state": "cancelling"})
}

// serveEvents streams status reports as server-sent events ("status"
// events, data = StatusReport JSON): one at once, one after every job
// state change, and one a second while jobs run, for their progress.
func (a *Agent) serveEvents(w http.ResponseWriter, r *http.Request) {
	rc := http.NewResponseController(w)
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-cache")
	h.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	send := func(rep *StatusReport) bool {
		b, err := json.Marshal(rep)
		if err != nil {
			a.log.Warn("status event", "error", err)
			return false
		}
		if _, err := fmt.Fprintf(w, "event: status\ndata: %s\n\n", b); err != nil {
			return false
		}
		return rc.Flush() == nil
	}
	heartbeat := time.NewTicker(heartbeatInterval)
	defer heartbeat.Stop()
	for {
		changed := a.changes.wait() // before building the report: no change is lost
		rep := a.Status(r.Context())
		if !send(rep) {
			return
		}
		var progress <-chan time.Time
		if len(rep.Running) > 0 {
			progress = time.After(progressInterval)
		}
	wait:
		for {
			select {
			case <-r.Context().Done():
				return
			case <-a.ctx.Done():
				// The agent stops: end the stream so that the HTTP
				// server's Shutdown does not wait for it.
				return
			case <-changed:
				// Let a burst of changes (a source's datasets starting
				// together) settle into one event.
				select {
				case <-time.After(100 * time.Millisecond):
				case <-r.Context().Done():
					return
				}
				break wait
			case <-progress:
				break wait
			case <-heartbeat.C:
				if _, err := fmt.Fprint(w, ": heartbeat\n\n"); err != nil || rc.Flush() != nil {
					return
				}
			}
		}
	}
}
