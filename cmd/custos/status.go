package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"sort"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/custos-backup/custos/agent"
	"github.com/custos-backup/custos/jobs"
	"github.com/custos-backup/custos/metadata"
)

// statusTimeout bounds the whole request. The agent answers from memory,
// except the catalog part, which it bounds itself at 2s while etcd is
// away; anything slower is an agent that is stuck, and a monitoring script
// must not hang on it.
const statusTimeout = 5 * time.Second

// ingestLockPrefix starts the lock key of an ingest job; the rest is
// source/dataset. jobs.Status has no source or dataset field, and the lock
// key is the job's dataset identity (the description is prose).
const ingestLockPrefix = "ingest:"

func newStatusCmd() *cobra.Command {
	var path, listen string
	var asJSON, fleet bool
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show what the agent on this host is doing",
		Long: `Ask the running agent (GET /api/status on http_listen from the config, or
--listen) what it is doing and print a summary: host and uptime, running and
queued jobs with their progress, the last result of every dataset with its
snapshot, the next scheduled runs, the catalog spool and catalog errors.
--json prints the agent's own JSON report instead.

--fleet reads the catalog instead (the running agent's, or one opened for
the command) and prints every host's running jobs and the last outcome of
every dataset on every host; it exits 1 when the last backup of any dataset
on any host failed, or the catalog cannot be read.

Exit status, for monitoring scripts:
  0  the agent answers and the newest finished run of every dataset it knows
     ended ok (datasets that never ran are not counted)
  1  the newest finished run of some dataset did not end ok (error, timeout
     or canceled; the summary shows the error's first line), or no agent
     answers, or it answers with an error, or it cannot reach its catalog`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if fleet {
				return runFleet(cmd, path, asJSON)
			}
			// With --listen the config is not needed: it only tells where
			// the agent listens.
			// start is the hint printed when no agent answers.
			start := "custos agent -c " + path
			var ac agentClient
			if listen != "" {
				start += " --listen " + listen
				ac.listen = listen
			} else {
				cfg, err := agent.LoadConfig(path)
				if err != nil {
					return configError(err)
				}
				ac = newAgentClient(cfg)
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), statusTimeout)
			defer cancel()
			raw, rep, err := fetchStatus(ctx, ac, start)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			var failed []string
			if asJSON {
				// The agent's bytes, not a re-encoding: a newer agent's
				// fields survive an older command.
				if _, err := out.Write(raw); err != nil {
					return err
				}
				failed = failedDatasets(datasetResults(rep))
			} else {
				failed = printStatus(out, rep)
			}
			if len(failed) > 0 {
				return fmt.Errorf("the last run of %d dataset(s) failed: %s", len(failed), strings.Join(failed, ", "))
			}
			if n := len(rep.SpoolFailed); n > 0 {
				return fmt.Errorf("%d catalog record(s) could never be written and were set aside; those backups are not findable", n)
			}
			if rep.CatalogError != "" {
				return fmt.Errorf("the agent cannot reach its catalog: %s", firstLine(rep.CatalogError))
			}
			return nil
		},
	}
	configFlag(cmd, &path)
	cmd.Flags().StringVar(&listen, "listen", "", "the agent's HTTP address (overrides http_listen; the config is then not read)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the agent's JSON report")
	cmd.Flags().BoolVar(&fleet, "fleet", false, "every host's running jobs and last outcomes, from the catalog")
	return cmd
}

// statusURL turns a listen address into the URL to ask. An agent that
// listens on every interface ("", 0.0.0.0, ::) is asked on loopback.
func statusURL(listen string) (string, error) {
	if strings.Contains(listen, "://") {
		return strings.TrimSuffix(listen, "/") + "/api/status", nil
	}
	host, port, err := net.SplitHostPort(listen)
	if err != nil {
		return "", fmt.Errorf("agent address %q: %w", listen, err)
	}
	if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
		host = "127.0.0.1"
		if ip != nil && ip.To4() == nil {
			host = "::1"
		}
	}
	return "http://" + net.JoinHostPort(host, port) + "/api/status", nil
}

// agentClient is how the commands reach the running agent: its address,
// and the token and TLS settings of its config.
type agentClient struct {
	listen string
	// limit bounds an answer's size; 0 means maxAnswer.
	limit  int64
	token  []byte
	tls    bool
	client *http.Client
}

