package main

import (
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/custos-backup/custos/agent"
	"github.com/custos-backup/custos/repository"
	"github.com/spf13/cobra"
)

func newRepoCheckCmd(f *repoFlags) *cobra.Command {
	var (
		readData bool
		budget   string
		cursor   string
		asJSON   bool
	)
	cmd := &cobra.Command{
		Use:   "check",
		Short: "Verify the repository's structure, and with --read-data every byte",
		Long: `Verify the repository.

Without --read-data: config, keys, index and snapshot files decrypt and match
their names, every tree referenced by a snapshot is readable, every blob a
tree references is in the index, and every indexed pack exists with the
right size.

With --read-data, packs are also read: the pack's SHA-256 must equal its
name, and every blob must decrypt, decompress and hash to its id.
--budget BYTES (e.g. 100M, 2G) stops after about that much pack data and
prints a cursor; pass it with --cursor to continue in the next run. Packs
are visited in a stable (sorted) order.

Every damaged object is named together with the snapshots and files that
depend on it. The command exits non-zero when it finds a problem.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			opts := repository.CheckOptions{ReadData: readData, Cursor: cursor}
			if budget != "" {
				b, err := parseSize(budget)
				if err != nil {
					return fmt.Errorf("--budget: %w", err)
				}
				opts.Budget = b
				opts.ReadData = true
			}
			r, err := f.openMode(ctx, indexNone)
			if err != nil {
				return err
			}
			defer r.Close()
			tuneMemory()
			res, err := r.Check(ctx, opts)
			if err != nil {
				return fmt.Errorf("check could not run: %w", err)
			}
			w := cmd.OutOrStdout()
			if asJSON {
				if err := writeJSON(w, res); err != nil {
					return err
				}
			} else {
				printCheck(w, res)
			}
			if len(res.Problems) > 0 {
				return fmt.Errorf("check found %d problem(s)", len(res.Problems))
			}
			return nil
		},
	}
	fl := cmd.Flags()
	fl.BoolVar(&readData, "read-data", false, "read and verify all pack data")
	fl.StringVar(&budget, "budget", "", "read at most about this much pack data (implies --read-data), e.g. 100M")
	fl.StringVar(&cursor, "cursor", "", "continue a budgeted check from this cursor")
	fl.BoolVar(&asJSON, "json", false, "print the result as JSON")
	return cmd
}

func printCheck(w io.Writer, res *repository.CheckResult) {
	for _, p := range res.Problems {
		label := "DAMAGED"
		if p.Kind == repository.ProblemUnindexedPack {
			label = "UNINDEXED"
		}
		fmt.Fprintf(w, "%s %s: %s\n", label, p.Object, p.Err)
		if len(p.Blobs) > 0 {
			fmt.Fprintf(w, "  blobs: %s\n", strings.Join(shorten(p.Blobs, 10), " "))
		}
		if len(p.Snapshots) > 0 {
			fmt.Fprintf(w, "  snapshots: %s\n", strings.Join(shorten(p.Snapshots, 20), " "))
		}
		for _, path := range shorten(p.Paths, 50) {
			fmt.Fprintf(w, "  file: %s\n", path)
		}
	}
	fmt.Fprintf(w, "checked %d packs, read %s", res.PacksChecked, agent.HumanBytes(res.BytesRead))
	if res.Cursor != "" {
		fmt.Fprintf(w, "; pass incomplete, continue with --cursor %s", res.Cursor)
	}
	fmt.Fprintln(w)
	if len(res.Problems) == 0 {
		fmt.Fprintln(w, "no problems found")
	}
}

// shorten keeps the first n items of a long list and says how many it left out.
func shorten(s []string, n int) []string {
	if len(s) <= n {
		return s
	}
	out := append([]string(nil), s[:n]...)
	return append(out, fmt.Sprintf("(and %d more)", len(s)-n))
}

func newRepoCopyCmd(f *repoFlags) *cobra.Command {
	var (
		to, toPasswordFile string
		sf                 snapFilter
	)
	cmd := &cobra.Command{
		Use:   "copy --to URL [flags] [SNAPSHOT...]",
		Short: "Copy snapshots into another repository",
		Long: `Copy snapshots into another (already initialised) repository.

Only blobs the destination lacks are sent; they are re-encrypted with the
destination's keys. Snapshots already present in the destination are
skipped, and an interrupted copy resumes without re-sending what the
destination already holds. Without SNAPSHOT arguments (id prefixes), every
snapshot matching --dataset, --host and --tag is copied.

The destination's password comes from --to-password-file, else the file
named by CUSTOS_TO_PASSWORD_FILE, else CUSTOS_TO_PASSWORD.`,
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			if to == "" {
				return errors.New("--to URL is required")
			}
			src, err := f.open(ctx)
			if err != nil {
				return err
			}
			defer src.Close()
			pw, err := findPassword(toPasswordFile, "CUSTOS_TO_PASSWORD_FILE", "CUSTOS_TO_PASSWORD", "destination repository password", true)
			if err != nil {
				return err
			}
			dst, err := openRepo(ctx, to, f.locationOptions(), pw, "--to-password-file, CUSTOS_TO_PASSWORD_FILE or CUSTOS_TO_PASSWORD", indexStrict)
			if err != nil {
				return err
			}
			defer dst.Close()
			dst.SetConnections(f.connections)
			var snaps []*repository.Snapshot
			if len(args) > 0 {
				for _, a := range args {
					s, err := src.FindSnapshot(ctx, a, sf.dataset, sf.host)
					if err != nil {
						return fmt.Errorf("finding snapshot %q: %w", a, err)
					}
					snaps = append(snaps, s)
				}
			} else {
				all, err := src.Snapshots(ctx)
				if err != nil {
					return fmt.Errorf("listing snapshots: %w", err)
				}
				for _, s := range all {
					if sf.match(s) {
						snaps = append(snaps, s)
					}
				}
			}
			if len(snaps) == 0 {
				fmt.Fprintln(cmd.OutOrStdout(), "no snapshots to copy")
				return nil
			}
			bar := newProgressBar("copy", f.quiet)
			st, err := repository.Copy(ctx, src, dst, snaps, bar.Update)
			bar.Done()
			if st != nil {
				fmt.Fprintf(cmd.OutOrStdout(), "copied %d snapshots to %s: %d blobs, %s sent\n",
					st.Snapshots, to, st.BlobsCopied, agent.HumanBytes(st.BytesCopied))
			}
			if err != nil {
				return fmt.Errorf("copy to %s failed (run it again to resume): %w", to, err)
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&to, "to", "", "destination repository URL")
	cmd.Flags().StringVar(&toPasswordFile, "to-password-file", "", "file holding the destination password (default $CUSTOS_TO_PASSWORD_FILE, then $CUSTOS_TO_PASSWORD)")
	sf.register(cmd)
	return cmd
}

func newRepoForgetCmd(f *repoFlags) *cobra.Command {
	var (
		p              repository.RetentionPolicy
		dryRun, prune  bool
		asJSON         bool
		confirmAllGone bool
		pf             pruneFlags
	)
	cmd := &cobra.Command{
		Use:   "forget",
		Short: "Remove snapshots that a retention policy does not keep",
		Long: `Remove snapshots that the retention policy does not keep.

Snapshots are grouped by (dataset, host); the snapshots of one backup (a
dataset stored as one snapshot per atom) count as one and are kept or
removed together. In each group a snapshot is kept if any rule keeps it: --keep-last N keeps the N newest; --keep-hourly N
keeps the newest snapshot of each of the N latest hours that have one, and
likewise daily, weekly, monthly and yearly (local time). Only snapshot
files are removed; run prune (or pass --prune, which takes prune's
--max-unused and --max-repack-size) to free the data.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			if p == (repository.RetentionPolicy{}) && !confirmAllGone {
				return errors.New("no --keep-* option given: that would remove every snapshot (refusing)")
			}
			// Bad prune flags must stop forget before it removes anything.
			popts, err := pf.options()
			if err != nil {
				return err
			}
			r, err := f.open(ctx)
			if err != nil {
				return err
			}
			defer r.Close()
			keep, remove, err := r.Forget(ctx, p, dryRun)
			if err != nil {
				return fmt.Errorf("forget: %w", err)
			}
			w := cmd.OutOrStdout()
			pruneNow := prune && !dryRun && len(remove) > 0
			if asJSON {
				// One JSON document: prune runs first so that its
				// results are part of it.
				var st *repository.PruneStats
				var perr error
				if pruneNow {
					st, perr = r.Prune(ctx, popts)
				}
				out := struct {
					DryRun bool                   `json:"dry_run"`
					Keep   []snapshotOut          `json:"keep"`
					Remove []snapshotOut          `json:"remove"`
					Prune  *repository.PruneStats `json:"prune,omitempty"`
				}{DryRun: dryRun, Keep: []snapshotOut{}, Remove: []snapshotOut{}, Prune: st}
				for _, s := range keep {
					out.Keep = append(out.Keep, snapshotJSON(s))
				}
				for _, s := range remove {
					out.Remove = append(out.Remove, snapshotJSON(s))
				}
				if err := writeJSON(w, out); err != nil {
					return err
				}
				if perr != nil {
					return fmt.Errorf("prune: %w", perr)
				}
				return nil
			}
			tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ACTION\tID\tTIME\tDATASET\tHOST")
			for _, s := range keep {
				fmt.Fprintf(tw, "keep\t%s\t%s\t%s\t%s\n", s.ID.Short(), s.Time.Local().Format("2006-01-02 15:04:05"), s.Dataset, s.Host)
			}
			verb := "remove"
			if dryRun {
				verb = "would remove"
			}
			for _, s := range remove {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", verb, s.ID.Short(), s.Time.Local().Format("2006-01-02 15:04:05"), s.Dataset, s.Host)
			}
			if err := tw.Flush(); err != nil {
				return err
			}
			fmt.Fprintf(w, "%d kept, %d %s\n", len(keep), len(remove), map[bool]string{true: "would be removed", false: "removed"}[dryRun])
			if pruneNow {
				st, err := r.Prune(ctx, popts)
				if err != nil {
					return fmt.Errorf("prune: %w", err)
				}
				printPrune(w, st, &pf)
			}
			return nil
		},
	}
	fl := cmd.Flags()
	fl.IntVar(&p.Last, "keep-last", 0, "keep the N newest snapshots")
	fl.IntVar(&p.Hourly, "keep-hourly", 0, "keep the newest snapshot of each of the last N hours")
	fl.IntVar(&p.Daily, "keep-daily", 0, "keep the newest snapshot of each of the last N days")
	fl.IntVar(&p.Weekly, "keep-weekly", 0, "keep the newest snapshot of each of the last N weeks")
	fl.IntVar(&p.Monthly, "keep-monthly", 0, "keep the newest snapshot of each of the last N months")
	fl.IntVar(&p.Yearly, "keep-yearly", 0, "keep the newest snapshot of each of the last N years")
	fl.BoolVarP(&dryRun, "dry-run", "n", false, "only print what would be removed")
	fl.BoolVar(&prune, "prune", false, "prune unreferenced data afterwards")
	fl.BoolVar(&asJSON, "json", false, "print JSON")
	fl.BoolVar(&confirmAllGone, "remove-all", false, "allow a policy without --keep-* options, which removes every snapshot")
	pf.register(cmd)
	return cmd
}

