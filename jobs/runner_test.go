package jobs

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func quietLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func newTestRunner(t *testing.T, opts Options) *Runner {
	t.Helper()
	if opts.Logger == nil {
		opts.Logger = quietLogger()
	}
	r := NewRunner(opts)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := r.Close(ctx); err != nil {
			t.Errorf("close: %v", err)
		}
	})
	return r
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// gate is a job body that reports when it starts and runs until released.
type gate struct {
	entered chan string
	release chan struct{}
	cur     atomic.Int64
	max     atomic.Int64
}

func newGate() *gate {
	return &gate{entered: make(chan string, 100), release: make(chan struct{})}
}

func (g *gate) job(info Info) Job {
	return New(info, func(ctx context.Context) error {
		n := g.cur.Add(1)
		for {
			m := g.max.Load()
			if n <= m || g.max.CompareAndSwap(m, n) {
				break
			}
		}
		defer g.cur.Add(-1)
		id, _ := IDFromContext(ctx)
		g.entered <- id
		select {
		case <-g.release:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	})
}

func mustSubmit(t *testing.T, r *Runner, j Job) string {
	t.Helper()
	id, err := r.Submit(context.Background(), j)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

func waitStatus(t *testing.T, r *Runner, id string) Status {
	t.Helper()
	st, err := r.Wait(testCtx(t), id)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func TestQueueLimit(t *testing.T) {
	r := newTestRunner(t, Options{Queues: QueueSpec{Workers: map[string]int{"ingest": 2}}})
	g := newGate()
	var ids []string
	for i := range 6 {
		ids = append(ids, mustSubmit(t, r, g.job(Info{Kind: "ingest", Description: fmt.Sprint("job ", i)})))
	}
	<-g.entered
	<-g.entered
	if n := len(r.Pending()); n != 4 {
		t.Fatalf("pending = %d, want 4", n)
	}
	if n := len(r.Running()); n != 2 {
		t.Fatalf("running = %d, want 2", n)
	}

	// Another queue (default limit 1) is not held up by the full one.
	other := newGate()
	oid := mustSubmit(t, r, other.job(Info{Kind: "fixity"}))
	if got := <-other.entered; got != oid {
		t.Fatalf("entered %s, want %s", got, oid)
	}
	other.release <- struct{}{}

	// Release one at a time; each release lets exactly one more start.
	for range 4 {
		g.release <- struct{}{}
		<-g.entered
	}
	g.release <- struct{}{}
	g.release <- struct{}{}
	for _, id := range ids {
		if st := waitStatus(t, r, id); st.Result != ResultOK {
			t.Fatalf("%s: %+v", id, st)
		}
	}
	if m := g.max.Load(); m != 2 {
		t.Fatalf("max concurrency = %d, want 2", m)
	}
}

func TestQueueDefaultAndReload(t *testing.T) {
	q := QueueSpec{Workers: map[string]int{"a": 3, "b": 0}, DefaultWorkers: 2}
	for queue, want := range map[string]int{"a": 3, "b": 2, "zzz": 2} {
		if got := q.Limit(queue); got != want {
			t.Errorf("Limit(%q) = %d, want %d", queue, got, want)
		}
	}
	if got := (QueueSpec{}).Limit("x"); got != 1 {
		t.Errorf("zero QueueSpec limit = %d", got)
	}

	r := newTestRunner(t, Options{})
	g := newGate()
	for range 3 {
		mustSubmit(t, r, g.job(Info{Kind: "sync"}))
	}
	<-g.entered
	if n := len(r.Pending()); n != 2 {
		t.Fatalf("pending = %d, want 2", n)
	}
	// Raising the limit starts the waiting jobs without any finishing.
	r.SetQueues(QueueSpec{Workers: map[string]int{"sync": 3}})
	<-g.entered
	<-g.entered
	if m := g.max.Load(); m != 3 {
		t.Fatalf("max = %d, want 3", m)
	}
	close(g.release)
}

func TestExclusiveLockWaits(t *testing.T) {
	r := newTestRunner(t, Options{Queues: QueueSpec{DefaultWorkers: 5}})
	g := newGate()
	var inside atomic.Int64
	var overlap atomic.Bool
	locked := func(info Info) Job {
		inner := g.job(info)
		return New(info, func(ctx context.Context) error {
			if inside.Add(1) > 1 {
				overlap.Store(true)
			}
			defer inside.Add(-1)
			return inner.Run(ctx)
		})
	}
	first := mustSubmit(t, r, locked(Info{Kind: "ingest", LockKey: "ingest:src/ds"}))
	if got := <-g.entered; got != first {
		t.Fatalf("entered %s", got)
	}
	second := mustSubmit(t, r, locked(Info{Kind: "ingest", LockKey: "ingest:src/ds"}))
	// A job with another key is not blocked.
	third := mustSubmit(t, r, g.job(Info{Kind: "ingest", LockKey: "ingest:src/other"}))
	if got := <-g.entered; got != third {
		t.Fatalf("entered %s, want %s (second must wait for the lock)", got, third)
	}
	if st, _ := r.Get(second); st.State != StatePending {
		t.Fatalf("second state = %s, want pending", st.State)
	}
	g.release <- struct{}{} // one of first/third
	g.release <- struct{}{} // the other
	if got := <-g.entered; got != second {
		t.Fatalf("entered %s, want %s", got, second)
	}
	g.release <- struct{}{}
	for _, id := range []string{first, second, third} {
		if st := waitStatus(t, r, id); st.Result != ResultOK {
			t.Fatalf("%s: %+v", id, st)
		}
	}
	if overlap.Load() {
		t.Fatal("two jobs with the same lock ran at once")
	}
}

func TestExclusiveLockSkip(t *testing.T) {
	r := newTestRunner(t, Options{Queues: QueueSpec{DefaultWorkers: 5}})
	g := newGate()
	info := Info{Kind: "ingest", LockKey: "ingest:src/ds", IfLocked: LockSkip, Description: "scheduled ingest"}
	first := mustSubmit(t, r, g.job(info))
	<-g.entered
	_, err := r.Submit(context.Background(), g.job(info))
	if !errors.Is(err, ErrAlreadyRunning) {
		t.Fatalf("submit: %v, want ErrAlreadyRunning", err)
	}
	if err := r.Run(testCtx(t), g.job(info)); !errors.Is(err, ErrAlreadyRunning) {
		t.Fatalf("run: %v, want ErrAlreadyRunning", err)
	}
	g.release <- struct{}{}
	waitStatus(t, r, first)
	if n := len(r.Done()); n != 1 {
		t.Fatalf("history has %d entries, want 1 (skips are not recorded)", n)
	}
	second := mustSubmit(t, r, g.job(info))
	<-g.entered
	g.release <- struct{}{}
	if st := waitStatus(t, r, second); st.Result != ResultOK {
		t.Fatalf("%+v", st)
	}
}

func TestLockSkipWhilePending(t *testing.T) {
	r := newTestRunner(t, Options{}) // limit 1
	g := newGate()
	mustSubmit(t, r, g.job(Info{Kind: "ingest"}))
	<-g.entered
	info := Info{Kind: "ingest", LockKey: "k", IfLocked: LockSkip}
	mustSubmit(t, r, g.job(info)) // pending: the queue is full
	if _, err := r.Submit(context.Background(), g.job(info)); !errors.Is(err, ErrAlreadyRunning) {
		t.Fatalf("err = %v", err)
	}
	close(g.release)
}

func TestRetries(t *testing.T) {
	transient := errors.New("connection reset")
	tests := []struct {
		name         string
		failures     int  // attempts that fail before success
		permanent    bool // failures are permanent
		max          int
		wantAttempts int
		wantResult   Result
	}{
		{"succeeds first time", 0, false, 3, 1, ResultOK},
		{"transient then ok", 2, false, 5, 3, ResultOK},
		{"transient exhausted", 10, false, 3, 3, ResultError},
		{"permanent not retried", 10, true, 5, 1, ResultError},
		{"no retries", 10, false, 1, 1, ResultError},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := newTestRunner(t, Options{Retry: &RetryPolicy{MaxAttempts: tt.max, InitialBackoff: time.Millisecond, Jitter: 0.5}})
			var calls atomic.Int64
			var attemptsSeen []int
			j := New(Info{Kind: "replicate", Description: "copy src/ds"}, func(ctx context.Context) error {
				n := calls.Add(1)
				attemptsSeen = append(attemptsSeen, Attempt(ctx))
				if int(n) <= tt.failures {
					if tt.permanent {
						return Permanent(fmt.Errorf("dataset src/ds: %w", transient))
					}
					return transient
				}
				return nil
			})
			err := r.Run(testCtx(t), j)
			if int(calls.Load()) != tt.wantAttempts {
				t.Fatalf("calls = %d, want %d", calls.Load(), tt.wantAttempts)
			}
			for i, a := range attemptsSeen {
				if a != i+1 {
					t.Fatalf("Attempt(ctx) = %v", attemptsSeen)
				}
			}
			done := r.Done()
			if len(done) != 1 || done[0].Attempts != tt.wantAttempts || done[0].Result != tt.wantResult {
				t.Fatalf("status %+v", done)
			}
			if tt.wantResult == ResultOK {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if !errors.Is(err, transient) {
				t.Fatalf("err = %v, want it to wrap the job's error", err)
			}
			if IsPermanent(err) != tt.permanent {
				t.Fatalf("IsPermanent = %v", IsPermanent(err))
			}
			if done[0].Error != err.Error() {
				t.Fatalf("status error %q != %q", done[0].Error, err)
			}
		})
	}
}

func TestRetryReleasesSlotKeepsLock(t *testing.T) {
	r := newTestRunner(t, Options{Retry: &RetryPolicy{MaxAttempts: 2, InitialBackoff: time.Hour}})
	failed := make(chan struct{})
	id := mustSubmit(t, r, New(Info{Kind: "ingest", LockKey: "k"}, func(ctx context.Context) error {
		if Attempt(ctx) == 1 {
			close(failed)
			return errors.New("flaky")
		}
		return nil
	}))
	<-failed
	// While retrying (an hour of backoff) the slot is free for others...
	ran := make(chan struct{})
	other := mustSubmit(t, r, New(Info{Kind: "ingest"}, func(context.Context) error { close(ran); return nil }))
	<-ran
	waitStatus(t, r, other)
	// ...but the lock is not.
	if _, err := r.Submit(context.Background(), New(Info{Kind: "ingest", LockKey: "k", IfLocked: LockSkip}, func(context.Context) error { return nil })); !errors.Is(err, ErrAlreadyRunning) {
		t.Fatalf("err = %v", err)
	}
	st, _ := r.Get(id)
	if st.State != StateRetrying || st.Error != "flaky" || st.NextAttempt.IsZero() {
		t.Fatalf("%+v", st)
	}
	if running := r.Running(); len(running) != 1 || running[0].ID != id {
		t.Fatalf("running = %+v", running)
	}
	// Cancelling during backoff ends the job without another attempt.
	if err := r.Cancel(id); err != nil {
		t.Fatal(err)
	}
	st = waitStatus(t, r, id)
	if st.Result != ResultCanceled || st.Attempts != 1 {
		t.Fatalf("%+v", st)
	}
}

// delay is p's delay after failures with u in [0,1] as the jitter draw: 0 is
// the low end of the ±Jitter window, 1 the high end.
func delay(p RetryPolicy, failures int, u float64) time.Duration {
	return p.Backoff(func() float64 { return 1 - u }).Delay(failures)
}

func TestBackoffDelay(t *testing.T) {
	p := RetryPolicy{InitialBackoff: time.Second, MaxBackoff: 10 * time.Second, Multiplier: 2}
	for i, want := range []time.Duration{1, 2, 4, 8, 10, 10, 10} {
		if got := delay(p, i+1, 0.5); got != want*time.Second {
			t.Errorf("delay(%d) = %v, want %v", i+1, got, want*time.Second)
		}
	}
	p.Jitter = 0.5
	tests := []struct {
		failures int
		u        float64
		want     time.Duration
	}{
		{1, 0, 500 * time.Millisecond},
		{1, 0.5, time.Second},
		{1, 1, 1500 * time.Millisecond},
		{3, 0, 2 * time.Second},
		{100, 1, 15 * time.Second},
	}
	for _, tt := range tests {
		if got := delay(p, tt.failures, tt.u); got != tt.want {
			t.Errorf("delay(%d, %v) = %v, want %v", tt.failures, tt.u, got, tt.want)
		}
	}
	for range 100 {
		if d := p.Delay(1); d < 500*time.Millisecond || d > 1500*time.Millisecond {
			t.Fatalf("Delay(1) = %v out of jitter range", d)
		}
	}
	if d := delay(RetryPolicy{InitialBackoff: time.Second}, 3, 0.5); d != 4*time.Second {
		t.Errorf("default multiplier: %v", d)
	}
}

func TestTimeout(t *testing.T) {
	r := newTestRunner(t, Options{Retry: &RetryPolicy{MaxAttempts: 3, InitialBackoff: time.Millisecond}})
	var calls atomic.Int64
	err := r.Run(testCtx(t), New(Info{Kind: "ingest", Timeout: 20 * time.Millisecond, Description: "slow source"}, func(ctx context.Context) error {
		calls.Add(1)
		<-ctx.Done()
		return fmt.Errorf("reading: %w", ctx.Err())
	}))
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v", err)
	}
	if calls.Load() != 1 {
		t.Fatalf("timed-out job was retried: %d calls", calls.Load())
	}
	st := r.Done()[0]
	if st.Result != ResultTimeout {
		t.Fatalf("%+v", st)
	}
}

func TestTimeoutCountsFromStart(t *testing.T) {
	// A job queued behind another must not time out while waiting.
	r := newTestRunner(t, Options{})
	g := newGate()
	mustSubmit(t, r, g.job(Info{Kind: "q"}))
	<-g.entered
	id := mustSubmit(t, r, New(Info{Kind: "q", Timeout: time.Hour}, func(ctx context.Context) error {
		if _, ok := ctx.Deadline(); !ok {
			return errors.New("no deadline")
		}
		return nil
	}))
	g.release <- struct{}{}
	if st := waitStatus(t, r, id); st.Result != ResultOK {
		t.Fatalf("%+v", st)
	}
}

func TestCancelByID(t *testing.T) {
	r := newTestRunner(t, Options{})
	g := newGate()
	running := mustSubmit(t, r, g.job(Info{Kind: "fixity"}))
	<-g.entered
	ran := false
	pending := mustSubmit(t, r, New(Info{Kind: "fixity"}, func(context.Context) error { ran = true; return nil }))

	if err := r.Cancel(pending); err != nil {
		t.Fatal(err)
	}
	st := waitStatus(t, r, pending)
	if st.Result != ResultCanceled || st.Attempts != 0 || !st.Started.IsZero() || ran {
		t.Fatalf("pending job: %+v ran=%v", st, ran)
	}

	if err := r.Cancel(running); err != nil {
		t.Fatal(err)
	}
	st = waitStatus(t, r, running)
	if st.Result != ResultCanceled || st.Attempts != 1 {
		t.Fatalf("running job: %+v", st)
	}
	if err := r.Cancel("nope"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("err = %v", err)
	}
	if err := r.Cancel(running); !errors.Is(err, ErrNotFound) {
		t.Fatalf("cancel of finished job: %v", err)
	}
}

func TestRunContextCancelsJobSubmitDoesNot(t *testing.T) {
	r := newTestRunner(t, Options{Queues: QueueSpec{DefaultWorkers: 2}})
	g := newGate()
	ctx, cancel := context.WithCancel(context.Background())
	id := mustSubmitCtx(t, r, ctx, g.job(Info{Kind: "a", ID: "detached"}))
	<-g.entered
	errc := make(chan error, 1)
	go func() { errc <- r.Run(ctx, g.job(Info{Kind: "b", ID: "bound"})) }()
	<-g.entered
	cancel()
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Fatalf("Run: %v", err)
	}
	if st, _ := r.Get("bound"); st.Result != ResultCanceled {
		t.Fatalf("bound job: %+v", st)
	}
	// A deadline on the caller's context is a cancellation, not the job's
	// timeout.
	dctx, dcancel := context.WithTimeout(context.Background(), time.Millisecond)
	defer dcancel()
	err := r.Run(dctx, New(Info{Kind: "b", ID: "deadline"}, func(ctx context.Context) error {
		<-ctx.Done()
		return ctx.Err()
	}))
	if st, _ := r.Get("deadline"); !errors.Is(err, context.DeadlineExceeded) || st.Result != ResultCanceled {
		t.Fatalf("err %v, status %+v", err, st)
	}
	if st, _ := r.Get(id); st.State != StateRunning {
		t.Fatalf("submitted job was cancelled with the submit ctx: %+v", st)
	}
	g.release <- struct{}{}
	if st := waitStatus(t, r, id); st.Result != ResultOK {
		t.Fatalf("%+v", st)
	}
}

