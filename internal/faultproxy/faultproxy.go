// Package faultproxy is an HTTP reverse proxy for tests that sits on
// 127.0.0.1 in front of a real server and injects the faults a real server
// cannot be made to produce on demand: error responses, stalls, dropped
// connections, and cut-off response bodies. It counts every request it sees,
// so tests can assert how many attempts a client made without looking at the
// clock.
//
// The Host header is passed through unchanged, so signed requests (AWS
// SigV4) made to the proxy's address still verify at the real server.
package faultproxy

import (
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"
)

// Match selects requests. Empty fields match anything.
type Match struct {
	Method       string // e.g. "PUT"
	PathContains string // substring of the path and query, e.g. "/data/" or "uploadId="
}

func (m Match) matches(r *http.Request) bool {
	if m.Method != "" && !strings.EqualFold(m.Method, r.Method) {
		return false
	}
	return m.PathContains == "" || strings.Contains(r.URL.RequestURI(), m.PathContains)
}

type faultKind int

const (
	failFault faultKind = iota
	stallFault
	cutFault
	dropFault
)

type fault struct {
	kind   faultKind
	left   int
	status int
	code   string        // fail: S3 error code; "" = the status's usual one
	delay  time.Duration // stall; 0 = until the client gives up
	after  int64         // cut: body bytes passed before the cut
	match  Match
}

// Proxy is a running fault-injecting proxy.
type Proxy struct {
	srv    *httptest.Server
	rp     *httputil.ReverseProxy
	closed chan struct{}

	mu     sync.Mutex
	faults []*fault
	log    []string
}

// Start runs a proxy to target (e.g. "http://127.0.0.1:7070") and stops it
// when the test ends.
func Start(tb testing.TB, target string) *Proxy {
	tb.Helper()
	u, err := url.Parse(target)
	if err != nil || u.Scheme == "" || u.Host == "" {
		tb.Fatalf("faultproxy: bad target %q: %v", target, err)
	}
	p := &Proxy{closed: make(chan struct{})}
	p.rp = &httputil.ReverseProxy{
		Rewrite: func(r *httputil.ProxyRequest) {
			r.SetURL(u)
			r.Out.Host = r.In.Host // keep the signed Host header
		},
		// Clients giving up on stalled requests are expected here.
		ErrorLog: log.New(io.Discard, "", 0),
	}
	p.srv = httptest.NewServer(http.HandlerFunc(p.serve))
	tb.Cleanup(p.close)
	return p
}

func (p *Proxy) close() {
	close(p.closed) // release stalled handlers, or Close would wait for them
	p.srv.CloseClientConnections()
	p.srv.Close()
}

// URL is the proxy's address, "http://127.0.0.1:PORT".
func (p *Proxy) URL() string { return p.srv.URL }

// FailNext answers the next n matching requests with status and an S3-style
// XML error body, without passing them on. The body's code is S3's for the
// status: SlowDown (503), AccessDenied (403), NoSuchKey (404), else
// InternalError.
func (p *Proxy) FailNext(n, status int, m Match) {
	p.add(&fault{kind: failFault, left: n, status: status, match: m})
}

// FailNextCode is FailNext with the error code given, for answers such as
// 403 InvalidObjectState (a GET of an archived object).
func (p *Proxy) FailNextCode(n, status int, code string, m Match) {
	p.add(&fault{kind: failFault, left: n, status: status, code: code, match: m})
}

// StallNext holds the next n matching requests without answering: for d and
// then passes them on, or, if d is 0, until the client gives up.
func (p *Proxy) StallNext(n int, d time.Duration, m Match) {
	p.add(&fault{kind: stallFault, left: n, delay: d, match: m})
}

// CutBodyNext passes the next n matching requests on, but sends only the
// first after bytes of the response body and then breaks the connection.
func (p *Proxy) CutBodyNext(n int, after int64, m Match) {
	p.add(&fault{kind: cutFault, left: n, after: after, match: m})
}