// pruneFlags are the flags prune and forget --prune share.
type pruneFlags struct {
	maxUnused string
	maxRepack string
}

func (pf *pruneFlags) register(cmd *cobra.Command) {
	fl := cmd.Flags()
	fl.StringVar(&pf.maxUnused, "max-unused", fmt.Sprintf("%g%%", repository.DefaultMaxUnused*100), "unused data to tolerate in partly used packs, as a percentage of the data left (0% rewrites them all, unlimited rewrites none)")
	fl.StringVar(&pf.maxRepack, "max-repack-size", "unlimited", "copy at most this much used data into new packs in one run, e.g. 1GiB")
}

// options parses the flags; errors name the flag.
func (pf *pruneFlags) options() (repository.PruneOptions, error) {
	var o repository.PruneOptions
	mu, err := parseMaxUnused(pf.maxUnused)
	if err != nil {
		return o, fmt.Errorf("--max-unused: %w", err)
	}
	o.MaxUnused = mu
	if v := strings.TrimSpace(pf.maxRepack); !strings.EqualFold(v, "unlimited") {
		n, err := parseSize(v)
		if err != nil {
			return o, fmt.Errorf("--max-repack-size: %w", err)
		}
		if n <= 0 {
			// 0 is the library's "no limit"; a user writing 0 means the
			// opposite, so make them say which.
			return o, fmt.Errorf("--max-repack-size: %q is not a limit (want e.g. 500M or 1GiB, or unlimited)", pf.maxRepack)
		}
		o.MaxRepackBytes = n
	}
	return o, nil
}

