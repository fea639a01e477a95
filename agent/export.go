package agent

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/custos-backup/custos/internal/bagit"
	"github.com/custos-backup/custos/metadata"
	"github.com/custos-backup/custos/repository"
	"golang.org/x/sync/errgroup"
)

// ExportRequest says which atom versions to export as BagIt bags, and
// where: the newest version of every atom matching Pattern (older than
// OlderThan, if set), as restore picks them.
type ExportRequest struct {
	Pattern   string
	Host      string    // "" = this host (the config's hostname); "*" = any host
	OlderThan time.Time // zero = newest
	// Dir receives one bag per atom version, named
	// <source>_<dataset>_<atom>_<time>. It is created if missing; nothing
	// is written outside it.
	Dir string

	// wrap, in tests, wraps the repository to inject a fault.
	wrap func(exportSource) exportSource
}

// ExportedBag names one bag written.
type ExportedBag struct {
	Atom     string // source/dataset/atom
	BackupID string
	Time     time.Time
	Host     string
	Path     string // the bag's folder
	Files    int
	Bytes    int64
	// Skipped lists the atom's entries that are not regular files
	// (symbolic links, devices, ...): a bag's payload holds files only.
	Skipped []string
}

// exportSource is what an export reads from a repository;
// *repository.Repository has it.
type exportSource interface {
	WalkFiles(ctx context.Context, snap *repository.Snapshot, p string, fn func(e repository.Entry, write func(io.Writer) error) error) error
}

// ExportBagIt writes one BagIt bag (RFC 8493) per matching atom version
// into req.Dir. The payload is the atom's files (a file atom's path) or its
// stream (a pipe atom, as one file named after the atom), streamed from the
// repository; the manifest carries the SHA-256 digests recorded at ingest,
// and every file's bytes are checked against them as they are written. A
// bag is renamed into place only once complete. It goes on after a failed
// atom and returns every error at the end.
func (m *Manager) ExportBagIt(ctx context.Context, req ExportRequest) ([]ExportedBag, error) {
	rc := m.cm.Current()
	if req.Dir == "" {
		return nil, errors.New("export: no target folder")
	}
	found, err := m.findNewest(ctx, rc, req.Pattern, req.Host, req.OlderThan)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(req.Dir, 0o755); err != nil {
		return nil, fmt.Errorf("export folder: %w", err)
	}
	dir, err := os.OpenRoot(req.Dir)
	if err != nil {
		return nil, fmt.Errorf("export folder: %w", err)
	}
	defer func() { _ = dir.Close() }()
	var done []ExportedBag
	var errs []error
	for _, b := range found {
		for _, d := range b.Datasets {
			bags, err := m.exportDataset(ctx, rc, req, dir, b, d)
			done = append(done, bags...)
			if err != nil {
				errs = append(errs, err)
			}
		}
	}
	return done, errors.Join(errs...)
}

