package s3

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/aws/smithy-go"
	smithyhttp "github.com/aws/smithy-go/transport/http"

	"github.com/custos-backup/custos/repository/backend"
	"github.com/custos-backup/custos/repository/backend/retry"
)

// Errors for mistakes in the setup rather than in the data. Test with
// errors.Is; the message names the bucket and endpoint.
var (
	ErrBucketNotFound = errors.New("no such bucket")
	ErrAccessDenied   = errors.New("access denied")
	ErrNoCredentials  = errors.New("no usable AWS credentials")
)

// errStalled is the cancel cause of an attempt that made no progress.
var errStalled = errors.New("stalled")

// s3Error is what the backend returns for a failed request: it names the
// bucket, the operation and the key, says what went wrong in words, and
// wraps both the kind (ErrNotExist, ErrBucketNotFound ...) and the SDK error.
type s3Error struct {
	where string // `s3 bucket "b" at http://host:port`
	op    string
	key   string
	msg   string
	kind  error // may be nil
	err   error // may be nil
	// retryable is the verdict of classify; only request sets it.
	retryable bool
}

// RetryableError answers the AWS SDK's question (aws/retry.RetryableError),
// which repository/backend/retry asks: it knows about stalls, credential
// failures and this package's own checks, which the SDK's checks do not.
func (e *s3Error) RetryableError() bool { return e.retryable }

func (e *s3Error) Error() string {
	var sb strings.Builder
	sb.WriteString(e.where)
	sb.WriteString(": ")
	sb.WriteString(e.op)
	if e.key != "" {
		fmt.Fprintf(&sb, " %q", e.key)
	}
	sb.WriteString(": ")
	sb.WriteString(e.msg)
	return sb.String()
}

func (e *s3Error) Unwrap() []error {
	var errs []error
	if e.kind != nil {
		errs = append(errs, e.kind)
	}
	if e.err != nil {
		errs = append(errs, e.err)
	}
	return errs
}

func (b *Backend) errorf(op, key string, kind, err error, format string, args ...any) *s3Error {
	return &s3Error{where: b.where, op: op, key: key, msg: fmt.Sprintf(format, args...), kind: kind, err: err}
}

// permanent marks an error found by our own checks (not the server's) as not
// worth retrying.
type permanent struct{ err error }

func (p permanent) Error() string { return p.err.Error() }
func (p permanent) Unwrap() error { return p.err }

// attempt is one try of a request: its context is cancelled when the caller's
// is, or when the watchdog sees no progress for the stall timeout.
type attempt struct {
	ctx    context.Context
	cancel context.CancelCauseFunc
	wd     *watchdog
}

func (b *Backend) newAttempt(ctx context.Context) *attempt {
	actx, cancel := context.WithCancelCause(ctx)
	return &attempt{ctx: actx, cancel: cancel, wd: newWatchdog(b.opts.StallTimeout, func() { cancel(errStalled) })}
}

func (a *attempt) end() {
	a.wd.stop()
	a.cancel(nil)
}

func (a *attempt) stalled() bool { return context.Cause(a.ctx) == errStalled }

// watchdog calls fire once no progress has been reported for d. Progress is a
// cheap atomic store; the timer re-arms itself for the remaining time.
type watchdog struct {
	d      time.Duration
	last   atomic.Int64 // unix nanoseconds of the last progress
	paused atomic.Bool
	fire   func()

	mu      sync.Mutex
	timer   *time.Timer
	stopped bool
}

// pause stops the clock while the reader of a response body is busy with
// other things; resume starts it again when it reads.
func (w *watchdog) pause()  { w.touch(); w.paused.Store(true) }
func (w *watchdog) resume() { w.touch(); w.paused.Store(false) }

func newWatchdog(d time.Duration, fire func()) *watchdog {
	w := &watchdog{d: d, fire: fire}
	w.last.Store(time.Now().UnixNano())
	w.mu.Lock()
	w.timer = time.AfterFunc(d, w.check)
	w.mu.Unlock()
	return w
}

func (w *watchdog) touch() { w.last.Store(time.Now().UnixNano()) }

func (w *watchdog) check() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.stopped {
		return
	}
	idle := time.Since(time.Unix(0, w.last.Load()))
	if w.paused.Load() {
		idle = 0
	}
	if idle < w.d {
		w.timer.Reset(w.d - idle)
		return
	}
	w.stopped = true
	w.fire()
}

func (w *watchdog) stop() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.stopped = true
	w.timer.Stop()
}

// progressReader reports every read to a watchdog. It passes Seek through,
// because the SDK needs a seekable body to sign and checksum it.
type progressReader struct {
	r  io.ReadSeeker
	wd *watchdog
}

func (p *progressReader) Read(b []byte) (int, error) {
	n, err := p.r.Read(b)
	p.wd.touch()
	return n, err
}

func (p *progressReader) Seek(offset int64, whence int) (int64, error) {
	return p.r.Seek(offset, whence)
}

// request runs fn once as an attempt, which is ended when fn returns, and
// turns a failure into an error that names the bucket, operation and key.
// Retrying is not this package's business: repository/backend/retry wraps
// the backend and retries whole operations, asking the error whether it is
// worth it (see s3Error.RetryableError).
func (b *Backend) request(ctx context.Context, op, key string, fn func(a *attempt) error) error {
	return b.requestKeep(ctx, op, key, func(a *attempt) (bool, error) { return false, fn(a) })
}

