package s3_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	s3api "github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/custos-backup/custos/internal/backoff"
	"github.com/custos-backup/custos/internal/faultproxy"
	"github.com/custos-backup/custos/internal/s3server"
	"github.com/custos-backup/custos/repository/backend"
	"github.com/custos-backup/custos/repository/backend/backendtest"
	"github.com/custos-backup/custos/repository/backend/retry"
	"github.com/custos-backup/custos/repository/backend/s3"
)

const bucket = "custos-test"

// stallTimeout is the stall timeout of the tests that provoke stalls.
const stallTimeout = 500 * time.Millisecond

func shortStall(o *s3.Options) { o.StallTimeout = stallTimeout }

// options are fast settings for tests: small parts so that the suite's large
// object goes multipart.
func options(endpoint, prefix string) s3.Options {
	return s3.Options{
		Endpoint:           endpoint,
		Bucket:             bucket,
		Prefix:             prefix,
		UsePathStyle:       true,
		PartSize:           5 << 20,
		MultipartThreshold: 5 << 20,
		MaxAttempts:        4,
		// Long enough that a busy machine never looks like a stalled
		// server; the stall tests use stallTimeout.
		StallTimeout: 30 * time.Second,
		Logger:       slog.New(slog.NewTextHandler(io.Discard, nil)),
	}
}

func startServer(t *testing.T) *s3server.Server {
	t.Helper()
	srv := s3server.Start(t)
	srv.SetEnv(t)
	srv.CreateBucket(t, bucket)
	return srv
}

// retryOptions are quick retries for tests, as many as the S3 backend's
// resumed reads.
func retryOptions() retry.Options {
	return retry.Options{
		MaxAttempts: 4,
		Backoff:     backoff.Policy{Initial: time.Millisecond, Max: 5 * time.Millisecond, Jitter: 1},
		Logger:      slog.New(slog.NewTextHandler(io.Discard, nil)),
	}
}

// open opens the backend as location.Open does: wrapped in the retries.
func open(t *testing.T, opts s3.Options) backend.Backend {
	t.Helper()
	return openWith(t, opts, retryOptions())
}

func openWith(t *testing.T, opts s3.Options, ro retry.Options) backend.Backend {
	t.Helper()
	be, err := s3.Open(context.Background(), opts)
	if err != nil {
		t.Fatalf("s3.Open(%s): %v", opts.Endpoint, err)
	}
	t.Cleanup(func() { _ = be.Close() })
	return retry.New(be, ro)
}

func TestConformance(t *testing.T) {
	srv := startServer(t)
	var n atomic.Int64
	backendtest.Run(t, func(t *testing.T) backend.Backend {
		return open(t, options(srv.Endpoint, fmt.Sprintf("repo-%d", n.Add(1))))
	})
}

func TestConformanceNoPrefix(t *testing.T) {
	srv := s3server.Start(t)
	srv.SetEnv(t)
	var n atomic.Int64
	backendtest.Run(t, func(t *testing.T) backend.Backend {
		// A bucket of its own for each subtest: the repository is the
		// whole bucket.
		name := fmt.Sprintf("whole-%d", n.Add(1))
		srv.CreateBucket(t, name)
		opts := options(srv.Endpoint, "")
		opts.Bucket = name
		return open(t, opts)
	})
}

func randomData(n int) []byte {
	var seed [32]byte
	seed[0], seed[1] = byte(n), byte(n>>8)
	b := make([]byte, n)
	_, _ = rand.NewChaCha8(seed).Read(b)
	return b
}

func save(t *testing.T, be backend.Backend, h backend.Handle, data []byte) {
	t.Helper()
	if err := be.Save(context.Background(), h, bytes.NewReader(data), int64(len(data))); err != nil {
		t.Fatalf("Save(%v): %v", h, err)
	}
}

func load(t *testing.T, be backend.Backend, h backend.Handle) []byte {
	t.Helper()
	rd, err := be.Load(context.Background(), h, 0, 0)
	if err != nil {
		t.Fatalf("Load(%v): %v", h, err)
	}
	defer rd.Close()
	b, err := io.ReadAll(rd)
	if err != nil {
		t.Fatalf("Load(%v): read: %v", h, err)
	}
	return b
}

