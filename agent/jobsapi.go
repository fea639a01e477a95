package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/custos-backup/custos/jobs"
	"github.com/custos-backup/custos/shell"
)

// JobRequest is the body of POST /api/jobs: what to run. Ingest needs
// source and dataset; restore needs a target and either a pattern or a
// source (and optionally a dataset and atom) to build one from.
type JobRequest struct {
	Kind    string `json:"kind"`
	Source  string `json:"source,omitempty"`
	Dataset string `json:"dataset,omitempty"`
	// Restore only.
	Atom      string    `json:"atom,omitempty"`
	Pattern   string    `json:"pattern,omitempty"`
	Target    string    `json:"target,omitempty"`
	Host      string    `json:"host,omitempty"` // "" this host, "*" any host
	OlderThan time.Time `json:"older_than,omitzero"`
	// Retention: the repository whose retention to run. Restore: the copy
	// to restore from ("" = the dataset's own, or a replica).
	Repository string `json:"repository,omitempty"`
	// Sync: the peer to sync with alone ("" = the repositories, then
	// every peer).
	Peer string `json:"peer,omitempty"`
}

// jobEvents fans job status changes out to the subscribers of one job.
// A subscriber that does not keep up loses events (counted and told),
// and never blocks the runner or other subscribers.
type jobEvents struct {
	mu   sync.Mutex
	subs map[string]map[*jobSub]struct{}
}

type jobSub struct {
	ch   chan jobs.Status
	mu   sync.Mutex
	lost int
}

// jobEventBuffer is how far a subscriber may fall behind before it loses
// events: a job has a handful of state changes, so only a stuck reader
// reaches it.
const jobEventBuffer = 16

func newJobEvents() *jobEvents { return &jobEvents{subs: map[string]map[*jobSub]struct{}{}} }

func (e *jobEvents) subscribe(id string) (*jobSub, func()) {
	s := &jobSub{ch: make(chan jobs.Status, jobEventBuffer)}
	e.mu.Lock()
	if e.subs[id] == nil {
		e.subs[id] = map[*jobSub]struct{}{}
	}
	e.subs[id][s] = struct{}{}
	e.mu.Unlock()
	return s, func() {
		e.mu.Lock()
		delete(e.subs[id], s)
		if len(e.subs[id]) == 0 {
			delete(e.subs, id)
		}
		e.mu.Unlock()
	}
}

func (e *jobEvents) publish(st jobs.Status) {
	e.mu.Lock()
	defer e.mu.Unlock()
	for s := range e.subs[st.ID] {
		select {
		case s.ch <- st:
		default:
			s.mu.Lock()
			s.lost++
			s.mu.Unlock()
		}
	}
}

// takeLost returns and resets the count of events this subscriber lost.
func (s *jobSub) takeLost() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := s.lost
	s.lost = 0
	return n
}

// serveCreateJob is POST /api/jobs. Nothing starts unless the request is
// valid: malformed JSON, unknown kinds, sources and datasets get a 4xx.
func (a *Agent) serveCreateJob(w http.ResponseWriter, r *http.Request) {
	var req JobRequest
	dec := json.NewDecoder(io.LimitReader(r.Body, 1<<20))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		httpError(w, http.StatusBadRequest, "the body must be a JSON job request: "+err.Error())
		return
	}
	var (
		job  jobs.Job
		code int
		err  error
	)
	switch req.Kind {
	case "ingest":
		job, code, err = a.ingestJob(req)
	case "restore":
		job, code, err = a.restoreJob(req)
	case "sync":
		job, code, err = a.syncJob(req)
	case "retention":
		job, code, err = a.retentionJob(req)
	case "":
		code, err = http.StatusBadRequest, errors.New(`"kind" is missing (ingest, restore, sync or retention)`)
	default:
		code, err = http.StatusBadRequest, fmt.Errorf("unknown kind %q (ingest, restore, sync or retention)", req.Kind)
	}
	if err != nil {
		httpError(w, code, err.Error())
		return
	}
	id, err := a.runner.Submit(a.ctx, job)
	if errors.Is(err, jobs.ErrAlreadyRunning) {
		httpError(w, http.StatusConflict, err.Error())
		return
	}
	if err != nil {
		httpError(w, http.StatusServiceUnavailable, err.Error())
		return
	}
	w.Header().Set("Location", "/api/jobs/"+id)
	w.WriteHeader(http.StatusCreated)
	st, _ := a.runner.Get(id)
	_ = json.NewEncoder(w).Encode(map[string]any{"id": id, "job": st})
}

func (a *Agent) ingestJob(req JobRequest) (jobs.Job, int, error) {
	rc := a.cm.Current()
	src := rc.Source(req.Source)
	if src == nil {
		return nil, http.StatusNotFound, fmt.Errorf("no source %q in the configuration", req.Source)
	}
	if req.Dataset == "" {
		return nil, http.StatusBadRequest, errors.New(`"dataset" is missing (POST /api/run?source= runs every dataset of a source)`)
	}
	// Listing the datasets may run datasets_command: bounded like any.
	ctx, cancel := context.WithTimeout(a.ctx, time.Minute)
	defer cancel()
	dss, err := Datasets(ctx, rc.Shell().WithDir(rc.Config.Dir), src)
	if err != nil {
		return nil, http.StatusBadGateway, err
	}
	for _, ds := range dss {
		if ds.Name == req.Dataset {
			return a.newIngestJob(rc, src, NewBackup(rc.Config.Hostname, time.Now()), ds), 0, nil
		}
	}
	return nil, http.StatusNotFound, fmt.Errorf("source %s has no dataset %q", src.Name, req.Dataset)
}

