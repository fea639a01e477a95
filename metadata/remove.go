package metadata

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// maxRemoveAttempts bounds how often RemoveDatasetVersion starts again
// when the record or the backup's dataset index changed between its read
// and its guarded delete.
const maxRemoveAttempts = 5

// RemoveDatasetVersion removes one version of one dataset (the dataset of
// backup backupID taken at ts) from the catalog, and the backup record with
// its indexes when it was the backup's last dataset. It reports whether
// there was such a version; removing one that is not there is no error.
//
// The dataset record goes first, in one guarded transaction: readers
// trust atom records and list chunks only while a record names their atom
// set (see KEYS.md), so from that revision on no reader counts the
// version's atoms. The atom records and list chunks are deleted after it,
// in batches; a failure there leaves them invisible and is only logged.
func (s *EtcdStore) RemoveDatasetVersion(ctx context.Context, source, dataset string, ts time.Time, backupID string) (bool, error) {
	if err := checkName("source", source, false); err != nil {
		return false, err
	}
	if err := checkName("dataset", dataset, false); err != nil {
		return false, err
	}
	if err := checkName("backup id", backupID, true); err != nil {
		return false, err
	}
	if s.closed() {
		return false, ErrClosed
	}
	what := fmt.Sprintf("backup %s dataset %s/%s", backupID, source, dataset)
	for attempt := 1; ; attempt++ {
		removed, err := s.removeOnce(ctx, source, dataset, ts.UTC(), backupID, nil, nil)
		if !errors.Is(err, errRaced) || attempt >= maxRemoveAttempts {
			if err != nil {
				return false, fmt.Errorf("metadata: remove %s: %w", what, err)
			}
			return removed, nil
		}
		s.log.Debug("catalog record changed during the removal; trying again", "backup", backupID, "dataset", source+"/"+dataset, "attempt", attempt)
	}
}

// removeGuarded is RemoveDatasetVersion for the peer sync: only while the
// dataset record is at mod revision expectRev (errMovedOn otherwise), with
// extra in the transaction that deletes the record.
func (s *EtcdStore) removeGuarded(ctx context.Context, source, dataset string, ts time.Time, backupID string, expectRev int64, extra []clientv3.Op) error {
	what := fmt.Sprintf("backup %s dataset %s/%s", backupID, source, dataset)
	for attempt := 1; ; attempt++ {
		_, err := s.removeOnce(ctx, source, dataset, ts.UTC(), backupID, &expectRev, extra)
		if !errors.Is(err, errRaced) || attempt >= maxRemoveAttempts {
			if err != nil {
				return fmt.Errorf("metadata: remove %s: %w", what, err)
			}
			return nil
		}
	}
}

func (s *EtcdStore) removeOnce(ctx context.Context, source, dataset string, ts time.Time, backupID string, expectRev *int64, extra []clientv3.Op) (bool, error) {
	dsKey := s.k.dataset(source, dataset, ts, backupID)
	hk := s.k.backup(backupID)
	dsIndex := s.k.backupDSPrefix(backupID)
	resp, err := s.kv.Txn(ctx).Then(
		clientv3.OpGet(dsKey),
		clientv3.OpGet(hk),
		clientv3.OpGet(dsIndex, clientv3.WithRange(prefixEnd(dsIndex)), clientv3.WithKeysOnly()),
	).Commit()
	if err != nil {
		return false, err
	}
	rev := resp.Header.Revision
	dkv, bkv := firstKV(resp, 0), firstKV(resp, 1)
	if expectRev != nil && (dkv == nil || dkv.ModRevision != *expectRev) {
		return false, errMovedOn
	}
	if dkv == nil {
		return false, nil
	}
	var rec *datasetRecord
	if r, err := decodeDatasetRecord(dkv.Key, dkv.Value); err != nil {
		// Readers skip it too; what it named cannot be known, so only
		// the record goes.
		s.log.Warn("removing an undecodable dataset record without its atoms", "key", string(dkv.Key), "err", err)
	} else {
		rec = r
	}

	cmps := []clientv3.Cmp{clientv3.Compare(clientv3.ModRevision(dsKey), "=", dkv.ModRevision)}
	ops := []clientv3.Op{clientv3.OpDelete(dsKey), clientv3.OpDelete(s.k.backupDS(backupID, source, dataset))}
	ops = append(ops, extra...)
	others := 0
	ownIndex := s.k.backupDS(backupID, source, dataset)
	for _, kv := range resp.Responses[2].GetResponseRange().Kvs {
		if string(kv.Key) != ownIndex {
			others++
		}
	}
	if others == 0 && bkv != nil {
		// The backup's last dataset: the backup goes with it, unless a
		// dataset is added to it meanwhile (its index key would be newer
		// than rev) or the backup record changes.
		var b Backup
		if err := json.Unmarshal(bkv.Value, &b); err != nil {
			return false, fmt.Errorf("decode backup record: %w", err)
		}
		h := header(&b)
		cmps = append(cmps,
			clientv3.Compare(clientv3.ModRevision(dsIndex), "<", rev+1).WithRange(prefixEnd(dsIndex)),
			clientv3.Compare(clientv3.ModRevision(hk), "=", bkv.ModRevision))
		ops = append(ops, clientv3.OpDelete(hk), clientv3.OpDelete(s.k.backupTime(h)), clientv3.OpDelete(s.k.backupHost(h)))
	}
	r, err := s.commit(ctx, func(t clientv3.Txn) clientv3.Txn { return t.If(cmps...).Then(ops...) })
	if err != nil {
		return false, err
	}
	if !r.Succeeded {
		return false, errRaced
	}
	if rec == nil {
		return true, nil
	}
	// The record is gone: what it named is invisible now, and no write
	// can name that atom set again, so its deletes need no guard.
	stale, err := s.staleAtoms(ctx, &datasetWrite{h: &Backup{ID: backupID, Timestamp: ts}, source: source, dataset: dataset}, rec, 0)
	if err == nil {
		_, err = s.commitBatches(ctx, stale, nil)
	}
	if err != nil {
		s.log.Warn("dataset version removed, but its atom records stay behind, unused", "backup", backupID, "dataset", source+"/"+dataset, "err", err)
	}
	return true, nil
}