func listKeys(t *testing.T, srv *s3server.Server, bucket string) []string {
	t.Helper()
	out, err := srv.Client(t).ListObjectsV2(context.Background(), &s3api.ListObjectsV2Input{Bucket: aws.String(bucket)})
	if err != nil {
		t.Fatal(err)
	}
	var keys []string
	for _, o := range out.Contents {
		keys = append(keys, aws.ToString(o.Key))
	}
	return keys
}

func TestKeyLayoutAndLocation(t *testing.T) {
	srv := startServer(t)
	be := open(t, options(srv.Endpoint, "/some/prefix/"))
	pack := backend.Handle{Type: backend.PackFile, Name: "ab" + strings.Repeat("0", 62)}
	save(t, be, pack, []byte("pack"))
	save(t, be, backend.Handle{Type: backend.ConfigFile}, []byte("cfg"))
	keys := strings.Join(listKeys(t, srv, bucket), " ")
	if want := "some/prefix/config some/prefix/data/ab/" + pack.Name; keys != want {
		t.Errorf("keys in bucket = %q, want %q", keys, want)
	}
	loc := be.Location()
	if want := "s3:" + srv.Endpoint + "/" + bucket + "/some/prefix"; loc != want {
		t.Errorf("Location() = %q, want %q", loc, want)
	}
	if strings.Contains(loc, srv.Secret) || strings.Contains(loc, srv.AccessKey) {
		t.Errorf("Location() %q contains credentials", loc)
	}
}

// withProxy returns a backend that talks to srv through a fault proxy.
func withProxy(t *testing.T, srv *s3server.Server, tweak func(*s3.Options)) (backend.Backend, *faultproxy.Proxy) {
	t.Helper()
	return withProxyRetry(t, srv, tweak, retryOptions())
}

func withProxyRetry(t *testing.T, srv *s3server.Server, tweak func(*s3.Options), ro retry.Options) (backend.Backend, *faultproxy.Proxy) {
	t.Helper()
	p := faultproxy.Start(t, srv.Endpoint)
	opts := options(p.URL(), "repo")
	if tweak != nil {
		tweak(&opts)
	}
	be := openWith(t, opts, ro)
	p.Reset() // forget Open's request
	return be, p
}

var (
	anyPUT = faultproxy.Match{Method: "PUT"}
	anyGET = faultproxy.Match{Method: "GET"}
)

func TestRetryServerErrors(t *testing.T) {
	srv := startServer(t)
	be, p := withProxy(t, srv, nil)
	h := backend.Handle{Type: backend.IndexFile, Name: "idx"}
	data := randomData(1000)

	p.FailNext(2, 500, anyPUT)
	save(t, be, h, data)
	if got := p.Count(anyPUT); got != 3 {
		t.Errorf("Save after two 500s made %d PUTs, want 3", got)
	}

	p.FailNext(3, 503, anyGET)
	if got := load(t, be, h); !bytes.Equal(got, data) {
		t.Fatal("Load after 503s returned wrong data")
	}
	if got := p.Count(anyGET); got != 4 {
		t.Errorf("Load after three 503s made %d GETs, want 4", got)
	}

	p.FailNext(1, 500, faultproxy.Match{Method: "HEAD"})
	if fi, err := be.Stat(context.Background(), h); err != nil || fi.Size != 1000 {
		t.Errorf("Stat after a 500 = %+v, %v", fi, err)
	}
	p.FailNext(1, 503, faultproxy.Match{Method: "GET", PathContains: "list-type=2"})
	n := 0
	if err := be.List(context.Background(), backend.IndexFile, func(backend.FileInfo) error { n++; return nil }); err != nil || n != 1 {
		t.Errorf("List after a 503 = %d objects, %v", n, err)
	}
}

