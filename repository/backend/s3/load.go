package s3

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	s3api "github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/smithy-go"

	"github.com/custos-backup/custos/repository/backend"
	"github.com/custos-backup/custos/repository/backend/retry"
)

// Load returns a reader over the range. A range past the end of the object is
// an error from Load, never a short read. If the connection breaks or stalls
// while the body is read, the reader resumes from where it stopped, pinned to
// the object's ETag so that it cannot splice two versions of an object.
func (b *Backend) Load(ctx context.Context, h backend.Handle, length int, offset int64) (io.ReadCloser, error) {
	if err := h.Valid(); err != nil {
		return nil, fmt.Errorf("%s: load: %w", b.where, err)
	}
	key := b.key(h)
	if err := ctx.Err(); err != nil {
		return nil, b.errorf("load", key, nil, err, "%v", err)
	}
	if length < 0 || offset < 0 {
		return nil, b.errorf("load", key, nil, nil, "invalid range offset %d length %d", offset, length)
	}
	r := &loadReader{b: b, ctx: ctx, key: key, pos: offset, end: -1}
	if length > 0 {
		r.end = offset + int64(length)
	}
	err := r.open()
	if isInvalidRange(err) {
		// The range starts at or past the end. That is fine only for an
		// empty read at exactly the end.
		size, _, herr := b.head(ctx, "load", key)
		if herr != nil {
			return nil, herr
		}
		if length == 0 && offset == size {
			return io.NopCloser(bytes.NewReader(nil)), nil
		}
		return nil, b.beyondEnd(key, offset, length, size)
	}
	if err != nil {
		return nil, err
	}
	return r, nil
}

func (b *Backend) beyondEnd(key string, offset int64, length int, size int64) error {
	return b.errorf("load", key, nil, nil, "range offset %d length %d is beyond the object size %d", offset, length, size)
}

func isInvalidRange(err error) bool {
	var api smithy.APIError
	if errors.As(err, &api) && api.ErrorCode() == "InvalidRange" {
		return true
	}
	var hs interface{ HTTPStatusCode() int }
	return errors.As(err, &hs) && hs.HTTPStatusCode() == http.StatusRequestedRangeNotSatisfiable
}

// loadReader reads [pos, end) of an object, reopening the request after a
// failure. end is -1 until the first response says where the object ends.
type loadReader struct {
	b    *Backend
	ctx  context.Context
	key  string
	pos  int64
	end  int64
	etag string

	body    io.ReadCloser
	a       *attempt
	resumes int
	err     error // sticky
}

// open issues the GET for [pos, end) and checks the answer covers it.
func (r *loadReader) open() error {
	first := r.etag == ""
	return r.b.requestKeep(r.ctx, "load", r.key, func(a *attempt) (bool, error) {
		in := &s3api.GetObjectInput{Bucket: aws.String(r.b.opts.Bucket), Key: aws.String(r.key)}
		switch {
		case r.end >= 0:
			in.Range = aws.String(fmt.Sprintf("bytes=%d-%d", r.pos, r.end-1))
		case r.pos > 0:
			in.Range = aws.String(fmt.Sprintf("bytes=%d-", r.pos))
		}
		if !first {
			in.IfMatch = aws.String(r.etag)
		}
		out, err := r.b.client.GetObject(a.ctx, in)
		if err != nil {
			var api smithy.APIError
			if !first && errors.As(err, &api) && api.ErrorCode() == "PreconditionFailed" {
				return false, permanent{errors.New("object was replaced while it was being read")}
			}
			return false, err
		}
		got := aws.ToInt64(out.ContentLength)
		want := r.end - r.pos
		if r.end < 0 {
			want = got
		}
		if got != want {
			out.Body.Close()
			size := totalSize(aws.ToString(out.ContentRange), got)
			if first {
				return false, permanent{fmt.Errorf("range offset %d length %d is beyond the object size %d", r.pos, r.end-r.pos, size)}
			}
			return false, permanent{fmt.Errorf("resumed read at offset %d got %d bytes, want %d", r.pos, got, want)}
		}
		if r.end < 0 {
			r.end = r.pos + got
		}
		r.etag = aws.ToString(out.ETag)
		if r.etag == "" {
			r.etag = "*" // no ETag to pin to; If-Match: * still requires the object
		}
		r.body, r.a = out.Body, a
		a.wd.pause()
		return true, nil
	})
}

