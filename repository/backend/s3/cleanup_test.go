package s3_test

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	s3api "github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/custos-backup/custos/internal/faultproxy"
	"github.com/custos-backup/custos/internal/s3server"
	"github.com/custos-backup/custos/repository/backend"
	"github.com/custos-backup/custos/repository/backend/s3"
)

// removeAll aborts every upload of the repository: the server's time
// stamps have whole seconds, rounded down, so every upload started before
// now is before a second from now.
func removeAll(t *testing.T, be backend.Backend) (int, error) {
	t.Helper()
	lr, ok := be.(backend.LeftoverRemover)
	if !ok {
		t.Fatalf("%T does not remove leftovers", be)
	}
	n, _, err := lr.RemoveLeftovers(context.Background(), time.Now().Add(time.Second))
	return n, err
}

var (
	listUploads  = faultproxy.Match{Method: "GET", PathContains: "uploads="}
	abortUploads = faultproxy.Match{Method: "DELETE", PathContains: "uploadId="}
)

// startUpload initiates a multipart upload of key and sends one part, as a
// Save killed midway would have, and returns its upload ID.
func startUpload(t *testing.T, srv *s3server.Server, bucket, key string) string {
	t.Helper()
	ctx := context.Background()
	c := srv.Client(t)
	out, err := c.CreateMultipartUpload(ctx, &s3api.CreateMultipartUploadInput{
		Bucket: aws.String(bucket), Key: aws.String(key),
	})
	if err != nil {
		t.Fatalf("create multipart upload of %q: %v", key, err)
	}
	if _, err := c.UploadPart(ctx, &s3api.UploadPartInput{
		Bucket: aws.String(bucket), Key: aws.String(key), UploadId: out.UploadId,
		PartNumber: aws.Int32(1), Body: bytes.NewReader(randomData(1000)),
	}); err != nil {
		t.Fatalf("upload part of %q: %v", key, err)
	}
	return aws.ToString(out.UploadId)
}

// uploadsIn returns the keys of the incomplete uploads in bucket, one entry
// per upload, sorted. One page is enough for the tests' few uploads, which
// is as well: versitygw rejects continuations with an upload-id-marker.
func uploadsIn(t *testing.T, srv *s3server.Server, bucket string) []string {
	t.Helper()
	out, err := srv.Client(t).ListMultipartUploads(context.Background(), &s3api.ListMultipartUploadsInput{
		Bucket: aws.String(bucket),
	})
	if err != nil {
		t.Fatalf("list multipart uploads: %v", err)
	}
	if aws.ToBool(out.IsTruncated) {
		t.Fatal("list multipart uploads: more than one page")
	}
	var keys []string
	for _, u := range out.Uploads {
		keys = append(keys, aws.ToString(u.Key))
	}
	slices.Sort(keys)
	return keys
}

// listPacks lists packs through be and returns their names, sorted.
func listPacks(t *testing.T, be backend.Backend) []string {
	t.Helper()
	var names []string
	if err := be.List(context.Background(), backend.PackFile, func(fi backend.FileInfo) error {
		names = append(names, fi.Name)
		return nil
	}); err != nil {
		t.Fatalf("List(data): %v", err)
	}
	slices.Sort(names)
	return names
}

// logBuffer collects a backend's log, which it writes from its own
// goroutines.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

func logTo(l *logBuffer) func(*s3.Options) {
	return func(o *s3.Options) { o.Logger = slog.New(slog.NewTextHandler(l, nil)) }
}

func packName(prefix string) string { return prefix + strings.Repeat("0", 64-len(prefix)) }

