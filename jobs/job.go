package jobs

import (
	"context"
	"errors"
	"log/slog"
	"time"
)

// Job is one unit of work. Run must return when ctx is done.
type Job interface {
	Info() Info
	Run(ctx context.Context) error
}

// Info identifies a job and says how the Runner treats it.
type Info struct {
	// ID is unique among the Runner's active jobs; empty means the Runner
	// assigns one ("<kind>-<random hex>").
	ID string `json:"id"`
	// Kind is "ingest", "replicate", "fixity", "sync", "restore", ...
	Kind string `json:"kind"`
	// Queue is the queue whose worker limit applies; empty means Kind.
	Queue string `json:"queue"`
	// LockKey, when set, makes the job exclusive: no two jobs with the same
	// key run at once, e.g. "ingest:source/dataset".
	LockKey string `json:"lock_key,omitempty"`
	// IfLocked says what happens to a job whose LockKey is taken.
	IfLocked LockPolicy `json:"if_locked,omitempty"`
	// Description is for people (status page, logs, errors).
	Description string `json:"description"`
	// Source and Dataset name what the job works on, when it works on one
	// dataset; they are labels for status, logs and hooks.
	Source  string `json:"source,omitempty"`
	Dataset string `json:"dataset,omitempty"`
	// Timeout bounds the whole job, all attempts and backoff included,
	// counted from its first start (time spent queued does not count).
	// 0 means no limit.
	Timeout time.Duration `json:"timeout_ns,omitempty"`
	// Retry overrides the Runner's default retry policy.
	Retry *RetryPolicy `json:"-"`
}

// LockPolicy says what happens to a job whose lock key is taken.
type LockPolicy int

const (
	// LockWait queues the job until the key is free.
	LockWait LockPolicy = iota
	// LockSkip rejects the job with ErrAlreadyRunning when another job
	// with the same key is pending, running or retrying. Use it for
	// scheduled work that must not pile up.
	LockSkip
)

func (p LockPolicy) String() string {
	if p == LockSkip {
		return "skip"
	}
	return "wait"
}

// MarshalText makes the policy readable in JSON status output.
func (p LockPolicy) MarshalText() ([]byte, error) { return []byte(p.String()), nil }

type funcJob struct {
	info Info
	fn   func(context.Context) error
}

func (j *funcJob) Info() Info                    { return j.info }
func (j *funcJob) Run(ctx context.Context) error { return j.fn(ctx) }

// New returns a Job that runs fn.
func New(info Info, fn func(ctx context.Context) error) Job {
	return &funcJob{info: info, fn: fn}
}

// WithInfo returns a Job that runs j with info replaced by edit(j.Info()),
// e.g. to set a timeout or a lock key on a job built elsewhere.
func WithInfo(j Job, edit func(*Info)) Job {
	info := j.Info()
	edit(&info)
	return &funcJob{info: info, fn: j.Run}
}

// Sequence returns a Job that runs fns in order and stops at the first
// error, e.g. pre-hook, body, post-hook.
func Sequence(info Info, fns ...func(ctx context.Context) error) Job {
	return New(info, func(ctx context.Context) error {
		for _, fn := range fns {
			if err := fn(ctx); err != nil {
				return err
			}
		}
		return nil
	})
}

// PermanentError marks an error that retrying cannot fix.
type PermanentError struct{ Err error }

func (e *PermanentError) Error() string { return e.Err.Error() }
func (e *PermanentError) Unwrap() error { return e.Err }

// Permanent marks err as not worth retrying (a bad configuration, a missing
// dataset, corrupt data). Errors are transient unless marked. Permanent(nil)
// is nil.
func Permanent(err error) error {
	if err == nil {
		return nil
	}
	return &PermanentError{Err: err}
}

// IsPermanent reports whether err or an error it wraps was marked with
// Permanent.
func IsPermanent(err error) bool {
	var pe *PermanentError
	return errors.As(err, &pe)
}

// Progress is what a running job reports about itself. Counters are
// absolute (done so far), not increments.
type Progress struct {
	Bytes      int64  `json:"bytes"`
	Files      int64  `json:"files"`
	TotalBytes int64  `json:"total_bytes,omitempty"` // 0 when unknown
	TotalFiles int64  `json:"total_files,omitempty"` // 0 when unknown
	Current    string `json:"current,omitempty"`
	// BytesPerSecond is filled in by the Runner in status snapshots: Bytes
	// over the time since the job started.
	BytesPerSecond float64 `json:"bytes_per_second"`
}

type ctxKey int

const (
	entryKey ctxKey = iota
	progressKey
)

// ReportProgress records the progress of the job running with ctx. It is
// cheap, safe from any goroutine, and does nothing outside a Runner job.
func ReportProgress(ctx context.Context, p Progress) {
	if e, ok := ctx.Value(entryKey).(*entry); ok {
		e.r.setProgress(e, p)
		return
	}
	if fn, ok := ctx.Value(progressKey).(func(Progress)); ok {
		fn(p)
	}
}

// WithProgress returns a context whose ReportProgress calls fn, for work
// that reports progress outside a Runner (a job's worker process sends it
// to the agent over a pipe).
func WithProgress(ctx context.Context, fn func(Progress)) context.Context {
	return context.WithValue(ctx, progressKey, fn)
}

// ProgressFunc returns a func that reports progress for the job running
// with ctx, for APIs that take a callback.
func ProgressFunc(ctx context.Context) func(Progress) {
	return func(p Progress) { ReportProgress(ctx, p) }
}

// Logger returns the logger of the job running with ctx: the Runner's
// logger with job, kind and lock attributes. Outside a job it returns
// slog.Default().
func Logger(ctx context.Context) *slog.Logger {
	if e, ok := ctx.Value(entryKey).(*entry); ok {
		return e.log
	}
	return slog.Default()
}

// IDFromContext returns the id of the job running with ctx.
func IDFromContext(ctx context.Context) (string, bool) {
	if e, ok := ctx.Value(entryKey).(*entry); ok {
		return e.info.ID, true
	}
	return "", false
}

// Attempt returns the 1-based attempt number of the job running with ctx
// (0 outside a job).
func Attempt(ctx context.Context) int {
	if e, ok := ctx.Value(entryKey).(*entry); ok {
		return e.r.attemptOf(e)
	}
	return 0
}