// totalSize reads the object size from "bytes a-b/total", or returns def.
func totalSize(contentRange string, def int64) int64 {
	if _, total, ok := strings.Cut(contentRange, "/"); ok {
		if n, err := strconv.ParseInt(total, 10, 64); err == nil {
			return n
		}
	}
	return def
}

func (r *loadReader) Read(p []byte) (int, error) {
	if r.err != nil {
		return 0, r.err
	}
	if r.pos >= r.end {
		return 0, io.EOF
	}
	if int64(len(p)) > r.end-r.pos {
		p = p[:r.end-r.pos]
	}
	for {
		r.a.wd.resume()
		n, err := r.body.Read(p)
		r.a.wd.pause()
		r.pos += int64(n)
		if n > 0 || (err == nil && len(p) == 0) {
			return n, nil // an error, if any, comes back on the next Read
		}
		if err == nil {
			continue
		}
		if err == io.EOF && r.pos == r.end {
			return 0, io.EOF
		}
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		if rerr := r.resume(err); rerr != nil {
			r.err = rerr
			return 0, rerr
		}
	}
}

// resume replaces a failed body with a new request from the current
// position, or says why it cannot. A resume is a retry of the read that only
// this backend can make (pinned to the ETag), so it follows the wrapper's
// rules: from the second resume on it waits with the one backoff, and a
// reopening that fails is resumed again while resumes are left.
func (r *loadReader) resume(cause error) error {
	stalled := r.a != nil && r.a.stalled()
	r.closeBody()
	for {
		if err := r.ctx.Err(); err != nil {
			return r.b.errorf("load", r.key, nil, err, "%v", err)
		}
		retryable, msg, kind := resumeVerdict(cause, stalled, r.b.opts.StallTimeout)
		if !retryable {
			return r.b.errorf("load", r.key, kind, cause, "reading at offset %d: %s", r.pos, msg)
		}
		if r.resumes >= r.b.opts.MaxAttempts-1 {
			return r.b.errorf("load", r.key, kind, cause, "reading at offset %d: giving up after %d resumed reads: %s", r.pos, r.resumes, msg)
		}
		r.resumes++
		if r.resumes > 1 {
			if err := retry.DefaultBackoff().Wait(r.ctx, r.resumes-1); err != nil {
				return r.b.errorf("load", r.key, nil, err, "reading at offset %d: %v while waiting to resume after: %s", r.pos, err, msg)
			}
		}
		r.b.log.Warn("s3 read broke off, resuming", "bucket", r.b.opts.Bucket, "key", r.key,
			"offset", r.pos, "error", msg)
		err := r.open()
		if err == nil {
			return nil
		}
		cause, stalled = err, false
	}
}

// resumeVerdict says whether a read may resume after cause: a broken body
// (classified here) or a failed reopening (classified by request already).
func resumeVerdict(cause error, stalled bool, stall time.Duration) (retryable bool, msg string, kind error) {
	if stalled {
		return true, fmt.Sprintf("no progress for %v", stall), nil
	}
	var se *s3Error
	if errors.As(cause, &se) {
		return se.retryable, se.msg, se.kind
	}
	v := classify(cause)
	return v.retryable, v.msg, v.kind
}

func (r *loadReader) closeBody() {
	if r.body != nil {
		r.body.Close()
		r.body = nil
	}
	if r.a != nil {
		r.a.end()
		r.a = nil
	}
}

// Close ends the request.
func (r *loadReader) Close() error {
	r.closeBody()
	if r.err == nil {
		r.err = errors.New("read of closed s3 object reader")
	}
	return nil
}
