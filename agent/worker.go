package agent

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/custos-backup/custos/handlers"
	"github.com/custos-backup/custos/jobs"
	"github.com/custos-backup/custos/metadata"
	"github.com/custos-backup/custos/shell"
)

// WorkerOptions make the agent run each job's data work in a child
// process: the custos binary in worker mode ("custos worker KIND"),
// started through the Shell. The child runs at the source's (or the
// default) nice level and I/O class, in its own process group (a cancel
// or timeout kills all of it), and a crash or an out-of-memory kill fails
// one job, not the agent. Without WorkerOptions (tests of this package)
// the work runs in the agent's process.
type WorkerOptions struct {
	// Binary is the custos executable.
	Binary string
	// Env is added to the child's environment.
	Env []string
}

// Kinds of work a worker does: the job kinds whose data work leaves the
// agent's process.
const (
	kindIngest    = "ingest"
	kindRestore   = "restore"
	kindReplicate = "replicate"
	kindFixity    = "fixity"
	kindSync      = "sync"
	kindRetention = "retention"
)

// WorkerKinds lists the kinds "custos worker" accepts.
func WorkerKinds() []string {
	return []string{kindIngest, kindRestore, kindReplicate, kindFixity, kindSync, kindRetention}
}

// WorkerSpec is what the agent sends a worker on its standard input: one
// job's data work. Kind says which fields are used.
type WorkerSpec struct {
	Kind string `json:"kind"`
	// Ingest and replicate: the dataset.
	Source  string `json:"source,omitempty"`
	Dataset string `json:"dataset,omitempty"`
	// Ingest: its atoms and the backup it belongs to.
	Atoms      []handlers.Atom `json:"atoms,omitempty"`
	BackupID   string          `json:"backup_id,omitempty"`
	Host       string          `json:"host,omitempty"`
	BackupTime time.Time       `json:"backup_time,omitzero"`
	// Restore: what and where.
	Restore *WorkerRestore `json:"restore,omitempty"`
	// Fixity and retention: the repository.
	Repository string        `json:"repository,omitempty"`
	Fixity     FixityOptions `json:"fixity,omitzero"`
}

// WorkerRestore is a RestoreRequest without its Stdout (a worker's
// standard output is the protocol's).
type WorkerRestore struct {
	Pattern    string    `json:"pattern"`
	Host       string    `json:"host,omitempty"`
	OlderThan  time.Time `json:"older_than,omitzero"`
	Target     string    `json:"target"`
	Repository string    `json:"repository,omitempty"`
}

func (r *WorkerRestore) request() RestoreRequest {
	return RestoreRequest{Pattern: r.Pattern, Host: r.Host, OlderThan: r.OlderThan, Target: r.Target, Repository: r.Repository}
}

// workerMsg is one line a worker prints on its standard output.
type workerMsg struct {
	Progress *jobs.Progress  `json:"progress,omitempty"`
	Log      json.RawMessage `json:"log,omitempty"` // one slog JSON record
	Result   *workerResult   `json:"result,omitempty"`
}

// WorkerOutput is a worker's standard output: progress, log records and
// the result, one JSON line each, written whole even from several
// goroutines.
type WorkerOutput struct {
	mu  sync.Mutex
	enc *json.Encoder
}

// NewWorkerOutput writes to w.
func NewWorkerOutput(w io.Writer) *WorkerOutput { return &WorkerOutput{enc: json.NewEncoder(w)} }

func (o *WorkerOutput) send(m workerMsg) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.enc.Encode(m)
}

// Write takes one line of slog's JSON handler and sends it as a log
// message, which the agent logs with the job's attributes.
func (o *WorkerOutput) Write(p []byte) (int, error) {
	if err := o.send(workerMsg{Log: bytes.TrimSpace(p)}); err != nil {
		return 0, err
	}
	return len(p), nil
}

// workerResult is the end of a worker's job: its error and what it did,
// in the field of its kind.
type workerResult struct {
	Start time.Time `json:"start"`
	End   time.Time `json:"end"`
	Error string    `json:"error,omitempty"`
	// Permanent keeps jobs.Permanent across the pipe: the agent must not
	// retry what the worker found hopeless.
	Permanent bool `json:"permanent,omitempty"`

	Record     *metadata.Dataset  `json:"record,omitempty"` // ingest
	Spooled    bool               `json:"spooled,omitempty"`
	Restored   []RestoredAtom     `json:"restored,omitempty"`
	Replicated []*ReplicateResult `json:"replicated,omitempty"`
	Fixity     *FixityRun         `json:"fixity,omitempty"`
	Sync       *SyncResult        `json:"sync,omitempty"`
	Retention  *RetentionResult   `json:"retention,omitempty"`
}

