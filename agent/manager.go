package agent

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/custos-backup/custos/handlers"
	"github.com/custos-backup/custos/jobs"
	"github.com/custos-backup/custos/metadata"
	"github.com/custos-backup/custos/repository"
)

// CatalogStore is what the Manager needs from the catalog;
// *metadata.EtcdStore has it.
type CatalogStore interface {
	RecordDataset(ctx context.Context, b *metadata.Backup, d *metadata.Dataset) (metadata.Recorded, error)
	FindAtoms(ctx context.Context, req metadata.FindRequest) ([]*metadata.Backup, error)
}

// Manager turns sources into backups and catalog records, and catalog
// records back into data. It is used by the agent (scheduled jobs) and, in
// process, by the backup, find and restore commands.
type Manager struct {
	cm      *ConfigManager
	catalog CatalogStore
	repos   *repoPool
	log     *slog.Logger
	events  Events
	// freeSpace reports the bytes free to this process on the file
	// system holding path; tests wrap it to show a full disk.
	freeSpace func(path string) (int64, error)
}

// Events receives the outcome of every ingest (metrics, status page). It
// may be called from several goroutines at once.
type Events interface {
	Finished(r *DatasetResult)
}

type noEvents struct{}

func (noEvents) Finished(*DatasetResult) {}

// NewManager returns a Manager. events may be nil.
func NewManager(cm *ConfigManager, catalog CatalogStore, events Events, log *slog.Logger) *Manager {
	if log == nil {
		log = slog.Default()
	}
	if events == nil {
		events = noEvents{}
	}
	return &Manager{cm: cm, catalog: catalog, repos: newRepoPool(log), log: log, events: events, freeSpace: statfsFree}
}

// Close closes the repositories the Manager opened.
func (m *Manager) Close() error { return m.repos.Close() }

// DatasetResult is the outcome of one dataset's ingest.
type DatasetResult struct {
	Source, Dataset string
	BackupID        string
	Host            string
	Start, End      time.Time
	Record          *metadata.Dataset // nil on failure or in dry-run mode
	// Catalog says where the record went: etcd, or the spool on disk
	// (Spooled, with the number of records waiting there).
	Catalog metadata.Recorded
	Err     error
}

// NewBackup starts a backup record for one run of one source.
func NewBackup(host string, t time.Time) *metadata.Backup {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return &metadata.Backup{ID: t.UTC().Format("20060102T150405Z") + "-" + hex.EncodeToString(b[:]), Timestamp: t, Host: host}
}

// Ingest backs up one dataset of a source and records it in the catalog:
// pre_backup_command, the handler writes the snapshot(s), the catalog
// record (only once the snapshots are durable), post_backup_command.
// rc is the configuration view of the whole run. It holds the dataset's
// lock (see lockDataset) while it runs.
func (m *Manager) Ingest(ctx context.Context, rc *RuntimeContext, src *SourceSpec, b *metadata.Backup, ds Dataset) *DatasetResult {
	res := &DatasetResult{Source: src.Name, Dataset: ds.Name, BackupID: b.ID, Host: b.Host, Start: time.Now()}
	res.Record, res.Err = m.ingest(ctx, rc, src, b, ds, &res.Catalog)
	res.End = time.Now()
	log := m.log.With("source", src.Name, "dataset", ds.Name, "backup", b.ID)
	if res.Err != nil {
		// Warn, not Error: the job may retry; the runner logs the final
		// failure at Error.
		log.Warn("backup failed", "error", res.Err, "duration", res.End.Sub(res.Start).Round(time.Millisecond))
	} else if res.Record != nil {
		log.Info("backup done", "snapshots", strings.Join(SnapshotIDs(res.Record), ","), "files", res.Record.TotalFiles, "bytes", res.Record.TotalBytes, "bytes_added", res.Record.BytesAdded, "duration", res.End.Sub(res.Start).Round(time.Millisecond))
		if res.Catalog.Spooled {
			log.Warn("the catalog record waits in the spool on disk until etcd takes it", "waiting", res.Catalog.SpoolDepth)
		}
	}
	m.events.Finished(res)
	return res
}