func TestGiveUpAfterRetryLimit(t *testing.T) {
	srv := startServer(t)
	be, p := withProxy(t, srv, nil)
	h := backend.Handle{Type: backend.SnapshotFile, Name: "snap1"}
	p.FailNext(100, 500, anyPUT)
	err := be.Save(context.Background(), h, bytes.NewReader([]byte("x")), 1)
	if err == nil {
		t.Fatal("Save against a failing server succeeded")
	}
	if got := p.Count(anyPUT); got != 4 {
		t.Errorf("Save made %d attempts, want MaxAttempts = 4", got)
	}
	msg := err.Error()
	for _, want := range []string{`s3 bucket "` + bucket + `"`, p.URL(), `"repo/snapshots/snap1"`, "giving up after 4 attempts", "HTTP 500", "InternalError"} {
		if !strings.Contains(msg, want) {
			t.Errorf("error %q does not contain %q", msg, want)
		}
	}
	if errors.Is(err, backend.ErrNotExist) {
		t.Errorf("error %q wraps ErrNotExist", err)
	}
	p.Reset()
	if _, err := be.Stat(context.Background(), h); !errors.Is(err, backend.ErrNotExist) {
		t.Errorf("Stat after the failed Save = %v, want ErrNotExist", err)
	}
}

func TestRetryStall(t *testing.T) {
	srv := startServer(t)
	be, p := withProxy(t, srv, shortStall)
	h := backend.Handle{Type: backend.KeyFile, Name: "key1"}
	data := randomData(2000)

	// The server accepts the request and never answers: the attempt is
	// abandoned after StallTimeout and retried.
	p.StallNext(1, 0, anyPUT)
	save(t, be, h, data)
	if got := p.Count(anyPUT); got != 2 {
		t.Errorf("Save after a stall made %d PUTs, want 2", got)
	}
	p.StallNext(1, 0, anyGET)
	if got := load(t, be, h); !bytes.Equal(got, data) {
		t.Fatal("Load after a stall returned wrong data")
	}
	if got := p.Count(anyGET); got != 2 {
		t.Errorf("Load after a stall made %d GETs, want 2", got)
	}

	// A server that always stalls makes the backend give up.
	p.StallNext(100, 0, faultproxy.Match{Method: "HEAD"})
	_, err := be.Stat(context.Background(), h)
	if err == nil || !strings.Contains(err.Error(), "giving up after 4 attempts") || !strings.Contains(err.Error(), "no progress for 500ms") {
		t.Fatalf("Stat against a stalling server = %v, want it to give up", err)
	}
	if got := p.Count(faultproxy.Match{Method: "HEAD"}); got != 4 {
		t.Errorf("Stat made %d attempts, want 4", got)
	}
}

