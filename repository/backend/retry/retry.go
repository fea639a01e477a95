// Package retry wraps any backend so that its failed operations are tried
// again: the one place where a repository retries storage requests. Backends
// themselves (S3 included) try each request once.
//
// An error is retried only if it is transient by the AWS SDK's own checks
// (aws/retry.DefaultRetryables: broken connections, HTTP 500/502/503/504,
// request timeouts, and the throttle codes such as SlowDown), plus HTTP 429
// and a response body cut short. A backend that knows better says so through
// the SDK's interface, a RetryableError() bool method on its error (S3 does
// for stalled requests and for its own checks). Never retried: a missing
// object (backend.ErrNotExist), and anything once the caller's context is
// done. The wait between attempts is internal/backoff's.
//
// Every operation of the Backend interface is safe to repeat. Save replaces
// the whole object atomically, and the reader is rewound to where it started,
// so a retried Save stores the same bytes once (and S3 aborts the multipart
// upload of a failed try). List reports each name once even when a retry
// starts the listing over. Remove that finds the object gone after an
// earlier try failed counts as done: that try removed it. Load retries
// opening the object; a read that breaks midway is resumed by the backend
// that can pin it to one version of the object (S3: its ETag).
//
// After the last attempt the error says which operation on which object
// gave up after how many attempts, and wraps the last failure.
package retry

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awsretry "github.com/aws/aws-sdk-go-v2/aws/retry"

	"github.com/custos-backup/custos/internal/backoff"
	"github.com/custos-backup/custos/repository/backend"
)

// DefaultMaxAttempts is how often an operation is tried by default.
const DefaultMaxAttempts = 6

// DefaultBackoff is the wait between attempts by default: full jitter under
// 250ms, 500ms, 1s ... up to 20s; the five waits of DefaultMaxAttempts add
// up to at most 7.75s, about 4s on average.
func DefaultBackoff() backoff.Policy {
	return backoff.Policy{Initial: 250 * time.Millisecond, Max: 20 * time.Second, Jitter: 1}
}

// Options configure the retries. The zero value means the defaults.
type Options struct {
	// MaxAttempts counts the first try; 0 means DefaultMaxAttempts, 1 means
	// no retries.
	MaxAttempts int
	// Backoff is the wait before each retry; a zero Initial means
	// DefaultBackoff.
	Backoff backoff.Policy
	// Logger receives a warning per retry; nil means slog.Default().
	Logger *slog.Logger
}

