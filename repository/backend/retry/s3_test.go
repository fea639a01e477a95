package retry_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/custos-backup/custos/internal/backoff"
	"github.com/custos-backup/custos/internal/faultproxy"
	"github.com/custos-backup/custos/internal/s3server"
	"github.com/custos-backup/custos/repository/backend"
	"github.com/custos-backup/custos/repository/backend/retry"
	"github.com/custos-backup/custos/repository/backend/s3"
)

// TestS3 runs the wrapper on the real S3 backend, against versitygw behind a
// proxy that fails the first requests.
func TestS3(t *testing.T) {
	srv := s3server.Start(t)
	srv.SetEnv(t)
	srv.CreateBucket(t, "retry")
	p := faultproxy.Start(t, srv.Endpoint)
	raw, err := s3.Open(context.Background(), s3.Options{Endpoint: p.URL(), Bucket: "retry", Prefix: "repo", UsePathStyle: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = raw.Close() })
	var log logBuffer
	be := retry.New(raw, quick(&log))

	h := backend.Handle{Type: backend.SnapshotFile, Name: "s1"}
	body := []byte("snapshot body")
	save := func(ctx context.Context) error { return be.Save(ctx, h, bytes.NewReader(body), int64(len(body))) }
	load := func(ctx context.Context) error {
		rc, err := be.Load(ctx, h, 0, 0)
		if err != nil {
			return err
		}
		defer rc.Close()
		got, err := io.ReadAll(rc)
		if err == nil && !bytes.Equal(got, body) {
			t.Errorf("Load read %q, want %q", got, body)
		}
		return err
	}
	stat := func(ctx context.Context) error { _, err := be.Stat(ctx, h); return err }
	list := func(ctx context.Context) error {
		n := 0
		err := be.List(ctx, backend.SnapshotFile, func(backend.FileInfo) error { n++; return nil })
		if err == nil && n != 1 {
			t.Errorf("List reported %d snapshots, want 1", n)
		}
		return err
	}
	var (
		put  = faultproxy.Match{Method: "PUT"}
		get  = faultproxy.Match{Method: "GET", PathContains: "/s1"}
		head = faultproxy.Match{Method: "HEAD"}
		lst  = faultproxy.Match{Method: "GET", PathContains: "list-type=2"}
	)

	tests := []struct {
		name     string
		fault    func()
		run      func(context.Context) error
		m        faultproxy.Match
		requests int    // that reached the proxy
		kind     error  // wrapped by the error; nil = success
		log      string // in the retry warnings
	}{
		{"503 SlowDown twice", func() { p.FailNext(2, 503, put) }, save, put, 3, nil, "throttled"},
		{"500 twice", func() { p.FailNext(2, 500, get) }, load, get, 3, nil, "failed"},
		{"connection dropped twice", func() { p.DropNext(2, put) }, save, put, 3, nil, "failed"},
		// A HEAD answer has no body, hence no SlowDown code: just a 503.
		{"stat after a 503", func() { p.FailNext(1, 503, head) }, stat, head, 2, nil, "failed"},
		{"list after a 500", func() { p.FailNext(1, 500, lst) }, list, lst, 2, nil, "failed"},
		{"403 is not retried", func() { p.FailNext(1, 403, put) }, save, put, 1, s3.ErrAccessDenied, ""},
		{"404 is not retried", func() { p.FailNext(1, 404, head) }, stat, head, 1, backend.ErrNotExist, ""},
		// S3's answer to a GET of a GLACIER object not restored: neither
		// access denied nor worth another try.
		{"403 InvalidObjectState is archived, not retried", func() { p.FailNextCode(1, 403, "InvalidObjectState", get) }, load, get, 1, backend.ErrArchived, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p.Reset()
			before := log.String()
			tt.fault()
			err := tt.run(context.Background())
			switch {
			case tt.kind == nil && err != nil:
				t.Fatalf("after the fault: %v", err)
			case tt.kind != nil && !errors.Is(err, tt.kind):
				t.Fatalf("error %v, want %v", err, tt.kind)
			}
			if got := p.Count(tt.m); got != tt.requests {
				t.Errorf("%d requests, want %d:\n%s", got, tt.requests, strings.Join(p.Log(), "\n"))
			}
			added := strings.TrimPrefix(log.String(), before)
			if tt.log == "" && added != "" {
				t.Errorf("retry warnings for an error not worth retrying:\n%s", added)
			}
			if tt.log != "" && !strings.Contains(added, "storage request "+tt.log+", will retry") {
				t.Errorf("no %q retry warning:\n%s", tt.log, added)
			}
		})
	}

	t.Run("gives up naming object and attempts", func(t *testing.T) {
		p.Reset()
		p.FailNext(100, 500, put)
		err := save(context.Background())
		for _, want := range []string{"save snapshots/s1", "giving up after 3 attempts", `"repo/snapshots/s1"`, "HTTP 500"} {
			if err == nil || !strings.Contains(err.Error(), want) {
				t.Errorf("error %v does not contain %q", err, want)
			}
		}
		if got := p.Count(put); got != 3 {
			t.Errorf("%d PUTs, want 3", got)
		}
	})

	t.Run("cancelled context stops at once", func(t *testing.T) {
		p.Reset()
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		if err := save(ctx); !errors.Is(err, context.Canceled) {
			t.Errorf("Save with a cancelled context = %v", err)
		}
		if got := p.Requests(); got != 0 {
			t.Errorf("cancelled Save sent %d requests", got)
		}

		// The wrapper logs its warning once the first attempt's 503 has
		// arrived, right before it waits: cancel then, not when the proxy
		// merely saw the request (the request itself would be cancelled).
		waiting := make(chan struct{})
		slow := quick(&firstWrite{c: waiting})
		slow.Backoff = backoff.Policy{Initial: time.Hour} // the test would hang if ctx were ignored
		be := retry.New(raw, slow)
		p.FailNext(100, 503, put)
		ctx, cancel = context.WithCancel(context.Background())
		errc := make(chan error, 1)
		go func() { errc <- be.Save(ctx, h, bytes.NewReader(body), int64(len(body))) }()
		<-waiting
		cancel()
		if err := <-errc; !errors.Is(err, context.Canceled) || !strings.Contains(err.Error(), "HTTP 503") {
			t.Errorf("Save cancelled while waiting = %v, want context.Canceled and the 503", err)
		}
		if got := p.Count(put); got != 1 {
			t.Errorf("%d PUTs, want 1", got)
		}
	})
}

// firstWrite closes c at its first write.
type firstWrite struct {
	once sync.Once
	c    chan struct{}
}

func (w *firstWrite) Write(b []byte) (int, error) {
	w.once.Do(func() { close(w.c) })
	return len(b), nil
}
