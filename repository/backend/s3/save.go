package s3

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	s3api "github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"

	"github.com/custos-backup/custos/repository/backend"
	"github.com/custos-backup/custos/repository/backend/retry"
)

// abortTimeout bounds the clean-up of a failed multipart upload, which runs
// even when the caller's context is already cancelled.
const abortTimeout = 30 * time.Second

// maxParts is the most parts S3 accepts in one multipart upload.
const maxParts = 10000

// Save uploads rd in one request, or in parts above the multipart threshold.
// Either way S3 makes the object visible only when it is complete.
func (b *Backend) Save(ctx context.Context, h backend.Handle, rd io.ReadSeeker, size int64) error {
	if err := h.Valid(); err != nil {
		return fmt.Errorf("%s: save: %w", b.where, err)
	}
	key := b.key(h)
	if err := ctx.Err(); err != nil {
		return b.errorf("save", key, nil, err, "%v", err)
	}
	if size < 0 {
		return b.errorf("save", key, nil, nil, "negative size %d", size)
	}
	start, err := checkReader(rd, size)
	if err != nil {
		return b.errorf("save", key, nil, err, "%v", err)
	}
	if size > b.opts.MultipartThreshold {
		return b.saveMultipart(ctx, key, b.storageClass(h), rd, size)
	}
	return b.request(ctx, "save", key, func(a *attempt) error {
		body := &segment{r: rd, base: start, size: size}
		if _, err := body.Seek(0, io.SeekStart); err != nil {
			return permanent{err}
		}
		_, err := b.client.PutObject(a.ctx, &s3api.PutObjectInput{
			Bucket:        aws.String(b.opts.Bucket),
			Key:           aws.String(key),
			Body:          &progressReader{r: body, wd: a.wd},
			ContentLength: aws.Int64(size),
			ContentType:   aws.String("application/octet-stream"),
			StorageClass:  b.storageClass(h),
		})
		if err != nil && body.err != nil {
			return permanent{body.err}
		}
		return err
	})
}

// checkReader makes sure rd holds exactly size bytes from its current
// position, and leaves it there; it returns that position. Checking first
// keeps a wrong size from ever becoming a visible (truncated) object.
func checkReader(rd io.ReadSeeker, size int64) (int64, error) {
	start, err := rd.Seek(0, io.SeekCurrent)
	if err != nil {
		return 0, fmt.Errorf("reader cannot seek: %w", err)
	}
	var one [1]byte
	if size > 0 {
		if _, err := rd.Seek(start+size-1, io.SeekStart); err != nil {
			return 0, fmt.Errorf("reader cannot seek: %w", err)
		}
		if n, _ := io.ReadFull(rd, one[:]); n != 1 {
			return 0, fmt.Errorf("reader has fewer than the %d bytes announced", size)
		}
	} else if _, err := rd.Seek(start, io.SeekStart); err != nil {
		return 0, fmt.Errorf("reader cannot seek: %w", err)
	}
	if n, _ := rd.Read(one[:]); n != 0 {
		return 0, fmt.Errorf("reader has more than the %d bytes announced", size)
	}
	if _, err := rd.Seek(start, io.SeekStart); err != nil {
		return 0, fmt.Errorf("reader cannot seek: %w", err)
	}
	return start, nil
}

// segment is the size bytes of r from base, as a ReadSeeker starting at 0.
// It records a reader that ends early, which is the caller's fault and not
// worth retrying.
type segment struct {
	r          io.ReadSeeker
	base, size int64
	pos        int64
	err        error
}

func (s *segment) Read(p []byte) (int, error) {
	if s.pos >= s.size {
		return 0, io.EOF
	}
	if int64(len(p)) > s.size-s.pos {
		p = p[:s.size-s.pos]
	}
	n, err := s.r.Read(p)
	s.pos += int64(n)
	if err == io.EOF && s.pos < s.size {
		s.err = fmt.Errorf("reader ended after %d of %d bytes", s.pos, s.size)
		return n, s.err
	}
	if err == io.EOF {
		err = nil
	}
	return n, err
}

func (s *segment) Seek(offset int64, whence int) (int64, error) {
	var abs int64
	switch whence {
	case io.SeekStart:
		abs = offset
	case io.SeekCurrent:
		abs = s.pos + offset
	case io.SeekEnd:
		abs = s.size + offset
	default:
		return 0, errors.New("segment: invalid whence")
	}
	if abs < 0 {
		return 0, errors.New("segment: negative position")
	}
	if _, err := s.r.Seek(s.base+abs, io.SeekStart); err != nil {
		return 0, err
	}
	s.pos = abs
	return abs, nil
}

