package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime/debug"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/custos-backup/custos/agent"
	"github.com/custos-backup/custos/repository"
	"github.com/spf13/cobra"
)

func newRepoBackupCmd(f *repoFlags) *cobra.Command {
	var (
		dataset, host, stdinName string
		tags, excludes           []string
		stdin, noParent, asJSON  bool
	)
	cmd := &cobra.Command{
		Use:   "backup [flags] DIR [SUBPATH...]",
		Short: "Back up a directory (or standard input) into a snapshot",
		Long: `Back up a directory into a new snapshot.

DIR becomes the snapshot's root: the tree holds DIR's contents with paths
relative to DIR, and restore writes them below --target. Optional SUBPATHs
(relative to DIR, or absolute paths inside DIR) limit the backup to those
files and folders.

With --stdin, standard input is stored as one file called --stdin-name; if
reading it fails, no snapshot is recorded.

An unchanged file (same size, mtime, ctime and inode as in the latest
snapshot of the same --dataset and --host) is not read again.

To keep its peak memory low, a backup runs Go's garbage collector with
GOGC=25 unless the GOGC environment variable is set (GOMEMLIMIT is honoured
as well).`,
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			if host == "" {
				h, err := os.Hostname()
				if err != nil {
					return fmt.Errorf("finding the host name (give --host): %w", err)
				}
				host = h
			}
			if dataset == "" {
				return errors.New("--dataset is required")
			}
			if stdin && len(args) > 0 {
				return errors.New("--stdin takes no DIR argument")
			}
			if !stdin && len(args) == 0 {
				return errors.New("give the directory to back up (or --stdin)")
			}
			r, err := f.open(ctx)
			if err != nil {
				return err
			}
			defer r.Close()
			tuneMemory()
			bar := newProgressBar("backup", f.quiet)
			opts := repository.BackupOptions{
				Dataset:  dataset,
				Host:     host,
				Tags:     tags,
				NoParent: noParent,
				Excludes: excludes,
				Progress: bar.Update,
			}
			var snap *repository.Snapshot
			if stdin {
				if stdinName == "" {
					return errors.New("--stdin needs --stdin-name NAME")
				}
				snap, err = r.BackupStream(ctx, stdinName, os.Stdin, opts)
			} else {
				var root string
				var paths []string
				root, paths, err = backupPaths(args)
				if err != nil {
					return err
				}
				snap, err = r.Backup(ctx, root, paths, opts)
			}
			bar.Done()
			if err != nil {
				return fmt.Errorf("backup failed: %w", err)
			}
			if asJSON {
				err = writeJSON(cmd.OutOrStdout(), snapshotJSON(snap))
			} else {
				printBackupSummary(cmd.OutOrStdout(), snap)
			}
			if err == nil && snap.Summary.Skipped > 0 {
				err = withExitCode(exitPartial, fmt.Errorf("snapshot %s saved, but %d file(s) or folder(s) could not be read (see the warnings)", snap.ID.Short(), snap.Summary.Skipped))
			}
			return err
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&dataset, "dataset", "", "dataset name the snapshot belongs to (required)")
	fl.StringVar(&host, "host", "", "host name recorded in the snapshot (default: this machine's host name)")
	fl.StringArrayVar(&tags, "tag", nil, "tag for the snapshot (repeatable)")
	fl.StringArrayVar(&excludes, "exclude", nil, "exclude pattern on slash paths relative to DIR; without \"/\" it matches any base name (repeatable)")
	fl.BoolVar(&stdin, "stdin", false, "back up standard input as a single file")
	fl.StringVar(&stdinName, "stdin-name", "", "file name for --stdin")
	fl.BoolVar(&noParent, "force", false, "read every file, even ones unchanged since the parent snapshot")
	fl.BoolVar(&asJSON, "json", false, "print the new snapshot as JSON")
	return cmd
}

// backupPaths turns the command's arguments into a root and paths relative to
// it.
func backupPaths(args []string) (string, []string, error) {
	root, err := filepath.Abs(args[0])
	if err != nil {
		return "", nil, fmt.Errorf("resolving %s: %w", args[0], err)
	}
	fi, err := os.Stat(root)
	if err != nil {
		return "", nil, fmt.Errorf("backup source: %w", err)
	}
	if !fi.IsDir() {
		return "", nil, fmt.Errorf("backup source %s is not a directory (use --stdin for a single stream)", root)
	}
	var paths []string
	for _, a := range args[1:] {
		p := a
		if filepath.IsAbs(p) {
			rel, err := filepath.Rel(root, p)
			if err != nil || rel == ".." || strings.HasPrefix(rel, ".."+string(filepath.Separator)) {
				return "", nil, fmt.Errorf("%s is not inside %s", a, root)
			}
			p = rel
		}
		p = filepath.ToSlash(filepath.Clean(p))
		if p == ".." || strings.HasPrefix(p, "../") {
			return "", nil, fmt.Errorf("%s is not inside %s", a, root)
		}
		paths = append(paths, p)
	}
	return root, paths, nil
}