func TestLoadResumesBrokenBody(t *testing.T) {
	srv := startServer(t)
	be, p := withProxy(t, srv, nil)
	h := backend.Handle{Type: backend.PackFile, Name: "cd" + strings.Repeat("5", 62)}
	data := randomData(300 << 10)
	save(t, be, h, data)

	p.CutBodyNext(2, 70<<10, anyGET)
	if got := load(t, be, h); !bytes.Equal(got, data) {
		t.Fatal("Load with a body cut twice returned wrong data")
	}
	if got := p.Count(anyGET); got != 3 {
		t.Errorf("Load with a body cut twice made %d GETs, want 3", got)
	}

	// A ranged read resumes within its range.
	p.Reset()
	p.CutBodyNext(1, 1000, anyGET)
	rd, err := be.Load(context.Background(), h, 5000, 100000)
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(rd)
	rd.Close()
	if err != nil || !bytes.Equal(got, data[100000:105000]) {
		t.Fatalf("ranged Load with a cut body = %d bytes, %v", len(got), err)
	}
	if got := p.Count(anyGET); got != 2 {
		t.Errorf("ranged Load made %d GETs, want 2", got)
	}

	// The server fails the reopening after a cut: the read resumes again.
	p.Reset()
	p.CutBodyNext(1, 1000, anyGET)
	p.FailNext(2, 503, anyGET)
	rd, err = be.Load(context.Background(), h, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	got, err = io.ReadAll(rd)
	rd.Close()
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("Load whose resume failed twice = %d bytes, %v", len(got), err)
	}
	if got := p.Count(anyGET); got != 4 {
		t.Errorf("Load whose resume failed twice made %d GETs, want 4", got)
	}

	// A 403 on the reopening is not resumed.
	p.Reset()
	p.CutBodyNext(1, 1000, anyGET)
	p.FailNext(1, 403, anyGET)
	rd, err = be.Load(context.Background(), h, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	_, err = io.ReadAll(rd)
	rd.Close()
	if !errors.Is(err, s3.ErrAccessDenied) {
		t.Fatalf("Load whose resume was refused: %v, want ErrAccessDenied", err)
	}
	if got := p.Count(anyGET); got != 2 {
		t.Errorf("Load whose resume was refused made %d GETs, want 2", got)
	}

	// Cut every time: the reader gives up with an error, never short data.
	p.Reset()
	p.CutBodyNext(100, 1000, anyGET)
	rd, err = be.Load(context.Background(), h, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	got, err = io.ReadAll(rd)
	rd.Close()
	if err == nil || !strings.Contains(err.Error(), "giving up") {
		t.Fatalf("Load with a body always cut read %d bytes, error %v; want it to give up", len(got), err)
	}
}

func TestLoadDoesNotSpliceVersions(t *testing.T) {
	srv := startServer(t)
	be, p := withProxy(t, srv, nil)
	h := backend.Handle{Type: backend.IndexFile, Name: "changing"}
	save(t, be, h, randomData(100<<10))
	p.CutBodyNext(1, 10<<10, anyGET)
	rd, err := be.Load(context.Background(), h, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer rd.Close()
	buf := make([]byte, 5<<10)
	if _, err := io.ReadFull(rd, buf); err != nil {
		t.Fatal(err)
	}
	// Replaced while being read: resuming would mix two objects.
	save(t, be, h, bytes.Repeat([]byte{7}, 100<<10))
	if _, err := io.ReadAll(rd); err == nil || !strings.Contains(err.Error(), "replaced") {
		t.Fatalf("reading an object replaced midway: %v, want an error", err)
	}
}

func TestCancelDuringBackoff(t *testing.T) {
	srv := startServer(t)
	ro := retryOptions()
	ro.Backoff = backoff.Policy{Initial: time.Hour} // the test would time out if ctx were ignored
	be, p := withProxyRetry(t, srv, nil, ro)
	p.FailNext(100, 503, anyPUT)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- be.Save(ctx, backend.Handle{Type: backend.LockFile, Name: "l"}, bytes.NewReader([]byte("x")), 1)
	}()
	for p.Count(anyPUT) == 0 {
		time.Sleep(time.Millisecond)
	}
	cancel()
	err := <-done
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Save cancelled during backoff = %v, want context.Canceled", err)
	}
	if got := p.Count(anyPUT); got != 1 {
		t.Errorf("Save made %d attempts after cancel, want 1", got)
	}
}

func TestMultipart(t *testing.T) {
	srv := startServer(t)
	be, p := withProxy(t, srv, nil)
	h := backend.Handle{Type: backend.PackFile, Name: "ef" + strings.Repeat("6", 62)}
	data := randomData(backendtest.LargeSize)

	// One part fails twice on the way: the upload is aborted each time and
	// the whole Save tried again, since only the wrapper retries.
	p.FailNext(2, 500, faultproxy.Match{Method: "PUT", PathContains: "partNumber=2"})
	save(t, be, h, data)
	log := strings.Join(p.Log(), "\n")
	for _, want := range []struct {
		m    faultproxy.Match
		n    int
		what string
	}{
		{faultproxy.Match{Method: "POST", PathContains: "?uploads"}, 3, "create"},
		{faultproxy.Match{Method: "POST", PathContains: "?uploadId="}, 1, "complete"},
		{faultproxy.Match{Method: "DELETE", PathContains: "uploadId="}, 2, "abort"},
		{faultproxy.Match{Method: "PUT", PathContains: "partNumber=1"}, 3, "part 1"},
		{faultproxy.Match{Method: "PUT", PathContains: "partNumber=2"}, 3, "part 2"},
		{faultproxy.Match{Method: "PUT", PathContains: "partNumber=3"}, 1, "part 3"},
		{faultproxy.Match{Method: "PUT", PathContains: "partNumber=4"}, 0, "part 4"},
	} {
		if got := p.Count(want.m); got != want.n {
			t.Errorf("%s: %d requests, want %d; log:\n%s", want.what, got, want.n, log)
		}
	}
	if got := load(t, be, h); !bytes.Equal(got, data) {
		t.Fatal("multipart object reads back wrong")
	}

	// A part that keeps failing aborts every upload: no object, no parts
	// left.
	p.Reset()
	h2 := backend.Handle{Type: backend.PackFile, Name: "ef" + strings.Repeat("7", 62)}
	p.FailNext(100, 500, faultproxy.Match{Method: "PUT", PathContains: "partNumber=3"})
	err := be.Save(context.Background(), h2, bytes.NewReader(data), int64(len(data)))
	if err == nil || !strings.Contains(err.Error(), "part 3") {
		t.Fatalf("Save with a failing part = %v, want an error naming part 3", err)
	}
	if got := p.Count(faultproxy.Match{Method: "DELETE", PathContains: "uploadId="}); got != 4 {
		t.Errorf("4 failed multipart uploads aborted %d times, want 4", got)
	}
	if _, err := be.Stat(context.Background(), h2); !errors.Is(err, backend.ErrNotExist) {
		t.Errorf("Stat after failed multipart Save = %v, want ErrNotExist", err)
	}
	ups, err := srv.Client(t).ListMultipartUploads(context.Background(), &s3api.ListMultipartUploadsInput{Bucket: aws.String(bucket)})
	if err != nil {
		t.Fatal(err)
	}
	if len(ups.Uploads) != 0 {
		t.Errorf("%d multipart uploads left behind", len(ups.Uploads))
	}
}

func TestPermanentErrorsFailFast(t *testing.T) {
	srv := startServer(t)
	tests := []struct {
		name    string
		bucket  string
		env     map[string]string
		kind    error
		message string
	}{
		{"no such bucket", "no-such-bucket", nil, s3.ErrBucketNotFound, "no such bucket"},
		{"wrong secret", bucket, map[string]string{"AWS_SECRET_ACCESS_KEY": "wrong-secret-value"}, s3.ErrAccessDenied, "signature does not match"},
		{"unknown access key", bucket, map[string]string{"AWS_ACCESS_KEY_ID": "NOSUCHKEY"}, s3.ErrAccessDenied, "invalid access key id"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			p := faultproxy.Start(t, srv.Endpoint)
			opts := options(p.URL(), "repo")
			opts.Bucket = tc.bucket
			_, err := s3.Open(context.Background(), opts)
			if err == nil {
				t.Fatal("Open succeeded")
			}
			t.Logf("Open: %v", err)
			if !errors.Is(err, tc.kind) {
				t.Errorf("error %q does not wrap %v", err, tc.kind)
			}
			msg := err.Error()
			for _, want := range []string{fmt.Sprintf("s3 bucket %q at %s", tc.bucket, p.URL()), tc.message} {
				if !strings.Contains(msg, want) {
					t.Errorf("error %q does not contain %q", msg, want)
				}
			}
			for _, secret := range []string{srv.Secret, "wrong-secret-value"} {
				if strings.Contains(msg, secret) {
					t.Errorf("error %q contains a secret", msg)
				}
			}
			if got := p.Requests(); got != 1 {
				t.Errorf("Open made %d requests, want 1", got)
			}
			if retry.Retryable(err) {
				t.Errorf("permanent error %q is retryable", err)
			}
		})
	}
}

