package repository

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"

	"github.com/custos-backup/custos/repository/backend"
	"github.com/custos-backup/custos/repository/format"
)

// saveSnapshot stores sn and sets sn.ID.
func (r *Repository) saveSnapshot(ctx context.Context, sn *Snapshot) error {
	b, err := format.EncodeSnapshot(sn)
	if err != nil {
		return err
	}
	stored := r.seal.Seal(nil, b)
	id := format.HashID(stored)
	if err := saveBytes(ctx, r.be, backend.Handle{Type: backend.SnapshotFile, Name: id.String()}, stored); err != nil {
		return err
	}
	sn.ID = id
	return nil
}

// LoadSnapshot loads and verifies one snapshot.
func (r *Repository) LoadSnapshot(ctx context.Context, id ID) (*Snapshot, error) {
	sn, err := r.loadSnapshot(ctx, id)
	if err != nil {
		return nil, err
	}
	return sn, nil
}

// errSnapshotDamaged marks snapshot files whose stored bytes are unusable,
// as opposed to failures to read them.
var errSnapshotDamaged = errors.New("damaged")

// loadSnapshot is LoadSnapshot; its error wraps errSnapshotDamaged when the
// object was read but its bytes do not verify or decode.
func (r *Repository) loadSnapshot(ctx context.Context, id ID) (*Snapshot, error) {
	b, err := fetchSnapshot(ctx, r.be, id)
	if err != nil {
		return nil, err
	}
	return r.openSnapshot(id, b)
}

// fetchSnapshot loads the stored bytes of snapshot file id, up to one byte
// more than a snapshot may have (openSnapshot calls that damage).
func fetchSnapshot(ctx context.Context, be packLoader, id ID) ([]byte, error) {
	h := backend.Handle{Type: backend.SnapshotFile, Name: id.String()}
	rd, err := be.Load(ctx, h, 0, 0)
	if err != nil {
		return nil, fmt.Errorf("load snapshot %s: %w", h, err)
	}
	defer func() { _ = rd.Close() }()
	b, err := io.ReadAll(io.LimitReader(rd, format.MaxSnapshotSize+1))
	if err != nil {
		return nil, fmt.Errorf("load snapshot %s: %w", h, err)
	}
	return b, nil
}

// openSnapshot verifies and decodes the stored bytes b of snapshot file
// id; its error wraps errSnapshotDamaged.
func (r *Repository) openSnapshot(id ID, b []byte) (*Snapshot, error) {
	h := backend.Handle{Type: backend.SnapshotFile, Name: id.String()}
	if len(b) > format.MaxSnapshotSize {
		return nil, fmt.Errorf("snapshot %s: %w: larger than %d bytes", h, errSnapshotDamaged, format.MaxSnapshotSize)
	}
	if format.HashID(b) != id {
		return nil, fmt.Errorf("snapshot %s: %w: content does not match its name", h, errSnapshotDamaged)
	}
	pt, err := r.seal.Open(nil, b)
	if err != nil {
		return nil, fmt.Errorf("snapshot %s: %w: %w", h, errSnapshotDamaged, err)
	}
	sn, err := format.DecodeSnapshot(pt)
	if err != nil {
		return nil, fmt.Errorf("snapshot %s: %w: %w", h, errSnapshotDamaged, err)
	}
	sn.ID = id
	return sn, nil
}

// DamagedSnapshot is a snapshot file whose stored bytes cannot be used:
// they do not hash to the file's name, do not open with the repository's
// key, or do not decode. What that snapshot references is unknown.
type DamagedSnapshot struct {
	ID  ID    // the file's name (snapshots/<ID>)
	Err error // what is wrong with it, naming the file
}

// ListSnapshots loads every snapshot, oldest first. Damaged snapshot files
// do not stop the listing: they are returned in damaged, ordered by name,
// so that the rest of the repository stays usable. A snapshot file that
// vanishes while listing (a concurrent forget) is skipped. Failing to list
// or to read a file is an error: the caller would otherwise act on an
// incomplete view.
func (r *Repository) ListSnapshots(ctx context.Context) (snaps []*Snapshot, damaged []DamagedSnapshot, err error) {
	ids, err := r.listIDs(ctx, backend.SnapshotFile, func(name string) {
		r.log.Warn("ignoring snapshot object with an invalid name", "name", name)
	})
	if err != nil {
		return nil, nil, err
	}
	// Damaged files are reported; a file removed while listing (a concurrent
	// forget) is skipped; any other error would leave the view incomplete.
	loaded, errs, err := loadAll(ctx, ids, 16, r.loadSnapshot, func(ctx context.Context, err error) bool {
		return !errors.Is(err, errSnapshotDamaged) && (!errors.Is(err, backend.ErrNotExist) || ctx.Err() != nil)
	})
	if err != nil {
		return nil, nil, err
	}
	for i, sn := range loaded {
		if sn != nil {
			snaps = append(snaps, sn)
		} else if errors.Is(errs[i], errSnapshotDamaged) {
			damaged = append(damaged, DamagedSnapshot{ID: ids[i], Err: errs[i]})
		}
	}
	sort.SliceStable(snaps, func(i, j int) bool {
		if !snaps[i].Time.Equal(snaps[j].Time) {
			return snaps[i].Time.Before(snaps[j].Time)
		}
		return snaps[i].ID.String() < snaps[j].ID.String()
	})
	sort.Slice(damaged, func(i, j int) bool { return damaged[i].ID.String() < damaged[j].ID.String() })
	return snaps, damaged, nil
}

// Snapshots loads every readable snapshot, oldest first. Damaged snapshot
// files are skipped with a logged warning; use ListSnapshots to learn
// which they are (anything that must know every snapshot, like prune,
// must).
func (r *Repository) Snapshots(ctx context.Context) ([]*Snapshot, error) {
	snaps, damaged, err := r.ListSnapshots(ctx)
	if err != nil {
		return nil, err
	}
	for _, d := range damaged {
		r.log.Warn("skipping damaged snapshot file", "snapshot", d.ID.String(), "err", d.Err)
	}
	return snaps, nil
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