func printBackupSummary(w io.Writer, s *repository.Snapshot) {
	sm := s.Summary
	fmt.Fprintf(w, "snapshot %s saved (dataset %s, host %s)\n", s.ID.Short(), s.Dataset, s.Host)
	fmt.Fprintf(w, "files: %d new, %d changed, %d unmodified; %d dirs\n", sm.FilesNew, sm.FilesChanged, sm.FilesUnmodified, sm.Dirs)
	rate := 0.0
	if sm.Duration > 0 {
		rate = float64(sm.BytesRead) / sm.Duration.Seconds() / 1e6
	}
	fmt.Fprintf(w, "processed %s, read %s, added %s in %d blobs; %s (%.1f MB/s)\n",
		agent.HumanBytes(sm.Bytes), agent.HumanBytes(sm.BytesRead), agent.HumanBytes(sm.BytesAdded), sm.BlobsAdded,
		sm.Duration.Round(10*time.Millisecond), rate)
	for _, warn := range s.Warnings {
		fmt.Fprintf(w, "warning: %s\n", warn)
	}
}

// snapshotOut is a snapshot as the CLI prints it in JSON: the stored fields
// plus the id, which the stored form leaves out.
type snapshotOut struct {
	ID      string `json:"id"`
	ShortID string `json:"short_id"`
	*repository.Snapshot
	// Summary shadows the stored one, whose keys are Go names kept for
	// the format's sake: scripts get snake_case and units in the keys.
	Summary summaryOut `json:"summary"`
}

type summaryOut struct {
	Files           int64 `json:"files"`
	Dirs            int64 `json:"dirs"`
	FilesNew        int64 `json:"files_new"`
	FilesChanged    int64 `json:"files_changed"`
	FilesUnmodified int64 `json:"files_unmodified"`
	FilesSkipped    int64 `json:"files_skipped"`
	Bytes           int64 `json:"bytes"`
	BytesRead       int64 `json:"bytes_read"`
	BytesAdded      int64 `json:"bytes_added"`
	BlobsAdded      int64 `json:"blobs_added"`
	DurationMS      int64 `json:"duration_ms"`
}

func snapshotJSON(s *repository.Snapshot) snapshotOut {
	sm := s.Summary
	return snapshotOut{ID: s.ID.String(), ShortID: s.ID.Short(), Snapshot: s, Summary: summaryOut{
		Files: sm.Files, Dirs: sm.Dirs, FilesNew: sm.FilesNew, FilesChanged: sm.FilesChanged,
		FilesUnmodified: sm.FilesUnmodified, FilesSkipped: sm.Skipped, Bytes: sm.Bytes, BytesRead: sm.BytesRead,
		BytesAdded: sm.BytesAdded, BlobsAdded: sm.BlobsAdded, DurationMS: sm.Duration.Milliseconds(),
	}}
}

// snapFilter selects snapshots by dataset, host and tags.
type snapFilter struct {
	dataset, host string
	tags          []string
}

func (sf *snapFilter) register(cmd *cobra.Command) {
	cmd.Flags().StringVar(&sf.dataset, "dataset", "", "only snapshots of this dataset")
	cmd.Flags().StringVar(&sf.host, "host", "", "only snapshots of this host")
	cmd.Flags().StringArrayVar(&sf.tags, "tag", nil, "only snapshots with this tag (repeatable; all must match)")
}

func (sf *snapFilter) match(s *repository.Snapshot) bool {
	if sf.dataset != "" && s.Dataset != sf.dataset {
		return false
	}
	if sf.host != "" && s.Host != sf.host {
		return false
	}
	for _, t := range sf.tags {
		if !slices.Contains(s.Tags, t) {
			return false
		}
	}
	return true
}