func TestRegionFromChain(t *testing.T) {
	srv := startServer(t)
	// Unset: the default region, which is the server's.
	t.Setenv("AWS_REGION", "")
	open(t, options(srv.Endpoint, "r"))
	// Set: requests are signed for it, which this server refuses.
	t.Setenv("AWS_REGION", "eu-central-1")
	_, err := s3.Open(context.Background(), options(srv.Endpoint, "r"))
	if err == nil {
		t.Fatal("Open signed for the wrong region succeeded; the region from the environment was not used")
	}
	t.Logf("Open with the wrong region: %v", err)
	opts := options(srv.Endpoint, "r")
	opts.Region = "us-east-1"
	open(t, opts)
}

func TestConnectionRefused(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	t.Setenv("AWS_ACCESS_KEY_ID", "x")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "y")
	// The backend tries once and says the failure is worth retrying; the
	// retries are the wrapper's, as location.Open does it.
	_, err = s3.Open(context.Background(), options("http://"+addr, ""))
	if err == nil || !strings.Contains(err.Error(), "connection failed") || !strings.Contains(err.Error(), "refused") {
		t.Fatalf("Open of a closed port = %v, want connection refused", err)
	}
	if !retry.Retryable(err) {
		t.Errorf("Open of a closed port: %v is not retryable", err)
	}
	tries := 0
	err = retry.NewRetrier(retryOptions()).Do(context.Background(), "open", func(int) error {
		tries++
		_, err := s3.Open(context.Background(), options("http://"+addr, ""))
		return err
	})
	if err == nil || !strings.Contains(err.Error(), "giving up after 4 attempts") || !strings.Contains(err.Error(), "refused") || tries != 4 {
		t.Fatalf("retried Open of a closed port = %v after %d tries, want it to give up after 4", err, tries)
	}
}

