package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/spf13/cobra"

	"github.com/custos-backup/custos/agent"
	"github.com/custos-backup/custos/metadata"
)

// defaultConfig is where the commands look for agent.yml without -c.
const defaultConfig = "/etc/custos/agent.yml"

// addAgentCommands adds the commands that work with a configuration (the
// agent and its catalog), as opposed to "custos repo".
func addAgentCommands(root *cobra.Command) {
	root.AddCommand(newConfigCmd(), newAgentCmd(), newBackupCmd(), newFindCmd(), newRestoreCmd(), newStatusCmd(), newReloadCmd(), newReplicateCmd(), newFixityCmd(), newExportCmd(), newSyncCmd(), newWorkerCmd())
}

func configFlag(cmd *cobra.Command, p *string) {
	cmd.Flags().StringVarP(p, "config", "c", defaultConfig, "agent.yml (sources/ and handlers/ sit beside it)")
}

func newConfigCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "config", Short: "Work with the agent configuration"}
	var path string
	check := &cobra.Command{
		Use:   "check",
		Short: "Check agent.yml, sources/ and handlers/ and print every problem",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runConfigCheck(cmd.OutOrStdout(), cmd.ErrOrStderr(), path)
		},
	}
	configFlag(check, &path)
	cmd.AddCommand(check)
	return cmd
}

// errReported is returned when the problems have been printed already; main
// then only sets the exit status.
type errReported struct{ n int }

func (e errReported) Error() string { return fmt.Sprintf("%d problem(s) found", e.n) }

func runConfigCheck(stdout, stderr io.Writer, path string) error {
	cfg, err := agent.LoadConfig(path)
	var ce agent.ConfigErrors
	if errors.As(err, &ce) {
		for _, e := range ce {
			fmt.Fprintln(stderr, e)
		}
		return errReported{len(ce)}
	}
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "config OK: %d source(s), %d handler(s), %d repository(ies), host %s\n",
		len(cfg.Sources), len(cfg.Handlers), len(cfg.Repositories), cfg.Hostname)
	return nil
}

// cliEnv is what the backup, find and restore commands share: the config,
// the catalog (the running agent's, or one opened for this command), and a
// Manager.
type cliEnv struct {
	cm      *agent.ConfigManager
	catalog *agent.Catalog
	mgr     *agent.Manager
	log     *slog.Logger
}

func openCLI(ctx context.Context, path string, spool bool, level slog.Level) (*cliEnv, error) {
	return openCLIWith(ctx, path, spool, slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level})))
}

// openCLIReadOnly is openCLI for a command that only reads the catalog:
// with no agent running, it reads the embedded catalog's files instead of
// starting its server when it can (agent.CatalogOptions.ReadOnly).
func openCLIReadOnly(ctx context.Context, path string, level slog.Level) (*cliEnv, error) {
	return openCLIOpts(ctx, path, false, true, slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level})))
}

func openCLIWith(ctx context.Context, path string, spool bool, log *slog.Logger) (*cliEnv, error) {
	return openCLIOpts(ctx, path, spool, false, log)
}

func openCLIOpts(ctx context.Context, path string, spool, readOnly bool, log *slog.Logger) (*cliEnv, error) {
	cm, err := agent.NewConfigManager(path, log)
	if err != nil {
		return nil, configError(err)
	}
	cfg := cm.Current().Config
	opts := agent.CatalogOptions{Logger: log, ReadOnly: readOnly}
	if spool {
		opts.SpoolDir = agent.CLISpoolDir(cfg)
	}
	cat, err := agent.OpenCatalog(ctx, cfg, opts)
	if err != nil {
		return nil, err
	}
	return &cliEnv{cm: cm, catalog: cat, mgr: agent.NewManager(cm, cat.Store, nil, log), log: log}, nil
}

func (e *cliEnv) Close() {
	if err := e.mgr.Close(); err != nil {
		e.log.Warn("closing repositories", "error", err)
	}
	if err := e.catalog.Close(); err != nil {
		e.log.Warn("closing the catalog", "error", err)
	}
}

// configError prints config problems one per line, as "config check" does.
func configError(err error) error {
	var ce agent.ConfigErrors
	if errors.As(err, &ce) {
		return fmt.Errorf("the configuration has problems:\n%w", err)
	}
	return err
}