func newAgentClient(cfg *agent.Config) agentClient {
	ac := agentClient{listen: cfg.HTTPListen, token: cfg.HTTP.Token.Bytes(), client: http.DefaultClient}
	if cfg.HTTP.TLSCertFile != "" {
		ac.tls = true
		// The agent's own certificate is trusted as a root, so a
		// self-signed one works without touching the system's store.
		pool, err := x509.SystemCertPool()
		if err != nil {
			pool = x509.NewCertPool()
		}
		if pem, err := os.ReadFile(cfg.HTTP.TLSCertFile); err == nil {
			pool.AppendCertsFromPEM(pem)
		}
		ac.client = &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}}}
	}
	return ac
}

// fetchStatus GETs the report. Its errors are one line each, for main to
// print: the operator sees why, not a Go error chain.
func fetchStatus(ctx context.Context, ac agentClient, start string) ([]byte, *agent.StatusReport, error) {
	body, err := ac.call(ctx, http.MethodGet, "/api/status", start)
	if err != nil {
		return nil, nil, err
	}
	rep := &agent.StatusReport{}
	if err := json.Unmarshal(body, rep); err != nil {
		return nil, nil, fmt.Errorf("agent at %s: the status report is not JSON (is something else listening there?): %w", ac.listen, err)
	}
	return body, rep, nil
}

// call sends one request to the agent and returns the body of a 200
// answer. Its errors are one line each, for main to print; start is the
// command that starts the agent, for the "no agent answers" hint.
func (ac agentClient) call(ctx context.Context, method, path, start string) ([]byte, error) {
	return ac.callBody(ctx, method, path, nil, start)
}

// callBody is call with a JSON request body.
func (ac agentClient) callBody(ctx context.Context, method, path string, reqBody []byte, start string) ([]byte, error) {
	resp, err := ac.send(ctx, method, path, reqBody, start)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	// A status answer is tens of kilobytes; the limit keeps something
	// that is not an agent from filling memory.
	limit := ac.limit
	if limit <= 0 {
		limit = 16 << 20
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, limit))
	if err != nil {
		return nil, fmt.Errorf("agent at %s: reading the answer: %w", ac.listen, err)
	}
	if resp.StatusCode/100 != 2 {
		msg := firstLine(string(body))
		var e struct {
			Error string `json:"error"`
		}
		if json.Unmarshal(body, &e) == nil && e.Error != "" {
			msg = e.Error
		}
		return nil, fmt.Errorf("agent at %s: %s %s: %s: %s", ac.listen, method, resp.Request.URL.Path, resp.Status, msg)
	}
	return body, nil
}

// send sends one request to the agent, with its token, and returns the
// response whatever its status; its errors are one line each.
func (ac agentClient) send(ctx context.Context, method, path string, reqBody []byte, start string) (*http.Response, error) {
	listen := ac.listen
	url, err := statusURL(listen)
	if err != nil {
		return nil, err
	}
	url = strings.TrimSuffix(url, "/api/status") + path
	if ac.tls {
		url = "https" + strings.TrimPrefix(url, "http")
	}
	var rd io.Reader
	if reqBody != nil {
		rd = bytes.NewReader(reqBody)
	}
	req, err := http.NewRequestWithContext(ctx, method, url, rd)
	if err != nil {
		return nil, fmt.Errorf("agent address %q: %w", listen, err)
	}
	if reqBody != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if len(ac.token) > 0 {
		req.Header.Set("Authorization", "Bearer "+string(ac.token))
	}
	client := ac.client
	if client == nil {
		client = http.DefaultClient
	}
	resp, err := client.Do(req)
	if err != nil {
		if errors.Is(err, syscall.ECONNREFUSED) {
			return nil, fmt.Errorf("no agent answers at %s (start it with: %s): %w", listen, start, syscall.ECONNREFUSED)
		}
		if errors.Is(err, context.DeadlineExceeded) && cmdContextAlive(ctx) {
			return nil, fmt.Errorf("the agent at %s did not answer within %s: %w", listen, statusTimeout, context.DeadlineExceeded)
		}
		return nil, fmt.Errorf("agent at %s: %w", listen, err)
	}
	return resp, nil
}