// err is the job's error as the worker reported it.
func (r *workerResult) err() error {
	if r.Error == "" {
		return nil
	}
	err := errors.New(r.Error)
	if r.Permanent {
		return jobs.Permanent(err)
	}
	return err
}

// progressEvery throttles the worker's progress lines.
const progressEvery = 500 * time.Millisecond

// RunWorker is the worker's side: it reads a WorkerSpec of the given kind
// from in, does its work with m (which writes the catalog records, or
// spools them), and writes progress and then the result as JSON lines to
// out. The returned error is the work's.
func RunWorker(ctx context.Context, m *Manager, rc *RuntimeContext, kind string, in io.Reader, out *WorkerOutput) error {
	var spec WorkerSpec
	if err := json.NewDecoder(io.LimitReader(in, 64<<20)).Decode(&spec); err != nil {
		return fmt.Errorf("worker: reading the job from standard input: %w", err)
	}
	if spec.Kind != kind {
		return fmt.Errorf("worker: started for %s, sent a %q job", kind, spec.Kind)
	}
	var mu sync.Mutex
	var last time.Time
	ctx = jobs.WithProgress(ctx, func(p jobs.Progress) {
		mu.Lock()
		if time.Since(last) < progressEvery {
			mu.Unlock()
			return
		}
		last = time.Now()
		mu.Unlock()
		_ = out.send(workerMsg{Progress: &p})
	})
	wr := &workerResult{Start: time.Now()}
	err := m.workerJob(ctx, rc, spec, wr)
	if wr.End.IsZero() {
		wr.End = time.Now()
	}
	if err != nil {
		wr.Error, wr.Permanent = err.Error(), jobs.IsPermanent(err)
	}
	if serr := out.send(workerMsg{Result: wr}); serr != nil {
		return fmt.Errorf("worker: writing the result: %w", serr)
	}
	return err
}

// workerJob does the work of spec, in this (the worker's) process, and
// fills in wr.
func (m *Manager) workerJob(ctx context.Context, rc *RuntimeContext, spec WorkerSpec, wr *workerResult) error {
	var src *SourceSpec
	if spec.Kind == kindIngest || spec.Kind == kindReplicate {
		if src = rc.Source(spec.Source); src == nil {
			return jobs.Permanent(fmt.Errorf("worker: no source %q in the configuration", spec.Source))
		}
	}
	var err error
	switch spec.Kind {
	case kindIngest:
		b := &metadata.Backup{ID: spec.BackupID, Host: spec.Host, Timestamp: spec.BackupTime}
		res := m.Ingest(ctx, rc, src, b, Dataset{Name: spec.Dataset, Atoms: spec.Atoms})
		wr.Record, wr.Spooled, wr.Start, wr.End = res.Record, res.Catalog.Spooled, res.Start, res.End
		err = res.Err
	case kindRestore:
		if spec.Restore == nil {
			return jobs.Permanent(errors.New("worker: a restore job without its request"))
		}
		wr.Restored, err = m.Restore(ctx, spec.Restore.request())
	case kindReplicate:
		wr.Replicated, err = m.Replicate(ctx, rc, src, spec.Dataset, nil)
	case kindFixity:
		wr.Fixity, err = m.Fixity(ctx, rc, spec.Repository, spec.Fixity)
	case kindSync, kindRetention:
		store, ok := m.catalog.(SyncStore)
		if !ok {
			return jobs.Permanent(fmt.Errorf("worker: a %s needs a catalog that lists every record", spec.Kind))
		}
		if spec.Kind == kindSync {
			wr.Sync, err = m.Sync(ctx, rc, store, SyncOptions{})
		} else {
			wr.Retention, err = m.Retention(ctx, rc, store, spec.Repository)
		}
	default:
		err = jobs.Permanent(fmt.Errorf("worker: unknown job kind %q", spec.Kind))
	}
	return err
}

