package agent

import (
	"embed"
	"encoding/json"
	"errors"
	"fmt"
	"io"
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

// Entries lists found versions as /api/backups does, in their order.
func Entries(vs []metadata.FoundVersion) []BackupEntry {
	out := make([]BackupEntry, 0, len(vs))
	for _, v := range vs {
		snap := v.Atom.SnapshotID
		if snap == "" { // a record from before atoms had their own
			snap = v.Dataset.SnapshotID
		}
		d := v.Dataset
		out = append(out, BackupEntry{Atom: v.Name, Host: v.Backup.Host, Time: v.Backup.Timestamp, BackupID: v.Backup.ID,
			Handler: d.Handler, Repository: d.Repository, SnapshotID: snap, Files: d.TotalFiles, Bytes: d.TotalBytes})
	}
	return out
}

// EntryRun is a run of entries of /api/backups that share their dataset
// version: the answer of ?runs=1, for the command line, which decodes one
// name per atom instead of a whole entry. Entry is the first one, its
// Atom the first name; SnapshotIDs is set only when they differ.
type EntryRun struct {
	Entry       BackupEntry `json:"entry"`
	Atoms       []string    `json:"atoms"`
	SnapshotIDs []string    `json:"snapshot_ids,omitempty"`
}

// Runs groups found versions into runs.
func Runs(vs []metadata.FoundVersion) []EntryRun {
	out := []EntryRun{}
	entries := Entries(vs)
	for i, e := range entries {
		n := len(out) - 1
		if n < 0 || vs[i-1].Dataset != vs[i].Dataset || vs[i-1].Backup != vs[i].Backup {
			out = append(out, EntryRun{Entry: e, Atoms: []string{e.Atom}})
			continue
		}
		r := &out[n]
		if e.SnapshotID != r.Entry.SnapshotID && r.SnapshotIDs == nil {
			r.SnapshotIDs = make([]string, len(r.Atoms), len(r.Atoms)+1)
			for j := range r.SnapshotIDs {
				r.SnapshotIDs[j] = r.Entry.SnapshotID
			}
		}
		r.Atoms = append(r.Atoms, e.Atom)
		if r.SnapshotIDs != nil {
			r.SnapshotIDs = append(r.SnapshotIDs, e.SnapshotID)
		}
	}
	return out
}

// Expand turns runs back into entries.
func Expand(runs []EntryRun) []BackupEntry {
	n := 0
	for _, r := range runs {
		n += len(r.Atoms)
	}
	out := make([]BackupEntry, 0, n)
	for _, r := range runs {
		for i, a := range r.Atoms {
			e := r.Entry
			e.Atom = a
			if r.SnapshotIDs != nil && i < len(r.SnapshotIDs) {
				e.SnapshotID = r.SnapshotIDs[i]
			}
			out = append(out, e)
		}
	}
	return out
}

// serveBackups answers ?pattern=&host=&versions=&older_than= from the
// catalog: a JSON array of BackupEntry, by atom name and then newest
// first.
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
	if v := q.Get("older_than"); v != "" {
		t, err := time.Parse(time.RFC3339Nano, v)
		if err != nil {
			httpError(w, http.StatusBadRequest, "older_than must be a time in RFC 3339")
			return
		}
		req.OlderThan = t
	}
	if idx := a.catalog.Index; idx != nil {
		// From memory, encoded by hand: 100,000 entries through
		// encoding/json take longer than the whole find may.
		vs, err := idx.Versions(r.Context(), req)
		if err == nil && q.Get("runs") != "" {
			writeJSON(w, Runs(vs))
			return
		}
		if err == nil {
			w.Header().Set("Content-Type", "application/json")
			enc := entryEncoder{w: w, buf: make([]byte, 0, 256<<10)}
			for _, v := range vs {
				if enc.add(v) != nil {
					return // the client went away
				}
			}
			_ = enc.finish()
			return
		}
		if !metadata.IsNotLive(err) {
			findError(w, err)
			return
		}
	}
	if q.Get("runs") != "" {
		vs, err := a.catalog.Store.FindVersions(r.Context(), req)
		if err != nil {
			findError(w, err)
			return
		}
		writeJSON(w, Runs(vs))
		return
	}
	found, err := a.mgr.Find(r.Context(), req)
	if err != nil {
		findError(w, err)
		return
	}
	writeJSON(w, Flatten(found))
}