// ctxReader stops reading the source soon after ctx is cancelled.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}

// saveMultipart uploads size bytes of rd in parts, one at a time from one
// buffer (the repository runs several saves in parallel, so memory stays at
// one part per save). Any failure aborts the upload, so no parts linger.
func (b *Backend) saveMultipart(ctx context.Context, key string, class types.StorageClass, rd io.ReadSeeker, size int64) (err error) {
	var uploadID string
	err = b.request(ctx, "save", key, func(a *attempt) error {
		out, err := b.client.CreateMultipartUpload(a.ctx, &s3api.CreateMultipartUploadInput{
			Bucket:            aws.String(b.opts.Bucket),
			Key:               aws.String(key),
			ContentType:       aws.String("application/octet-stream"),
			ChecksumAlgorithm: types.ChecksumAlgorithmCrc32,
			StorageClass:      class,
		})
		if err != nil {
			return err
		}
		uploadID = aws.ToString(out.UploadId)
		return nil
	})
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			b.abortMultipart(ctx, key, uploadID)
		}
	}()

	// S3 allows at most maxParts parts; grow them for huge objects.
	partSize := max(b.opts.PartSize, (size+maxParts-1)/maxParts)
	var parts []types.CompletedPart
	buf := make([]byte, min(partSize, size))
	src := ctxReader{ctx, rd}
	for num, done := int32(1), int64(0); done < size; num++ {
		n := min(partSize, size-done)
		if _, err := io.ReadFull(src, buf[:n]); err != nil {
			if cerr := ctx.Err(); cerr != nil {
				return b.errorf("save", key, nil, cerr, "%v", cerr)
			}
			return b.errorf("save", key, nil, err, "reading part %d: %v", num, err)
		}
		part := buf[:n]
		var out *s3api.UploadPartOutput
		err := b.request(ctx, fmt.Sprintf("save (part %d)", num), key, func(a *attempt) error {
			var err error
			out, err = b.client.UploadPart(a.ctx, &s3api.UploadPartInput{
				Bucket:            aws.String(b.opts.Bucket),
				Key:               aws.String(key),
				UploadId:          aws.String(uploadID),
				PartNumber:        aws.Int32(num),
				Body:              &progressReader{r: bytes.NewReader(part), wd: a.wd},
				ContentLength:     aws.Int64(n),
				ChecksumAlgorithm: types.ChecksumAlgorithmCrc32,
			})
			return err
		})
		if err != nil {
			return err
		}
		parts = append(parts, types.CompletedPart{
			ETag:          out.ETag,
			PartNumber:    aws.Int32(num),
			ChecksumCRC32: out.ChecksumCRC32,
		})
		done += n
	}

	// A lost answer to a completion that worked fails this Save; the
	// retry of the whole Save uploads the object again, which is harmless.
	return b.request(ctx, "save (complete)", key, func(a *attempt) error {
		_, err := b.client.CompleteMultipartUpload(a.ctx, &s3api.CompleteMultipartUploadInput{
			Bucket:          aws.String(b.opts.Bucket),
			Key:             aws.String(key),
			UploadId:        aws.String(uploadID),
			MultipartUpload: &types.CompletedMultipartUpload{Parts: parts},
		})
		return err
	})
}

// abortMultipart removes the parts of a failed upload. It must run even if
// ctx is cancelled, so it has its own deadline. It retries by itself, with
// the shared retry loop, because the wrapper only sees the failed Save; a
// retried abort of an upload already gone is done.
func (b *Backend) abortMultipart(ctx context.Context, key, uploadID string) {
	actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), abortTimeout)
	defer cancel()
	err := retry.NewRetrier(retry.Options{Logger: b.log}).Do(actx, "abort upload "+key, func(n int) error {
		gone, err := b.abortUpload(actx, "abort upload", key, uploadID)
		if n > 1 && gone {
			return nil
		}
		return err
	})
	if err != nil {
		b.log.Warn("cannot abort failed multipart upload; its parts stay in the bucket until a lifecycle rule removes them",
			"bucket", b.opts.Bucket, "key", key, "upload_id", uploadID, "error", err)
	}
}