// runInWorker runs spec in a worker process started through sh (whose
// nice level and I/O class the worker takes), relays the worker's
// progress and log records to the job of ctx, and returns its result and
// the job's error. A worker that ends without a result (it crashed, or
// was killed) fails the job with a transient error, so the runner
// retries it; the agent goes on.
func (a *Agent) runInWorker(ctx context.Context, rc *RuntimeContext, sh *shell.Shell, spec WorkerSpec, what string) (*workerResult, error) {
	in, err := json.Marshal(spec)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	// The worker runs in the config's folder, so a relative -c would
	// name the wrong file: give it the absolute path.
	cfgPath := filepath.Join(rc.Config.Dir, filepath.Base(rc.Config.File))
	command := "exec " + shellQuote(a.worker.Binary) + " worker " + spec.Kind + " -c " + shellQuote(cfgPath)
	p, err := sh.WithDir(rc.Config.Dir).WithEnv(a.worker.Env...).Start(ctx, command, shell.StartOptions{Stdin: bytes.NewReader(in), PipeStdout: true})
	if err != nil {
		return nil, fmt.Errorf("%s: starting the worker: %w", what, err)
	}
	var result *workerResult
	sc := bufio.NewScanner(p.Stdout)
	sc.Buffer(make([]byte, 64<<10), 64<<20) // a result may hold a dataset record
	for sc.Scan() {
		var msg workerMsg
		if err := json.Unmarshal(sc.Bytes(), &msg); err != nil {
			continue // not ours: a stray line of a library
		}
		if msg.Progress != nil {
			jobs.ReportProgress(ctx, *msg.Progress)
		}
		if msg.Log != nil {
			relog(ctx, jobs.Logger(ctx), msg.Log)
		}
		if msg.Result != nil {
			result = msg.Result
		}
	}
	readErr := sc.Err()
	_ = p.Stdout.Close()
	waitErr := p.Wait()
	switch {
	case result != nil:
		return result, result.err()
	case waitErr != nil:
		return nil, fmt.Errorf("%s: the worker process ended without a result: %w", what, waitErr)
	case readErr != nil && !errors.Is(readErr, io.EOF):
		return nil, fmt.Errorf("%s: reading the worker's output: %w", what, readErr)
	default:
		return nil, fmt.Errorf("%s: the worker exited without a result", what)
	}
}

// ingestInWorker runs one dataset's ingest in a worker process.
func (a *Agent) ingestInWorker(ctx context.Context, rc *RuntimeContext, src *SourceSpec, b *metadata.Backup, ds Dataset) *DatasetResult {
	res := &DatasetResult{Source: src.Name, Dataset: ds.Name, BackupID: b.ID, Host: b.Host, Start: time.Now()}
	what := "dataset " + src.Name + "/" + ds.Name
	// The worker must not race another to create the repository.
	if spec := rc.Config.Repository(src.Repository); spec != nil && !rc.Config.DryRun {
		if err := a.mgr.repos.Ensure(ctx, spec); err != nil {
			res.Err, res.End = fmt.Errorf("%s: %w", what, err), time.Now()
			a.mgr.events.Finished(res)
			return res
		}
	}
	spec := WorkerSpec{Kind: kindIngest, Source: src.Name, Dataset: ds.Name, Atoms: ds.Atoms, BackupID: b.ID, Host: b.Host, BackupTime: b.Timestamp}
	wr, err := a.runInWorker(ctx, rc, rc.SourceShell(src), spec, what)
	res.Err, res.End = err, time.Now()
	if wr != nil {
		res.Start, res.End, res.Record, res.Catalog.Spooled = wr.Start, wr.End, wr.Record, wr.Spooled
	}
	a.mgr.events.Finished(res)
	return res
}

// shellQuote quotes s for /bin/sh.
func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// relog logs a worker's slog JSON record with the agent's logger, at its
// level and with its attributes, so that a worker's lines look like the
// agent's own (with the job's attributes added).
func relog(ctx context.Context, log *slog.Logger, raw json.RawMessage) {
	var rec map[string]any
	if err := json.Unmarshal(raw, &rec); err != nil {
		log.Info("worker: " + string(raw))
		return
	}
	var level slog.Level
	if s, ok := rec["level"].(string); !ok || level.UnmarshalText([]byte(s)) != nil {
		level = slog.LevelInfo
	}
	msg, _ := rec["msg"].(string)
	// The job's logger already names the source and dataset.
	for _, k := range []string{"time", "level", "msg", "source", "dataset"} {
		delete(rec, k)
	}
	keys := make([]string, 0, len(rec))
	for k := range rec {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	args := make([]any, 0, 2*len(keys))
	for _, k := range keys {
		args = append(args, k, rec[k])
	}
	log.Log(ctx, level, msg, args...)
}