// TestAbortStaleUploads plays a Save that died in the middle of multipart
// uploads: List, which read-only commands use, never touches them;
// RemoveLeftovers, which writers call, aborts those old enough, and only
// those of this repository.
func TestAbortStaleUploads(t *testing.T) {
	srv := startServer(t)
	pack := backend.Handle{Type: backend.PackFile, Name: packName("ab1")}
	crashed := packName("cd2")
	ours := []string{
		"repo/data/cd/" + crashed,
		"repo/data/cd/" + crashed, // a retry that crashed too
		"repo/index/" + packName("ee"),
		"repo/config",
	}
	theirs := []string{
		"other/data/cd/" + crashed,
		"repo2/data/cd/" + crashed, // a repository whose prefix merely starts alike
		"repo/notes/big.txt",       // under the prefix, but no repository object
	}
	for _, key := range append(slices.Clone(ours), theirs...) {
		startUpload(t, srv, bucket, key)
	}
	all := uploadsIn(t, srv, bucket)
	slices.Sort(theirs)

	be, p := withProxy(t, srv, nil)
	save(t, be, pack, []byte("pack"))
	p.Reset()
	for _, ft := range []backend.FileType{backend.ConfigFile, backend.KeyFile, backend.PackFile, backend.IndexFile, backend.SnapshotFile, backend.LockFile} {
		if err := be.List(context.Background(), ft, func(backend.FileInfo) error { return nil }); err != nil {
			t.Fatalf("List(%s): %v", ft, err)
		}
	}
	if got := listPacks(t, be); !slices.Equal(got, []string{pack.Name}) {
		t.Fatalf("List(data) = %v, want %s", got, pack.Name)
	}
	if n := p.Count(listUploads) + p.Count(abortUploads); n != 0 {
		t.Errorf("List looked at incomplete uploads (%d requests):\n%s", n, strings.Join(p.Log(), "\n"))
	}

	// Not old enough: a Save of another process may be at work.
	n, _, err := be.(backend.LeftoverRemover).RemoveLeftovers(context.Background(), time.Now().Add(-backend.LeftoverAge))
	if err != nil || n != 0 {
		t.Fatalf("RemoveLeftovers of day-old uploads: %d, %v; want 0", n, err)
	}
	if got := uploadsIn(t, srv, bucket); !slices.Equal(got, all) {
		t.Fatalf("uploads after RemoveLeftovers of day-old ones = %q, want all of %q", got, all)
	}

	var log logBuffer
	be, p = withProxy(t, srv, logTo(&log))
	if n, err := removeAll(t, be); err != nil || n != len(ours) {
		t.Fatalf("RemoveLeftovers: %d, %v; want %d", n, err, len(ours))
	}
	if got := uploadsIn(t, srv, bucket); !slices.Equal(got, theirs) {
		t.Fatalf("uploads after RemoveLeftovers = %q, want only %q", got, theirs)
	}
	if n := p.Count(abortUploads); n != len(ours) {
		t.Errorf("RemoveLeftovers aborted %d uploads, want %d", n, len(ours))
	}
	if got := strings.Count(log.String(), "aborted stale multipart upload"); got != len(ours) {
		t.Errorf("log reports %d aborted uploads, want %d:\n%s", got, len(ours), log.String())
	}
	if strings.Contains(log.String(), srv.Secret) {
		t.Errorf("log contains the secret key:\n%s", log.String())
	}
}

// TestAbortStaleUploadsNoPrefix: a repository that is the whole bucket
// aborts the uploads of its own layout only.
func TestAbortStaleUploadsNoPrefix(t *testing.T) {
	srv := startServer(t)
	const whole = "whole"
	srv.CreateBucket(t, whole)
	for _, key := range []string{"data/cd/" + packName("cd"), "config", "snapshots/s1", "database/dump", "configs", "x"} {
		startUpload(t, srv, whole, key)
	}
	opts := options(srv.Endpoint, "")
	opts.Bucket = whole
	be := open(t, opts)
	if _, err := removeAll(t, be); err != nil {
		t.Fatal(err)
	}
	if got, want := uploadsIn(t, srv, whole), []string{"configs", "database/dump", "x"}; !slices.Equal(got, want) {
		t.Fatalf("uploads after RemoveLeftovers = %q, want %q", got, want)
	}
}

// TestAbortStaleUploadsPages: the uploads are listed page by page.
func TestAbortStaleUploadsPages(t *testing.T) {
	srv := startServer(t)
	for i := range 5 {
		startUpload(t, srv, bucket, "repo/data/cd/"+packName("cd"+string(rune('a'+i))))
	}
	startUpload(t, srv, bucket, "other/x")
	be, p := withProxy(t, srv, func(o *s3.Options) { o.ListPageSize = 2 })
	p.FailNext(1, 503, faultproxy.Match{Method: "GET", PathContains: "key-marker="})
	if n, err := removeAll(t, be); err != nil || n != 5 {
		t.Fatalf("RemoveLeftovers: %d, %v; want 5", n, err)
	}
	if got := uploadsIn(t, srv, bucket); !slices.Equal(got, []string{"other/x"}) {
		t.Fatalf("uploads after RemoveLeftovers = %q, want only other/x", got)
	}
	// 5 uploads in pages of 2 is 3 pages, plus the failed request.
	if n := p.Count(listUploads); n != 4 {
		t.Errorf("RemoveLeftovers made %d requests for incomplete uploads, want 4:\n%s", n, strings.Join(p.Log(), "\n"))
	}
}

