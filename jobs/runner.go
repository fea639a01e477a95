package jobs

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math"
	"runtime/debug"
	"slices"
	"sync"
	"time"

	"github.com/custos-backup/custos/internal/backoff"
)

// Errors returned by the Runner. Test with errors.Is.
var (
	// ErrAlreadyRunning: a LockSkip job found its lock key taken.
	ErrAlreadyRunning = errors.New("already running")
	// ErrNotFound: no active or remembered job has that id.
	ErrNotFound = errors.New("job not found")
	// ErrDuplicateID: an active job already has that id.
	ErrDuplicateID = errors.New("duplicate job id")
	// ErrClosed: the Runner is closed.
	ErrClosed = errors.New("job runner closed")
	// ErrCanceled is the cause of jobs cancelled with Runner.Cancel.
	ErrCanceled = errors.New("job canceled")
)

// QueueSpec sets how many jobs of each queue run at once.
type QueueSpec struct {
	// Workers maps a queue name to its limit. Values < 1 mean the default.
	Workers map[string]int `yaml:"workers" json:"workers"`
	// DefaultWorkers applies to queues not in Workers; 0 means 1.
	DefaultWorkers int `yaml:"default_workers" json:"default_workers"`
}

// Limit returns the concurrency limit of queue.
func (q QueueSpec) Limit(queue string) int {
	if n := q.Workers[queue]; n > 0 {
		return n
	}
	if q.DefaultWorkers > 0 {
		return q.DefaultWorkers
	}
	return 1
}

// RetryPolicy says how often and how soon a failed job is tried again.
// Only transient errors are retried (see Permanent); a job whose context is
// done is never retried.
type RetryPolicy struct {
	// MaxAttempts counts the first attempt; < 2 means no retries.
	MaxAttempts int
	// InitialBackoff is the delay after the first failure.
	InitialBackoff time.Duration
	// MaxBackoff caps the delay; 0 means no cap.
	MaxBackoff time.Duration
	// Multiplier grows the delay after each failure; < 1 means 2.
	Multiplier float64
	// Jitter spreads each delay uniformly by ±Jitter (0.2 = ±20%).
	Jitter float64
}

// DefaultRetryPolicy returns the policy used when neither the job nor the
// Runner sets one: 3 attempts, 30s then 60s apart (±20%).
func DefaultRetryPolicy() RetryPolicy {
	return RetryPolicy{
		MaxAttempts:    3,
		InitialBackoff: 30 * time.Second,
		MaxBackoff:     10 * time.Minute,
		Multiplier:     2,
		Jitter:         0.2,
	}
}

// Delay returns the backoff after the given number of failed attempts
// (1 = after the first failure), with jitter.
func (p RetryPolicy) Delay(failures int) time.Duration {
	return p.Backoff(nil).Delay(failures)
}

// Backoff returns the policy as the one backoff of custos (internal/backoff)
// draws it; rnd is its random source (nil = the default). The ±Jitter window
// around each delay is the backoff's downward jitter under a ceiling raised
// by the same fraction: [d*(1-J), d*(1+J)] either way.
func (p RetryPolicy) Backoff(rnd func() float64) backoff.Policy {
	j := max(p.Jitter, 0)
	return backoff.Policy{
		Initial:    scale(p.InitialBackoff, 1+j),
		Max:        scale(p.MaxBackoff, 1+j),
		Multiplier: p.Multiplier,
		Jitter:     2 * j / (1 + j),
		Rand:       rnd,
	}
}

// scale multiplies d by f, saturating instead of overflowing.
func scale(d time.Duration, f float64) time.Duration {
	x := float64(d) * f
	if x >= math.MaxInt64 {
		return time.Duration(math.MaxInt64)
	}
	return time.Duration(x)
}

// State is where a job is in its life.
type State string

// Job states.
const (
	StatePending  State = "pending"  // waiting for its first start
	StateRunning  State = "running"  // an attempt is running
	StateRetrying State = "retrying" // failed, waiting for the next attempt
	StateDone     State = "done"
)

// Result is how a finished job ended.
type Result string

