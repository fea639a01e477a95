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

// WorkerOptions make the agent run each ingest's data work in a child
// process: the custos binary in worker mode ("custos worker ingest"),
// started through the Shell. The child runs at the configured nice level
// and I/O class, in its own process group (a cancel or timeout kills all
// of it), and a crash or an out-of-memory kill fails one job, not the
// agent. Without WorkerOptions (tests of this package) the work runs in
// the agent's process.
type WorkerOptions struct {
	// Binary is the custos executable.
	Binary string
	// Env is added to the child's environment.
	Env []string
}

// WorkerSpec is what the agent sends a worker on its standard input: one
// dataset of one backup run.
type WorkerSpec struct {
	Source     string          `json:"source"`
	Dataset    string          `json:"dataset"`
	Atoms      []handlers.Atom `json:"atoms"`
	BackupID   string          `json:"backup_id"`
	Host       string          `json:"host"`
	BackupTime time.Time       `json:"backup_time"`
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

type workerResult struct {
	Record  *metadata.Dataset `json:"record,omitempty"`
	Spooled bool              `json:"spooled,omitempty"`
	Start   time.Time         `json:"start"`
	End     time.Time         `json:"end"`
	Error   string            `json:"error,omitempty"`
}

// progressEvery throttles the worker's progress lines.
const progressEvery = 500 * time.Millisecond

// RunWorkerIngest is the worker's side: it reads a WorkerSpec from in,
// backs the dataset up with m (which writes the catalog record, or spools
// it), and writes progress and then the result as JSON lines to out. The
// returned error is the backup's.
func RunWorkerIngest(ctx context.Context, m *Manager, rc *RuntimeContext, in io.Reader, out *WorkerOutput) error {
	var spec WorkerSpec
	if err := json.NewDecoder(io.LimitReader(in, 64<<20)).Decode(&spec); err != nil {
		return fmt.Errorf("worker: reading the job from standard input: %w", err)
	}
	src := rc.Source(spec.Source)
	if src == nil {
		return fmt.Errorf("worker: no source %q in the configuration", spec.Source)
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
	b := &metadata.Backup{ID: spec.BackupID, Host: spec.Host, Timestamp: spec.BackupTime}
	res := m.Ingest(ctx, rc, src, b, Dataset{Name: spec.Dataset, Atoms: spec.Atoms})
	wr := &workerResult{Record: res.Record, Spooled: res.Catalog.Spooled, Start: res.Start, End: res.End}
	if res.Err != nil {
		wr.Error = res.Err.Error()
	}
	if err := out.send(workerMsg{Result: wr}); err != nil {
		return fmt.Errorf("worker: writing the result: %w", err)
	}
	return res.Err
}

// ingestInWorker runs one dataset's ingest in a worker process and turns
// its output into job progress and a DatasetResult.
func (a *Agent) ingestInWorker(ctx context.Context, rc *RuntimeContext, src *SourceSpec, b *metadata.Backup, ds Dataset) *DatasetResult {
	res := &DatasetResult{Source: src.Name, Dataset: ds.Name, BackupID: b.ID, Host: b.Host, Start: time.Now()}
	spec, err := json.Marshal(WorkerSpec{Source: src.Name, Dataset: ds.Name, Atoms: ds.Atoms, BackupID: b.ID, Host: b.Host, BackupTime: b.Timestamp})
	if err != nil {
		res.Err, res.End = err, time.Now()
		return res
	}
	if spec := rc.Config.Repository(src.Repository); spec != nil && !rc.Config.DryRun {
		if err := a.mgr.repos.Ensure(ctx, spec); err != nil {
			res.Err, res.End = fmt.Errorf("dataset %s/%s: %w", src.Name, ds.Name, err), time.Now()
			a.mgr.events.Finished(res)
			return res
		}
	}
	// The worker runs in the config's folder, so a relative -c would
	// name the wrong file: give it the absolute path.
	cfgPath := filepath.Join(rc.Config.Dir, filepath.Base(rc.Config.File))
	command := "exec " + shellQuote(a.worker.Binary) + " worker ingest -c " + shellQuote(cfgPath)
	sh := rc.Shell().WithDir(rc.Config.Dir).WithEnv(a.worker.Env...)
	p, err := sh.Start(ctx, command, shell.StartOptions{Stdin: bytes.NewReader(spec), PipeStdout: true})
	if err != nil {
		res.Err, res.End = fmt.Errorf("dataset %s/%s: starting the worker: %w", src.Name, ds.Name, err), time.Now()
		return res
	}
	var result *workerResult
	sc := bufio.NewScanner(p.Stdout)
	sc.Buffer(make([]byte, 64<<10), 64<<20) // a result holds the dataset record
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
	res.End = time.Now()
	switch {
	case result != nil:
		res.Start, res.End, res.Record, res.Catalog.Spooled = result.Start, result.End, result.Record, result.Spooled
		if result.Error != "" {
			res.Err = errors.New(result.Error)
		}
	case waitErr != nil:
		// No result: the worker crashed or was killed. Transient as far
		// as the runner knows, so the job is retried.
		res.Err = fmt.Errorf("dataset %s/%s: the worker process ended without a result: %w", src.Name, ds.Name, waitErr)
	case readErr != nil && !errors.Is(readErr, io.EOF):
		res.Err = fmt.Errorf("dataset %s/%s: reading the worker's output: %w", src.Name, ds.Name, readErr)
	default:
		res.Err = fmt.Errorf("dataset %s/%s: the worker exited without a result", src.Name, ds.Name)
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