// cmdContextAlive tells our own timeout apart from the caller's
// cancellation (Ctrl-C), which needs no explanation.
func cmdContextAlive(ctx context.Context) bool {
	return !errors.Is(context.Cause(ctx), context.Canceled)
}

func firstLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return strings.TrimSpace(s[:i]) + " …"
	}
	return s
}

// datasetResult is what the summary says about one dataset: its newest
// finished job in the agent's memory, and its newest catalog record.
type datasetResult struct {
	name   string // source/dataset
	job    *jobs.Status
	record *metadata.Dataset
	backup *metadata.Backup
}

// failed says whether the newest finished run did not end ok. A dataset
// known only from the catalog (the agent restarted since) ran ok.
func (d datasetResult) failed() bool {
	return d.job != nil && d.job.Result != jobs.ResultOK
}

// datasetResults joins the finished jobs (newest first in the report) and
// the catalog records (newest backup first) by source/dataset, sorted by
// name.
// resultName names a dataset's row; an ingest job of a source without a
// dataset is the run of its datasets_command, which lists the datasets.
func resultName(source, dataset string) string {
	if dataset == "" {
		return source + " (datasets_command)"
	}
	return source + "/" + dataset
}

func datasetResults(rep *agent.StatusReport) []datasetResult {
	byName := map[string]*datasetResult{}
	get := func(name string) *datasetResult {
		if d := byName[name]; d != nil {
			return d
		}
		d := &datasetResult{name: name}
		byName[name] = d
		return d
	}
	for i := range rep.Done {
		j := &rep.Done[i]
		name, ok := strings.CutPrefix(j.LockKey, ingestLockPrefix)
		if j.Source != "" {
			name, ok = resultName(j.Source, j.Dataset), true
		}
		if !ok || j.Kind != "ingest" {
			continue
		}
		if d := get(name); d.job == nil {
			d.job = j
		}
	}
	// Outcomes from the catalog outlive a restart of the agent: they
	// stand in for datasets whose last job is no longer in its memory.
	for _, o := range rep.Outcomes {
		if o.Kind != "ingest" || o.Source == "" {
			continue
		}
		if d := get(resultName(o.Source, o.Dataset)); d.job == nil || d.job.Finished.Before(o.End) {
			d.job = &jobs.Status{ID: o.JobID, Kind: o.Kind, Source: o.Source, Dataset: o.Dataset, State: jobs.StateDone,
				Result: jobs.Result(o.Result), Error: o.Error, Started: o.Start, Finished: o.End, Attempts: o.Attempts}
		}
	}
	for _, b := range rep.Backups {
		for _, ds := range b.Datasets {
			if d := get(ds.Source + "/" + ds.Name); d.record == nil {
				d.record, d.backup = ds, b
			}
		}
	}
	out := make([]datasetResult, 0, len(byName))
	for _, d := range byName {
		out = append(out, *d)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].name < out[j].name })
	return out
}

func failedDatasets(rs []datasetResult) []string {
	var out []string
	for _, r := range rs {
		if r.failed() {
			out = append(out, r.name)
		}
	}
	return out
}

