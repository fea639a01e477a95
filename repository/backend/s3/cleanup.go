package s3

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	s3api "github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/smithy-go"

	"github.com/custos-backup/custos/repository/backend"
)

// folderTypes are the object kinds that live in a folder of their own.
var folderTypes = []backend.FileType{
	backend.KeyFile, backend.PackFile, backend.IndexFile, backend.SnapshotFile, backend.LockFile,
}

var _ backend.LeftoverRemover = (*Backend)(nil)

// RemoveLeftovers aborts the multipart uploads of repository objects that
// were initiated before the given time: what a Save killed midway (or a
// machine that lost power) left. Their parts are invisible to List but
// stored, and billed, until aborted. The size of the parts is not listed
// and is reported as 0. Comparing the server's time stamps with the local
// clock is safe at the ages writers use: request signing already fails when
// the two differ by more than minutes.
func (b *Backend) RemoveLeftovers(ctx context.Context, before time.Time) (int, int64, error) {
	n, err := b.abortStaleUploads(ctx, before)
	if err != nil {
		return n, 0, fmt.Errorf("%s: remove leftovers: %w", b.where, err)
	}
	return n, 0, nil
}

// abortStaleUploads aborts the multipart uploads of repository objects that
// were initiated before the given time, and returns how many it aborted.
func (b *Backend) abortStaleUploads(ctx context.Context, before time.Time) (aborted int, err error) {
	prefix := ""
	if b.opts.Prefix != "" {
		prefix = b.opts.Prefix + "/"
	}
	var keyMarker string
	for {
		var out *s3api.ListMultipartUploadsOutput
		err := b.request(ctx, "list incomplete uploads", prefix, func(a *attempt) error {
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
		for _, up := range out.Uploads {
			key := aws.ToString(up.Key)
			if !b.isRepositoryKey(key) || up.Initiated == nil || !up.Initiated.Before(before) {
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

// abortUpload sends one AbortMultipartUpload; gone reports S3's
// NoSuchUpload (with the error): the upload is not there (any more).
func (b *Backend) abortUpload(ctx context.Context, op, key, uploadID string) (gone bool, err error) {
	err = b.request(ctx, op, key, func(a *attempt) error {
		_, err := b.client.AbortMultipartUpload(a.ctx, &s3api.AbortMultipartUploadInput{
			Bucket:   aws.String(b.opts.Bucket),
			Key:      aws.String(key),
			UploadId: aws.String(uploadID),
		})
		return err
	})
	var api smithy.APIError
	return errors.As(err, &api) && api.ErrorCode() == "NoSuchUpload", err
}

// abortStaleUpload aborts one upload. It reports false, without an error, if
// the upload is gone already: another process cleaning up got there first,
// or an earlier attempt succeeded but its answer was lost.
func (b *Backend) abortStaleUpload(ctx context.Context, key, uploadID string, initiated time.Time) (bool, error) {
	gone, err := b.abortUpload(ctx, "abort stale upload", key, uploadID)
	if gone {
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