func (m *Manager) ingest(ctx context.Context, rc *RuntimeContext, src *SourceSpec, b *metadata.Backup, ds Dataset, recorded *metadata.Recorded) (*metadata.Dataset, error) {
	name := src.Name + "/" + ds.Name
	if src.Timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeoutCause(ctx, src.Timeout, fmt.Errorf("source %s: timeout of %s reached", src.Name, src.Timeout))
		defer cancel()
	}
	unlock, err := lockDataset(ctx, rc.Config.WorkDir, src.Name, ds.Name)
	if err != nil {
		return nil, err
	}
	defer unlock()
	h := rc.Handler(src.Name)
	if h == nil {
		return nil, jobs.Permanent(fmt.Errorf("dataset %s: source %s has no handler in this configuration", name, src.Name))
	}
	cfg := rc.Config
	repoSpec := cfg.Repository(src.Repository)
	if repoSpec == nil {
		return nil, jobs.Permanent(fmt.Errorf("dataset %s: repository %q is not configured", name, src.Repository))
	}
	// The handler's commands get the same environment as the hooks, from
	// the request (handlers.CommandEnv builds it), not from the shell.
	hsh := rc.SourceShell(src).WithDir(cfg.Dir)
	sh := hsh.WithEnv(handlers.CommandEnv(src.Name, ds.Name, b.ID, ds.Atoms, "")...)

	if src.PreBackupCommand != "" {
		if err := sh.Run(ctx, src.PreBackupCommand); err != nil {
			return nil, fmt.Errorf("dataset %s: pre_backup_command: %w", name, err)
		}
	}
	if cfg.DryRun {
		m.log.Info("dry-run: not backing up", "source", src.Name, "dataset", ds.Name, "repository", repoSpec.Name)
		if src.PostBackupCommand != "" {
			_ = sh.Run(ctx, src.PostBackupCommand)
		}
		return nil, nil
	}
	repo, err := m.repos.Get(ctx, repoSpec)
	if err != nil {
		return nil, fmt.Errorf("dataset %s: %w", name, err)
	}
	start := time.Now()
	stored, err := h.Backup(ctx, &handlers.BackupRequest{
		Source: src.Name, Dataset: ds.Name, Atoms: ds.Atoms,
		Host: b.Host, BackupID: b.ID, Time: b.Timestamp,
		Repo: repo, Shell: handlers.FromShell(hsh), Dir: cfg.Dir,
		// Progress goes to the job's status when this runs as a job.
		Progress: func(p repository.Progress) {
			jobs.ReportProgress(ctx, jobs.Progress{Bytes: p.Bytes, Files: p.Files, TotalBytes: p.TotalBytes, TotalFiles: p.TotalFiles, Current: p.Current})
		},
	})
	if err != nil {
		return nil, fmt.Errorf("dataset %s: %w", name, contextCause(ctx, err))
	}
	rec := &metadata.Dataset{
		ID:         b.ID + "/" + name,
		Source:     src.Name,
		Name:       ds.Name,
		Handler:    h.Type(),
		Repository: repoSpec.Name,
		Duration:   time.Since(start),
	}
	for _, s := range stored {
		rec.TotalFiles += s.Snapshot.Summary.Files
		rec.TotalBytes += s.Snapshot.Summary.Bytes
		rec.BytesAdded += s.Snapshot.Summary.BytesAdded
	}
	holder, err := atomSnapshots(stored, ds.Atoms)
	if err != nil {
		return nil, jobs.Permanent(fmt.Errorf("dataset %s: the %s handler %w; nothing was recorded in the catalog", name, h.Type(), err))
	}
	if len(stored) == 1 {
		rec.SnapshotID = stored[0].Snapshot.ID.String()
	}
	for _, a := range ds.Atoms {
		rec.Atoms = append(rec.Atoms, metadata.Atom{Name: a.Name, Path: a.Path, SnapshotID: holder[a.Name]})
	}
	// The snapshots are durable now (Backup returns after packs, index and
	// snapshot are written): only now may the catalog point at them. The
	// backup is done once the record is durable too, in etcd or spooled.
	r, err := m.catalog.RecordDataset(ctx, b, rec)
	if err != nil {
		return nil, fmt.Errorf("dataset %s: stored as snapshot(s) %s, but its catalog record is neither in the catalog nor spooled: %w", name, strings.Join(SnapshotIDs(rec), ", "), err)
	}
	*recorded = r
	if src.PostBackupCommand != "" {
		if err := sh.Run(ctx, src.PostBackupCommand); err != nil {
			return rec, fmt.Errorf("dataset %s: backed up and recorded, but post_backup_command failed: %w", name, err)
		}
	}
	return rec, nil
}

