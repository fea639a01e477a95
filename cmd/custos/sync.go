package main

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/custos-backup/custos/agent"
	"github.com/custos-backup/custos/metadata"
)

func newSyncCmd() *cobra.Command {
	var (
		path         string
		report       bool
		asJSON       bool
		allowEmpty   bool
		repositories []string
		peer         string
		full         bool
		clearReports bool
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
Then (not with --report) it removes the atom lists in the catalog that no
record names, left by catalog writes that crashed, once a sweep an hour or
more ago saw them already (the agent's sync job does the same), and prints
how many it removed.
--report prints what it would change and changes nothing. A repository that
holds no snapshot at all while the catalog lists versions in it is refused
(a wrong url or an unmounted disk looks the same) unless --allow-empty.
Exits non-zero when a repository could not be read or a change failed.

With --peer NAME it syncs with that peer site instead (site to site; the
peers: section of agent.yml): it pulls the records of the hosts the peer
owns that changed on either side since the last sync, and decides each from
three versions, initial (as the last sync left it), ours and the peer's:

  take      only the peer changed it: the peer's version is written here
            (or removed here, when the peer removed it);
  keep      only this site changed it: it stays, and is reported;
  conflict  both changed it: the peer's (the owner's) is taken, and both
            versions are reported.

Records of other hosts (this site's own) are never changed. Conflicts and
records kept are recorded in the catalog until --clear-reports; --report
prints them with what a sync would do now, and changes nothing. --full
compares every record instead of only those changed since the last sync.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			if peer == "" && (full || clearReports) {
				return errors.New("--full and --clear-reports go with --peer")
			}
			if peer != "" && (allowEmpty || repositories != nil) {
				return errors.New("--allow-empty and --repository are for the sync with the repositories, not with a peer")
			}
			env, err := openCLI(ctx, path, false, slog.LevelWarn)
			if err != nil {
				return err
			}
			defer env.Close()
			if peer != "" {
				return runPeerSync(cmd, env, peer, agent.PeerOptions{Report: report, Full: full, ClearReports: clearReports}, asJSON)
			}
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
			if !report {
				// The atom sets no record names (leftovers of crashed
				// writes), as the agent's sync job does.
				sw, serr := env.catalog.Store.SweepAtomSets(ctx, metadata.SweepOptions{MinAge: metadata.DefaultSweepAge})
				if serr != nil {
					err = errors.Join(err, fmt.Errorf("catalog sweep: %w", serr))
				} else if sw.Keys > 0 && !asJSON {
					fmt.Fprintf(cmd.OutOrStdout(), "catalog sweep: %d unused atom set(s) removed, %d key(s)\n", sw.Gens, sw.Keys)
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
	fl.StringVar(&peer, "peer", "", "sync with this peer site (agent.yml peers:) instead of the repositories")
	fl.BoolVar(&full, "full", false, "with --peer: compare every record, not only those changed since the last sync")
	fl.BoolVar(&clearReports, "clear-reports", false, "with --peer: forget the conflicts and kept records recorded so far")
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

func runPeerSync(cmd *cobra.Command, env *cliEnv, peer string, opts agent.PeerOptions, asJSON bool) error {
	ctx := cmd.Context()
	res, err := agent.SyncPeer(ctx, env.cm.Current().Config, env.catalog.Store, peer, opts, nil)
	if res != nil {
		if asJSON {
			if werr := writeJSON(cmd.OutOrStdout(), res); werr != nil {
				return werr
			}
		} else {
			printPeerSync(cmd.OutOrStdout(), res)
		}
	}
	if err != nil {
		return fmt.Errorf("sync with peer %s: %w", peer, err)
	}
	return nil
}

func printPeerSync(w io.Writer, res *metadata.PeerSyncResult) {
	version := func(v *metadata.PeerVersion) string {
		if v == nil || v.Dataset == nil {
			return "absent"
		}
		d, snap := v.Dataset, "-"
		if d.SnapshotID != "" {
			snap = shortIDs(d.SnapshotID)
		}
		return fmt.Sprintf("%s host %s repository %s snapshot %s %d atom(s) %d bytes", v.Digest[:min(8, len(v.Digest))], v.Host, d.Repository, snap, d.AtomCount, d.TotalBytes)
	}
	table := func(title string, cs []metadata.PeerChange, report bool) {
		if len(cs) == 0 {
			return
		}
		fmt.Fprintln(w, title)
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "ACTION\tDATASET\tBACKUP\tTIME\tOURS\tPEER'S\tNOTE")
		for _, c := range cs {
			action := string(c.Action)
			if c.Removes() {
				action = "remove"
			}
			switch {
			case report && c.Action != metadata.PeerKeep:
				action = "would " + action
			case c.Skipped != "":
				action = "skipped " + action
			}
			note := c.Skipped
			if !c.Detected.IsZero() {
				note = strings.TrimPrefix(note+"; detected "+c.Detected.Local().Format("2006-01-02 15:04:05"), "; ")
			}
			fmt.Fprintf(tw, "%s\t%s/%s\t%s\t%s\t%s\t%s\t%s\n", action, c.Source, c.Dataset, c.BackupID,
				c.Time.Local().Format("2006-01-02 15:04:05"), version(c.Current), version(c.Target), note)
		}
		_ = tw.Flush()
	}
	table("Changes:", res.Changes, res.Report)
	table("Recorded (conflicts and records kept; --clear-reports forgets them):", res.Recorded, false)
	verb := map[bool]string{true: "would be", false: "were"}[res.Report]
	from := fmt.Sprintf("changes since peer revision %d and own revision %d", res.PeerFrom, res.OwnFrom)
	if res.Full {
		from = "every record"
	}
	removed := 0
	for _, c := range res.Changes {
		if c.Removes() && (res.Report || c.Done) {
			removed++
		}
	}
	count := func(a metadata.PeerAction) int {
		n := 0
		for _, c := range res.Changes {
			if c.Action == a && !c.Removes() && (res.Report || c.Done || a == metadata.PeerKeep) {
				n++
			}
		}
		return n
	}
	fmt.Fprintf(w, "peer %s (%s): %d record(s) compared, %d in agreement; %d %s taken, %d removed, %d kept, %d conflict(s)\n",
		res.Peer, from, res.Compared, res.Agreed, count(metadata.PeerTake), verb, removed, count(metadata.PeerKeep), count(metadata.PeerConflict))
}