// TestStaleUploadCleanupFailure: a clean-up that fails says why, and leaves
// the upload.
func TestStaleUploadCleanupFailure(t *testing.T) {
	srv := startServer(t)
	key := "repo/data/cd/" + packName("cd")
	startUpload(t, srv, bucket, key)
	for _, tc := range []struct {
		name string
		m    faultproxy.Match
	}{
		{"list fails", listUploads},
		{"abort fails", abortUploads},
	} {
		t.Run(tc.name, func(t *testing.T) {
			be, p := withProxy(t, srv, nil)
			p.FailNext(100, 500, tc.m)
			_, err := removeAll(t, be)
			if err == nil {
				t.Fatal("RemoveLeftovers succeeded against a failing server")
			}
			for _, want := range []string{"remove leftovers", bucket, "giving up after 4 attempts", "HTTP 500"} {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q does not contain %q", err, want)
				}
			}
			if strings.Contains(err.Error(), srv.Secret) {
				t.Errorf("error contains the secret key: %v", err)
			}
			if got := uploadsIn(t, srv, bucket); !slices.Equal(got, []string{key}) {
				t.Fatalf("uploads = %q, want %s still there", got, key)
			}
		})
	}
}

// TestStaleUploadCleanupCancelled: a cancelled context fails with the
// context's error before any request.
func TestStaleUploadCleanupCancelled(t *testing.T) {
	srv := startServer(t)
	startUpload(t, srv, bucket, "repo/data/cd/"+packName("cd"))
	be, p := withProxy(t, srv, nil)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, _, err := be.(backend.LeftoverRemover).RemoveLeftovers(ctx, time.Now().Add(time.Second))
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("RemoveLeftovers with a cancelled context = %v, want context.Canceled", err)
	}
	if n := p.Requests(); n != 0 {
		t.Errorf("RemoveLeftovers with a cancelled context made %d requests", n)
	}
	if got := uploadsIn(t, srv, bucket); len(got) != 1 {
		t.Fatalf("uploads after a cancelled RemoveLeftovers = %q, want the one", got)
	}
}

// hookHandler is a log handler that calls hook for every record, in the
// goroutine that logs it.
type hookHandler struct {
	slog.Handler
	hook func(slog.Record)
}

func (h hookHandler) Handle(ctx context.Context, r slog.Record) error {
	h.hook(r)
	return h.Handler.Handle(ctx, r)
}

// TestStaleUploadGoneMeanwhile: an upload that disappears after a failed
// abort (another process cleaned it up, or the abort succeeded but its answer
// was lost) is neither an error nor reported as aborted.
func TestStaleUploadGoneMeanwhile(t *testing.T) {
	srv := startServer(t)
	key := "repo/data/cd/" + packName("cd")
	id := startUpload(t, srv, bucket, key)
	var log logBuffer
	ro := retryOptions()
	ro.Logger = slog.New(hookHandler{slog.NewTextHandler(&log, nil), func(r slog.Record) {
		// Between the failed first attempt and the retry.
		if r.Message == "storage request failed, will retry" {
			if _, err := srv.Client(t).AbortMultipartUpload(context.Background(), &s3api.AbortMultipartUploadInput{
				Bucket: aws.String(bucket), Key: aws.String(key), UploadId: aws.String(id),
			}); err != nil {
				t.Errorf("abort by hand: %v", err)
			}
		}
	}})
	be, p := withProxyRetry(t, srv, func(o *s3.Options) { o.Logger = ro.Logger }, ro)
	p.FailNext(1, 500, abortUploads)
	if n, err := removeAll(t, be); err != nil || n != 0 {
		t.Errorf("RemoveLeftovers: %d, %v; want 0 and no error", n, err)
	}
	// The retry lists the uploads again and finds none to abort.
	if n := p.Count(abortUploads); n != 1 {
		t.Errorf("RemoveLeftovers made %d abort requests, want 1", n)
	}
	if n := p.Count(listUploads); n != 2 {
		t.Errorf("RemoveLeftovers made %d listings, want 2", n)
	}
	if got := uploadsIn(t, srv, bucket); len(got) != 0 {
		t.Errorf("uploads after RemoveLeftovers = %q, want none", got)
	}
	for _, unwanted := range []string{"cannot clean up", "aborted stale multipart upload"} {
		if strings.Contains(log.String(), unwanted) {
			t.Errorf("log contains %q:\n%s", unwanted, log.String())
		}
	}
}