func newRepoSnapshotsCmd(f *repoFlags) *cobra.Command {
	var (
		sf     snapFilter
		asJSON bool
	)
	cmd := &cobra.Command{
		Use:   "snapshots",
		Short: "List snapshots, oldest first",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			r, err := f.openReading(ctx)
			if err != nil {
				return err
			}
			defer r.Close()
			all, damaged, err := r.ListSnapshots(ctx)
			if err != nil {
				return fmt.Errorf("listing snapshots: %w", err)
			}
			var sel []*repository.Snapshot
			for _, s := range all {
				if sf.match(s) {
					sel = append(sel, s)
				}
			}
			w := cmd.OutOrStdout()
			if asJSON {
				out := make([]snapshotOut, 0, len(sel))
				for _, s := range sel {
					out = append(out, snapshotJSON(s))
				}
				if err := writeJSON(w, out); err != nil {
					return err
				}
				return damagedSnapshotsError(damaged)
			}
			tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tTIME\tDATASET\tHOST\tTAGS\tFILES\tSIZE")
			for _, s := range sel {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\t%s\n", s.ID.Short(), s.Time.Local().Format("2006-01-02 15:04:05"),
					s.Dataset, s.Host, strings.Join(s.Tags, ","), s.Summary.Files, agent.HumanBytes(s.Summary.Bytes))
			}
			if err := tw.Flush(); err != nil {
				return err
			}
			fmt.Fprintf(w, "%d snapshots\n", len(sel))
			return damagedSnapshotsError(damaged)
		},
	}
	sf.register(cmd)
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func newRepoRestoreCmd(f *repoFlags) *cobra.Command {
	var (
		ref, dataset, host, target, stdoutPath string
		includes                               []string
	)
	cmd := &cobra.Command{
		Use:   "restore",
		Short: "Restore a snapshot into a folder, or one file to standard output",
		Long: `Restore a snapshot into --target, or stream one file with --stdout PATH.

--snapshot is "latest" (the default) or a unique prefix of a snapshot id;
--dataset and --host narrow which snapshots "latest" and prefixes consider.
Damaged files are reported and make the command fail; every undamaged file
is still restored.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			if (target == "") == (stdoutPath == "") {
				return errors.New("give exactly one of --target DIR or --stdout PATH")
			}
			r, err := f.openReading(ctx)
			if err != nil {
				return err
			}
			defer r.Close()
			snap, err := r.FindSnapshot(ctx, ref, dataset, host)
			if err != nil {
				return fmt.Errorf("finding snapshot %q: %w", ref, err)
			}
			if stdoutPath != "" {
				p := strings.TrimPrefix(filepath.ToSlash(stdoutPath), "/")
				if err := r.RestoreFile(ctx, snap, p, cmd.OutOrStdout()); err != nil {
					return fmt.Errorf("restoring %s from snapshot %s: %w", p, snap.ID.Short(), err)
				}
				return nil
			}
			tuneMemory()
			bar := newProgressBar("restore", f.quiet)
			st, err := r.Restore(ctx, snap, target, repository.RestoreOptions{Include: includes, Progress: bar.Update})
			bar.Done()
			if st != nil {
				fmt.Fprintf(cmd.OutOrStdout(), "restored snapshot %s to %s: %d files, %d dirs, %s\n",
					snap.ID.Short(), target, st.Files, st.Dirs, agent.HumanBytes(st.Bytes))
			}
			if err != nil {
				return fmt.Errorf("restore of snapshot %s incomplete: %w", snap.ID.Short(), err)
			}
			return nil
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&ref, "snapshot", "latest", "snapshot: latest or an id prefix")
	fl.StringVar(&dataset, "dataset", "", "consider only snapshots of this dataset")
	fl.StringVar(&host, "host", "", "consider only snapshots of this host")
	fl.StringVar(&target, "target", "", "folder to restore into")
	fl.StringArrayVar(&includes, "include", nil, "restore only this slash path relative to the snapshot root (repeatable; a folder includes its subtree)")
	fl.StringVar(&stdoutPath, "stdout", "", "write this one file of the snapshot to standard output")
	return cmd
}

// backupGCPercent is the GOGC that backup, check and restore run with
// unless the user set GOGC. Their live heap is small (a few blob or pack
// buffers in flight, the index) while they allocate hundreds of megabytes
// of short-lived, pointer-free buffers; at Go's default of 100 the heap
// would grow to twice the live size between collections. Collections of this heap are cheap (well under
// 1% of a backup's CPU at this setting), so the peak memory is what counts.
const backupGCPercent = 25

// tuneMemory keeps the peak memory (RSS) of a backup, check or restore low:
// all three stream many short-lived, pointer-free buffers. It runs
// after the repository is open: opening derives the key with scrypt, which
// allocates 32 MiB that are garbage afterwards, and those pages are given
// back to the OS here rather than counted for the rest of the backup.
// GOGC (and GOMEMLIMIT, which the runtime reads itself) in the environment
// take precedence.
func tuneMemory() {
	if _, set := os.LookupEnv("GOGC"); !set {
		debug.SetGCPercent(backupGCPercent)
	}
	debug.FreeOSMemory()
}

// damagedSnapshotsError turns damaged snapshot files into the command's
// error, after the readable snapshots were printed: listing goes on, but
// the exit status says that something needs repair.
func damagedSnapshotsError(damaged []repository.DamagedSnapshot) error {
	if len(damaged) == 0 {
		return nil
	}
	errs := make([]error, len(damaged))
	for i, d := range damaged {
		errs[i] = d.Err
	}
	return fmt.Errorf("%d snapshot files are damaged (run check): %w", len(damaged), errors.Join(errs...))
}
