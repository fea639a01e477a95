package repository

import (
	"context"
	"fmt"

	"github.com/custos-backup/custos/repository/index"
)

// Stats are repository totals.
type Stats struct {
	Snapshots int `json:"snapshots"`
	Packs     int `json:"packs"` // packs listed in the index
	Blobs     int `json:"blobs"` // distinct blobs (type, id) in the index
	// PackBytes is the stored size of the indexed packs.
	PackBytes int64 `json:"pack_bytes"`
	// LogicalBytes is the sum of every snapshot's file bytes: what restoring
	// all snapshots would write. LogicalBytes / PackBytes is the space saved
	// by deduplication and compression.
	LogicalBytes int64 `json:"logical_bytes"`
	// Chunker is the content-defined chunker of new backups: "gear" or
	// "rabin".
	Chunker string `json:"chunker"`
}

// statsSource is what Stats reads of a repository: its snapshots and its
// index (Repository).
type statsSource interface {
	Snapshots(ctx context.Context) ([]*Snapshot, error)
	index() *index.Index
}

// Stats counts snapshots, packs and blobs, and sums their sizes.
func (r *Repository) Stats(ctx context.Context) (*Stats, error) {
	st, err := stats(ctx, r)
	if err != nil {
		return nil, err
	}
	st.Chunker = r.cfg.ChunkerName()
	return st, nil
}

func stats(ctx context.Context, src statsSource) (*Stats, error) {
	snaps, err := src.Snapshots(ctx)
	if err != nil {
		return nil, fmt.Errorf("stats: %w", err)
	}
	st := &Stats{Snapshots: len(snaps)}
	for _, s := range snaps {
		st.LogicalBytes += s.Summary.Bytes
	}
	x := src.index()
	st.Blobs, st.Packs = x.Count()
	st.PackBytes = x.PackBytes()
	return st, nil
}