// atomSnapshots maps each atom to the id of the snapshot that holds it, as
// the handler said, and refuses an atom held by none or by two, and a
// snapshot said to hold an atom the dataset does not have.
func atomSnapshots(stored []handlers.Stored, atoms []handlers.Atom) (map[string]string, error) {
	want := make(map[string]bool, len(atoms))
	for _, a := range atoms {
		want[a.Name] = true
	}
	holder := make(map[string]string, len(atoms))
	for _, s := range stored {
		for _, name := range s.Atoms {
			switch {
			case !want[name]:
				return nil, fmt.Errorf("wrote snapshot %s for atom %q, which the dataset does not have", s.Snapshot.ID, name)
			case holder[name] != "":
				return nil, fmt.Errorf("wrote two snapshots for atom %q (%s and %s)", name, holder[name], s.Snapshot.ID)
			}
			holder[name] = s.Snapshot.ID.String()
		}
	}
	for _, a := range atoms {
		if holder[a.Name] == "" {
			return nil, fmt.Errorf("wrote no snapshot for atom %q", a.Name)
		}
	}
	return holder, nil
}

// contextCause names the timeout when the job was stopped by it.
func contextCause(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		if c := context.Cause(ctx); c != nil && !errors.Is(err, c) {
			return fmt.Errorf("%w (%v)", err, c)
		}
	}
	return err
}

// RunSource backs up every dataset of a source now, one after the other,
// and returns the results. Datasets not in only (when non-empty) are
// skipped. This is what "custos backup" does; the agent queues the
// datasets as separate jobs instead.
func (m *Manager) RunSource(ctx context.Context, rc *RuntimeContext, src *SourceSpec, only string) ([]*DatasetResult, error) {
	dss, err := Datasets(ctx, rc.Shell().WithDir(rc.Config.Dir), src)
	if err != nil {
		return nil, err
	}
	b := NewBackup(rc.Config.Hostname, time.Now())
	var out []*DatasetResult
	found := false
	for _, ds := range dss {
		if only != "" && ds.Name != only {
			continue
		}
		found = true
		out = append(out, m.Ingest(ctx, rc, src, b, ds))
	}
	if only != "" && !found {
		return nil, fmt.Errorf("source %s has no dataset %q", src.Name, only)
	}
	return out, nil
}

// BackupNow runs every source (or only the named one, and only one of its
// datasets) now, in this process.
func BackupNow(ctx context.Context, m *Manager, rc *RuntimeContext, source, dataset string) ([]*DatasetResult, error) {
	srcs := rc.Config.Sources
	if source != "" {
		s := rc.Source(source)
		if s == nil {
			var names []string
			for _, s := range srcs {
				names = append(names, s.Name)
			}
			return nil, fmt.Errorf("no source %q in the configuration (there are: %s)", source, strings.Join(names, ", "))
		}
		srcs = []*SourceSpec{s}
	}
	var out []*DatasetResult
	for _, s := range srcs {
		res, err := m.RunSource(ctx, rc, s, dataset)
		if err != nil {
			out = append(out, &DatasetResult{Source: s.Name, Dataset: "*", Err: err})
			continue
		}
		out = append(out, res...)
	}
	return out, nil
}

// Find looks atoms up in the catalog.
func (m *Manager) Find(ctx context.Context, req metadata.FindRequest) ([]*metadata.Backup, error) {
	return m.catalog.FindAtoms(ctx, req)
}

