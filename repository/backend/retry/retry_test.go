package retry_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/smithy-go"

	"github.com/custos-backup/custos/internal/backoff"
	"github.com/custos-backup/custos/repository/backend"
	"github.com/custos-backup/custos/repository/backend/backendtest"
	"github.com/custos-backup/custos/repository/backend/local"
	"github.com/custos-backup/custos/repository/backend/retry"
)

// transient is an injected failure that says, through the AWS SDK's
// interface, that it is worth retrying.
type transient struct{ h backend.Handle }

func (e transient) Error() string        { return fmt.Sprintf("%s: server busy (injected)", e.h) }
func (e transient) RetryableError() bool { return true }

func failTransient(_ context.Context, h backend.Handle) error { return transient{h} }

// logBuffer collects log lines; the wrapper logs from the calling goroutine,
// but tests read it from theirs.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func quick(log io.Writer) retry.Options {
	return retry.Options{
		MaxAttempts: 3,
		Backoff:     backoff.Policy{Initial: time.Millisecond, Max: 2 * time.Millisecond, Jitter: 1},
		Logger:      slog.New(slog.NewTextHandler(log, nil)),
	}
}

func TestConformance(t *testing.T) {
	backendtest.Run(t, func(t *testing.T) backend.Backend {
		return retry.New(backendtest.NewMem(), quick(io.Discard))
	})
}

var (
	idx  = backend.Handle{Type: backend.IndexFile, Name: "i1"}
	data = []byte("index bytes")
)

// setup returns a wrapped in-memory backend that holds idx, and the Faulty
// between the two for injecting faults.
func setup(t *testing.T, log io.Writer) (backend.Backend, *backendtest.Faulty) {
	t.Helper()
	mem := backendtest.NewMem()
	if err := mem.Save(context.Background(), idx, bytes.NewReader(data), int64(len(data))); err != nil {
		t.Fatal(err)
	}
	f := backendtest.NewFaulty(mem)
	return retry.New(f, quick(log)), f
}

// ops runs each operation once on idx.
var ops = []struct {
	op  backendtest.Op
	run func(context.Context, backend.Backend) error
}{
	{backendtest.OpSave, func(ctx context.Context, be backend.Backend) error {
		return be.Save(ctx, idx, bytes.NewReader(data), int64(len(data)))
	}},
	{backendtest.OpLoad, func(ctx context.Context, be backend.Backend) error {
		rc, err := be.Load(ctx, idx, 0, 0)
		if err != nil {
			return err
		}
		defer rc.Close()
		got, err := io.ReadAll(rc)
		if err == nil && !bytes.Equal(got, data) {
			err = fmt.Errorf("load read %q, want %q", got, data)
		}
		return err
	}},
	{backendtest.OpStat, func(ctx context.Context, be backend.Backend) error {
		fi, err := be.Stat(ctx, idx)
		if err == nil && fi.Size != int64(len(data)) {
			err = fmt.Errorf("stat size %d, want %d", fi.Size, len(data))
		}
		return err
	}},
	{backendtest.OpList, func(ctx context.Context, be backend.Backend) error {
		return be.List(ctx, backend.IndexFile, func(backend.FileInfo) error { return nil })
	}},
	{backendtest.OpRemove, func(ctx context.Context, be backend.Backend) error {
		return be.Remove(ctx, idx)
	}},
}

func TestTransientFailuresAreRetried(t *testing.T) {
	for _, o := range ops {
		t.Run(string(o.op), func(t *testing.T) {
			var log logBuffer
			be, f := setup(t, &log)
			r := &backendtest.Rule{Op: o.op, Times: 2, Before: failTransient}
			f.Add(r)
			if err := o.run(context.Background(), be); err != nil {
				t.Fatalf("%s after two transient failures: %v", o.op, err)
			}
			if got := len(f.Calls()); got != 3 {
				t.Errorf("%s made %d calls, want 3", o.op, got)
			}
			if got := strings.Count(log.String(), "storage request failed, will retry"); got != 2 {
				t.Errorf("log has %d retry warnings, want 2:\n%s", got, log.String())
			}
		})
	}
}