// parseMaxUnused reads a percentage from 0% to 100% ("2.5%" works) or
// "unlimited" (= 100%) as a fraction. A bare number is refused: "5" and
// "0.05" are both plausible readings of it.
func parseMaxUnused(s string) (float64, error) {
	t := strings.TrimSpace(s)
	if strings.EqualFold(t, "unlimited") {
		return 1, nil
	}
	num, ok := strings.CutSuffix(t, "%")
	if ok {
		v, err := strconv.ParseFloat(strings.TrimSpace(num), 64)
		if err == nil && v >= 0 && v <= 100 {
			return v / 100, nil
		}
	}
	return 0, fmt.Errorf("bad value %q (want a percentage from 0%% to 100%%, e.g. 5%%, or unlimited)", s)
}

func printPrune(w io.Writer, st *repository.PruneStats, pf *pruneFlags) {
	fmt.Fprintf(w, "prune: %d packs deleted, %d packs rewritten (%s copied), %s freed\n",
		st.PacksDeleted, st.PacksRewritten, agent.HumanBytes(st.BytesRepacked), agent.HumanBytes(st.BytesFreed))
	if st.PacksKeptPartlyUsed > 0 {
		limits := "--max-unused " + strings.TrimSpace(pf.maxUnused)
		if v := strings.TrimSpace(pf.maxRepack); !strings.EqualFold(v, "unlimited") {
			limits += ", --max-repack-size " + v
		}
		fmt.Fprintf(w, "prune: kept %d partly used packs holding %s of unused data (%s)\n",
			st.PacksKeptPartlyUsed, agent.HumanBytes(st.UnusedBytesKept), limits)
	}
}