// Job results.
const (
	ResultOK       Result = "ok"
	ResultError    Result = "error"
	ResultCanceled Result = "canceled"
	ResultTimeout  Result = "timeout"
)

// Status is a snapshot of one job, for the status page and API.
type Status struct {
	ID          string        `json:"id"`
	Kind        string        `json:"kind"`
	Queue       string        `json:"queue"`
	LockKey     string        `json:"lock_key,omitempty"`
	Description string        `json:"description"`
	Source      string        `json:"source,omitempty"`
	Dataset     string        `json:"dataset,omitempty"`
	State       State         `json:"state"`
	Result      Result        `json:"result,omitempty"`
	Error       string        `json:"error,omitempty"` // final error, or the last one while retrying
	Submitted   time.Time     `json:"submitted"`
	Started     time.Time     `json:"started,omitzero"`
	Finished    time.Time     `json:"finished,omitzero"`
	Duration    time.Duration `json:"duration_ns"` // since Started; up to Finished when done
	Attempts    int           `json:"attempts"`
	NextAttempt time.Time     `json:"next_attempt,omitzero"` // while retrying
	Progress    Progress      `json:"progress"`
}

// Snapshot is the state of all jobs at one moment.
type Snapshot struct {
	Pending []Status `json:"pending"` // oldest first
	Running []Status `json:"running"` // running and retrying, oldest first
	Done    []Status `json:"done"`    // newest first
}

// Options configure a Runner.
type Options struct {
	Queues QueueSpec
	// Retry is the default policy; nil means DefaultRetryPolicy.
	Retry *RetryPolicy
	// HistorySize bounds the finished jobs kept; 0 means 100.
	HistorySize int
	// Logger; nil means slog.Default().
	Logger *slog.Logger
	// OnChange, if set, is called after every state change of a job
	// (submitted, started, retrying, done; not on progress), from the
	// goroutine making the change. It must not block.
	OnChange func(Status)
}

// Runner runs jobs in named queues with concurrency limits, exclusive lock
// keys, retries and timeouts, and keeps their status.
type Runner struct {
	log      *slog.Logger
	retry    RetryPolicy
	histSize int
	onChange func(Status)

	mu      sync.Mutex
	queues  QueueSpec
	closed  bool
	active  map[string]*entry
	waiters []*entry          // FIFO of jobs waiting for a slot
	running map[string]int    // queue -> jobs holding a slot
	locks   map[string]string // lock key -> job id
	history []Status          // oldest first, at most histSize
	wg      sync.WaitGroup
}

type entry struct {
	r      *Runner
	job    Job
	info   Info
	log    *slog.Logger
	ctx    context.Context
	cancel context.CancelCauseFunc
	done   chan struct{}
	err    error // valid after done

	// guarded by r.mu
	status Status
	grant  chan struct{} // closed when a slot (and the lock) is granted
}

// NewRunner returns a Runner. Close it to stop its jobs.
func NewRunner(opts Options) *Runner {
	r := &Runner{
		log:      opts.Logger,
		retry:    DefaultRetryPolicy(),
		histSize: opts.HistorySize,
		onChange: opts.OnChange,
		queues:   cloneQueues(opts.Queues),
		active:   map[string]*entry{},
		running:  map[string]int{},
		locks:    map[string]string{},
	}
	if r.log == nil {
		r.log = slog.Default()
	}
	if opts.Retry != nil {
		r.retry = *opts.Retry
	}
	if r.histSize <= 0 {
		r.histSize = 100
	}
	return r
}

func cloneQueues(q QueueSpec) QueueSpec {
	q.Workers = maps.Clone(q.Workers)
	return q
}

// SetQueues replaces the queue limits (config reload). Running jobs keep
// running; the new limits apply to what starts next.
func (r *Runner) SetQueues(q QueueSpec) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.queues = cloneQueues(q)
	r.dispatchLocked()
}

// Submit queues job and returns its id without waiting. The job's context
// carries the values of ctx but not its cancellation: a job submitted from
// an HTTP request outlives the request. Stop it with Cancel or Close.
func (r *Runner) Submit(ctx context.Context, job Job) (string, error) {
	e, err := r.submit(ctx, job)
	if err != nil {
		return "", err
	}
	return e.info.ID, nil
}