func TestPermanentFailuresAreNot(t *testing.T) {
	for _, o := range ops {
		t.Run(string(o.op), func(t *testing.T) {
			be, f := setup(t, io.Discard)
			f.Add(&backendtest.Rule{Op: o.op, Before: backendtest.Fail("disk on fire")})
			err := o.run(context.Background(), be)
			if !errors.Is(err, backendtest.ErrInjected) {
				t.Fatalf("%s = %v, want the injected error", o.op, err)
			}
			if strings.Contains(err.Error(), "giving up") {
				t.Errorf("error %q claims retries", err)
			}
			if got := len(f.Calls()); got != 1 {
				t.Errorf("%s made %d calls, want 1", o.op, got)
			}
		})
	}
}

func TestGiveUp(t *testing.T) {
	for _, o := range ops {
		t.Run(string(o.op), func(t *testing.T) {
			be, f := setup(t, io.Discard)
			f.Add(&backendtest.Rule{Op: o.op, Before: failTransient})
			err := o.run(context.Background(), be)
			var tr transient
			if !errors.As(err, &tr) {
				t.Fatalf("%s = %v, want it to wrap the last failure", o.op, err)
			}
			for _, want := range []string{"giving up after 3 attempts", "index"} {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q does not contain %q", err, want)
				}
			}
			if got := len(f.Calls()); got != 3 {
				t.Errorf("%s made %d calls, want 3", o.op, got)
			}
		})
	}
}

func TestMissingIsNotRetried(t *testing.T) {
	be, f := setup(t, io.Discard)
	missing := backend.Handle{Type: backend.SnapshotFile, Name: "nope"}
	if _, err := be.Stat(context.Background(), missing); !errors.Is(err, backend.ErrNotExist) {
		t.Fatalf("Stat of a missing object = %v", err)
	}
	if _, err := be.Load(context.Background(), missing, 0, 0); !errors.Is(err, backend.ErrNotExist) {
		t.Fatalf("Load of a missing object = %v", err)
	}
	if err := be.Remove(context.Background(), missing); !errors.Is(err, backend.ErrNotExist) {
		t.Fatalf("Remove of a missing object = %v", err)
	}
	if got := len(f.Calls()); got != 3 {
		t.Errorf("3 operations on a missing object made %d calls", got)
	}
}

