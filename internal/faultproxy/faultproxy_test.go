package faultproxy_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/custos-backup/custos/internal/faultproxy"
)

// backend answers with the request's Host header and path, so tests see what
// reached it.
func backend(t *testing.T) *httptest.Server {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		io.WriteString(w, r.Method+" "+r.Host+" "+r.URL.Path+" "+strings.Repeat("x", 1000))
	}))
	t.Cleanup(srv.Close)
	return srv
}

func get(t *testing.T, c *http.Client, method, url string) (int, string, error) {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader("body"))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := c.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

func TestFaults(t *testing.T) {
	be := backend(t)
	p := faultproxy.Start(t, be.URL)
	c := &http.Client{}
	host := strings.TrimPrefix(p.URL(), "http://")

	status, body, err := get(t, c, "GET", p.URL()+"/a")
	if err != nil || status != 200 || !strings.HasPrefix(body, "GET "+host+" /a ") {
		t.Fatalf("pass-through: %d %q %v (want the proxy's Host to reach the server)", status, body, err)
	}

	p.FailNext(2, 503, faultproxy.Match{Method: "PUT", PathContains: "/data/"})
	tests := []struct {
		method, path string
		want         int
	}{
		{"GET", "/data/x", 200},  // method does not match
		{"PUT", "/index/x", 200}, // path does not match
		{"PUT", "/data/x", 503},
		{"PUT", "/data/y", 503},
		{"PUT", "/data/z", 200}, // used up
	}
	for _, tc := range tests {
		status, body, err := get(t, c, tc.method, p.URL()+tc.path)
		if err != nil || status != tc.want {
			t.Errorf("%s %s = %d, %v; want %d", tc.method, tc.path, status, err, tc.want)
		}
		if status == 503 && !strings.Contains(body, "<Code>SlowDown</Code>") {
			t.Errorf("injected 503 body %q lacks an S3 error code", body)
		}
	}
	if got := p.Requests(); got != 6 {
		t.Errorf("Requests() = %d, want 6", got)
	}
	if got := p.Count(faultproxy.Match{Method: "PUT", PathContains: "/data/"}); got != 3 {
		t.Errorf("Count(PUT /data/) = %d, want 3", got)
	}
	if log := p.Log(); len(log) != 6 || log[1] != "GET /data/x" {
		t.Errorf("Log() = %q", log)
	}
	p.Reset()
	if p.Requests() != 0 {
		t.Error("Reset kept the log")
	}
}

func TestStallUntilClientGivesUp(t *testing.T) {
	p := faultproxy.Start(t, backend(t).URL)
	p.StallNext(1, 0, faultproxy.Match{})
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", p.URL()+"/stalled", nil)
	resp, err := http.DefaultClient.Do(req)
	if err == nil {
		resp.Body.Close()
		t.Fatal("stalled request was answered")
	}
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("stalled request: %v, want the client's deadline", err)
	}
	if status, _, err := get(t, http.DefaultClient, "GET", p.URL()+"/next"); err != nil || status != 200 {
		t.Fatalf("request after the stall = %d, %v", status, err)
	}
}

func TestStallWithDelayPassesOn(t *testing.T) {
	p := faultproxy.Start(t, backend(t).URL)
	p.StallNext(1, 20*time.Millisecond, faultproxy.Match{})
	status, body, err := get(t, http.DefaultClient, "GET", p.URL()+"/late")
	if err != nil || status != 200 || !strings.Contains(body, "/late") {
		t.Fatalf("delayed request = %d %q %v", status, body, err)
	}
}

func TestStalledHandlerDoesNotBlockClose(t *testing.T) {
	be := backend(t)
	done := make(chan struct{})
	t.Run("proxy", func(t *testing.T) {
		p := faultproxy.Start(t, be.URL)
		p.StallNext(1, 0, faultproxy.Match{})
		go func() {
			defer close(done)
			resp, err := http.Get(p.URL() + "/x")
			if err == nil {
				resp.Body.Close()
			}
		}()
		for p.Requests() == 0 {
			time.Sleep(time.Millisecond)
		}
	}) // the proxy's cleanup runs here and must not hang on the stalled request
	<-done
}

func TestCutBody(t *testing.T) {
	p := faultproxy.Start(t, backend(t).URL)
	p.CutBodyNext(1, 100, faultproxy.Match{Method: "GET"})
	resp, err := http.Get(p.URL() + "/cut")
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !errors.Is(err, io.ErrUnexpectedEOF) || len(b) != 100 {
		t.Fatalf("cut body: read %d bytes, err %v; want 100 and unexpected EOF", len(b), err)
	}
	if status, body, err := get(t, http.DefaultClient, "GET", p.URL()+"/whole"); err != nil || status != 200 || len(body) < 1000 {
		t.Fatalf("request after the cut = %d, %d bytes, %v", status, len(body), err)
	}
}

func TestDrop(t *testing.T) {
	p := faultproxy.Start(t, backend(t).URL)
	p.DropNext(1, faultproxy.Match{Method: "PUT"})
	// No keep-alive: a retry on a reused connection would hide the drop.
	c := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	if _, _, err := get(t, c, "PUT", p.URL()+"/dropped"); err == nil {
		t.Fatal("dropped request was answered")
	}
	if status, _, err := get(t, c, "PUT", p.URL()+"/next"); err != nil || status != 200 {
		t.Fatalf("request after the drop = %d, %v", status, err)
	}
	if got := p.Count(faultproxy.Match{Method: "PUT"}); got != 2 {
		t.Errorf("Count(PUT) = %d, want 2", got)
	}
}