func (m *Manager) exportDataset(ctx context.Context, rc *RuntimeContext, req ExportRequest, dir *os.Root, b *metadata.Backup, d *metadata.Dataset) ([]ExportedBag, error) {
	name := d.Source + "/" + d.Name
	if err := validName(d.Source); err != nil {
		return nil, fmt.Errorf("dataset %s in backup %s: source: %w", name, b.ID, err)
	}
	if err := validName(d.Name); err != nil {
		return nil, fmt.Errorf("dataset %s in backup %s: %w", name, b.ID, err)
	}
	if d.Handler != "file" && d.Handler != "pipe" {
		return nil, fmt.Errorf("dataset %s in backup %s: cannot export atoms of the %q handler", name, b.ID, d.Handler)
	}
	repoSpec := rc.Config.Repository(d.Repository)
	if repoSpec == nil {
		return nil, fmt.Errorf("dataset %s: it is stored in repository %q, which this configuration does not define", name, d.Repository)
	}
	repo, err := m.repos.Get(ctx, repoSpec)
	if err != nil {
		return nil, fmt.Errorf("dataset %s: %w", name, err)
	}
	var src exportSource = repo
	if req.wrap != nil {
		src = req.wrap(src)
	}
	snaps := map[string]*repository.Snapshot{}
	load := func(s string) (*repository.Snapshot, error) {
		if snap := snaps[s]; snap != nil {
			return snap, nil
		}
		id, err := repository.ParseID(s)
		if err != nil {
			return nil, fmt.Errorf("dataset %s in backup %s: bad snapshot id %q in the catalog: %w", name, b.ID, s, err)
		}
		snap, err := repo.LoadSnapshot(ctx, id)
		if err != nil {
			return nil, fmt.Errorf("dataset %s in backup %s: snapshot %s in repository %s: %w", name, b.ID, id.Short(), repoSpec.Name, err)
		}
		if err := crossCheck(snap, name, b); err != nil {
			return nil, fmt.Errorf("dataset %s in backup %s: snapshot %s in repository %s %w; refusing to export it (run custos sync to rebuild the catalog from the repository)", name, b.ID, id.Short(), repoSpec.Name, err)
		}
		snaps[s] = snap
		return snap, nil
	}
	var done []ExportedBag
	var errs []error
	for _, a := range d.Atoms {
		atom := metadata.AtomName(d.Source, d.Name, a.Name)
		snap, err := atomSnapshot(d, a, load)
		if err != nil {
			errs = append(errs, fmt.Errorf("atom %s: %w", atom, err))
			continue
		}
		p := a.Name
		if d.Handler == "file" && a.Path != "" {
			p = a.Path
		}
		p = filepath.ToSlash(filepath.Clean(p))
		if !filepath.IsLocal(filepath.FromSlash(p)) {
			errs = append(errs, fmt.Errorf("atom %s: path %q is not a relative path; refusing to export it", atom, p))
			continue
		}
		eb := ExportedBag{Atom: atom, BackupID: b.ID, Time: b.Timestamp, Host: b.Host}
		fields := bagFields(b, d, a, repoSpec.Name, repo.ID(), snap)
		if err := exportAtom(ctx, src, dir, snap, p, fields, &eb); err != nil {
			errs = append(errs, fmt.Errorf("atom %s from backup %s: %w", atom, b.ID, err))
			continue
		}
		done = append(done, eb)
	}
	return done, errors.Join(errs...)
}

// atomSnapshot finds the snapshot that holds atom a. Records from before
// atoms carried their snapshot id hold one snapshot for the dataset, or
// one per atom tagged "atom:<name>" (the pipe handler's tag).
func atomSnapshot(d *metadata.Dataset, a metadata.Atom, load func(string) (*repository.Snapshot, error)) (*repository.Snapshot, error) {
	if a.SnapshotID != "" {
		return load(a.SnapshotID)
	}
	ids := SnapshotIDs(d)
	if len(ids) == 1 {
		return load(ids[0])
	}
	for _, s := range ids {
		snap, err := load(s)
		if err != nil {
			return nil, err
		}
		for _, t := range snap.Tags {
			if t == "atom:"+a.Name {
				return snap, nil
			}
		}
	}
	return nil, fmt.Errorf("none of the dataset's snapshots %s holds it", strings.Join(ids, ", "))
}

// exportFilesAtOnce is how many files of one bag an export writes at once.
const exportFilesAtOnce = 16