// RestoreRequest says what to restore and where.
type RestoreRequest struct {
	Pattern   string
	Host      string    // "" = this host (the config's hostname); "*" = any host
	OlderThan time.Time // zero = newest
	// Target is the folder to restore into. Each dataset goes into
	// Target/<source>/<dataset>/: file atoms as their paths under the
	// source root, pipe atoms through restore_command with
	// CUSTOS_RESTORE_TARGET set to that folder.
	Target string
	// Stdout, when set, receives pipe atoms instead of restore_command.
	Stdout io.Writer
	// Repository, when set, restores from this repository: the dataset's
	// own or a replica holding a copy. "" = its own, falling back to a
	// replica when that copy cannot be used.
	Repository string
}

// RestoredAtom names one atom that was restored.
type RestoredAtom struct {
	Name     string    `json:"name"` // source/dataset/atom
	BackupID string    `json:"backup_id"`
	Time     time.Time `json:"time"`
	Host     string    `json:"host"`
	Target   string    `json:"target"` // folder, or "-" for stdout
	// Repository is the copy it was restored from; Fallback, when set,
	// says why that is a replica rather than the dataset's own.
	Repository string `json:"repository"`
	Fallback   string `json:"fallback,omitempty"`
}

// Restore restores the newest version (older than OlderThan, if set) of
// every atom matching the pattern. It goes on after a failed dataset and
// returns every error at the end.
// findNewest finds the newest version of the atoms matching pattern, of
// host ("" = this host, "*" = any), older than olderThan if set; none is
// an error.
func (m *Manager) findNewest(ctx context.Context, rc *RuntimeContext, pattern, host string, olderThan time.Time) ([]*metadata.Backup, error) {
	switch host {
	case "":
		host = rc.Config.Hostname
	case "*":
		host = ""
	}
	found, err := m.catalog.FindAtoms(ctx, metadata.FindRequest{Pattern: pattern, Host: host, NumVersions: 1, OlderThan: olderThan})
	if err != nil {
		return nil, fmt.Errorf("find %q in the catalog: %w", pattern, err)
	}
	if len(found) == 0 {
		return nil, fmt.Errorf("no atom in the catalog matches %q%s", pattern, hostNote(host))
	}
	return found, nil
}

func (m *Manager) Restore(ctx context.Context, req RestoreRequest) ([]RestoredAtom, error) {
	rc := m.cm.Current()
	found, err := m.findNewest(ctx, rc, req.Pattern, req.Host, req.OlderThan)
	if err != nil {
		return nil, err
	}
	var done []RestoredAtom
	var errs []error
	for _, b := range found {
		for _, d := range b.Datasets {
			atoms, err := m.restoreDataset(ctx, rc, req, b, d)
			done = append(done, atoms...)
			if err != nil {
				errs = append(errs, err)
			}
		}
	}
	return done, errors.Join(errs...)
}

func hostNote(host string) string {
	if host == "" {
		return ""
	}
	return " for host " + host + " (use --host to look at other hosts)"
}

