package repository

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/custos-backup/custos/repository/backend"
	"golang.org/x/sync/errgroup"
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
}

// snapshotFile is the stored form: a format marker plus the snapshot.
type snapshotFile struct {
	Version int `json:"version"`
	*Snapshot
}

func encodeSnapshot(s *Snapshot) ([]byte, error) {
	return json.Marshal(snapshotFile{Version: formatVersion, Snapshot: s})
}

func decodeSnapshot(b []byte) (*Snapshot, error) {
	sf := snapshotFile{Snapshot: &Snapshot{}}
	if err := json.Unmarshal(b, &sf); err != nil {
		return nil, fmt.Errorf("decode snapshot: %w", err)
	}
	if sf.Version != formatVersion {
		return nil, fmt.Errorf("decode snapshot: unsupported version %d", sf.Version)
	}
	if sf.Snapshot.Tree.IsNull() {
		return nil, errors.New("decode snapshot: no tree")
	}
	return sf.Snapshot, nil
}

// saveSnapshot stores sn and sets sn.ID.
func (r *Repository) saveSnapshot(ctx context.Context, sn *Snapshot) error {
	b, err := encodeSnapshot(sn)
	if err != nil {
		return err
	}
	stored := r.seal.seal(nil, b)
	id := hashID(stored)
	if err := saveBytes(ctx, r.be, backend.Handle{Type: backend.SnapshotFile, Name: id.String()}, stored); err != nil {
		return err
	}
	sn.ID = id
	return nil
}

// LoadSnapshot loads and verifies one snapshot.
func (r *Repository) LoadSnapshot(ctx context.Context, id ID) (*Snapshot, error) {
	h := backend.Handle{Type: backend.SnapshotFile, Name: id.String()}
	b, err := loadSmall(ctx, r.be, h, maxSnapshotSize)
	if err != nil {
		return nil, fmt.Errorf("load snapshot %s: %w", id.Short(), err)
	}
	if hashID(b) != id {
		return nil, fmt.Errorf("snapshot %s: content does not match its name", h)
	}
	pt, err := r.seal.open(nil, b)
	if err != nil {
		return nil, fmt.Errorf("snapshot %s: %w", h, err)
	}
	sn, err := decodeSnapshot(pt)
	if err != nil {
		return nil, fmt.Errorf("snapshot %s: %w", h, err)
	}
	sn.ID = id
	return sn, nil
}

// Snapshots loads every snapshot, oldest first.
func (r *Repository) Snapshots(ctx context.Context) ([]*Snapshot, error) {
	ids, err := r.listIDs(ctx, backend.SnapshotFile, func(name string) {
		r.log.Warn("ignoring snapshot object with an invalid name", "name", name)
	})
	if err != nil {
		return nil, err
	}
	out := make([]*Snapshot, len(ids))
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(16)
	for i, id := range ids {
		g.Go(func() error {
			sn, err := r.LoadSnapshot(gctx, id)
			if err != nil {
				return err
			}
			out[i] = sn
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	sort.SliceStable(out, func(i, j int) bool {
		if !out[i].Time.Equal(out[j].Time) {
			return out[i].Time.Before(out[j].Time)
		}
		return out[i].ID.String() < out[j].ID.String()
	})
	return out, nil
}

// FindSnapshot returns the snapshot named by ref: "latest" or a unique hex
// prefix of an id. dataset and host filter when non-empty.
func (r *Repository) FindSnapshot(ctx context.Context, ref, dataset, host string) (*Snapshot, error) {
	snaps, err := r.Snapshots(ctx)
	if err != nil {
		return nil, err
	}
	var match []*Snapshot
	for _, sn := range snaps {
		if (dataset != "" && sn.Dataset != dataset) || (host != "" && sn.Host != host) {
			continue
		}
		if ref == "latest" || (ref != "" && strings.HasPrefix(sn.ID.String(), strings.ToLower(ref))) {
			match = append(match, sn)
		}
	}
	switch {
	case len(match) == 0:
		return nil, fmt.Errorf("no snapshot %q (dataset %q, host %q) in %s", ref, dataset, host, r.be.Location())
	case ref == "latest":
		return match[len(match)-1], nil
	case len(match) > 1:
		return nil, fmt.Errorf("snapshot prefix %q is ambiguous: %d snapshots match", ref, len(match))
	}
	return match[0], nil
}
