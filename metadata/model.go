package metadata

import (
	"errors"
	"fmt"
	"strings"
	"time"
)

// Backup is one run of one source on one host. Backup ids are unique
// across the catalog; a backup id belongs to exactly one host and one
// timestamp, and AddDataset refuses a dataset that disagrees.
type Backup struct {
	ID        string    `json:"id"`
	Timestamp time.Time `json:"timestamp"` // backup start; orders versions (newest first)
	Host      string    `json:"host"`
	// Datasets is never stored in the backup record itself: each dataset
	// is its own record. Reads fill it in.
	Datasets []*Dataset `json:"datasets,omitempty"`
}

// Dataset is the catalog record of one dataset inside one backup: a unit
// that can be restored on its own, holding one or more atoms, stored in one
// repository as one snapshot or as one snapshot per atom.
type Dataset struct {
	ID      string `json:"id"`
	Source  string `json:"source"`  // source name; no "/" and no NUL
	Name    string `json:"name"`    // dataset name; no "/" and no NUL
	Handler string `json:"handler"` // handler type that wrote it ("file", "pipe", ...)
	// Atoms lists the dataset's atoms. GetBackup, DatasetVersions and
	// FindAtoms (the matching ones) fill it in; ListBackups leaves it
	// empty, since a dataset may hold 100,000 atoms.
	Atoms []Atom `json:"atoms"`
	// AtomCount is the number of atoms of the dataset, whether Atoms is
	// filled in or not. AddDataset sets it from Atoms.
	AtomCount int `json:"atom_count"`
	// SnapshotID is the dataset's snapshot when it is stored as one
	// ("file"); it is empty when its atoms are stored as separate
	// snapshots (a "pipe" dataset of several atoms). Atom.SnapshotID is
	// always the one that holds an atom.
	SnapshotID string `json:"snapshot_id"`
	Repository string `json:"repository"` // name of the repository holding the snapshots
	TotalFiles int64  `json:"total_files"`
	TotalBytes int64  `json:"total_bytes"`
	BytesAdded int64  `json:"bytes_added"`
	// Duration of the ingest. JSON carries it as integer nanoseconds.
	Duration time.Duration `json:"duration_ns"`
}

// Atom is a piece of a dataset that can be restored on its own. Its global
// name is source/dataset/atom (see AtomName); the atom name itself may
// contain "/" (it is often a file path) but never NUL.
type Atom struct {
	Name string `json:"name"`
	// Path is used by the file handler: the path relative to the source
	// root. Other handlers may leave it empty.
	Path string `json:"path,omitempty"`
	// SnapshotID is the snapshot (in the dataset's repository) that holds
	// the atom: the dataset's one snapshot, or the atom's own. Records
	// written before it existed leave it empty; Dataset.SnapshotID then
	// names the snapshot(s).
	SnapshotID string `json:"snapshot_id,omitempty"`
}

// AtomName returns the global name of an atom: source/dataset/atom.
func AtomName(source, dataset, atom string) string {
	return source + "/" + dataset + "/" + atom
}

// SplitAtomName splits a global atom name into its source, dataset and atom
// parts. The atom part may contain "/".
func SplitAtomName(name string) (source, dataset, atom string, ok bool) {
	source, rest, ok1 := strings.Cut(name, "/")
	dataset, atom, ok2 := strings.Cut(rest, "/")
	if !ok1 || !ok2 || source == "" || dataset == "" || atom == "" {
		return "", "", "", false
	}
	return source, dataset, atom, true
}

// FindRequest selects atom versions from the catalog.
type FindRequest struct {
	// Pattern is a glob over global atom names (source/dataset/atom) with
	// path.Match syntax, applied segment by segment ("*" does not cross
	// "/"). A pattern also matches every atom below a name it matches, so
	// "src" and "src/*" select all atoms of source src and "src/db/*"
	// selects every atom of dataset db whatever its depth. "*" alone
	// matches everything. Empty is an error.
	Pattern string `json:"pattern"`
	// Host, when set, keeps only versions written by that host.
	Host string `json:"host,omitempty"`
	// NumVersions is the number of versions kept per atom, newest first.
	// Zero means 1.
	NumVersions int `json:"num_versions,omitempty"`
	// OlderThan, when set, keeps only versions whose backup timestamp is
	// strictly before it.
	OlderThan time.Time `json:"older_than,omitzero"`
}

// JobStatus is the live status of one running job, published by an agent
// under a lease so that it disappears when the agent dies.
type JobStatus struct {
	Host      string       `json:"host"`
	JobID     string       `json:"job_id"`
	Kind      string       `json:"kind"` // ingest, replicate, fixity, sync, restore
	Source    string       `json:"source,omitempty"`
	Dataset   string       `json:"dataset,omitempty"`
	BackupID  string       `json:"backup_id,omitempty"`
	DatasetID string       `json:"dataset_id,omitempty"`
	State     string       `json:"state,omitempty"` // free text: "running", "waiting for lock", ...
	StartedAt time.Time    `json:"started_at,omitzero"`
	Progress  *JobProgress `json:"progress,omitempty"`
	Message   string       `json:"message,omitempty"`
}

// JobProgress is the progress of a running job.
type JobProgress struct {
	Files      int64  `json:"files"`
	Bytes      int64  `json:"bytes"`
	TotalFiles int64  `json:"total_files,omitempty"` // 0 when unknown
	TotalBytes int64  `json:"total_bytes,omitempty"` // 0 when unknown
	Current    string `json:"current,omitempty"`
}

