package s3

import (
	"context"
	"errors"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	s3api "github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/smithy-go"

	"github.com/custos-backup/custos/repository/backend"
)

// staleUploadAge is how long ago a multipart upload must have been initiated
// before List aborts it as the leftover of a Save that never finished (the
// process was killed, the machine lost power). A Save in progress, possibly
// from another process on another machine, must never lose its upload, so
// the margin is the local backend's for its temp files: a day. Comparing the
// server's time stamp with the local clock is safe at that margin: request
// signing already fails when the two differ by more than minutes.
const staleUploadAge = 24 * time.Hour

// staleUploadInterval: the first List of packs of a Backend looks for stale
// uploads, later ones at most this often, so that a long-running process
// also finds the leftovers of crashes that happen after it started, without
// an extra request on every List.
const staleUploadInterval = time.Hour

// folderTypes are the object kinds that live in a folder of their own.
var folderTypes = []backend.FileType{
	backend.KeyFile, backend.PackFile, backend.IndexFile, backend.SnapshotFile, backend.LockFile,
}

// maybeAbortStaleUploads runs abortStaleUploads unless it ran recently or
// another List is running it right now (which is not worth waiting for). Its
// failures are logged, not returned: the listing the caller asked for does
// not depend on it.
func (b *Backend) maybeAbortStaleUploads(ctx context.Context) {
	if !b.cleanMu.TryLock() {
		return
	}
	defer b.cleanMu.Unlock()
	if !b.lastClean.IsZero() && time.Since(b.lastClean) < staleUploadInterval {
		return
	}
	started := time.Now()
	aborted, err := b.abortStaleUploads(ctx)
	if ctx.Err() != nil {
		// Interrupted rather than done: the next List tries again. The
		// caller's List fails with the context's error anyway.
		return
	}
	b.lastClean = started
	if err != nil {
		b.log.Warn("cannot clean up stale multipart uploads; their parts stay in the bucket, and are billed, until a later run or a lifecycle rule removes them",
			"bucket", b.opts.Bucket, "prefix", b.opts.Prefix, "aborted", aborted, "error", err)
	}
}

// abortStaleUploads aborts the multipart uploads of repository objects that
// were initiated more than b.staleAge ago, and returns how many it aborted.
func (b *Backend) abortStaleUploads(ctx context.Context) (aborted int, err error) {
	prefix := ""
	if b.opts.Prefix != "" {
		prefix = b.opts.Prefix + "/"
	}
	var keyMarker string
	for {
		var out *s3api.ListMultipartUploadsOutput
		err := b.retry(ctx, "list incomplete uploads", prefix, func(a *attempt) error {
			in := &s3api.ListMultipartUploadsInput{
				Bucket: aws.String(b.opts.Bucket),
				Prefix: aws.String(prefix),
			}
			if keyMarker != "" {
				in.KeyMarker = aws.String(keyMarker)
			}
			if b.opts.ListPageSize > 0 {
				in.MaxUploads = aws.Int32(b.opts.ListPageSize)
			}
			var err error
			out, err = b.client.ListMultipartUploads(a.ctx, in)
			return err
		})
		if err != nil {
			return aborted, err
		}
		now := time.Now()
		for _, up := range out.Uploads {
			key := aws.ToString(up.Key)
			if !b.isRepositoryKey(key) || up.Initiated == nil || now.Sub(*up.Initiated) < b.staleAge {
				continue
			}
			done, err := b.abortStaleUpload(ctx, key, aws.ToString(up.UploadId), *up.Initiated)
			if err != nil {
				return aborted, err
			}
			if done {
				aborted++
			}
		}
		if !aws.ToBool(out.IsTruncated) || len(out.Uploads) == 0 {
			return aborted, nil
		}
		// The next page starts after a key only, without upload-id-marker:
		// versitygw (v1.8.0) rejects every continuation that has one. The
		// price is that further uploads of the page's last key wait for a
		// later run; a key has several only if Saves of the same object
		// died repeatedly.
		next := aws.ToString(out.NextKeyMarker)
		if next == "" {
			next = aws.ToString(out.Uploads[len(out.Uploads)-1].Key)
		}
		if next <= keyMarker {
			return aborted, nil // a server that does not move on would loop forever
		}
		keyMarker = next
	}
}

// abortStaleUpload aborts one upload. It reports false, without an error, if
// the upload is gone already: another process cleaning up got there first,
// or an earlier attempt succeeded but its answer was lost.
func (b *Backend) abortStaleUpload(ctx context.Context, key, uploadID string, initiated time.Time) (bool, error) {
	err := b.retry(ctx, "abort stale upload", key, func(a *attempt) error {
		_, err := b.client.AbortMultipartUpload(a.ctx, &s3api.AbortMultipartUploadInput{
			Bucket:   aws.String(b.opts.Bucket),
			Key:      aws.String(key),
			UploadId: aws.String(uploadID),
		})
		return err
	})
	var api smithy.APIError
	if errors.As(err, &api) && api.ErrorCode() == "NoSuchUpload" {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	b.log.Info("aborted stale multipart upload left by an interrupted save",
		"bucket", b.opts.Bucket, "key", key, "upload_id", uploadID, "initiated", initiated)
	return true, nil
}

// isRepositoryKey tells whether key is where this repository puts objects.
// Other keys under the prefix (or, without a prefix, in the bucket) may
// belong to someone else, and so may their uploads.
func (b *Backend) isRepositoryKey(key string) bool {
	if key == b.key(backend.Handle{Type: backend.ConfigFile}) {
		return true
	}
	for _, t := range folderTypes {
		if strings.HasPrefix(key, b.typePrefix(t)) {
			return true
		}
	}
	return false
}