// requestKeep is request for calls whose attempt must outlive fn (a response
// body still to be read): if fn returns keep, the attempt is the caller's to
// end.
func (b *Backend) requestKeep(ctx context.Context, op, key string, fn func(a *attempt) (keep bool, err error)) error {
	if err := ctx.Err(); err != nil {
		return b.errorf(op, key, nil, err, "%v", err)
	}
	a := b.newAttempt(ctx)
	keep, err := fn(a)
	stalled := a.stalled()
	if err != nil || !keep {
		a.end()
	}
	if err == nil {
		return nil
	}
	if cerr := ctx.Err(); cerr != nil {
		return b.errorf(op, key, nil, cerr, "%v", cerr)
	}
	if stalled {
		// The SDK error only says "canceled"; what happened is the stall.
		e := b.errorf(op, key, nil, nil, "no progress for %v", b.opts.StallTimeout)
		e.retryable = true
		return e
	}
	v := classify(err)
	e := b.errorf(op, key, v.kind, err, "%s", v.msg)
	e.retryable = v.retryable
	return e
}

// verdict is what classify makes of an error.
type verdict struct {
	retryable bool
	kind      error  // sentinel to wrap, or nil
	msg       string // brief description for the error message
}

// classify says whether err is worth retrying, which sentinel it maps to, and
// describes it briefly. Whether to retry is the AWS SDK's checks' call (via
// retry.Retryable), except where this package knows better: its own checks
// (permanent) and a failing credential chain, which the SDK would see as a
// connection error, are final. The description never includes credentials:
// S3 error messages and codes do not contain the secret key.
func classify(err error) verdict {
	v := describe(err)
	var p permanent
	v.retryable = v.kind == nil && !errors.As(err, &p) && retry.Retryable(err)
	return v
}

// describe maps err to a sentinel and a brief description; whether to retry
// is classify's to say.
func describe(err error) verdict {
	var p permanent
	if errors.As(err, &p) {
		return verdict{msg: p.err.Error()}
	}
	// A failure inside the credential chain (IMDS, STS, SSO ...) shows up
	// as another service's operation error inside the S3 one. Retrying it
	// would only repeat the chain's own timeouts; its sentinel says so.
	var op *smithy.OperationError
	if errors.As(err, &op) {
		var inner *smithy.OperationError
		if errors.As(op.Err, &inner) || strings.Contains(op.Err.Error(), "get identity") ||
			strings.Contains(op.Err.Error(), "failed to retrieve credentials") {
			return verdict{kind: ErrNoCredentials, msg: "no usable AWS credentials (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or configure a profile): " + op.Err.Error()}
		}
	}

	status := 0
	var hs interface{ HTTPStatusCode() int }
	if errors.As(err, &hs) {
		status = hs.HTTPStatusCode()
	}
	code, text := "", ""
	var api smithy.APIError
	if errors.As(err, &api) {
		code, text = api.ErrorCode(), api.ErrorMessage()
	}
	describe := func(what string) string {
		s := what
		if status != 0 {
			s += fmt.Sprintf(" (HTTP %d", status)
			if code != "" {
				s += " " + code
			}
			if text != "" && text != what {
				s += ": " + text
			}
			s += ")"
		}
		return s
	}

	switch code {
	case "NoSuchBucket":
		return verdict{kind: ErrBucketNotFound, msg: "no such bucket"}
	case "NoSuchKey", "NotFound":
		return verdict{kind: backend.ErrNotExist, msg: backend.ErrNotExist.Error()}
	case "InvalidAccessKeyId", "XAdminUserNotFound": // the latter is versitygw's, with HTTP 404
		return verdict{kind: ErrAccessDenied, msg: "invalid access key id: the server does not know it (check AWS_ACCESS_KEY_ID)"}
	case "SignatureDoesNotMatch":
		return verdict{kind: ErrAccessDenied, msg: "signature does not match: wrong secret access key (check AWS_SECRET_ACCESS_KEY)"}
	case "InvalidObjectState":
		// A GET of a pack in GLACIER or DEEP_ARCHIVE that was not
		// restored: not a permission problem, and no retry makes it
		// readable.
		return verdict{kind: backend.ErrArchived, msg: describe("archived: the object is in an archive storage class and must be restored before it can be read")}
	case "AccessDenied", "AllAccessDisabled", "AccountProblem", "InvalidToken", "ExpiredToken":
		return verdict{kind: ErrAccessDenied, msg: describe("access denied")}
	case "SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded", "TooManyRequests",
		"TooManyRequestsException", "RequestTimeout", "InternalError", "ServiceUnavailable":
		return verdict{msg: describe("server busy or failing")}
	}
	switch {
	case status == http.StatusNotFound && code == "":
		// HEAD answers have no body, hence no code.
		return verdict{kind: backend.ErrNotExist, msg: backend.ErrNotExist.Error()}
	case status == http.StatusForbidden:
		return verdict{kind: ErrAccessDenied, msg: describe("access denied")}
	case status == http.StatusTooManyRequests || status >= 500:
		return verdict{msg: describe("server error")}
	case status != 0:
		return verdict{msg: describe("request failed")}
	}

	// No response at all, or a broken one.
	var send *smithyhttp.RequestSendError
	var nerr net.Error
	switch {
	case errors.As(err, &send):
		return verdict{msg: "connection failed: " + rootCause(err).Error()}
	case errors.As(err, &nerr), errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, io.EOF):
		return verdict{msg: "connection broken: " + rootCause(err).Error()}
	}
	return verdict{msg: err.Error()}
}

// rootCause returns the innermost error, which for transport errors is the
// one that says what happened ("connection refused").
func rootCause(err error) error {
	for {
		u := errors.Unwrap(err)
		if u == nil {
			return err
		}
		err = u
	}
}