// Run runs job through the queues and waits for it. Cancelling ctx cancels
// the job. It returns the job's final error, which names the job.
func (r *Runner) Run(ctx context.Context, job Job) error {
	e, err := r.submit(ctx, job)
	if err != nil {
		return err
	}
	stop := context.AfterFunc(ctx, func() { e.cancel(context.Cause(ctx)) })
	defer stop()
	<-e.done
	return e.err
}

func (r *Runner) submit(ctx context.Context, job Job) (*entry, error) {
	info := job.Info()
	if info.Queue == "" {
		info.Queue = info.Kind
	}
	if info.ID == "" {
		info.ID = newID(info.Kind)
	}
	retry := r.retry
	if info.Retry != nil {
		retry = *info.Retry
	}
	info.Retry = &retry

	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return nil, fmt.Errorf("job %s (%s): %w", info.ID, info.Description, ErrClosed)
	}
	if _, dup := r.active[info.ID]; dup {
		r.mu.Unlock()
		return nil, fmt.Errorf("job %s (%s): %w", info.ID, info.Description, ErrDuplicateID)
	}
	if info.LockKey != "" && info.IfLocked == LockSkip {
		for _, other := range r.active {
			if other.info.LockKey == info.LockKey {
				r.mu.Unlock()
				r.log.Info("skipping job: another job with the same lock is active",
					"job", info.ID, "description", info.Description, "lock", info.LockKey, "other_job", other.info.ID)
				return nil, fmt.Errorf("job %s (%s): lock %q held by job %s: %w",
					info.ID, info.Description, info.LockKey, other.info.ID, ErrAlreadyRunning)
			}
		}
	}
	e := &entry{
		r:    r,
		job:  job,
		info: info,
		done: make(chan struct{}),
		log:  r.log.With("job", info.ID, "kind", info.Kind),
	}
	if info.LockKey != "" {
		e.log = e.log.With("lock", info.LockKey)
	}
	if info.Source != "" {
		e.log = e.log.With("source", info.Source, "dataset", info.Dataset)
	}
	base := context.WithValue(context.WithoutCancel(ctx), entryKey, e)
	e.ctx, e.cancel = context.WithCancelCause(base)
	e.status = Status{
		ID: info.ID, Kind: info.Kind, Queue: info.Queue, LockKey: info.LockKey,
		Description: info.Description, Source: info.Source, Dataset: info.Dataset,
		State: StatePending, Submitted: time.Now(),
	}
	r.active[info.ID] = e
	st := e.status
	r.wg.Add(1)
	r.mu.Unlock()

	r.notify(st)
	e.log.Debug("job submitted", "description", info.Description, "queue", info.Queue)
	go r.run(e)
	return e, nil
}

func newID(kind string) string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	if kind == "" {
		kind = "job"
	}
	return kind + "-" + hex.EncodeToString(b[:])
}

func (r *Runner) notify(st Status) {
	if r.onChange != nil {
		r.onChange(st)
	}
}

// update changes e's status under the lock and reports the change.
func (r *Runner) update(e *entry, edit func(*Status)) {
	r.mu.Lock()
	edit(&e.status)
	st := e.status
	r.mu.Unlock()
	r.notify(st)
}

func (r *Runner) run(e *entry) {
	defer r.wg.Done()
	policy := *e.info.Retry
	ctx := e.ctx
	var err error
	for attempt := 1; ; attempt++ {
		if err = r.acquire(ctx, e); err != nil {
			break
		}
		if attempt == 1 && e.info.Timeout > 0 {
			var cancel context.CancelFunc
			ctx, cancel = context.WithTimeout(ctx, e.info.Timeout)
			defer cancel()
		}
		r.update(e, func(s *Status) {
			s.State = StateRunning
			s.Attempts = attempt
			s.NextAttempt = time.Time{}
			if s.Started.IsZero() {
				s.Started = time.Now()
			}
		})
		e.log.Info("job started", "description", e.info.Description, "attempt", attempt)
		err = e.runAttempt(ctx)
		r.releaseSlot(e)
		if err == nil || ctx.Err() != nil || IsPermanent(err) || errors.Is(err, context.Canceled) || attempt >= policy.MaxAttempts {
			break
		}
		delay := policy.Delay(attempt)
		next := time.Now().Add(delay)
		r.update(e, func(s *Status) {
			s.State = StateRetrying
			s.Error = err.Error()
			s.NextAttempt = next
		})
		e.log.Warn("job attempt failed; will retry", "attempt", attempt, "max_attempts", policy.MaxAttempts, "delay", delay, "error", err)
		if backoff.Sleep(ctx, delay) != nil {
			break
		}
	}
	r.finish(e, ctx, err)
}