// printStatus writes the summary and returns the datasets whose last run
// failed. Ages are counted from the agent's clock (rep.Now), as the status
// page does, so that a skewed local clock does not distort them.
func printStatus(w io.Writer, rep *agent.StatusReport) []string {
	now := rep.Now
	ago := func(t time.Time) string {
		if t.IsZero() {
			return "-"
		}
		return t.Local().Format("2006-01-02 15:04:05") + " (" + relTime(now, t) + ")"
	}
	fmt.Fprintf(w, "custos agent on %s, up %s (since %s), config %s (generation %d)\n",
		rep.Host, roundDur(now.Sub(rep.Started)), rep.Started.Local().Format("2006-01-02 15:04:05"), rep.Config, rep.Generation)
	if rep.DryRun {
		fmt.Fprintln(w, "DRY RUN: backups are not written")
	}
	catalog := "catalog ok"
	if rep.CatalogError != "" {
		catalog = "catalog error: " + firstLine(rep.CatalogError) + " (backups below may be stale)"
	}
	fmt.Fprintf(w, "%s; spool: %d record(s) waiting for the catalog\n", catalog, rep.SpoolDepth)
	if n := len(rep.SpoolFailed); n > 0 {
		fmt.Fprintf(w, "CATALOG RECORDS FAILED: %d record(s) etcd can never take, set aside; those backups are not findable:\n", n)
		for _, f := range rep.SpoolFailed {
			fmt.Fprintf(w, "  %s/%s of backup %s: %s (%s)\n", f.Source, f.Dataset, f.BackupID, firstLine(f.Reason), f.File)
		}
	}

	for _, warn := range rep.CatalogWarnings {
		// The catalog against the repositories, and the peer syncs.
		fmt.Fprintln(w, "catalog warning:", warn)
	}

	fmt.Fprintf(w, "\nRunning (%d)\n", len(rep.Running))
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	for _, j := range rep.Running {
		state := string(j.State)
		if j.Attempts > 1 {
			state += fmt.Sprintf(" (attempt %d)", j.Attempts)
		}
		if j.State == jobs.StateRetrying && j.Error != "" {
			state += ": " + firstLine(j.Error)
		}
		fmt.Fprintf(tw, "  %s\t%s\t%s\tstarted %s\t%s\n", j.ID, j.Description, state, relTime(now, j.Started), progress(j.Progress))
	}
	_ = tw.Flush()

	fmt.Fprintf(w, "\nQueued (%d)\n", len(rep.Pending))
	tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	for _, j := range rep.Pending {
		fmt.Fprintf(tw, "  %s\t%s\tqueue %s\tsubmitted %s\n", j.ID, j.Description, j.Queue, relTime(now, j.Submitted))
	}
	_ = tw.Flush()

	results := datasetResults(rep)
	fmt.Fprintf(w, "\nLast results (%d)\n", len(results))
	tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "  DATASET\tRESULT\tFINISHED\tLAST BACKUP\tSNAPSHOT")
	var errLines []string
	for _, r := range results {
		result, finished := "ok (catalog)", "-"
		if r.job != nil {
			result, finished = string(r.job.Result), ago(r.job.Finished)
			if r.failed() {
				result = "FAILED (" + string(r.job.Result) + ")"
				errLines = append(errLines, fmt.Sprintf("  %s: %s", r.name, firstLine(r.job.Error)))
			}
		}
		last, snap := "-", "-"
		if r.record != nil {
			last, snap = ago(r.backup.Timestamp), snapshotShort(r.record)
		}
		fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%s\n", r.name, result, finished, last, snap)
	}
	_ = tw.Flush()
	for _, l := range errLines {
		fmt.Fprintln(w, l)
	}

	fmt.Fprintf(w, "\nSources (%d)\n", len(rep.Sources))
	tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "  SOURCE\tHANDLER\tREPOSITORY\tSCHEDULE\tNEXT\tPREVIOUS")
	for _, s := range rep.Sources {
		sched := s.Schedule
		if sched == "" {
			sched = "on demand"
		}
		if s.RunOnStart {
			sched += " (and at start)"
		}
		fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%s\t%s\n", s.Name, s.Handler, s.Repository, sched, ago(s.Next), ago(s.Prev))
	}
	_ = tw.Flush()
	return failedDatasets(results)
}

// snapshotShort names the dataset's snapshot, or the first of its atoms'
// own and how many more there are.
func snapshotShort(d *metadata.Dataset) string {
	ids := agent.SnapshotIDs(d)
	if len(ids) == 0 {
		return "-"
	}
	s := shortIDs(ids[0])
	if len(ids) > 1 {
		s += fmt.Sprintf(" (+%d)", len(ids)-1)
	}
	return s
}

func progress(p jobs.Progress) string {
	s := agent.HumanBytes(p.Bytes)
	if p.TotalBytes > 0 {
		s += " of " + agent.HumanBytes(p.TotalBytes)
	}
	s += fmt.Sprintf(", %d", p.Files)
	if p.TotalFiles > 0 {
		s += fmt.Sprintf(" of %d", p.TotalFiles)
	}
	s += " files, " + agent.HumanBytes(int64(p.BytesPerSecond)) + "/s"
	if p.Current != "" {
		s += ", " + p.Current
	}
	return s
}