func (o Options) withDefaults() Options {
	if o.MaxAttempts <= 0 {
		o.MaxAttempts = DefaultMaxAttempts
	}
	if o.Backoff.Initial <= 0 {
		o.Backoff = DefaultBackoff()
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	return o
}

// Retryable reports whether err is worth another try: the AWS SDK's checks
// (or the error's own RetryableError method), HTTP 429, and a response cut
// short. A missing object and a cancelled or expired context are not.
func Retryable(err error) bool {
	switch {
	case err == nil,
		errors.Is(err, backend.ErrNotExist),
		errors.Is(err, context.Canceled),
		errors.Is(err, context.DeadlineExceeded):
		return false
	}
	checks := append(awsretry.IsErrorRetryables{}, awsretry.DefaultRetryables...)
	checks = append(checks, awsretry.RetryableHTTPStatusCode{Codes: map[int]struct{}{429: {}}})
	switch checks.IsErrorRetryable(err) {
	case aws.TrueTernary:
		return true
	case aws.FalseTernary:
		return false
	}
	return errors.Is(err, io.ErrUnexpectedEOF)
}

// Throttled reports whether err is the server asking the client to slow
// down, by the AWS SDK's throttle checks (SlowDown ...) or HTTP 429.
func Throttled(err error) bool {
	if awsretry.IsErrorThrottles(awsretry.DefaultThrottles).IsErrorThrottle(err) == aws.TrueTernary {
		return true
	}
	var hs interface{ HTTPStatusCode() int }
	return errors.As(err, &hs) && hs.HTTPStatusCode() == 429
}

// Retrier runs an operation until it succeeds, fails for good, or runs out
// of attempts. It is safe for concurrent use.
type Retrier struct {
	opts Options
}

// NewRetrier returns a Retrier with the given options.
func NewRetrier(opts Options) *Retrier {
	return &Retrier{opts: opts.withDefaults()}
}

// Do calls fn until it returns nil or an error that Retryable rejects, ctx
// is done, or MaxAttempts calls failed; what names the operation and object
// in logs and in the final error. fn gets the attempt number (1 = first).
// The error of the last attempt is returned as is when it is not worth
// retrying, wrapped with the count when the attempts ran out, and wrapped
// together with ctx.Err() when ctx ended a retry.
func (r *Retrier) Do(ctx context.Context, what string, fn func(attempt int) error) error {
	for n := 1; ; n++ {
		err := fn(n)
		if err == nil {
			return nil
		}
		if !Retryable(err) {
			return err
		}
		if cerr := ctx.Err(); cerr != nil {
			return fmt.Errorf("%s: %w before retrying after attempt %d: %w", what, cerr, n, err)
		}
		if n >= r.opts.MaxAttempts {
			return fmt.Errorf("%s: giving up after %d attempts: %w", what, n, err)
		}
		delay := r.opts.Backoff.Delay(n)
		msg := "storage request failed, will retry"
		if Throttled(err) {
			msg = "storage request throttled, will retry"
		}
		r.opts.Logger.Warn(msg, "op", what, "attempt", n, "of", r.opts.MaxAttempts, "wait", delay, "error", err)
		if werr := backoff.Sleep(ctx, delay); werr != nil {
			return fmt.Errorf("%s: %w while waiting to retry after attempt %d: %w", what, werr, n, err)
		}
	}
}

// Backend retries the operations of the backend it wraps.
type Backend struct {
	be backend.Backend
	r  *Retrier
}

// leftovers is a Backend whose wrapped backend removes leftovers, so that
// the wrapper does too (callers find the ability by a type assertion).
type leftovers struct {
	*Backend
	lr backend.LeftoverRemover
}

// New wraps be. The result implements backend.LeftoverRemover exactly when
// be does.
func New(be backend.Backend, opts Options) backend.Backend {
	b := &Backend{be: be, r: NewRetrier(opts)}
	if lr, ok := be.(backend.LeftoverRemover); ok {
		return &leftovers{Backend: b, lr: lr}
	}
	return b
}

// Unwrap returns the wrapped backend.
func (b *Backend) Unwrap() backend.Backend { return b.be }

// Location is the wrapped backend's.
func (b *Backend) Location() string { return b.be.Location() }

// Close closes the wrapped backend.
func (b *Backend) Close() error { return b.be.Close() }

// noRetry carries an error that must end the retries as is: a caller's
// callback failed, or the reader cannot be rewound.
type noRetry struct{ err error }

func (e noRetry) Error() string        { return e.err.Error() }
func (e noRetry) Unwrap() error        { return e.err }
func (e noRetry) RetryableError() bool { return false }

// Save stores rd, rewinding it to where it was for every retry.
func (b *Backend) Save(ctx context.Context, h backend.Handle, rd io.ReadSeeker, size int64) error {
	start, err := rd.Seek(0, io.SeekCurrent)
	if err != nil {
		// Without a position to go back to there is one try only.
		return b.be.Save(ctx, h, rd, size)
	}
	return b.r.Do(ctx, "save "+h.String(), func(n int) error {
		if n > 1 {
			if _, err := rd.Seek(start, io.SeekStart); err != nil {
				return noRetry{fmt.Errorf("save %s: rewind for retry: %w", h, err)}
			}
		}
		return b.be.Save(ctx, h, rd, size)
	})
}

// Load retries opening h.
func (b *Backend) Load(ctx context.Context, h backend.Handle, length int, offset int64) (io.ReadCloser, error) {
	var rc io.ReadCloser
	err := b.r.Do(ctx, "load "+h.String(), func(int) error {
		var err error
		rc, err = b.be.Load(ctx, h, length, offset)
		return err
	})
	if err != nil {
		return nil, err
	}
	return rc, nil
}

// Stat retries looking h up.
func (b *Backend) Stat(ctx context.Context, h backend.Handle) (backend.FileInfo, error) {
	var fi backend.FileInfo
	err := b.r.Do(ctx, "stat "+h.String(), func(int) error {
		var err error
		fi, err = b.be.Stat(ctx, h)
		return err
	})
	return fi, err
}

// List starts the listing over after a failure, and skips the names that an
// earlier try reported already. An error from fn ends it at once.
func (b *Backend) List(ctx context.Context, t backend.FileType, fn func(backend.FileInfo) error) error {
	seen := make(map[string]struct{})
	var fnErr error
	err := b.r.Do(ctx, "list "+string(t), func(int) error {
		return b.be.List(ctx, t, func(fi backend.FileInfo) error {
			if _, ok := seen[fi.Name]; ok {
				return nil
			}
			seen[fi.Name] = struct{}{}
			if err := fn(fi); err != nil {
				fnErr = err
				return noRetry{err}
			}
			return nil
		})
	})
	if fnErr != nil {
		return fnErr
	}
	return err
}

// Remove retries deleting h. An object gone on a retry was removed by the
// try whose answer was lost.
func (b *Backend) Remove(ctx context.Context, h backend.Handle) error {
	return b.r.Do(ctx, "remove "+h.String(), func(n int) error {
		err := b.be.Remove(ctx, h)
		if n > 1 && errors.Is(err, backend.ErrNotExist) {
			return nil
		}
		return err
	})
}

// RemoveLeftovers retries the wrapped backend's clean-up as a whole; it is
// safe to repeat, since removing a leftover twice removes it once.
func (l *leftovers) RemoveLeftovers(ctx context.Context, before time.Time) (int, int64, error) {
	var total int
	var size int64
	err := l.r.Do(ctx, "remove leftovers", func(int) error {
		n, s, err := l.lr.RemoveLeftovers(ctx, before)
		total += n
		size += s
		return err
	})
	return total, size, err
}
