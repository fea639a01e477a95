package agent

import (
	"embed"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/pprof"
	"sort"
	"strconv"
	"time"

	"github.com/custos-backup/custos/jobs"
	"github.com/custos-backup/custos/metadata"
)

// Handler serves the status page (/ and /static/), the JSON API
// (/api/status, /api/events, /api/jobs, /api/backups, /api/schedule, POST
// /api/run, POST /api/jobs/{id}/cancel), /metrics and /debug/pprof/.
//
// Requests that change something (POST) are refused when a browser says
// they come from another origin: the agent listens on 127.0.0.1, and any
// web page open in the admin's browser could otherwise post to it.
// Clients that send no such headers (curl, scripts) are let through.
// Before all of that, guard checks the Host header, the token and who may
// see /debug/pprof.
func (a *Agent) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", serveWebFile("status.html", "text/html; charset=utf-8"))
	mux.HandleFunc("GET /static/status.js", serveWebFile("status.js", "text/javascript; charset=utf-8"))
	mux.HandleFunc("GET /static/status.css", serveWebFile("status.css", "text/css; charset=utf-8"))
	mux.HandleFunc("GET /api/status", a.serveStatusJSON)
	mux.HandleFunc("GET /api/events", a.serveEvents)
	mux.HandleFunc("POST /api/jobs/{id}/cancel", a.serveCancel)
	mux.HandleFunc("GET /api/jobs", a.serveJobs)
	mux.HandleFunc("POST /api/jobs", a.serveCreateJob)
	mux.HandleFunc("GET /api/jobs/{id}", a.serveJob)
	mux.HandleFunc("DELETE /api/jobs/{id}", a.serveDeleteJob)
	mux.HandleFunc("GET /api/jobs/{id}/events", a.serveJobEvents)
	mux.HandleFunc("GET /api/backups", a.serveBackups)
	mux.HandleFunc("GET /api/fleet", a.serveFleet)
	mux.HandleFunc("GET /api/schedule", func(w http.ResponseWriter, _ *http.Request) { writeJSON(w, a.Schedule()) })
	mux.HandleFunc("POST /api/run", a.serveRun)
	mux.HandleFunc("POST /api/reload", a.serveReload)
	mux.Handle("GET /metrics", a.metrics.handler())
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok\n")) })
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	return a.guard(http.NewCrossOriginProtection().Handler(mux))
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

func httpError(w http.ResponseWriter, code int, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(map[string]string{"error": msg})
}

// serveJobs returns {"pending": [...], "running": [...], "history": [...]}.
func (a *Agent) serveJobs(w http.ResponseWriter, _ *http.Request) {
	s := a.runner.Status()
	writeJSON(w, map[string][]jobs.Status{"pending": nonNil(s.Pending), "running": nonNil(s.Running), "history": nonNil(s.Done)})
}

func nonNil(s []jobs.Status) []jobs.Status {
	if s == nil {
		return []jobs.Status{}
	}
	return s
}

// BackupEntry is one atom version in /api/backups.
type BackupEntry struct {
	Atom       string    `json:"atom"`
	Host       string    `json:"host"`
	Time       time.Time `json:"time"`
	BackupID   string    `json:"backup_id"`
	Handler    string    `json:"handler"`
	Repository string    `json:"repository"`
	SnapshotID string    `json:"snapshot_id"`
	Files      int64     `json:"dataset_files"`
	Bytes      int64     `json:"dataset_bytes"`
	// HeldIn lists the repositories holding this version: its own, then
	// verified replicas (filled in by Manager.AddHoldings).
	HeldIn []string `json:"held_in,omitempty"`
}

// Flatten lists the atom versions of a find result, by atom name and then
// newest first.
func Flatten(found []*metadata.Backup) []BackupEntry {
	out := []BackupEntry{}
	for _, b := range found {
		for _, d := range b.Datasets {
			for _, at := range d.Atoms {
				snap := at.SnapshotID
				if snap == "" { // a record from before atoms had their own
					snap = d.SnapshotID
				}
				out = append(out, BackupEntry{
					Atom: metadata.AtomName(d.Source, d.Name, at.Name), Host: b.Host, Time: b.Timestamp, BackupID: b.ID,
					Handler: d.Handler, Repository: d.Repository, SnapshotID: snap, Files: d.TotalFiles, Bytes: d.TotalBytes,
				})
			}
		}
	}
	sort.SliceStable(out, func(i, j int) bool {
		if out[i].Atom != out[j].Atom {
			return out[i].Atom < out[j].Atom
		}
		return out[i].Time.After(out[j].Time)
	})
	return out
}

// serveBackups answers ?pattern=&host=&versions= from the catalog.
func (a *Agent) serveBackups(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	req := metadata.FindRequest{Pattern: q.Get("pattern"), Host: q.Get("host"), NumVersions: 1}
	if req.Pattern == "" {
		req.Pattern = "*"
	}
	if v := q.Get("versions"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			httpError(w, http.StatusBadRequest, "versions must be a positive number")
			return
		}
		req.NumVersions = n
	}
	found, err := a.mgr.Find(r.Context(), req)
	if err != nil {
		httpError(w, http.StatusBadGateway, err.Error())
		return
	}
	writeJSON(w, Flatten(found))
}

// serveRun starts a source now: POST /api/run?source=NAME. With
// kind=replicate it replicates the source's datasets, with kind=fixity
// (and repository=NAME) it runs fixity on a repository.
func (a *Agent) serveRun(w http.ResponseWriter, r *http.Request) {
	switch kind := r.URL.Query().Get("kind"); kind {
	case "", "ingest":
	case "replicate", "fixity":
		a.serveRunPreservation(w, r, kind)
		return
	default:
		httpError(w, http.StatusBadRequest, "unknown kind "+strconv.Quote(kind)+" (ingest, replicate or fixity)")
		return
	}
	name := r.URL.Query().Get("source")
	if a.cm.Current().Source(name) == nil {
		httpError(w, http.StatusNotFound, "no source "+strconv.Quote(name))
		return
	}
	ids, err := a.submitSource(r.Context(), name)
	if err != nil {
		httpError(w, http.StatusInternalServerError, err.Error())
		return
	}
	writeJSON(w, map[string]any{"source": name, "jobs": ids})
}

// serveReload reads the configuration again, as SIGHUP does. A broken one
// is refused with its problems (file, line, field; never a secret) and the
// agent keeps the old one.
func (a *Agent) serveReload(w http.ResponseWriter, _ *http.Request) {
	if err := a.Reload(); err != nil {
		httpError(w, http.StatusUnprocessableEntity, err.Error())
		return
	}
	writeJSON(w, map[string]int{"generation": a.cm.Current().Generation})
}

// web holds the status page: static HTML, CSS and JS that render the JSON
// of /api/events (or /api/status) in the browser.
//
//go:embed web
var web embed.FS

// pageCSP lets the status page load only its own script and style: even if
// a name from a config or the catalog slipped into the page as markup, no
// inline script of it would run.
const pageCSP = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

func serveWebFile(name, contentType string) http.HandlerFunc {
	return func(w http.ResponseWriter, _ *http.Request) {
		b, err := web.ReadFile("web/" + name)
		if err != nil { // cannot happen: the file is embedded
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		h := w.Header()
		h.Set("Content-Type", contentType)
		h.Set("Content-Security-Policy", pageCSP)
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Cache-Control", "no-cache")
		_, _ = w.Write(b)
	}
}

// HumanBytes formats a byte count for people: 1.5 MiB.
func HumanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