func newBackupCmd() *cobra.Command {
	var path, source, dataset string
	cmd := &cobra.Command{
		Use:   "backup",
		Short: "Back up sources now, in this process, and exit",
		Long: `Back up every source (or one, with --source; one dataset with --dataset)
now, without the agent. Exits non-zero if any dataset failed. Works whether or
not the agent is running.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if dataset != "" && source == "" {
				return errors.New("--dataset needs --source")
			}
			ctx := cmd.Context()
			env, err := openCLI(ctx, path, true, slog.LevelInfo)
			if err != nil {
				return err
			}
			defer env.Close()
			results, err := agent.BackupNow(ctx, env.mgr, env.cm.Current(), source, dataset)
			if err != nil {
				return err
			}
			// Records spooled while etcd was away go in now if it is back.
			if err := env.catalog.Store.FlushSpool(ctx); err != nil {
				env.log.Warn("some catalog records are still spooled; the next backup or the agent writes them", "error", err)
			}
			// A record of this run that the flush found etcd can never
			// take was set aside: that dataset's backup is not findable.
			refused := map[string]string{}
			setAside, err := env.catalog.Store.FailedRecords()
			if err != nil {
				env.log.Warn("cannot list the catalog records set aside", "error", err)
			}
			for _, f := range setAside {
				refused[f.BackupID+"\x00"+f.Source+"/"+f.Dataset] = f.Reason + " (kept in " + f.File + ")"
			}
			failed := 0
			for _, r := range results {
				status := "ok"
				reason, lost := refused[r.BackupID+"\x00"+r.Source+"/"+r.Dataset]
				switch {
				case r.Err != nil:
					failed++
					status = "FAILED: " + r.Err.Error()
				case r.Record == nil:
					status = "dry-run"
				case lost:
					failed++
					status = fmt.Sprintf("FAILED: stored as snapshot %s, but the catalog can never take its record: %s",
						shortIDs(strings.Join(agent.SnapshotIDs(r.Record), ",")), reason)
				default:
					status = fmt.Sprintf("ok  %d files, %s, %s added, snapshot %s", r.Record.TotalFiles,
						agent.HumanBytes(r.Record.TotalBytes), agent.HumanBytes(r.Record.BytesAdded), shortIDs(strings.Join(agent.SnapshotIDs(r.Record), ",")))
					if r.Catalog.Spooled {
						status += " (catalog record spooled)"
					}
				}
				if !quietFlag(cmd) || failed > 0 {
					fmt.Fprintf(cmd.OutOrStdout(), "%s/%s  %s\n", r.Source, r.Dataset, status)
				}
			}
			if n := env.catalog.Store.SpoolDepth(); n > 0 {
				fmt.Fprintf(cmd.OutOrStdout(), "%d catalog record(s) wait in the spool (%s) until the catalog answers; the next backup or the agent writes them, and find shows those backups only then\n",
					n, agent.CLISpoolDir(env.cm.Current().Config))
			}
			if failed > 0 {
				return fmt.Errorf("%d of %d dataset(s) failed", failed, len(results))
			}
			return nil
		},
	}
	configFlag(cmd, &path)
	cmd.Flags().StringVar(&source, "source", "", "only this source")
	cmd.Flags().StringVar(&dataset, "dataset", "", "only this dataset of --source")
	return cmd
}

func shortIDs(ids string) string {
	parts := strings.Split(ids, ",")
	for i, p := range parts {
		if len(p) > 8 {
			parts[i] = p[:8]
		}
	}
	return strings.Join(parts, ",")
}

// parseOlderThan accepts a duration back from now ("24h") or a time
// (RFC 3339, or a date "2006-01-02").
func parseOlderThan(s string, now time.Time) (time.Time, error) {
	if s == "" {
		return time.Time{}, nil
	}
	if d, err := time.ParseDuration(s); err == nil {
		if d < 0 {
			return time.Time{}, fmt.Errorf("--older-than %q: a duration back from now cannot be negative", s)
		}
		return now.Add(-d), nil
	}
	if t, err := time.Parse(time.RFC3339, s); err == nil {
		return t, nil
	}
	if t, err := time.ParseInLocation("2006-01-02", s, time.Local); err == nil {
		return t, nil
	}
	return time.Time{}, fmt.Errorf("--older-than %q: give a duration back from now (24h, 90m) or a time (2006-01-02T15:04:05Z07:00 or 2006-01-02)", s)
}

func newFindCmd() *cobra.Command {
	var path, host, olderThan string
	var versions int
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "find PATTERN",
		Short: "List backed-up atoms matching a pattern (source/dataset/atom, with * and ?)",
		Long: `List the versions of the atoms whose name source/dataset/atom matches
PATTERN ("*" does not cross "/"; "src" or "src/*" means all of source src;
"*" alone means everything). Newest first, --versions per atom. Works whether
or not the agent is running.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			before, err := parseOlderThan(olderThan, time.Now())
			if err != nil {
				return err
			}
			if versions < 1 {
				return fmt.Errorf("--versions must be at least 1")
			}
			ctx := cmd.Context()
			req := metadata.FindRequest{Pattern: args[0], Host: host, NumVersions: versions, OlderThan: before}
			atoms, err := findViaAgent(ctx, path, req)
			// env is the catalog: the running agent's, reached only for
			// the replica records (where each version is held), or one
			// opened here when no agent answered the find.
			var env *cliEnv
			if err != nil {
				if env, err = openCLIReadOnly(ctx, path, slog.LevelWarn); err != nil {
					return err
				}
				found, err := env.catalog.Store.FindVersions(ctx, req)
				if err != nil {
					env.Close()
					return fmt.Errorf("find %q: %w", args[0], err)
				}
				atoms = agent.Entries(found)
			} else if env, err = openCLIReadOnly(ctx, path, slog.LevelWarn); err != nil {
				env = nil
			}
			if env != nil {
				if err := env.mgr.AddHoldings(ctx, atoms); err != nil {
					fmt.Fprintf(cmd.ErrOrStderr(), "warning: where the versions are held is unknown: %v\n", err)
				}
				env.Close()
			}
			out := cmd.OutOrStdout()
			if asJSON {
				enc := json.NewEncoder(out)
				enc.SetIndent("", "  ")
				return enc.Encode(atoms)
			}
			if len(atoms) == 0 {
				fmt.Fprintf(cmd.ErrOrStderr(), "no atom matches %q\n", args[0])
				return nil
			}
			return printAtoms(out, atoms)
		},
	}
	configFlag(cmd, &path)
	cmd.Flags().StringVar(&host, "host", "", "only versions written by this host (default: all hosts)")
	cmd.Flags().IntVar(&versions, "versions", 1, "versions per atom, newest first")
	cmd.Flags().StringVar(&olderThan, "older-than", "", "only versions older than this: a duration (24h) or a time (RFC 3339)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

// printAtoms prints the table of find. Not text/tabwriter: it takes half
// a second for 100,000 lines.
func printAtoms(out io.Writer, atoms []agent.BackupEntry) error {
	header := []string{"ATOM", "TIME", "HOST", "BACKUP", "HANDLER", "REPOSITORY", "SNAPSHOT", "HELD IN"}
	rows := make([][8]string, len(atoms))
	width := make([]int, len(header))
	for i, h := range header {
		width[i] = len(h)
	}
	var lastT time.Time
	var lastTS string
	for i, a := range atoms {
		if !a.Time.Equal(lastT) || lastTS == "" {
			lastT, lastTS = a.Time, a.Time.Local().Format("2006-01-02 15:04:05")
		}
		rows[i] = [8]string{a.Atom, lastTS, a.Host, a.BackupID, a.Handler, a.Repository, shortIDs(a.SnapshotID), strings.Join(a.HeldIn, ",")}
		for j, c := range rows[i] {
			width[j] = max(width[j], utf8.RuneCountInString(c))
		}
	}
	w := bufio.NewWriterSize(out, 256<<10)
	pad := strings.Repeat(" ", slices.Max(width)+2)
	line := func(cells []string) {
		for j, c := range cells {
			w.WriteString(c)
			if j < len(cells)-1 {
				w.WriteString(pad[:width[j]+2-utf8.RuneCountInString(c)])
			}
		}
		w.WriteByte('\n')
	}
	line(header)
	for i := range rows {
		line(rows[i][:])
	}
	return w.Flush()
}

// findTimeout bounds a find through the agent (100,000 atoms take well
// under a second).
const findTimeout = 2 * time.Minute

// findViaAgent asks the running agent, which answers finds from memory,
// instead of opening the catalog in this process. Any error (no agent, an
// agent that does not answer or refuses) means: open the catalog here,
// which gives the same answer or says what is wrong.
func findViaAgent(ctx context.Context, path string, req metadata.FindRequest) ([]agent.BackupEntry, error) {
	cfg, err := agent.LoadConfig(path)
	if err != nil {
		return nil, err
	}
	addr := agent.RunningAgentAddr(cfg.WorkDir)
	if addr == "" {
		return nil, errors.New("no agent runs")
	}
	ac := newAgentClient(cfg)
	ac.listen, ac.limit = addr, 4<<30
	q := url.Values{"pattern": {req.Pattern}, "versions": {strconv.Itoa(max(req.NumVersions, 1))}, "runs": {"1"}}
	if req.Host != "" {
		q.Set("host", req.Host)
	}
	if !req.OlderThan.IsZero() {
		q.Set("older_than", req.OlderThan.Format(time.RFC3339Nano))
	}
	ctx, cancel := context.WithTimeout(ctx, findTimeout)
	defer cancel()
	body, err := ac.call(ctx, http.MethodGet, "/api/backups?"+q.Encode(), "custos agent -c "+path)
	if err != nil {
		return nil, err
	}
	var runs []agent.EntryRun
	if err := json.Unmarshal(body, &runs); err != nil {
		return nil, fmt.Errorf("agent at %s: the find answer is not JSON: %w", addr, err)
	}
	for _, r := range runs {
		if len(r.Atoms) == 0 {
			// An agent from before runs answers with plain entries.
			return nil, fmt.Errorf("agent at %s does not group find answers", addr)
		}
	}
	return agent.Expand(runs), nil
}

// fallbackNote says where an atom was restored from when that is a
// replica standing in for the dataset's own copy.
func fallbackNote(a agent.RestoredAtom) string {
	if a.Fallback == "" {
		return ""
	}
	return " from replica " + a.Repository + ": " + a.Fallback
}

func newRestoreCmd() *cobra.Command {
	var path, host, olderThan, target, repository string
	var toStdout, viaAgent bool
	cmd := &cobra.Command{
		Use:   "restore PATTERN --target DIR",
		Short: "Restore the newest version of every atom matching a pattern",
		Long: `Restore the newest version (or the newest older than --older-than) of every
atom matching PATTERN. Each dataset goes into DIR/<source>/<dataset>/: file
atoms as their paths under the source root, pipe atoms through the source's
restore_command (with CUSTOS_RESTORE_TARGET set to that folder), or to
standard output with --stdout. pre/post_restore_command run around each
dataset. Only this host's backups unless --host is given ("*" = any host).
With --via-agent the running agent does the restore as a job on its restore
queue (at its priority, in a worker process), and this command follows its
progress; Ctrl-C cancels the job.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			before, err := parseOlderThan(olderThan, time.Now())
			if err != nil {
				return err
			}
			if target == "" && !toStdout {
				return errors.New("say where to restore to: --target DIR (or --stdout for pipe atoms)")
			}
			if target != "" {
				if target, err = filepath.Abs(target); err != nil {
					return err
				}
			}
			ctx := cmd.Context()
			if viaAgent {
				if toStdout {
					return errors.New("--stdout cannot go through the agent: restore in this process instead (without --via-agent)")
				}
				return restoreViaAgent(ctx, path, agent.JobRequest{Kind: "restore", Pattern: args[0], Host: host, OlderThan: before, Target: target, Repository: repository},
					cmd.ErrOrStderr(), quietFlag(cmd))
			}
			env, err := openCLI(ctx, path, false, slog.LevelWarn)
			if err != nil {
				return err
			}
			defer env.Close()
			req := agent.RestoreRequest{Pattern: args[0], Host: host, OlderThan: before, Target: target, Repository: repository}
			if toStdout {
				req.Stdout = cmd.OutOrStdout()
			}
			done, err := env.mgr.Restore(ctx, req)
			for _, a := range done {
				// A fallback is said even with --quiet: the operator
				// learns that a copy is damaged or unreachable.
				if !quietFlag(cmd) || err != nil || a.Fallback != "" {
					fmt.Fprintf(cmd.ErrOrStderr(), "restored %s (backup %s, %s) -> %s%s\n", a.Name, a.BackupID, a.Time.Local().Format("2006-01-02 15:04:05"), a.Target, fallbackNote(a))
				}
			}
			return err
		},
	}
	configFlag(cmd, &path)
	cmd.Flags().StringVar(&target, "target", "", "folder to restore into (created if missing)")
	cmd.Flags().StringVar(&host, "host", "", `restore backups of this host (default: this host; "*" = any)`)
	cmd.Flags().StringVar(&olderThan, "older-than", "", "restore the newest version older than this: a duration (24h) or a time (RFC 3339)")
	cmd.Flags().BoolVar(&toStdout, "stdout", false, "write pipe atoms to standard output instead of running restore_command")
	cmd.Flags().BoolVar(&viaAgent, "via-agent", false, "run the restore as a job of the running agent (its restore queue and priority) and follow it")
	cmd.Flags().StringVar(&repository, "repository", "", "restore from this repository (the dataset's own or a replica); default: its own, or a replica when that copy cannot be used")
	return cmd
}
