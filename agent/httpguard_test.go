package agent

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/custos-backup/custos/metadata"
)

// lockedBuffer collects log output from several goroutines.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestHTTPGuard runs a real agent with a token and checks the perimeter:
// the Host header, the token on every endpoint but /healthz, the cookie
// login of the page, pprof for loopback only, and that neither the token
// nor the repository password appears in any answer or log line.
func TestHTTPGuard(t *testing.T) {
	ctx := testContext(t)
	const token = "tok-0123456789abcdef-SECRET"
	const password = "repo-password-SECRET-42"
	ts := newSetup(t, "@every 1h", map[string]string{
		"agent.yml": `hostname: test-host
work_dir: work
repositories:
  - name: local
    url: work/repo
    password_file: pw
http_listen: 127.0.0.1:0
http_token_file: token
http_allowed_hosts: [custos.example.org]
`,
		"pw":    password + "\n",
		"token": token + "\n",
	})
	var logs lockedBuffer
	log := slog.New(slog.NewTextHandler(io.MultiWriter(&logs, testWriter{t}), &slog.HandlerOptions{Level: slog.LevelDebug}))

	runCtx, stop := context.WithCancel(ctx)
	started := make(chan *Agent, 1)
	addr := make(chan string, 1)
	done := make(chan error, 1)
	go func() {
		done <- Run(runCtx, ts.cfgPath, RunOptions{Logger: log, Started: func(a *Agent) { started <- a }, Listening: func(s string) { addr <- s }})
	}()
	var a *Agent
	select {
	case a = <-started:
	case err := <-done:
		t.Fatalf("agent stopped: %v", err)
	}
	base := "http://" + <-addr
	defer func() {
		stop()
		if err := <-done; err != nil {
			t.Errorf("agent: %v", err)
		}
	}()
	a.SubmitSource("files")
	waitFor(ctx, t, "a backup in the catalog", func() bool {
		found, err := a.Manager().Find(ctx, metadata.FindRequest{Pattern: "*"})
		return err == nil && len(found) > 0
	})

	var answers []string // every body and header seen, for the secret grep
	do := func(method, path string, hdr map[string]string) (*http.Response, string) {
		t.Helper()
		req, err := http.NewRequestWithContext(ctx, method, base+path, nil)
		if err != nil {
			t.Fatal(err)
		}
		for k, v := range hdr {
			if k == "Host" {
				req.Host = v
				continue
			}
			req.Header.Set(k, v)
		}
		client := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", method, path, err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp, string(body)
	}
	bearer := map[string]string{"Authorization": "Bearer " + token}
	endpoints := []string{"/", "/api/status", "/api/jobs", "/api/backups?pattern=*", "/api/schedule", "/metrics", "/debug/pprof/", "/static/status.js"}

	cases := []struct {
		name   string
		method string
		path   string
		hdr    map[string]string
		want   int
	}{
		{"healthz needs no token", "GET", "/healthz", nil, 200},
		{"rebinding: a foreign Host is refused even with the token", "GET", "/api/status", map[string]string{"Host": "attacker.example.com:7373", "Authorization": "Bearer " + token}, http.StatusMisdirectedRequest},
		{"rebinding: a foreign Host cannot start a job", "POST", "/api/run?source=files", map[string]string{"Host": "attacker.example.com", "Origin": "http://attacker.example.com"}, http.StatusMisdirectedRequest},
		{"an allowed name", "GET", "/api/status", map[string]string{"Host": "custos.example.org", "Authorization": "Bearer " + token}, 200},
		{"the host name", "GET", "/api/status", map[string]string{"Host": "test-host:7373", "Authorization": "Bearer " + token}, 200},
		{"a wrong token", "GET", "/api/status", map[string]string{"Authorization": "Bearer " + token + "x"}, 401},
		{"no job starts without the token", "POST", "/api/run?source=files", nil, 401},
		{"the page login with a wrong token", "GET", "/?token=nope", nil, 401},
	}
	for _, ep := range endpoints {
		cases = append(cases,
			struct {
				name, method, path string
				hdr                map[string]string
				want               int
			}{"no token: " + ep, "GET", ep, nil, 401},
			struct {
				name, method, path string
				hdr                map[string]string
				want               int
			}{"bearer: " + ep, "GET", ep, bearer, 200})
	}
	for _, tc := range cases {
		resp, body := do(tc.method, tc.path, tc.hdr)
		if resp.StatusCode != tc.want {
			t.Errorf("%s: %s %s = %d, want %d (%s)", tc.name, tc.method, tc.path, resp.StatusCode, tc.want, firstLineOf(body))
		}
		answers = append(answers, body, headerText(resp.Header))
	}

	// The page: /?token= sets a cookie and redirects; the cookie then works.
	resp, _ := do("GET", "/?token="+token, nil)
	if resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != "/" {
		t.Fatalf("page login: %d to %q, want 303 to /", resp.StatusCode, resp.Header.Get("Location"))
	}
	var cookie *http.Cookie
	for _, c := range resp.Cookies() {
		if c.Name == tokenCookie {
			cookie = c
		}
	}
	if cookie == nil || !cookie.HttpOnly || cookie.SameSite != http.SameSiteStrictMode {
		t.Fatalf("page login cookie = %+v, want an HttpOnly SameSite=Strict %s", cookie, tokenCookie)
	}
	if resp, body := do("GET", "/api/status", map[string]string{"Cookie": cookie.String()}); resp.StatusCode != 200 {
		t.Errorf("cookie: /api/status = %d (%s)", resp.StatusCode, firstLineOf(body))
	}

	// pprof from another host: not served, even with the token.
	rec := httptest.NewRecorder()
	req := httptest.NewRequest("GET", "/debug/pprof/", nil)
	req.Host = "127.0.0.1:7373"
	req.RemoteAddr = "192.0.2.7:40000"
	req.Header.Set("Authorization", "Bearer "+token)
	a.Handler().ServeHTTP(rec, req)
	if rec.Code != http.StatusNotFound {
		t.Errorf("pprof from 192.0.2.7: %d, want 404", rec.Code)
	}

	stop()
	<-done
	done <- nil
	answers = append(answers, logs.String())
	for _, secret := range []string{token, password} {
		for i, s := range answers {
			if strings.Contains(s, secret) {
				t.Errorf("a secret (%.6s...) appears in answer/log %d: %.200s", secret, i, s)
			}
		}
	}
}

func headerText(h http.Header) string {
	var b strings.Builder
	_ = h.Write(&b)
	return b.String()
}

func firstLineOf(s string) string {
	s, _, _ = strings.Cut(strings.TrimSpace(s), "\n")
	return s
}