func (m *Manager) restoreDataset(ctx context.Context, rc *RuntimeContext, req RestoreRequest, b *metadata.Backup, d *metadata.Dataset) ([]RestoredAtom, error) {
	name := d.Source + "/" + d.Name
	// Names come from the catalog: treat them as untrusted before they
	// become parts of a path.
	if err := validName(d.Source); err != nil {
		return nil, fmt.Errorf("dataset %s in backup %s: source: %w", name, b.ID, err)
	}
	if err := validName(d.Name); err != nil {
		return nil, fmt.Errorf("dataset %s in backup %s: %w", name, b.ID, err)
	}
	cfg := rc.Config
	src := cfg.Source(d.Source)
	h := rc.Handler(d.Source)
	if h == nil || h.Type() != d.Handler {
		var err error
		if h, err = handlers.ForRestore(d.Handler); err != nil {
			return nil, fmt.Errorf("dataset %s: %w", name, err)
		}
		src = nil // its hooks belong to another handler
	}
	if d.Handler != "pipe" || req.Stdout == nil {
		if req.Target == "" {
			return nil, fmt.Errorf("dataset %s: %s atoms need a target folder (--target)", name, d.Handler)
		}
	}
	from, err := m.restoreCopy(ctx, rc, req, b, d)
	if err != nil {
		return nil, err
	}
	var (
		target string
		root   *os.Root
	)
	if req.Target != "" {
		var err error
		if root, target, err = datasetFolder(req.Target, d.Source, d.Name); err != nil {
			return nil, fmt.Errorf("dataset %s: %w", name, err)
		}
		defer func() { _ = root.Close() }()
	}
	atoms := make([]handlers.Atom, len(d.Atoms))
	for i, a := range d.Atoms {
		atoms[i] = handlers.Atom{Name: a.Name, Path: a.Path}
	}
	hsh := rc.SourceShell(src).WithDir(cfg.Dir)
	sh := hsh.WithEnv(append(handlers.CommandEnv(d.Source, d.Name, b.ID, atoms, ""), "CUSTOS_RESTORE_TARGET="+target)...)
	if src != nil && src.PreRestoreCommand != "" {
		if err := sh.Run(ctx, src.PreRestoreCommand); err != nil {
			return nil, fmt.Errorf("dataset %s: pre_restore_command: %w", name, err)
		}
	}
	rreq := &handlers.RestoreRequest{
		Source: d.Source, Dataset: d.Name, BackupID: b.ID, Atoms: atoms,
		Shell: handlers.FromShell(hsh), Target: target, Root: root, Dir: cfg.Dir,
		// Progress goes to the job's status when this runs as a job.
		Progress: func(p repository.Progress) {
			jobs.ReportProgress(ctx, jobs.Progress{Bytes: p.Bytes, Files: p.Files, TotalBytes: p.TotalBytes, TotalFiles: p.TotalFiles, Current: p.Current})
		},
	}
	where := target
	if d.Handler == "pipe" && req.Stdout != nil {
		rreq.Stdout = req.Stdout
		where = "-"
	}
	from, err = m.restoreData(ctx, rc, req, b, d, from, func(c *restoreFrom) error {
		rreq.Repo, rreq.Snapshots = c.repo, c.snaps
		return h.Restore(ctx, rreq)
	})
	if err != nil {
		return nil, fmt.Errorf("dataset %s from backup %s: %w", name, b.ID, err)
	}
	if src != nil && src.PostRestoreCommand != "" {
		if err := sh.Run(ctx, src.PostRestoreCommand); err != nil {
			return nil, fmt.Errorf("dataset %s: restored, but post_restore_command failed: %w", name, err)
		}
	}
	out := make([]RestoredAtom, 0, len(atoms))
	for _, a := range atoms {
		out = append(out, RestoredAtom{Name: metadata.AtomName(d.Source, d.Name, a.Name), BackupID: b.ID, Time: b.Timestamp, Host: b.Host, Target: where,
			Repository: from.name, Fallback: from.why})
	}
	return out, nil
}

// datasetFolder creates target/source/dataset through an os.Root on the
// target and returns it opened as a root of its own, with its path. The
// target is the operator's choice and may be reached through symlinks;
// nothing below it is: a symlink, or anything but a folder, found at
// source or dataset is refused, never followed, so that whoever can write
// into the target cannot steer the restore elsewhere. The path is what
// restore commands get (CUSTOS_RESTORE_TARGET), so it is checked to
// resolve, without symlinks, to the very folder the root holds.
func datasetFolder(target, source, dataset string) (*os.Root, string, error) {
	if err := os.MkdirAll(target, 0o700); err != nil {
		return nil, "", fmt.Errorf("create restore target: %w", err)
	}
	top, err := os.OpenRoot(target)
	if err != nil {
		return nil, "", fmt.Errorf("open restore target: %w", err)
	}
	defer func() { _ = top.Close() }()
	rel := ""
	for _, el := range []string{source, dataset} {
		rel = filepath.Join(rel, el)
		if err := mkdirIn(top, rel); err != nil {
			return nil, "", err
		}
	}
	sub, err := top.OpenRoot(rel)
	if err != nil {
		return nil, "", fmt.Errorf("open restore folder: %w", err)
	}
	dir := filepath.Join(target, rel)
	if err := sameFolder(sub, target, dir); err != nil {
		_ = sub.Close()
		return nil, "", err
	}
	return sub, dir, nil
}

