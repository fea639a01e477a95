package main

import (
	"fmt"
	"io"
	"os"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/custos-backup/custos/repository"
)

// newRepoLsCmd lists the files of one snapshot, as restic ls does.
func newRepoLsCmd(f *repoFlags) *cobra.Command {
	var (
		recursive bool
		asJSON    bool
		sf        snapFilter
	)
	cmd := &cobra.Command{
		Use:   "ls SNAPSHOT [PATH]",
		Short: "List the files of a snapshot (latest or an id prefix)",
		Long: `List the files of a snapshot: "latest" (of --dataset/--host) or a unique
prefix of its id. With PATH, only that folder. --recursive lists everything
below it.`,
		Args: cobra.RangeArgs(1, 2),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			r, err := f.openReading(ctx)
			if err != nil {
				return err
			}
			defer r.Close()
			snap, err := r.FindSnapshot(ctx, args[0], sf.dataset, sf.host)
			if err != nil {
				return err
			}
			dir := ""
			if len(args) == 2 {
				dir = args[1]
			}
			p := newEntryPrinter(cmd.OutOrStdout(), asJSON, false)
			if err := r.List(ctx, snap, dir, recursive, func(e repository.Entry) error { return p.print(snap, e) }); err != nil {
				return err
			}
			return p.done()
		},
	}
	cmd.Flags().BoolVarP(&recursive, "recursive", "R", false, "list the whole tree below PATH")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON lines, one entry each")
	cmd.Flags().StringVar(&sf.dataset, "dataset", "", "with latest: the newest snapshot of this dataset")
	cmd.Flags().StringVar(&sf.host, "host", "", "with latest: the newest snapshot of this host")
	return cmd
}

// newRepoFindCmd looks for files by name in every snapshot.
func newRepoFindCmd(f *repoFlags) *cobra.Command {
	var (
		asJSON bool
		sf     snapFilter
	)
	cmd := &cobra.Command{
		Use:   "find PATTERN",
		Short: "Find files by name or path in snapshots",
		Long: `Find files whose name or whole path (relative to the snapshot's root)
matches PATTERN (a glob: *, ?, [...]) in every snapshot, or those selected
by --dataset, --host and --tag, oldest snapshot first.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			r, err := f.openReading(ctx)
			if err != nil {
				return err
			}
			defer r.Close()
			snaps, damaged, err := r.ListSnapshots(ctx)
			if err != nil {
				return fmt.Errorf("listing snapshots: %w", err)
			}
			p := newEntryPrinter(cmd.OutOrStdout(), asJSON, true)
			for _, s := range snaps {
				if !sf.match(s) {
					continue
				}
				if err := r.Find(ctx, s, args[0], func(e repository.Entry) error { return p.print(s, e) }); err != nil {
					return err
				}
			}
			if err := p.done(); err != nil {
				return err
			}
			if p.n == 0 && !asJSON {
				fmt.Fprintf(os.Stderr, "no file matches %q\n", args[0])
			}
			return damagedSnapshotsError(damaged)
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON lines, one match each")
	sf.register(cmd)
	return cmd
}

// entryPrinter prints entries as a table or as JSON lines.
type entryPrinter struct {
	w        io.Writer
	tw       *tabwriter.Writer
	asJSON   bool
	withSnap bool
	n        int
}

func newEntryPrinter(w io.Writer, asJSON, withSnap bool) *entryPrinter {
	return &entryPrinter{w: w, tw: tabwriter.NewWriter(w, 0, 4, 2, ' ', 0), asJSON: asJSON, withSnap: withSnap}
}

func (p *entryPrinter) print(s *repository.Snapshot, e repository.Entry) error {
	p.n++
	if p.asJSON {
		type line struct {
			Snapshot string `json:"snapshot"`
			Dataset  string `json:"dataset"`
			repository.Entry
		}
		return writeJSONLine(p.w, line{Snapshot: s.ID.String(), Dataset: s.Dataset, Entry: e})
	}
	name := e.Path
	if e.Type == "dir" {
		name += "/"
	}
	if e.LinkTarget != "" {
		name += " -> " + e.LinkTarget
	}
	snap := ""
	if p.withSnap {
		snap = s.ID.Short() + "\t" + s.Dataset + "\t"
	}
	_, err := fmt.Fprintf(p.tw, "%s%s\t%s\t%d\t%s\t%s\n", snap, os.FileMode(e.Mode&0o777), e.Type, e.Size, e.MTime.Local().Format("2006-01-02 15:04:05"), name)
	return err
}

func (p *entryPrinter) done() error { return p.tw.Flush() }