// FixityResult records one verification of one pack in one repository.
// The catalog keeps the latest result per pack and a history.
type FixityResult struct {
	Repository string    `json:"repository"`
	Pack       string    `json:"pack"` // pack id (hex)
	Time       time.Time `json:"time"`
	OK         bool      `json:"ok"`
	Bytes      int64     `json:"bytes,omitempty"`
	Error      string    `json:"error,omitempty"`
	Host       string    `json:"host,omitempty"`
	// DamagedBlobs and Atoms name what a failure affects, when known.
	DamagedBlobs []string `json:"damaged_blobs,omitempty"`
	Atoms        []string `json:"atoms,omitempty"`
	Healed       bool     `json:"healed,omitempty"`
	// Algorithm says what was verified and how, e.g. "sha256-pack+blobs"
	// (the pack's SHA-256 and every blob's) or "sha256-file" (--deep:
	// whole-file digests of a snapshot; Pack is then "snapshot:<id>").
	Algorithm string `json:"algorithm,omitempty"`
	// Snapshots and Paths name what depends on a damaged pack.
	Snapshots []string `json:"snapshots,omitempty"`
	Paths     []string `json:"paths,omitempty"`
	// Detail is what else a person needs: the re-read, how it healed.
	Detail string `json:"detail,omitempty"`
}

// ReplicaRecord records that a snapshot exists (and was verified) in a
// replica repository.
type ReplicaRecord struct {
	Repository     string    `json:"repository"` // the replica repository
	SnapshotID     string    `json:"snapshot_id"`
	FromRepository string    `json:"from_repository,omitempty"`
	SourceSnapshot string    `json:"source_snapshot,omitempty"` // id in FromRepository when it differs
	Source         string    `json:"source,omitempty"`
	Dataset        string    `json:"dataset,omitempty"`
	BackupID       string    `json:"backup_id,omitempty"`
	Time           time.Time `json:"time"`
	Verified       bool      `json:"verified"`
	BlobsCopied    int64     `json:"blobs_copied,omitempty"`
	BytesCopied    int64     `json:"bytes_copied,omitempty"`
}

// Errors returned by the store. Test with errors.Is.
var (
	// ErrInvalid marks a record or request that can never be stored or
	// answered (bad name, missing id, bad pattern). Not spooled.
	ErrInvalid = errors.New("metadata: invalid")
	// ErrConflict marks a backup id already recorded with another host or
	// timestamp. Not spooled.
	ErrConflict = errors.New("metadata: conflict")
	// ErrNotFound is returned by the Get methods for a missing record.
	ErrNotFound = errors.New("metadata: not found")
	// ErrClosed is returned after Close.
	ErrClosed = errors.New("metadata: store closed")
)

// maxNameBytes bounds every name and id of a record, so that any one key
// and value fits in a transaction (maxTxnBytes) with room to spare. Atom
// names are often paths; PATH_MAX is 4096.
const maxNameBytes = 16 << 10

func checkName(kind, s string, slashOK bool) error {
	switch {
	case len(s) > maxNameBytes:
		return fmt.Errorf("%w: %s name of %d bytes is longer than %d (%.40q...)", ErrInvalid, kind, len(s), maxNameBytes, s)
	case s == "":
		return fmt.Errorf("%w: empty %s name", ErrInvalid, kind)
	case strings.IndexByte(s, 0) >= 0:
		return fmt.Errorf("%w: %s name %q contains NUL", ErrInvalid, kind, s)
	case !slashOK && strings.IndexByte(s, '/') >= 0:
		return fmt.Errorf("%w: %s name %q contains '/'", ErrInvalid, kind, s)
	}
	return nil
}

func validate(b *Backup, d *Dataset) error {
	if b == nil || d == nil {
		return fmt.Errorf("%w: nil backup or dataset", ErrInvalid)
	}
	if err := checkName("backup id", b.ID, true); err != nil {
		return err
	}
	if err := checkName("host", b.Host, true); err != nil {
		return fmt.Errorf("backup %s: %w", b.ID, err)
	}
	if b.Timestamp.IsZero() || b.Timestamp.UnixNano() <= 0 {
		return fmt.Errorf("%w: backup %s has no timestamp", ErrInvalid, b.ID)
	}
	if err := checkName("source", d.Source, false); err != nil {
		return fmt.Errorf("backup %s: %w", b.ID, err)
	}
	if err := checkName("dataset", d.Name, false); err != nil {
		return fmt.Errorf("backup %s: %w", b.ID, err)
	}
	seen := make(map[string]bool, len(d.Atoms))
	for _, a := range d.Atoms {
		if err := checkName("atom", a.Name, true); err != nil {
			return fmt.Errorf("backup %s dataset %s/%s: %w", b.ID, d.Source, d.Name, err)
		}
		if len(a.Path) > maxNameBytes || len(a.SnapshotID) > maxNameBytes {
			return fmt.Errorf("%w: backup %s dataset %s/%s: atom %q: path or snapshot id longer than %d bytes", ErrInvalid, b.ID, d.Source, d.Name, a.Name, maxNameBytes)
		}
		if seen[a.Name] {
			return fmt.Errorf("%w: backup %s dataset %s/%s: duplicate atom %q", ErrInvalid, b.ID, d.Source, d.Name, a.Name)
		}
		seen[a.Name] = true
	}
	return nil
}