// DropNext closes the connection of the next n matching requests without an
// answer, as a server that crashes or a middlebox that resets would.
func (p *Proxy) DropNext(n int, m Match) {
	p.add(&fault{kind: dropFault, left: n, match: m})
}

func (p *Proxy) add(f *fault) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.faults = append(p.faults, f)
}

// Requests returns how many requests reached the proxy.
func (p *Proxy) Requests() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.log)
}

// Count returns how many requests matching m reached the proxy.
func (p *Proxy) Count(m Match) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for _, l := range p.log {
		method, uri, _ := strings.Cut(l, " ")
		if (m.Method == "" || strings.EqualFold(m.Method, method)) && strings.Contains(uri, m.PathContains) {
			n++
		}
	}
	return n
}

// Log returns "METHOD /path?query" for every request so far, in order.
func (p *Proxy) Log() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.log...)
}

// Reset forgets pending faults and the request log.
func (p *Proxy) Reset() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.faults = nil
	p.log = nil
}

// take logs r and returns the first pending fault that matches it, using it
// up.
func (p *Proxy) take(r *http.Request) *fault {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.log = append(p.log, r.Method+" "+r.URL.RequestURI())
	for i, f := range p.faults {
		if f.left > 0 && f.match.matches(r) {
			f.left--
			if f.left == 0 {
				p.faults = append(p.faults[:i:i], p.faults[i+1:]...)
			}
			c := *f
			return &c
		}
	}
	return nil
}

func (p *Proxy) serve(w http.ResponseWriter, r *http.Request) {
	f := p.take(r)
	switch {
	case f == nil:
		p.rp.ServeHTTP(w, r)
	case f.kind == failFault:
		// Drain the body so the client sees the answer rather than a reset.
		_, _ = io.Copy(io.Discard, r.Body)
		code := "InternalError"
		switch f.status {
		case http.StatusServiceUnavailable:
			code = "SlowDown"
		case http.StatusForbidden:
			code = "AccessDenied"
		case http.StatusNotFound:
			code = "NoSuchKey"
		}
		if f.code != "" {
			code = f.code
		}
		w.Header().Set("Content-Type", "application/xml")
		w.WriteHeader(f.status)
		fmt.Fprintf(w, `<?xml version="1.0" encoding="UTF-8"?>`+
			`<Error><Code>%s</Code><Message>injected by faultproxy</Message><RequestId>faultproxy</RequestId></Error>`, code)
	case f.kind == stallFault:
		var timeout <-chan time.Time
		if f.delay > 0 {
			t := time.NewTimer(f.delay)
			defer t.Stop()
			timeout = t.C
		}
		select {
		case <-timeout:
			p.rp.ServeHTTP(w, r)
		case <-r.Context().Done(): // the client gave up
		case <-p.closed:
		}
	case f.kind == cutFault:
		p.rp.ServeHTTP(&cutWriter{ResponseWriter: w, left: f.after}, r)
	case f.kind == dropFault:
		_, _ = io.Copy(io.Discard, r.Body)
		// Aborting before any byte of the answer makes net/http close the
		// connection: the client sees it end with no response.
		panic(http.ErrAbortHandler)
	}
}

// cutWriter passes on a response until its byte budget is spent, then aborts
// the handler, which makes net/http break the connection mid-body.
type cutWriter struct {
	http.ResponseWriter
	left int64
}

func (c *cutWriter) Write(b []byte) (int, error) {
	if int64(len(b)) > c.left {
		b = b[:c.left]
	}
	n, err := c.ResponseWriter.Write(b)
	c.left -= int64(n)
	if err == nil && c.left == 0 {
		if f, ok := c.ResponseWriter.(http.Flusher); ok {
			f.Flush()
		}
		panic(http.ErrAbortHandler)
	}
	return n, err
}

func (c *cutWriter) Flush() {
	if f, ok := c.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}