func TestBadOptions(t *testing.T) {
	t.Setenv("AWS_ACCESS_KEY_ID", "x")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "y")
	tests := []struct {
		name, endpoint, bucket, want string
	}{
		{"no bucket", "http://127.0.0.1:1", "", "no bucket"},
		{"credentials in URL", "http://AKID:topsecret@127.0.0.1:1", "b", "must not contain credentials"},
		{"bad scheme", "ftp://127.0.0.1:1", "b", "scheme must be http or https"},
		{"path in endpoint", "http://127.0.0.1:1/x", "b", "scheme://host[:port] only"},
		{"no host", "http://", "b", "no host"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			opts := options(tc.endpoint, "")
			opts.Bucket = tc.bucket
			_, err := s3.Open(context.Background(), opts)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Open = %v, want an error containing %q", err, tc.want)
			}
			if strings.Contains(err.Error(), "topsecret") {
				t.Fatalf("error %q shows the secret", err)
			}
		})
	}
}

func TestNoCredentials(t *testing.T) {
	srv := startServer(t)
	p := faultproxy.Start(t, srv.Endpoint)
	t.Setenv("AWS_ACCESS_KEY_ID", "")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "")
	t.Setenv("AWS_EC2_METADATA_DISABLED", "true") // no instance metadata on a test machine
	_, err := s3.Open(context.Background(), options(p.URL(), "repo"))
	if !errors.Is(err, s3.ErrNoCredentials) {
		t.Fatalf("Open without credentials = %v, want ErrNoCredentials", err)
	}
	t.Logf("Open: %v", err)
	if retry.Retryable(err) {
		t.Errorf("missing credentials %q are retryable", err)
	}
	if !strings.Contains(err.Error(), "AWS_ACCESS_KEY_ID") {
		t.Errorf("error %q does not say how to provide credentials", err)
	}
	if got := p.Requests(); got != 0 {
		t.Errorf("Open without credentials sent %d requests", got)
	}
}