func (e *entry) runAttempt(ctx context.Context) (err error) {
	defer func() {
		if p := recover(); p != nil {
			e.log.Error("job panicked", "panic", p, "stack", string(debug.Stack()))
			err = Permanent(fmt.Errorf("panic: %v", p))
		}
	}()
	return e.job.Run(ctx)
}

// acquire waits until e may run: a free slot in its queue and its lock key
// free (or already held by e, between attempts).
func (r *Runner) acquire(ctx context.Context, e *entry) error {
	r.mu.Lock()
	if err := ctx.Err(); err != nil {
		r.mu.Unlock()
		return err
	}
	e.grant = make(chan struct{})
	r.waiters = append(r.waiters, e)
	r.dispatchLocked()
	g := e.grant
	r.mu.Unlock()
	select {
	case <-g:
		return nil
	case <-ctx.Done():
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	select {
	case <-g:
		// Granted while we gave up: hand the slot back.
		r.running[e.info.Queue]--
		r.dispatchLocked()
	default:
		r.waiters = slices.DeleteFunc(r.waiters, func(w *entry) bool { return w == e })
	}
	return ctx.Err()
}

// dispatchLocked grants slots to waiters in FIFO order. A waiter blocked by
// its lock does not hold up waiters behind it.
func (r *Runner) dispatchLocked() {
	kept := r.waiters[:0]
	for _, e := range r.waiters {
		q := e.info.Queue
		key := e.info.LockKey
		if r.running[q] < r.queues.Limit(q) && (key == "" || r.locks[key] == "" || r.locks[key] == e.info.ID) {
			r.running[q]++
			if key != "" {
				r.locks[key] = e.info.ID
			}
			close(e.grant)
			continue
		}
		kept = append(kept, e)
	}
	clear(r.waiters[len(kept):])
	r.waiters = kept
}

func (r *Runner) releaseSlot(e *entry) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.running[e.info.Queue]--
	r.dispatchLocked()
}

func (r *Runner) finish(e *entry, ctx context.Context, err error) {
	now := time.Now()
	res := ResultOK
	if err != nil {
		res = ResultError
		if ctx.Err() != nil {
			cause := context.Cause(ctx)
			res = ResultCanceled
			// Only the job's own Timeout is a timeout; a deadline on the
			// caller's context (Runner.Run) is a cancellation.
			if e.ctx.Err() == nil {
				res = ResultTimeout
				cause = fmt.Errorf("timed out after %s: %w", e.info.Timeout, cause)
			}
			if !errors.Is(err, cause) {
				err = fmt.Errorf("%w: %w", cause, err)
			}
		}
		err = fmt.Errorf("job %s (%s): %w", e.info.ID, e.info.Description, err)
	}
	e.err = err

	r.mu.Lock()
	if key := e.info.LockKey; key != "" && r.locks[key] == e.info.ID {
		delete(r.locks, key)
	}
	delete(r.active, e.info.ID)
	s := &e.status
	s.State = StateDone
	s.Result = res
	s.NextAttempt = time.Time{}
	s.Error = ""
	if err != nil {
		s.Error = err.Error()
	}
	s.Finished = now
	if !s.Started.IsZero() {
		s.Duration = now.Sub(s.Started)
	}
	r.fillRate(s)
	st := *s
	r.history = append(r.history, st)
	if n := len(r.history) - r.histSize; n > 0 {
		r.history = slices.Delete(r.history, 0, n)
	}
	r.dispatchLocked()
	r.mu.Unlock()

	e.cancel(nil) // release the context's resources
	switch {
	case err != nil && res == ResultCanceled:
		e.log.Warn("job finished", "result", res, "attempts", st.Attempts, "duration", st.Duration, "error", err)
	case err != nil:
		e.log.Error("job finished", "result", res, "attempts", st.Attempts, "duration", st.Duration, "error", err)
	default:
		e.log.Info("job finished", "result", res, "attempts", st.Attempts, "duration", st.Duration)
	}
	r.notify(st)
	close(e.done)
}

