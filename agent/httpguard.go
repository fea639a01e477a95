package agent

import (
	"crypto/subtle"
	"net"
	"net/http"
	"strings"
)

// tokenCookie carries the bearer token for the status page: a browser
// cannot add an Authorization header to a page load or an EventSource, so
// the page is opened once as /?token=... and the cookie takes over.
const tokenCookie = "custos_token"

// guard is the agent's HTTP perimeter, applied before any handler:
//
//   - the Host header must name this server (an IP literal, localhost, the
//     agent's host name or http_allowed_hosts), so a page on an attacker's
//     domain that resolves to 127.0.0.1 (DNS rebinding) reaches nothing;
//   - with a token configured, every endpoint but /healthz requires it;
//   - /debug/pprof answers loopback clients only, unless http_pprof is set.
//
// It reads the config on every request, so a reload changes it at once.
func (a *Agent) guard(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		cfg := a.cm.Current().Config
		if !allowedHost(r.Host, cfg) {
			httpError(w, http.StatusMisdirectedRequest, "unknown host name in the Host header; add it to http_allowed_hosts if it is yours")
			return
		}
		if r.URL.Path == "/healthz" {
			next.ServeHTTP(w, r)
			return
		}
		if tok := cfg.HTTP.Token.Bytes(); len(tok) > 0 {
			if r.URL.Path == "/" && r.Method == http.MethodGet && r.URL.Query().Has("token") {
				if !tokenEqual(r.URL.Query().Get("token"), tok) {
					httpError(w, http.StatusUnauthorized, "wrong token")
					return
				}
				http.SetCookie(w, &http.Cookie{Name: tokenCookie, Value: string(tok), Path: "/",
					HttpOnly: true, SameSite: http.SameSiteStrictMode, Secure: r.TLS != nil})
				http.Redirect(w, r, "/", http.StatusSeeOther) // the token leaves the address bar
				return
			}
			if !requestHasToken(r, tok) {
				w.Header().Set("WWW-Authenticate", `Bearer realm="custos"`)
				httpError(w, http.StatusUnauthorized, "this agent needs its token: Authorization: Bearer <http_token_file>, or open /?token=<token> once in a browser")
				return
			}
		}
		if strings.HasPrefix(r.URL.Path, "/debug/pprof") && !cfg.HTTP.Pprof && !loopbackClient(r) {
			http.NotFound(w, r)
			return
		}
		next.ServeHTTP(w, r)
	})
}

func requestHasToken(r *http.Request, tok []byte) bool {
	if h := r.Header.Get("Authorization"); h != "" {
		scheme, val, ok := strings.Cut(h, " ")
		return ok && strings.EqualFold(scheme, "Bearer") && tokenEqual(strings.TrimSpace(val), tok)
	}
	if c, err := r.Cookie(tokenCookie); err == nil {
		return tokenEqual(c.Value, tok)
	}
	return false
}

func tokenEqual(got string, want []byte) bool {
	return subtle.ConstantTimeCompare([]byte(got), want) == 1
}

// allowedHost accepts IP literals (rebinding needs a name), localhost,
// the agent's host name and the names the config allows.
func allowedHost(hostport string, cfg *Config) bool {
	host := hostport
	if h, _, err := net.SplitHostPort(hostport); err == nil {
		host = h
	}
	host = strings.TrimSuffix(strings.Trim(host, "[]"), ".")
	if host == "" || net.ParseIP(host) != nil || strings.EqualFold(host, "localhost") || strings.EqualFold(host, cfg.Hostname) {
		return host != ""
	}
	for _, h := range cfg.HTTP.AllowedHosts {
		if strings.EqualFold(host, h) {
			return true
		}
	}
	return false
}

func loopbackClient(r *http.Request) bool {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return false
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