// relTime says how far t is from now: "5s ago" or "in 3m".
func relTime(now, t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	if d := now.Sub(t); d >= 0 {
		return roundDur(d) + " ago"
	}
	return "in " + roundDur(t.Sub(now))
}

// roundDur drops the precision nobody reads: "1h5m", not "1h5m3.2s".
func roundDur(d time.Duration) string {
	switch {
	case d.Round(time.Second) < time.Minute:
		return d.Round(time.Second).String()
	case d < 24*time.Hour:
		d = d.Round(time.Minute)
		h, m := d/time.Hour, d%time.Hour/time.Minute
		switch {
		case h == 0:
			return fmt.Sprintf("%dm", m)
		case m == 0:
			return fmt.Sprintf("%dh", h)
		}
		return fmt.Sprintf("%dh%dm", h, m)
	default:
		d = d.Round(time.Hour)
		return fmt.Sprintf("%dd%dh", d/(24*time.Hour), d%(24*time.Hour)/time.Hour)
	}
}

// newReloadCmd asks the running agent to read its configuration again, as
// SIGHUP does, without hunting for its pid.
func newReloadCmd() *cobra.Command {
	var path string
	cmd := &cobra.Command{
		Use:   "reload",
		Short: "Make the running agent read its configuration again",
		Long: `Ask the running agent (POST /api/reload on http_listen from the config) to
read its configuration again, as SIGHUP does. A broken configuration is
refused with its problems, and the agent keeps the old one.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := agent.LoadConfig(path)
			if err != nil {
				return configError(err)
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), statusTimeout)
			defer cancel()
			body, err := newAgentClient(cfg).call(ctx, http.MethodPost, "/api/reload", "custos agent -c "+path)
			if err != nil {
				return err
			}
			var ans struct {
				Generation int `json:"generation"`
			}
			if err := json.Unmarshal(body, &ans); err != nil {
				return fmt.Errorf("agent: the answer to reload is not JSON: %w", err)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "reloaded: configuration generation %d\n", ans.Generation)
			return nil
		},
	}
	configFlag(cmd, &path)
	return cmd
}

// runFleet prints the catalog's view of every host.
func runFleet(cmd *cobra.Command, path string, asJSON bool) error {
	ctx := cmd.Context()
	env, err := openCLI(ctx, path, false, slog.LevelWarn)
	if err != nil {
		return err
	}
	defer env.Close()
	rep, err := agent.Fleet(ctx, env.catalog.Store)
	if err != nil {
		return fmt.Errorf("reading the catalog: %w", err)
	}
	var failed []string
	for _, o := range rep.Outcomes {
		if o.Kind == "ingest" && o.Result != string(jobs.ResultOK) {
			failed = append(failed, o.Host+":"+o.Source+"/"+o.Dataset)
		}
	}
	out := cmd.OutOrStdout()
	if asJSON {
		if err := writeJSON(out, rep); err != nil {
			return err
		}
	} else {
		tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
		fmt.Fprintf(tw, "running jobs: %d\n", len(rep.Running))
		if len(rep.Running) > 0 {
			fmt.Fprintln(tw, "HOST\tJOB\tKIND\tDATASET\tSTATE\tSINCE")
			for _, j := range rep.Running {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", j.Host, j.JobID, j.Kind, joinName(j.Source, j.Dataset), j.State, j.StartedAt.Local().Format(time.DateTime))
			}
		}
		fmt.Fprintf(tw, "\nlast outcomes: %d\n", len(rep.Outcomes))
		if len(rep.Outcomes) > 0 {
			fmt.Fprintln(tw, "HOST\tKIND\tDATASET\tRESULT\tENDED\tATTEMPTS\tERROR")
			for _, o := range rep.Outcomes {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\t%s\n", o.Host, o.Kind, joinName(o.Source, o.Dataset), o.Result, o.End.Local().Format(time.DateTime), o.Attempts, firstLine(o.Error))
			}
		}
		if err := tw.Flush(); err != nil {
			return err
		}
	}
	if len(failed) > 0 {
		return fmt.Errorf("the last backup of %d dataset(s) failed: %s", len(failed), strings.Join(failed, ", "))
	}
	return nil
}

func joinName(source, dataset string) string {
	if source == "" {
		return "-"
	}
	return source + "/" + dataset
}
