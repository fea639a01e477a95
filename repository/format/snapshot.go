package format

import (
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// Snapshot is the record of one dataset at one time.
type Snapshot struct {
	ID       ID        `json:"-"` // set when loaded/saved
	Time     time.Time `json:"time"`
	Dataset  string    `json:"dataset"`
	Host     string    `json:"host"`
	Tags     []string  `json:"tags,omitempty"`
	BackupID string    `json:"backup_id,omitempty"`
	Root     string    `json:"root,omitempty"`  // source dir the paths are relative to
	Paths    []string  `json:"paths,omitempty"` // as given to Backup
	Tree     ID        `json:"tree"`
	Parent   *ID       `json:"parent,omitempty"`
	Summary  Summary   `json:"summary"`
	Warnings []string  `json:"warnings,omitempty"`
}

// Summary holds the totals of one backup.
type Summary struct {
	Files, Dirs                             int64
	FilesNew, FilesChanged, FilesUnmodified int64
	Bytes                                   int64 // logical bytes of all files in the snapshot
	BytesRead                               int64 // bytes actually read from the source
	BytesAdded                              int64 // bytes newly stored in the repository (packed, after compression)
	BlobsAdded                              int64
	Duration                                time.Duration
	// Skipped counts files and folders left out because they could not be
	// read (the warnings say which); the CLI exits 3 when it is not zero.
	Skipped int64 `json:",omitempty"`
}

// snapshotFile is the stored form: a format marker plus the snapshot.
type snapshotFile struct {
	Version int `json:"version"`
	*Snapshot
}

func EncodeSnapshot(s *Snapshot) ([]byte, error) {
	return json.Marshal(snapshotFile{Version: Version, Snapshot: s})
}

func DecodeSnapshot(b []byte) (*Snapshot, error) {
	sf := snapshotFile{Snapshot: &Snapshot{}}
	if err := json.Unmarshal(b, &sf); err != nil {
		return nil, fmt.Errorf("decode snapshot: %w", err)
	}
	if sf.Version != Version {
		return nil, fmt.Errorf("decode snapshot: unsupported version %d", sf.Version)
	}
	if sf.Snapshot.Tree.IsNull() {
		return nil, errors.New("decode snapshot: no tree")
	}
	return sf.Snapshot, nil
}
