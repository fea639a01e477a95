package metadata

import (
	"context"
	"fmt"
	"time"
)

// AllDatasetVersions returns every dataset version in the catalog written
// by host ("" = every host), each as a Backup holding that one dataset
// with its atoms, ordered by source, dataset and newest first. It reads
// at one revision, so it sees each version whole. It holds the whole
// catalog's atom lists in memory at once: it is meant for the sync, which
// compares them with the repositories, not for every request.
func (s *EtcdStore) AllDatasetVersions(ctx context.Context, host string) ([]*Backup, error) {
	p := s.k.p + nsDataset
	var out []*Backup
	var recs []*datasetRecord
	var rev int64
	err := s.scanAt(ctx, p, prefixEnd(p), false, 0, &rev, nil, func(key, val []byte) (string, bool, error) {
		rec, err := decodeDatasetRecord(key, val)
		if err != nil {
			// One damaged record must not hide the rest from the sync;
			// readers skip it too.
			s.log.Warn("skipping an undecodable dataset record", "key", string(key), "err", err)
			return "", false, nil
		}
		if host != "" && rec.Host != host {
			return "", false, nil
		}
		recs = append(recs, rec)
		out = append(out, &Backup{ID: rec.BackupID, Timestamp: rec.Timestamp, Host: rec.Host, Datasets: []*Dataset{rec.Dataset}})
		return "", false, nil
	})
	if err == nil {
		err = s.fillAtoms(ctx, recs, rev)
	}
	if err != nil {
		return nil, fmt.Errorf("metadata: list every dataset version: %w", err)
	}
	return out, nil
}

// GetDatasetVersion returns one version of one dataset (the dataset of
// backup backupID taken at ts) with its atoms, as a Backup holding that
// dataset, or ErrNotFound.
func (s *EtcdStore) GetDatasetVersion(ctx context.Context, source, dataset string, ts time.Time, backupID string) (*Backup, error) {
	if err := checkName("source", source, false); err != nil {
		return nil, err
	}
	if err := checkName("dataset", dataset, false); err != nil {
		return nil, err
	}
	what := fmt.Sprintf("backup %s dataset %s/%s", backupID, source, dataset)
	key := s.k.dataset(source, dataset, ts, backupID)
	resp, err := s.kv.Get(ctx, key)
	if err != nil {
		return nil, fmt.Errorf("metadata: get %s: %w", what, err)
	}
	if len(resp.Kvs) == 0 {
		return nil, fmt.Errorf("%s: %w", what, ErrNotFound)
	}
	rec, err := decodeDatasetRecord(resp.Kvs[0].Key, resp.Kvs[0].Value)
	if err != nil {
		return nil, fmt.Errorf("metadata: %s: %w", what, err)
	}
	if err := s.fillAtoms(ctx, []*datasetRecord{rec}, resp.Header.Revision); err != nil {
		return nil, fmt.Errorf("metadata: %s: %w", what, err)
	}
	return &Backup{ID: rec.BackupID, Timestamp: rec.Timestamp, Host: rec.Host, Datasets: []*Dataset{rec.Dataset}}, nil
}
