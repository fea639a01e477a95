package main

import (
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/custos-backup/custos/agent"
)

// runnableGroup marks a command that has subcommands and also runs on its
// own (failOnUnknownSubcommands leaves its RunE alone).
const runnableGroup = "runnable_group"

func newFixityCmd() *cobra.Command {
	var path, repo string
	var all, deep, asJSON bool
	cmd := &cobra.Command{
		Use:   "fixity",
		Short: "Prove that stored packs are intact, heal damage from replicas, and exit",
		Long: `Verify the packs of each repository with a fixity setting (or of --repository)
that were verified least recently, within the repository's budget (--all: every
pack). Every verdict is recorded in the catalog. A damaged pack is read again,
named down to its snapshots, atoms and paths, and healed from another
repository that holds good copies of its blobs. --deep also re-derives every
file's SHA-256 from its blobs and compares it with the digest recorded at
ingest. Exits 0 when everything verified or was healed, 1 when damage remains.`,
		Args:        cobra.NoArgs,
		Annotations: map[string]string{runnableGroup: "true"},
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			env, err := openCLI(ctx, path, false, slog.LevelWarn)
			if err != nil {
				return err
			}
			defer env.Close()
			runs, err := agent.FixityNow(ctx, env.mgr, env.cm.Current(), repo, agent.FixityOptions{All: all, Deep: deep})
			out := cmd.OutOrStdout()
			if asJSON {
				if runs == nil {
					runs = []*agent.FixityRun{}
				}
				if jerr := writeIndentedJSON(out, runs); jerr != nil {
					return jerr
				}
				return err
			}
			for _, r := range runs {
				fmt.Fprintf(out, "%s: %d of %d pack(s) verified, %s read", r.Repository, r.Verified, r.Packs, agent.HumanBytes(r.BytesRead))
				if r.Budget > 0 {
					fmt.Fprintf(out, " (budget %s)", agent.HumanBytes(r.Budget))
				}
				fmt.Fprintln(out)
				for _, d := range r.Damaged {
					state := "HEALED into " + shortIDs(strings.Join(d.HealedInto, ","))
					if !d.Healed {
						state = "NOT HEALED: " + d.HealError
					}
					fmt.Fprintf(out, "  damaged pack %s: %s\n    atoms: %s\n    paths: %s\n    %s\n", shortIDs(d.Pack), d.Error,
						strings.Join(d.Atoms, " "), strings.Join(d.Paths, " "), state)
				}
				for _, a := range r.Archived {
					fmt.Fprintf(out, "  archived pack %s (%s): %s", shortIDs(a.Pack), a.StorageClass, a.State)
					if a.Tier != "" {
						fmt.Fprintf(out, " (tier %s)", a.Tier)
					}
					if a.Error != "" {
						fmt.Fprintf(out, ": %s", a.Error)
					}
					fmt.Fprintln(out, "; a later run verifies it")
				}
				if r.Deep != nil {
					fmt.Fprintf(out, "  deep: %d file(s), %s, %d mismatch(es)\n", r.Deep.Files, agent.HumanBytes(r.Deep.Bytes), len(r.Deep.Problems))
					for _, p := range r.Deep.Problems {
						fmt.Fprintf(out, "    %s:%s: %s\n", shortIDs(p.Snapshot), p.Path, p.Err)
					}
				}
			}
			return err
		},
	}
	configFlag(cmd, &path)
	cmd.Flags().StringVar(&repo, "repository", "", "only this repository (default: every repository with a fixity setting)")
	cmd.Flags().BoolVar(&all, "all", false, "verify every pack, ignoring the budget")
	cmd.Flags().BoolVar(&deep, "deep", false, "also compare every file's SHA-256 with the digest recorded at ingest")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	cmd.AddCommand(newFixityReportCmd())
	return cmd
}

func newFixityReportCmd() *cobra.Command {
	var path string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "report [PATTERN]",
		Short: "Show when each repository and each dataset's copies were last proven intact",
		Args:  cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			pattern := "*"
			if len(args) == 1 {
				pattern = args[0]
			}
			ctx := cmd.Context()
			env, err := openCLI(ctx, path, false, slog.LevelWarn)
			if err != nil {
				return err
			}
			defer env.Close()
			rep, err := env.mgr.FixityReportFor(ctx, env.cm.Current(), pattern)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if asJSON {
				return writeIndentedJSON(out, rep)
			}
			tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "REPOSITORY\tPACKS\tVERIFIED IN PERIOD\tNEVER\tDAMAGED\tOLDEST VERIFICATION")
			for _, r := range rep.Repositories {
				if r.Error != "" {
					fmt.Fprintf(tw, "%s\t-\t-\t-\t-\tcannot open: %s\n", r.Repository, r.Error)
					continue
				}
				fmt.Fprintf(tw, "%s\t%d\t%d (%s)\t%d\t%d\t%s\n", r.Repository, r.Packs, r.VerifiedInTime, roundDur(r.Period), r.Never, r.Damaged, when(r.Oldest))
			}
			fmt.Fprintln(tw)
			fmt.Fprintln(tw, "DATASET\tBACKUP\tCOPY\tSNAPSHOTS\tREPLICATED\tPROVEN SINCE\tINTACT")
			for _, d := range rep.Datasets {
				for _, c := range d.Copies {
					replicated := "primary"
					if c.Replica {
						replicated = when(c.Copied)
					}
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%v\n", d.Dataset, d.BackupID, c.Repository, shortIDs(strings.Join(c.Snapshots, ",")), replicated, when(c.ProvenSince), c.Intact)
				}
			}
			return tw.Flush()
		},
	}
	configFlag(cmd, &path)
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func when(t time.Time) string {
	if t.IsZero() {
		return "never"
	}
	return t.Local().Format("2006-01-02 15:04:05")
}

func writeIndentedJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