func mustSubmitCtx(t *testing.T, r *Runner, ctx context.Context, j Job) string {
	t.Helper()
	id, err := r.Submit(ctx, j)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

func TestHistoryBound(t *testing.T) {
	r := newTestRunner(t, Options{HistorySize: 3, Retry: &RetryPolicy{MaxAttempts: 1}})
	ctx := testCtx(t)
	for i := range 5 {
		err := r.Run(ctx, New(Info{Kind: "sync", ID: fmt.Sprint("j", i)}, func(context.Context) error {
			if i == 4 {
				return errors.New("boom")
			}
			return nil
		}))
		if (err != nil) != (i == 4) {
			t.Fatal(err)
		}
	}
	done := r.Done()
	var ids []string
	for _, st := range done {
		ids = append(ids, st.ID)
	}
	if fmt.Sprint(ids) != "[j4 j3 j2]" {
		t.Fatalf("history = %v", ids)
	}
	if done[0].Result != ResultError || done[0].Error == "" || done[1].Result != ResultOK {
		t.Fatalf("%+v", done[:2])
	}
	for _, st := range done {
		if st.State != StateDone || st.Finished.Before(st.Started) || st.Duration != st.Finished.Sub(st.Started) || st.Attempts != 1 {
			t.Fatalf("%+v", st)
		}
	}
	if _, ok := r.Get("j0"); ok {
		t.Fatal("evicted job still found")
	}
	if _, err := r.Wait(ctx, "j0"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("wait evicted: %v", err)
	}
}

func TestProgressAndLogger(t *testing.T) {
	r := newTestRunner(t, Options{})
	reported := make(chan struct{})
	finish := make(chan struct{})
	var logOK bool
	id := mustSubmit(t, r, New(Info{Kind: "ingest", LockKey: "ingest:s/d"}, func(ctx context.Context) error {
		logOK = Logger(ctx) != slog.Default()
		ProgressFunc(ctx)(Progress{Bytes: 1000, Files: 3, TotalFiles: 10, Current: "a/b"})
		close(reported)
		<-finish
		return nil
	}))
	<-reported
	running := r.Running()
	if len(running) != 1 || running[0].Progress.Bytes != 1000 || running[0].Progress.Files != 3 || running[0].Progress.Current != "a/b" {
		t.Fatalf("%+v", running)
	}
	if running[0].Progress.BytesPerSecond <= 0 {
		t.Fatalf("rate = %v", running[0].Progress.BytesPerSecond)
	}
	close(finish)
	st := waitStatus(t, r, id)
	if st.Progress.Files != 3 || !logOK {
		t.Fatalf("%+v logOK=%v", st, logOK)
	}
	// Outside a job these are harmless.
	ReportProgress(context.Background(), Progress{Bytes: 1})
	if Logger(context.Background()) != slog.Default() || Attempt(context.Background()) != 0 {
		t.Fatal("context helpers outside a job")
	}
}

func TestOnChangeAndIDs(t *testing.T) {
	var mu sync.Mutex
	var states []State
	r := newTestRunner(t, Options{OnChange: func(s Status) {
		mu.Lock()
		states = append(states, s.State)
		mu.Unlock()
	}})
	ctx := testCtx(t)
	if err := r.Run(ctx, New(Info{Kind: "restore"}, func(context.Context) error { return nil })); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	got := fmt.Sprint(states)
	mu.Unlock()
	if got != "[pending running done]" {
		t.Fatalf("states = %s", got)
	}
	d := r.Done()[0]
	if len(d.ID) != len("restore-")+12 || d.Queue != "restore" {
		t.Fatalf("generated id/queue: %+v", d)
	}

	g := newGate()
	mustSubmit(t, r, g.job(Info{Kind: "x", ID: "same"}))
	if _, err := r.Submit(ctx, g.job(Info{Kind: "x", ID: "same"})); !errors.Is(err, ErrDuplicateID) {
		t.Fatalf("err = %v", err)
	}
	close(g.release)
}

func TestPanicIsPermanent(t *testing.T) {
	r := newTestRunner(t, Options{Retry: &RetryPolicy{MaxAttempts: 3, InitialBackoff: time.Millisecond}})
	var calls atomic.Int64
	err := r.Run(testCtx(t), New(Info{Kind: "k"}, func(context.Context) error {
		calls.Add(1)
		panic("oops")
	}))
	if !IsPermanent(err) || calls.Load() != 1 {
		t.Fatalf("err = %v, calls = %d", err, calls.Load())
	}
}

func TestCloseCancelsAndRejects(t *testing.T) {
	r := NewRunner(Options{Logger: quietLogger()})
	g := newGate()
	id := mustSubmit(t, r, g.job(Info{Kind: "ingest"}))
	<-g.entered
	if err := r.Close(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	st, _ := r.Get(id)
	if st.Result != ResultCanceled || !strings.Contains(st.Error, ErrClosed.Error()) {
		t.Fatalf("%+v", st)
	}
	if _, err := r.Submit(context.Background(), g.job(Info{Kind: "ingest"})); !errors.Is(err, ErrClosed) {
		t.Fatalf("err = %v", err)
	}
}

func TestSequenceAndWithInfo(t *testing.T) {
	var order []string
	step := func(name string, err error) func(context.Context) error {
		return func(context.Context) error { order = append(order, name); return err }
	}
	stop := errors.New("pre-hook failed")
	j := Sequence(Info{Kind: "ingest"}, step("pre", nil), step("body", stop), step("post", nil))
	if err := j.Run(context.Background()); !errors.Is(err, stop) || fmt.Sprint(order) != "[pre body]" {
		t.Fatalf("%v %v", err, order)
	}
	j2 := WithInfo(j, func(i *Info) { i.LockKey = "k"; i.Timeout = time.Minute })
	if j2.Info().LockKey != "k" || j2.Info().Kind != "ingest" || j.Info().LockKey != "" {
		t.Fatalf("%+v", j2.Info())
	}
}