// exportAtom writes the bag of the files at p (a file, or a folder and
// everything below it) in snap. Entries that are not regular files go to
// eb.Skipped; folders add nothing (a bag cannot hold an empty one).
func exportAtom(ctx context.Context, src exportSource, dir *os.Root, snap *repository.Snapshot, p string, fields []bagit.Field, eb *ExportedBag) error {
	bag, err := bagit.Create(dir, bagName(eb.Atom, eb.Time))
	if err != nil {
		return err
	}
	defer bag.Abort() // a no-op once committed
	// Several files at once: on remote storage each one's first blob waits
	// a round trip, and locally the hashing of one overlaps the reads of
	// the next.
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(exportFilesAtOnce)
	walkErr := src.WalkFiles(gctx, snap, p, func(e repository.Entry, write func(io.Writer) error) error {
		switch e.Type {
		case "file":
			g.Go(func() error { return bag.AddFile(gctx, e.Path, int64(e.Size), e.SHA256, write) })
		case "dir":
		default:
			eb.Skipped = append(eb.Skipped, e.Path+" ("+e.Type+")")
		}
		return gctx.Err()
	})
	// A file that failed ended the walk through gctx: its error, not the
	// walk's cancellation, is the one to report.
	if err := g.Wait(); err != nil {
		return err
	}
	if walkErr != nil {
		return walkErr
	}
	if n := len(eb.Skipped); n > 0 {
		fields = append(fields, bagit.Field{Label: "Custos-Not-Exported", Value: strconv.Itoa(n) + " entries that are not regular files (symbolic links, devices, sockets, FIFOs)"})
	}
	eb.Path, err = bag.Commit(time.Now(), fields)
	eb.Files, eb.Bytes = bag.Files(), bag.Octets()
	return err
}

// bagFields is bag-info.txt: the reserved labels of RFC 8493 §2.2.2 where
// one fits, then custos' own.
func bagFields(b *metadata.Backup, d *metadata.Dataset, a metadata.Atom, repoName, repoID string, snap *repository.Snapshot) []bagit.Field {
	atom := metadata.AtomName(d.Source, d.Name, a.Name)
	f := []bagit.Field{
		{Label: "External-Identifier", Value: atom},
		{Label: "External-Description", Value: fmt.Sprintf("custos atom %s as backed up on host %s at %s (backup %s)", atom, b.Host, snap.Time.UTC().Format(time.RFC3339), b.ID)},
		{Label: "Bag-Group-Identifier", Value: b.ID},
		{Label: "Bag-Software-Agent", Value: "custos " + Version()},
		{Label: "Custos-Source", Value: d.Source},
		{Label: "Custos-Dataset", Value: d.Name},
		{Label: "Custos-Atom", Value: a.Name},
	}
	if d.Handler == "file" && a.Path != "" {
		f = append(f, bagit.Field{Label: "Custos-Atom-Path", Value: a.Path})
	}
	f = append(f,
		bagit.Field{Label: "Custos-Handler", Value: d.Handler},
		bagit.Field{Label: "Custos-Host", Value: b.Host},
		bagit.Field{Label: "Custos-Backup-Id", Value: b.ID},
		bagit.Field{Label: "Custos-Ingest-Time", Value: snap.Time.UTC().Format(time.RFC3339Nano)},
		bagit.Field{Label: "Custos-Repository", Value: repoName},
		bagit.Field{Label: "Custos-Repository-Id", Value: repoID},
		bagit.Field{Label: "Custos-Snapshot-Id", Value: snap.ID.String()},
		bagit.Field{Label: "Custos-Manifest-Source", Value: "SHA-256 digests recorded at ingest, checked against the bytes written"},
	)
	for i := range f {
		// Names from the catalog may hold line breaks; a tag value cannot.
		if strings.ContainsAny(f[i].Value, "\r\n") {
			f[i].Value = strconv.Quote(f[i].Value)
		}
	}
	return f
}

// bagName is <source>_<dataset>_<atom>_<time>, with every character but
// ASCII letters, digits, ".", "_" and "-" replaced by "-". A name that
// needed replacing gets a short hash of the original, so that two atoms
// whose names differ only there do not collide.
func bagName(atom string, t time.Time) string {
	var sb strings.Builder
	changed := false
	for i, r := range strings.ReplaceAll(atom, "/", "_") {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '_', r == '-',
			r == '.' && i > 0:
			sb.WriteRune(r)
		default:
			sb.WriteByte('-')
			changed = true
		}
	}
	s := sb.String()
	if len(s) > 120 {
		s, changed = s[:120], true
	}
	if changed {
		h := sha256.Sum256([]byte(atom))
		s += "-" + hex.EncodeToString(h[:4])
	}
	return s + "_" + t.UTC().Format("20060102T150405Z")
}