func newRepoPruneCmd(f *repoFlags) *cobra.Command {
	var asJSON bool
	var pf pruneFlags
	cmd := &cobra.Command{
		Use:   "prune",
		Short: "Delete data no snapshot references",
		Long: `Delete data that no snapshot references. Packs without any referenced
blob are always deleted. Packs that are only partly unreferenced must be
rewritten (their used blobs copied into new packs) to free the rest, which
costs I/O; prune rewrites only as many as it takes to bring the unused data
left in kept packs down to --max-unused of the data left, taking first the
packs that free the most per byte copied, and copies at most
--max-repack-size per run. --max-unused 0% rewrites every partly used
pack; --max-unused unlimited only deletes wholly unused packs.

Data that a backup running at the same time may still reference is left
for a later prune.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			opts, err := pf.options()
			if err != nil {
				return err
			}
			r, err := f.open(ctx)
			if err != nil {
				return err
			}
			defer r.Close()
			st, err := r.Prune(ctx, opts)
			if err != nil {
				return fmt.Errorf("prune: %w", err)
			}
			if asJSON {
				return writeJSON(cmd.OutOrStdout(), st)
			}
			printPrune(cmd.OutOrStdout(), st, &pf)
			return nil
		},
	}
	pf.register(cmd)
	cmd.Flags().BoolVar(&asJSON, "json", false, "print what was removed as JSON")
	return cmd
}

func newRepoUnlockCmd(f *repoFlags) *cobra.Command {
	var all bool
	cmd := &cobra.Command{
		Use:   "unlock [--remove-all]",
		Short: "Remove locks left by processes that are gone",
		Long: `Remove stale repository locks: those not refreshed for 30 minutes and
those of processes of this host that no longer run (killed or crashed).
Stale locks block nothing, so this only tidies up; prune does it too.

--remove-all removes every lock, also those of processes that may still
run. Use it only when you know no other custos uses the repository: a
backup or prune whose lock is removed keeps running unprotected.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			r, err := f.openReading(ctx)
			if err != nil {
				return err
			}
			defer r.Close()
			remove := r.RemoveStaleLocks
			if all {
				remove = r.RemoveAllLocks
			}
			n, err := remove(ctx)
			if err != nil {
				return fmt.Errorf("unlock: %w", err)
			}
			if !f.quiet {
				fmt.Fprintf(cmd.OutOrStdout(), "removed %d lock(s)\n", n)
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&all, "remove-all", false, "remove every lock, not only stale ones")
	return cmd
}

func newRepoStatsCmd(f *repoFlags) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "stats",
		Short: "Show repository totals",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			r, err := f.openReading(ctx)
			if err != nil {
				return err
			}
			defer r.Close()
			st, err := r.Stats(ctx)
			if err != nil {
				return fmt.Errorf("stats: %w", err)
			}
			w := cmd.OutOrStdout()
			if asJSON {
				return writeJSON(w, st)
			}
			ratio := 0.0
			if st.PackBytes > 0 {
				ratio = float64(st.LogicalBytes) / float64(st.PackBytes)
			}
			fmt.Fprintf(w, "snapshots:     %d\n", st.Snapshots)
			fmt.Fprintf(w, "packs:         %d\n", st.Packs)
			fmt.Fprintf(w, "blobs:         %d\n", st.Blobs)
			fmt.Fprintf(w, "stored size:   %s\n", agent.HumanBytes(st.PackBytes))
			fmt.Fprintf(w, "logical size:  %s (all snapshots)\n", agent.HumanBytes(st.LogicalBytes))
			fmt.Fprintf(w, "space saving:  %.2fx\n", ratio)
			fmt.Fprintf(w, "chunker:       %s\n", st.Chunker)
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}
