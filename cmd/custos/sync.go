package main

import (
	"fmt"
	"io"
	"log/slog"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/custos-backup/custos/agent"
)

func newSyncCmd() *cobra.Command {
	var (
		path         string
		report       bool
		asJSON       bool
		allowEmpty   bool
		repositories []string
	)
	cmd := &cobra.Command{
		Use:   "sync",
		Short: "Reconcile the catalog with the repositories, in this process",
		Long: `Reconcile the catalog with the repositories (repository to catalog):

  add      a dataset version whose snapshots a repository holds but the
           catalog does not (after the catalog was lost) is recorded again,
           rebuilt from its snapshots;
  remove   a record whose snapshots are all gone (after repo forget) is
           removed, so find stops listing what cannot be restored;
  rewrite  a record naming snapshots that are gone (one atom of a dataset
           stored per atom) or that belong to another version is rewritten
           from the snapshots the repository holds for it.

Only this host's records are touched. A second run changes nothing.
--report prints what it would change and changes nothing. A repository that
holds no snapshot at all while the catalog lists versions in it is refused
(a wrong url or an unmounted disk looks the same) unless --allow-empty.
Exits non-zero when a repository could not be read or a change failed.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			env, err := openCLI(ctx, path, false, slog.LevelWarn)
			if err != nil {
				return err
			}
			defer env.Close()
			res, err := env.mgr.Sync(ctx, env.cm.Current(), env.catalog.Store, agent.SyncOptions{Report: report, Repositories: repositories, AllowEmpty: allowEmpty})
			if res != nil {
				if asJSON {
					if werr := writeJSON(cmd.OutOrStdout(), res); werr != nil {
						return werr
					}
				} else {
					printSync(cmd.OutOrStdout(), res)
				}
			}
			if err != nil {
				return fmt.Errorf("sync: %w", err)
			}
			return nil
		},
	}
	configFlag(cmd, &path)
	fl := cmd.Flags()
	fl.BoolVar(&report, "report", false, "only print what the sync would change")
	fl.BoolVar(&asJSON, "json", false, "print JSON")
	fl.BoolVar(&allowEmpty, "allow-empty", false, "remove the records of a repository even when it holds no snapshot at all")
	fl.StringSliceVar(&repositories, "repository", nil, "only this repository (repeat for more; default: all)")
	return cmd
}

func printSync(w io.Writer, res *agent.SyncResult) {
	if len(res.Changes) > 0 {
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "ACTION\tDATASET\tBACKUP\tTIME\tREPOSITORY\tSNAPSHOTS\tWHY")
		for _, c := range res.Changes {
			action := c.Action
			switch {
			case res.Report:
				action = "would " + action
			case c.Skipped != "":
				action = "skipped " + action
			}
			why := c.Reason
			if c.Inexact != "" {
				why += "; not exact: " + c.Inexact
			}
			if c.Skipped != "" {
				why += "; skipped: " + c.Skipped
			}
			fmt.Fprintf(tw, "%s\t%s/%s\t%s\t%s\t%s\t%s\t%s\n", action, c.Source, c.Dataset, c.BackupID,
				c.Time.Local().Format("2006-01-02 15:04:05"), c.Repository, shortIDs(strings.Join(c.Snapshots, ",")), why)
		}
		_ = tw.Flush()
	}
	for _, n := range res.Notes {
		fmt.Fprintln(w, "note:", n)
	}
	count := func(action string) int {
		n := 0
		for _, c := range res.Changes {
			if c.Action == action && (res.Report || c.Done) {
				n++
			}
		}
		return n
	}
	verb := map[bool]string{true: "would be", false: "were"}[res.Report]
	fmt.Fprintf(w, "host %s, repositories %s: %d catalog version(s) and %d repository version(s) compared; %d %s added, %d removed, %d rewritten\n",
		res.Host, strings.Join(res.Repositories, ","), res.CatalogVersions, res.RepositoryVersions,
		count(agent.SyncAdd), verb, count(agent.SyncRemove), count(agent.SyncRewrite))
}