// TestSlowReaderIsNotAStall checks that the stall clock runs only while the
// backend waits for the server, not while the caller is busy between reads.
func TestSlowReaderIsNotAStall(t *testing.T) {
	srv := startServer(t)
	be, p := withProxy(t, srv, shortStall)
	h := backend.Handle{Type: backend.PackFile, Name: "aa" + strings.Repeat("8", 62)}
	data := randomData(256 << 10)
	save(t, be, h, data)
	rd, err := be.Load(context.Background(), h, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer rd.Close()
	got := make([]byte, 1000)
	if _, err := io.ReadFull(rd, got); err != nil {
		t.Fatal(err)
	}
	time.Sleep(3 * stallTimeout) // the caller is busy
	rest, err := io.ReadAll(rd)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(append(got, rest...), data) {
		t.Fatal("slow read returned wrong data")
	}
	if got := p.Count(anyGET); got != 1 {
		t.Errorf("slow reader caused %d GETs, want 1 (no stall retries)", got)
	}
}

func TestListPagination(t *testing.T) {
	srv := startServer(t)
	be, p := withProxy(t, srv, func(o *s3.Options) { o.ListPageSize = 3 })
	want := map[string]int64{}
	for i := range 10 {
		h := backend.Handle{Type: backend.PackFile, Name: fmt.Sprintf("%02x%062d", i*25, i)}
		save(t, be, h, randomData(i))
		want[h.Name] = int64(i)
	}
	// Something under another type and a stray nested key must not show.
	save(t, be, backend.Handle{Type: backend.IndexFile, Name: "i"}, []byte("i"))
	if _, err := srv.Client(t).PutObject(context.Background(), &s3api.PutObjectInput{
		Bucket: aws.String(bucket), Key: aws.String("repo/index/nested/x"), Body: strings.NewReader("x"),
	}); err != nil {
		t.Fatal(err)
	}
	var index []string
	if err := be.List(context.Background(), backend.IndexFile, func(fi backend.FileInfo) error {
		index = append(index, fi.Name)
		return nil
	}); err != nil || strings.Join(index, ",") != "i" {
		t.Fatalf("List(index) = %v, %v; want only i", index, err)
	}
	p.Reset()
	p.FailNext(1, 503, faultproxy.Match{Method: "GET", PathContains: "continuation-token"})
	got := map[string]int64{}
	calls := 0
	err := be.List(context.Background(), backend.PackFile, func(fi backend.FileInfo) error {
		got[fi.Name] = fi.Size
		calls++
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(want) {
		t.Fatalf("List found %d packs, want %d: %v", len(got), len(want), got)
	}
	for name, size := range want {
		if got[name] != size {
			t.Errorf("List: %s has size %d, want %d", name, got[name], size)
		}
	}
	if calls != len(want) {
		t.Errorf("List reported %d names for %d packs: the retry repeated some", calls, len(want))
	}
	// 10 keys in pages of 3 is 4 pages; the first page and the failed
	// second went before the retry started over.
	if n := p.Count(faultproxy.Match{Method: "GET", PathContains: "list-type=2"}); n != 6 {
		t.Errorf("List made %d listing requests, want 6:\n%s", n, strings.Join(p.Log(), "\n"))
	}
}

// TestRemoveIsOneRequest: a removal is one DELETE, whether the object
// exists or not (the Backend contract lets a missing one succeed): every
// backup's unlock and every pack prune frees pay it.
func TestRemoveIsOneRequest(t *testing.T) {
	ctx := context.Background()
	srv := startServer(t)
	p := faultproxy.Start(t, srv.Endpoint)
	be, err := s3.Open(ctx, options(p.URL(), "remove"))
	if err != nil {
		t.Fatal(err)
	}
	h := backend.Handle{Type: backend.LockFile, Name: strings.Repeat("ab", 32)}
	if err := be.Save(ctx, h, strings.NewReader("lock"), 4); err != nil {
		t.Fatal(err)
	}
	for _, what := range []string{"present", "missing"} {
		p.Reset()
		if err := be.Remove(ctx, h); err != nil {
			t.Fatalf("Remove of a %s object: %v", what, err)
		}
		if log := p.Log(); len(log) != 1 || !strings.HasPrefix(log[0], "DELETE ") {
			t.Errorf("Remove of a %s object sent %q, want one DELETE", what, log)
		}
	}
	if _, err := be.Stat(ctx, h); !errors.Is(err, backend.ErrNotExist) {
		t.Errorf("Stat after Remove: %v, want ErrNotExist", err)
	}
}