// mkdirIn creates the folder rel below root unless a folder is there.
func mkdirIn(root *os.Root, rel string) error {
	full := filepath.Join(root.Name(), rel)
	err := root.Mkdir(rel, 0o700)
	if err == nil {
		return nil
	}
	if !errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("create restore folder %s: %w", full, err)
	}
	fi, lerr := root.Lstat(rel)
	switch {
	case lerr != nil:
		return fmt.Errorf("create restore folder %s: %w", full, lerr)
	case fi.Mode()&fs.ModeSymlink != 0:
		to, _ := root.Readlink(rel)
		return fmt.Errorf("restore folder %s is a symbolic link (to %s): refusing to restore through it; remove it or choose another target", full, to)
	case !fi.IsDir():
		return fmt.Errorf("restore folder %s exists and is not a folder (%s)", full, fi.Mode().Type())
	}
	return nil
}

// sameFolder checks that dir, resolved by path as a command will resolve
// it, is the folder sub holds and has no symlink below target.
func sameFolder(sub *os.Root, target, dir string) error {
	realTarget, err := filepath.EvalSymlinks(target)
	if err != nil {
		return fmt.Errorf("resolve restore target: %w", err)
	}
	rel, err := filepath.Rel(target, dir)
	if err != nil {
		return fmt.Errorf("restore folder %s: %w", dir, err)
	}
	realDir, err := filepath.EvalSymlinks(dir)
	if err != nil {
		return fmt.Errorf("resolve restore folder: %w", err)
	}
	if want := filepath.Join(realTarget, rel); realDir != want {
		return fmt.Errorf("restore folder %s resolves to %s, not %s: refusing to restore through a symbolic link", dir, realDir, want)
	}
	held, err := sub.Stat(".")
	if err != nil {
		return fmt.Errorf("restore folder %s: %w", dir, err)
	}
	named, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("restore folder %s: %w", dir, err)
	}
	if !os.SameFile(held, named) {
		return fmt.Errorf("restore folder %s was replaced while it was being opened", dir)
	}
	return nil
}

// crossCheck compares a catalog record with the snapshot it names. The
// catalog is writable by whoever reaches etcd, the repository is
// authenticated by its key: a record pointed at another snapshot (an older
// one of the same dataset, say) must not restore quietly.
func crossCheck(snap *repository.Snapshot, dataset string, b *metadata.Backup) error {
	switch {
	case snap.Dataset != dataset:
		return fmt.Errorf("belongs to dataset %q, not %q", snap.Dataset, dataset)
	case snap.Host != b.Host:
		return fmt.Errorf("was taken on host %q, but the catalog says %q", snap.Host, b.Host)
	case snap.BackupID != "" && snap.BackupID != b.ID:
		return fmt.Errorf("belongs to backup %s, not %s", snap.BackupID, b.ID)
	case !b.Timestamp.IsZero() && !snap.Time.Equal(b.Timestamp):
		return fmt.Errorf("was taken at %s, but the catalog says %s", snap.Time.Format(time.RFC3339Nano), b.Timestamp.Format(time.RFC3339Nano))
	}
	return nil
}

// SnapshotIDs lists, once each and in atom order, the snapshots that hold
// the record's atoms. Only those are loaded on restore: restoring one
// atom of a dataset stored per atom reads only that atom's snapshot.
// Records from before atoms carried their snapshot id name them in
// Dataset.SnapshotID, joined by ",".
func SnapshotIDs(d *metadata.Dataset) []string {
	var ids []string
	seen := map[string]bool{}
	add := func(id string) {
		if id = strings.TrimSpace(id); !seen[id] {
			seen[id] = true
			ids = append(ids, id)
		}
	}
	legacy := false
	for _, a := range d.Atoms {
		if a.SnapshotID == "" {
			legacy = true
			continue
		}
		add(a.SnapshotID)
	}
	if legacy || len(d.Atoms) == 0 {
		for _, s := range strings.Split(d.SnapshotID, ",") {
			add(s)
		}
	}
	return ids
}
