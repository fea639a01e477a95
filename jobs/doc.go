// Package jobs runs custos's units of work (ingest, replicate, fixity,
// sync, restore): named queues with concurrency limits, exclusive lock
// keys, retries with exponential backoff (internal/backoff, the one backoff
// of custos), timeouts, cancellation by id, a status registry with a bounded
// history, and a cron scheduler whose @random_every schedules get a stable
// per-host offset.
//
// It knows nothing about agents, handlers or repositories: a Job is just an
// Info plus a Run(ctx) func.
//
// # Jobs
//
//	type Job interface { Info() Info; Run(ctx context.Context) error }
//	type Info struct {
//	    ID          string        // "" = assigned: "<kind>-<12 hex>"
//	    Kind        string        // "ingest", "replicate", "fixity", "sync", "restore"
//	    Queue       string        // "" = Kind
//	    LockKey     string        // "" = not exclusive; e.g. "ingest:source/dataset"
//	    IfLocked    LockPolicy    // LockWait (default) or LockSkip
//	    Description string
//	    Timeout     time.Duration // whole job incl. retries, from first start; 0 = none
//	    Retry       *RetryPolicy  // nil = Runner default
//	}
//	func New(info Info, fn func(ctx context.Context) error) Job
//	func WithInfo(j Job, edit func(*Info)) Job
//	func Sequence(info Info, fns ...func(ctx context.Context) error) Job
//
// Errors are transient (retried) unless marked permanent:
//
//	func Permanent(err error) error        // wraps in *PermanentError; nil stays nil
//	func IsPermanent(err error) bool       // errors.As through wrapping
//
// A job whose context is done (cancelled, timed out, Runner closed) is
// never retried, nor is an error that wraps context.Canceled. A panic in
// Run becomes a permanent error.
//
// Inside Run, the context gives access to the job:
//
//	func ReportProgress(ctx context.Context, p Progress) // absolute counters
//	func ProgressFunc(ctx context.Context) func(Progress)
//	func Logger(ctx context.Context) *slog.Logger     // with job, kind, lock attrs
//	func IDFromContext(ctx context.Context) (string, bool)
//	func Attempt(ctx context.Context) int             // 1-based
//	type Progress struct { Bytes, Files, TotalBytes, TotalFiles int64; Current string; BytesPerSecond float64 }
//
// # Runner
//
//	type QueueSpec struct {
//	    Workers        map[string]int `yaml:"workers"`         // queue -> limit
//	    DefaultWorkers int            `yaml:"default_workers"` // other queues; 0 = 1
//	}
//	func (q QueueSpec) Limit(queue string) int
//	type RetryPolicy struct {
//	    MaxAttempts    int           // counts the first; < 2 = no retries
//	    InitialBackoff time.Duration
//	    MaxBackoff     time.Duration // 0 = no cap
//	    Multiplier     float64       // < 1 = 2
//	    Jitter         float64       // ±fraction, e.g. 0.2
//	}
//	func DefaultRetryPolicy() RetryPolicy // 3 attempts, 30s, x2, max 10m, ±20%
//	func (p RetryPolicy) Delay(failures int) time.Duration
//	func (p RetryPolicy) Backoff(rnd func() float64) backoff.Policy // the same, as internal/backoff
//	type Options struct {
//	    Queues      QueueSpec
//	    Retry       *RetryPolicy     // nil = DefaultRetryPolicy()
//	    HistorySize int              // 0 = 100
//	    Logger      *slog.Logger
//	    OnChange    func(Status)     // every state change; must not block
//	}
//	func NewRunner(opts Options) *Runner
//	func (r *Runner) Submit(ctx context.Context, j Job) (id string, err error) // async; job ignores ctx's cancellation
//	func (r *Runner) Run(ctx context.Context, j Job) error  // sync; cancelling ctx cancels the job
//	func (r *Runner) Cancel(id string) error                // ErrNotFound if not active
//	func (r *Runner) Wait(ctx context.Context, id string) (Status, error)
//	func (r *Runner) Get(id string) (Status, bool)
//	func (r *Runner) Status() Snapshot                      // {Pending, Running, Done []Status}
//	func (r *Runner) Pending() []Status                     // oldest first
//	func (r *Runner) Running() []Status                     // running + retrying, oldest first
//	func (r *Runner) Done() []Status                        // newest first, bounded
//	func (r *Runner) SetQueues(q QueueSpec)                 // config reload
//	func (r *Runner) Close(ctx context.Context) error       // cancel all, wait
//	var ErrAlreadyRunning, ErrNotFound, ErrDuplicateID, ErrClosed, ErrCanceled
//
// A job waits in FIFO order for a free slot in its queue and for its lock
// key; a job blocked only by its lock does not hold up others in the
// queue. The lock is taken at the first start and kept until the job is
// done, retries included. With LockSkip, Submit and Run return an error
// wrapping ErrAlreadyRunning (and log it) when a job with the same key is
// pending, running or retrying; the skipped job is not recorded in the
// history. Between attempts the job gives its queue slot back.
//
// The final error of a job (Runner.Run's result, Status.Error) names the
// job id and description and wraps the job's error, plus ErrCanceled or
// context.DeadlineExceeded when that ended it. Status has State
// (pending, running, retrying, done), Result (ok, error, canceled,
// timeout), Submitted/Started/Finished, Duration, Attempts, NextAttempt and
// Progress (with BytesPerSecond computed from Bytes and the time since
// Started).
//
// # Schedules
//
//	func ParseSchedule(spec string) (cron.Schedule, error) // validation; @random_every offset 0
//	func ParseHostSchedule(spec string, seed int64, name string) (cron.Schedule, error)
//	func RandomOffset(seed int64, name string, period time.Duration) time.Duration
//	type RandomEvery struct{ Period, Offset time.Duration } // a cron.Schedule
//	func LoadOrCreateSeed(path string) (int64, error)
//	const RandomEveryDescriptor = "@random_every"
//
// Specs: standard 5-field cron ("30 2 * * *", optional CRON_TZ=Zone prefix),
// the descriptors @yearly @annually @monthly @weekly @daily @midnight
// @hourly, "@every <duration>" (counted from when the entry is added) and
// "@random_every <duration>" (at least 1s): every <duration>, at a per-host
// offset, aligned to the Unix epoch so that times survive restarts. The
// offset is sha256(seed, name) mod the period, in whole seconds: stable for
// one host and entry name, different between hosts with different seeds.
// Parse errors quote the spec and say what is wrong; the config loader adds
// file, line and field.
//
// LoadOrCreateSeed reads the seed file, or creates it (32 random bytes,
// mode 0600, written to a temporary file and hard-linked into place so
// that a concurrent creator cannot be overwritten). The seed is derived
// from the whole file content, so any non-empty file works.
//
//	type Entry struct {
//	    Name     string                    // unique; seeds @random_every
//	    Schedule string
//	    Run      func(ctx context.Context) // quick: build jobs, Submit them
//	}
//	type SchedulerOptions struct { Seed int64; Location *time.Location; Logger *slog.Logger }
//	func NewScheduler(opts SchedulerOptions) *Scheduler
//	func (s *Scheduler) Set(entries []Entry) error // validate all, then replace all; unchanged entries keep timing
//	func (s *Scheduler) Start(ctx context.Context)
//	func (s *Scheduler) Stop(ctx context.Context) error
//	func (s *Scheduler) Entries() []EntryStatus   // {Name, Schedule, Next, Prev}
package jobs