func (a *Agent) restoreJob(req JobRequest) (jobs.Job, int, error) {
	pattern := req.Pattern
	if pattern == "" {
		if req.Source == "" {
			return nil, http.StatusBadRequest, errors.New(`a restore needs "pattern" or "source" (with "dataset" and "atom" optional)`)
		}
		pattern = req.Source + "/" + orStar(req.Dataset) + "/" + orStar(req.Atom)
	}
	if req.Target == "" {
		return nil, http.StatusBadRequest, errors.New(`a restore needs "target", the folder to restore into`)
	}
	if !strings.HasPrefix(req.Target, "/") {
		return nil, http.StatusBadRequest, errors.New(`"target" must be an absolute path: the agent's working folder is not the caller's`)
	}
	rreq := RestoreRequest{Pattern: pattern, Host: req.Host, OlderThan: req.OlderThan, Target: req.Target, Repository: req.Repository}
	return jobs.New(jobs.Info{
		Kind:        "restore",
		Description: "restore " + pattern,
		Source:      req.Source,
		Dataset:     req.Dataset,
		Retry:       &jobs.RetryPolicy{MaxAttempts: 1}, // a person waits for it and decides
	}, func(ctx context.Context) error {
		ctx = shell.ContextWithLogger(ctx, jobs.Logger(ctx))
		if a.worker == nil {
			_, err := a.mgr.Restore(ctx, rreq)
			return err
		}
		rc := a.cm.Current()
		spec := WorkerSpec{Kind: kindRestore, Source: req.Source, Dataset: req.Dataset, Restore: &WorkerRestore{
			Pattern: rreq.Pattern, Host: rreq.Host, OlderThan: rreq.OlderThan, Target: rreq.Target, Repository: rreq.Repository}}
		_, err := a.runInWorker(ctx, rc, rc.SourceShell(rc.Source(req.Source)), spec, "restore "+pattern)
		return err
	}), 0, nil
}

func (a *Agent) retentionJob(req JobRequest) (jobs.Job, int, error) {
	r := a.cm.Current().Config.Repository(req.Repository)
	switch {
	case req.Repository == "":
		return nil, http.StatusBadRequest, errors.New(`a retention run needs "repository"`)
	case r == nil:
		return nil, http.StatusNotFound, fmt.Errorf("no repository %q in the configuration", req.Repository)
	case r.Retention == nil:
		return nil, http.StatusBadRequest, fmt.Errorf("repository %s has no retention settings in agent.yml", req.Repository)
	}
	return a.newRetentionJob(r.Name), 0, nil
}

func orStar(s string) string {
	if s == "" {
		return "*"
	}
	return s
}

// serveJob is GET /api/jobs/{id}: state, progress and result.
func (a *Agent) serveJob(w http.ResponseWriter, r *http.Request) {
	st, ok := a.runner.Get(r.PathValue("id"))
	if !ok {
		httpError(w, http.StatusNotFound, fmt.Sprintf("no job %q (finished jobs are kept for a while only)", r.PathValue("id")))
		return
	}
	writeJSON(w, st)
}

// serveDeleteJob is DELETE /api/jobs/{id}: cancel it and wait (briefly)
// until its processes are gone, so that the answer is the final state.
func (a *Agent) serveDeleteJob(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if err := a.runner.Cancel(id); err != nil {
		if st, ok := a.runner.Get(id); ok {
			writeJSON(w, st) // already done: nothing to cancel
			return
		}
		httpError(w, http.StatusNotFound, fmt.Sprintf("no job %q", id))
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), shell.DefaultKillGrace+5*time.Second)
	defer cancel()
	st, err := a.runner.Wait(ctx, id)
	if err != nil {
		st, _ = a.runner.Get(id)
		w.WriteHeader(http.StatusAccepted) // still stopping
	}
	writeJSON(w, st)
}

// serveJobEvents is GET /api/jobs/{id}/events: the job's status as
// server-sent events ("status"), at every state change and once a second
// for progress while it runs, ending after the final state. A reader that
// falls behind gets a "lost" event with the number of changes it missed.
func (a *Agent) serveJobEvents(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	sub, unsubscribe := a.jobEvents.subscribe(id) // before Get: no change is lost
	defer unsubscribe()
	st, ok := a.runner.Get(id)
	if !ok {
		httpError(w, http.StatusNotFound, fmt.Sprintf("no job %q", id))
		return
	}
	rc := http.NewResponseController(w)
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-cache")
	h.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	send := func(event string, v any) bool {
		b, err := json.Marshal(v)
		if err != nil {
			return false
		}
		if _, err := fmt.Fprintf(w, "event: %s\ndata: %s\n\n", event, b); err != nil {
			return false
		}
		return rc.Flush() == nil
	}
	tick := time.NewTicker(progressInterval)
	defer tick.Stop()
	for {
		if n := sub.takeLost(); n > 0 && !send("lost", map[string]int{"lost": n}) {
			return
		}
		if !send("status", st) || st.State == jobs.StateDone {
			return
		}
		select {
		case <-r.Context().Done():
			return
		case <-a.ctx.Done():
			return
		case st = <-sub.ch:
		case <-tick.C:
			if st, ok = a.runner.Get(id); !ok {
				return
			}
		}
	}
}