func findError(w http.ResponseWriter, err error) {
	code := http.StatusBadGateway
	if errors.Is(err, metadata.ErrInvalid) {
		code = http.StatusBadRequest
	}
	httpError(w, code, err.Error())
}

// entryEncoder writes BackupEntry values as encoding/json would (compact):
// the fields of one dataset version are encoded once for all its atoms.
type entryEncoder struct {
	w    io.Writer
	buf  []byte
	n    int
	last *metadata.Dataset
	tail []byte // ,"host":...,"repository":"..." of last
	ds   []byte // ,"dataset_files":..,"dataset_bytes":..} of last
}

func (e *entryEncoder) add(v metadata.FoundVersion) error {
	if len(e.buf) > cap(e.buf)-1024 {
		if _, err := e.w.Write(e.buf); err != nil {
			return err
		}
		e.buf = e.buf[:0]
	}
	if v.Dataset != e.last {
		d, b := v.Dataset, v.Backup
		e.last = d
		e.tail = append(e.tail[:0], `,"host":`...)
		e.tail = appendJSONString(e.tail, b.Host)
		e.tail = append(e.tail, `,"time":`...)
		e.tail = appendJSONValue(e.tail, b.Timestamp)
		e.tail = append(e.tail, `,"backup_id":`...)
		e.tail = appendJSONString(e.tail, b.ID)
		e.tail = append(e.tail, `,"handler":`...)
		e.tail = appendJSONString(e.tail, d.Handler)
		e.tail = append(e.tail, `,"repository":`...)
		e.tail = appendJSONString(e.tail, d.Repository)
		e.tail = append(e.tail, `,"snapshot_id":`...)
		e.ds = append(e.ds[:0], `,"dataset_files":`...)
		e.ds = strconv.AppendInt(e.ds, d.TotalFiles, 10)
		e.ds = append(e.ds, `,"dataset_bytes":`...)
		e.ds = strconv.AppendInt(e.ds, d.TotalBytes, 10)
		e.ds = append(e.ds, '}')
	}
	if e.n > 0 {
		e.buf = append(e.buf, ',')
	} else {
		e.buf = append(e.buf, '[')
	}
	e.n++
	e.buf = append(e.buf, `{"atom":`...)
	e.buf = appendJSONString(e.buf, v.Name)
	e.buf = append(e.buf, e.tail...)
	snap := v.Atom.SnapshotID
	if snap == "" { // a record from before atoms had their own
		snap = v.Dataset.SnapshotID
	}
	e.buf = appendJSONString(e.buf, snap)
	e.buf = append(e.buf, e.ds...)
	return nil
}

func (e *entryEncoder) finish() error {
	if e.n == 0 {
		e.buf = append(e.buf, '[')
	}
	_, err := e.w.Write(append(e.buf, ']', '\n'))
	return err
}

// appendJSONString appends s as encoding/json encodes it: plain ASCII is
// copied, anything else goes through encoding/json.
func appendJSONString(b []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c >= 0x80 || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			return appendJSONValue(b, s)
		}
	}
	b = append(b, '"')
	b = append(b, s...)
	return append(b, '"')
}

func appendJSONValue(b []byte, v any) []byte {
	j, err := json.Marshal(v)
	if err != nil { // strings and times always encode
		panic(fmt.Sprintf("agent: encode %T: %v", v, err))
	}
	return append(b, j...)
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