// A retried Save stores the bytes after the reader's starting position,
// once, however far an earlier try read.
func TestSaveRewinds(t *testing.T) {
	be, f := setup(t, io.Discard)
	h := backend.Handle{Type: backend.SnapshotFile, Name: "s"}
	rd := strings.NewReader("skip:the object")
	if _, err := rd.Seek(5, io.SeekStart); err != nil {
		t.Fatal(err)
	}
	// The first try reads everything and then fails, as an upload whose
	// answer is lost would.
	f.Add(&backendtest.Rule{Op: backendtest.OpSave, Times: 1, After: func(_ context.Context, h backend.Handle, _ error) error {
		return transient{h}
	}})
	if err := be.Save(context.Background(), h, rd, int64(len("the object"))); err != nil {
		t.Fatal(err)
	}
	rc, err := be.Load(context.Background(), h, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	if got, err := io.ReadAll(rc); err != nil || string(got) != "the object" {
		t.Fatalf("saved %q, %v; want %q", got, err, "the object")
	}
}

// A listing that fails after reporting names starts over and reports each
// name once; an error of the caller's function ends it without a retry.
func TestListOnce(t *testing.T) {
	be, f := setup(t, io.Discard)
	for _, name := range []string{"i2", "i3"} {
		if err := be.Save(context.Background(), backend.Handle{Type: backend.IndexFile, Name: name}, strings.NewReader("x"), 1); err != nil {
			t.Fatal(err)
		}
	}
	f.Reset()
	f.Add(&backendtest.Rule{Op: backendtest.OpList, Times: 1, After: func(_ context.Context, h backend.Handle, _ error) error {
		return transient{h}
	}})
	seen := map[string]int{}
	if err := be.List(context.Background(), backend.IndexFile, func(fi backend.FileInfo) error {
		seen[fi.Name]++
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if len(seen) != 3 || seen["i1"] != 1 || seen["i2"] != 1 || seen["i3"] != 1 {
		t.Errorf("List reported %v, want i1, i2 and i3 once each", seen)
	}
	if got := len(f.Calls()); got != 2 {
		t.Errorf("List made %d calls, want 2", got)
	}

	f.Reset()
	stop := transient{idx} // retryable by its looks, but the caller's
	err := be.List(context.Background(), backend.IndexFile, func(backend.FileInfo) error { return stop })
	if err != stop {
		t.Errorf("List with a failing callback = %v, want the callback's error as is", err)
	}
	if got := len(f.Calls()); got != 1 {
		t.Errorf("List with a failing callback made %d calls, want 1", got)
	}
}

// A Remove whose answer was lost finds the object gone on the retry: done.
func TestRemoveLostAnswer(t *testing.T) {
	be, f := setup(t, io.Discard)
	f.Add(&backendtest.Rule{Op: backendtest.OpRemove, Times: 1, After: func(_ context.Context, h backend.Handle, err error) error {
		if err != nil {
			return err
		}
		return transient{h}
	}})
	if err := be.Remove(context.Background(), idx); err != nil {
		t.Fatalf("Remove whose answer was lost = %v", err)
	}
	if _, err := be.Stat(context.Background(), idx); !errors.Is(err, backend.ErrNotExist) {
		t.Fatalf("Stat after Remove = %v", err)
	}
}

func TestCancel(t *testing.T) {
	t.Run("before", func(t *testing.T) {
		be, f := setup(t, io.Discard)
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		if _, err := be.Stat(ctx, idx); !errors.Is(err, context.Canceled) {
			t.Fatalf("Stat with a cancelled context = %v", err)
		}
		if got := len(f.Calls()); got != 1 {
			t.Errorf("Stat with a cancelled context made %d calls, want 1", got)
		}
	})
	t.Run("during a try", func(t *testing.T) {
		mem := backendtest.NewMem()
		f := backendtest.NewFaulty(mem)
		opts := quick(io.Discard)
		opts.Backoff = backoff.Policy{Initial: time.Hour} // the test would hang if ctx were ignored
		be := retry.New(f, opts)
		ctx, cancel := context.WithCancel(context.Background())
		f.Add(&backendtest.Rule{Op: backendtest.OpStat, Before: func(_ context.Context, h backend.Handle) error {
			cancel() // while the first try fails
			return transient{h}
		}})
		_, err := be.Stat(ctx, idx)
		var tr transient
		if !errors.Is(err, context.Canceled) || !errors.As(err, &tr) {
			t.Fatalf("Stat cancelled during a try = %v, want context.Canceled and the failure", err)
		}
		if got := len(f.Calls()); got != 1 {
			t.Errorf("Stat made %d calls, want 1", got)
		}
	})
	t.Run("while waiting", func(t *testing.T) {
		f := backendtest.NewFaulty(backendtest.NewMem())
		opts := quick(io.Discard)
		opts.Backoff = backoff.Policy{Initial: time.Hour}
		be := retry.New(f, opts)
		failed := make(chan struct{})
		f.Add(&backendtest.Rule{Op: backendtest.OpStat, Before: func(_ context.Context, h backend.Handle) error {
			close(failed)
			return transient{h}
		}})
		ctx, cancel := context.WithCancel(context.Background())
		errc := make(chan error, 1)
		go func() {
			_, err := be.Stat(ctx, idx)
			errc <- err
		}()
		<-failed
		cancel()
		err := <-errc
		var tr transient
		if !errors.Is(err, context.Canceled) || !errors.As(err, &tr) {
			t.Fatalf("Stat cancelled while waiting = %v, want context.Canceled and the failure", err)
		}
		if !strings.Contains(err.Error(), "while waiting to retry after attempt 1") {
			t.Errorf("error %q does not say it was waiting", err)
		}
	})
}

func TestLeftoverRemover(t *testing.T) {
	if _, ok := retry.New(backendtest.NewMem(), retry.Options{}).(backend.LeftoverRemover); ok {
		t.Error("wrapped in-memory backend claims to remove leftovers")
	}
	dir := t.TempDir()
	lb, err := local.Create(context.Background(), dir)
	if err != nil {
		t.Fatal(err)
	}
	defer lb.Close()
	be := retry.New(lb, retry.Options{})
	lr, ok := be.(backend.LeftoverRemover)
	if !ok {
		t.Fatal("wrapped local backend does not remove leftovers")
	}
	if n, _, err := lr.RemoveLeftovers(context.Background(), time.Now()); err != nil || n != 0 {
		t.Errorf("RemoveLeftovers of an empty repository = %d, %v", n, err)
	}
	if u, ok := be.(interface{ Unwrap() backend.Backend }); !ok || u.Unwrap() != lb {
		t.Error("Unwrap does not return the local backend")
	}
}

type statusErr int

func (s statusErr) Error() string       { return fmt.Sprintf("HTTP %d", int(s)) }
func (s statusErr) HTTPStatusCode() int { return int(s) }

type verdictErr struct {
	error
	retry bool
}

func (v verdictErr) RetryableError() bool { return v.retry }
func (v verdictErr) Unwrap() error        { return v.error }

func TestRetryable(t *testing.T) {
	api := func(code string) error { return &smithy.GenericAPIError{Code: code, Message: "m"} }
	tests := []struct {
		name      string
		err       error
		retryable bool
		throttled bool
	}{
		{"nil", nil, false, false},
		{"missing", fmt.Errorf("stat x: %w", backend.ErrNotExist), false, false},
		{"cancelled", fmt.Errorf("x: %w", context.Canceled), false, false},
		{"deadline", fmt.Errorf("x: %w", context.DeadlineExceeded), false, false},
		{"plain", errors.New("no"), false, false},
		{"503", statusErr(503), true, false},
		{"500 wrapped", fmt.Errorf("x: %w", statusErr(500)), true, false},
		{"429", statusErr(429), true, true},
		{"403", statusErr(403), false, false},
		{"404", statusErr(404), false, false},
		{"SlowDown", api("SlowDown"), true, true},
		{"Throttling", api("Throttling"), true, true},
		{"RequestTimeout", api("RequestTimeout"), true, false},
		{"AccessDenied", api("AccessDenied"), false, false},
		{"dial refused", &net.OpError{Op: "dial", Net: "tcp", Err: errors.New("connection refused")}, true, false},
		{"connection reset", fmt.Errorf("read: connection reset by peer"), true, false},
		{"cut body", fmt.Errorf("read: %w", io.ErrUnexpectedEOF), true, false},
		{"backend says no to a 503", verdictErr{statusErr(503), false}, false, false},
		{"backend says yes", verdictErr{errors.New("stalled"), true}, true, false},
		{"missing beats a yes", verdictErr{backend.ErrNotExist, true}, false, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := retry.Retryable(tt.err); got != tt.retryable {
				t.Errorf("Retryable(%v) = %v, want %v", tt.err, got, tt.retryable)
			}
			if got := retry.Throttled(tt.err); got != tt.throttled {
				t.Errorf("Throttled(%v) = %v, want %v", tt.err, got, tt.throttled)
			}
		})
	}
}