func (r *Runner) fillRate(s *Status) {
	if s.Started.IsZero() {
		return
	}
	end := s.Finished
	if end.IsZero() {
		end = time.Now()
	}
	if el := end.Sub(s.Started).Seconds(); el > 0 {
		s.Progress.BytesPerSecond = float64(s.Progress.Bytes) / el
	}
}

func (r *Runner) setProgress(e *entry, p Progress) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if e.status.State != StateDone {
		e.status.Progress = p
	}
}

func (r *Runner) attemptOf(e *entry) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return e.status.Attempts
}

// Cancel cancels the job with the given id, pending or running. The job
// ends with result "canceled" and is never retried.
func (r *Runner) Cancel(id string) error {
	r.mu.Lock()
	e, ok := r.active[id]
	r.mu.Unlock()
	if !ok {
		return fmt.Errorf("cancel job %s: %w", id, ErrNotFound)
	}
	e.log.Info("cancelling job")
	e.cancel(ErrCanceled)
	return nil
}

// Wait waits until the job with the given id is done and returns its
// status. The error is about waiting (ErrNotFound, ctx), not about the job:
// see Status.Result and Status.Error.
func (r *Runner) Wait(ctx context.Context, id string) (Status, error) {
	r.mu.Lock()
	e, ok := r.active[id]
	r.mu.Unlock()
	if ok {
		select {
		case <-e.done:
		case <-ctx.Done():
			return Status{}, fmt.Errorf("wait for job %s: %w", id, ctx.Err())
		}
	}
	if st, ok := r.Get(id); ok && st.State == StateDone {
		return st, nil
	}
	return Status{}, fmt.Errorf("wait for job %s: %w", id, ErrNotFound)
}

// Get returns the status of an active or remembered job.
func (r *Runner) Get(id string) (Status, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if e, ok := r.active[id]; ok {
		st := e.status
		r.fillRate(&st)
		return st, true
	}
	for i := len(r.history) - 1; i >= 0; i-- {
		if r.history[i].ID == id {
			return r.history[i], true
		}
	}
	return Status{}, false
}

// Status returns all jobs at one moment.
func (r *Runner) Status() Snapshot {
	r.mu.Lock()
	defer r.mu.Unlock()
	var snap Snapshot
	for _, e := range r.active {
		st := e.status
		r.fillRate(&st)
		if st.State == StatePending {
			snap.Pending = append(snap.Pending, st)
		} else {
			snap.Running = append(snap.Running, st)
		}
	}
	bySubmit := func(a, b Status) int {
		if c := a.Submitted.Compare(b.Submitted); c != 0 {
			return c
		}
		return cmp.Compare(a.ID, b.ID)
	}
	slices.SortFunc(snap.Pending, bySubmit)
	slices.SortFunc(snap.Running, bySubmit)
	snap.Done = make([]Status, len(r.history))
	for i, st := range r.history {
		snap.Done[len(r.history)-1-i] = st
	}
	return snap
}

// Pending returns the jobs waiting for their first start, oldest first.
func (r *Runner) Pending() []Status { return r.Status().Pending }

// Running returns the running and retrying jobs, oldest first.
func (r *Runner) Running() []Status { return r.Status().Running }

// Done returns the remembered finished jobs, newest first.
func (r *Runner) Done() []Status { return r.Status().Done }

// Close stops accepting jobs, cancels all active jobs (cause ErrClosed) and
// waits for them to return, or for ctx.
func (r *Runner) Close(ctx context.Context) error {
	r.mu.Lock()
	r.closed = true
	for _, e := range r.active {
		e.cancel(ErrClosed)
	}
	r.mu.Unlock()
	done := make(chan struct{})
	go func() {
		r.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("close job runner: jobs still running: %w", ctx.Err())
	}
}
