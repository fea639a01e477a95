package metadata

import (
	"context"
	"encoding/json"
	"fmt"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// PutFixityResult records r as the latest result for its pack and appends
// it to the pack's history, in one transaction.
func (s *EtcdStore) PutFixityResult(ctx context.Context, r *FixityResult) error {
	if r == nil {
		return fmt.Errorf("%w: nil fixity result", ErrInvalid)
	}
	if err := checkName("repository", r.Repository, true); err != nil {
		return err
	}
	if err := checkName("pack", r.Pack, true); err != nil {
		return fmt.Errorf("fixity result in repository %s: %w", r.Repository, err)
	}
	if r.Time.IsZero() {
		return fmt.Errorf("%w: fixity result for pack %s in %s has no time", ErrInvalid, r.Pack, r.Repository)
	}
	v := mustJSON(r)
	_, err := s.kv.Txn(ctx).Then(
		clientv3.OpPut(s.k.fixity(r.Repository, r.Pack), v),
		clientv3.OpPut(s.k.fixityLog(r), v),
	).Commit()
	if err != nil {
		return fmt.Errorf("metadata: put fixity result for pack %s in %s: %w", r.Pack, r.Repository, err)
	}
	return nil
}

// GetFixityResult returns the latest result for a pack, or ErrNotFound.
func (s *EtcdStore) GetFixityResult(ctx context.Context, repo, pack string) (*FixityResult, error) {
	var r FixityResult
	if err := s.getJSON(ctx, s.k.fixity(repo, pack), &r); err != nil {
		return nil, fmt.Errorf("fixity result for pack %s in %s: %w", pack, repo, err)
	}
	return &r, nil
}

// ListFixityResults returns the latest result of every pack of repo that
// has one, by pack id.
func (s *EtcdStore) ListFixityResults(ctx context.Context, repo string) ([]*FixityResult, error) {
	var out []*FixityResult
	if err := listJSON(ctx, s, s.k.fixityPrefix(repo), 0, &out); err != nil {
		return nil, fmt.Errorf("metadata: list fixity results of %s: %w", repo, err)
	}
	return out, nil
}

// FixityHistory returns up to limit (<= 0: all) results of one pack,
// newest first.
func (s *EtcdStore) FixityHistory(ctx context.Context, repo, pack string, limit int) ([]*FixityResult, error) {
	var out []*FixityResult
	if err := listJSON(ctx, s, s.k.fixityLogPrefix(repo, pack), limit, &out); err != nil {
		return nil, fmt.Errorf("metadata: fixity history of pack %s in %s: %w", pack, repo, err)
	}
	return out, nil
}

// PutReplica records (or replaces) the replica record of one snapshot in
// one repository.
func (s *EtcdStore) PutReplica(ctx context.Context, r *ReplicaRecord) error {
	if r == nil {
		return fmt.Errorf("%w: nil replica record", ErrInvalid)
	}
	if err := checkName("repository", r.Repository, true); err != nil {
		return err
	}
	if err := checkName("snapshot", r.SnapshotID, true); err != nil {
		return fmt.Errorf("replica record in repository %s: %w", r.Repository, err)
	}
	if _, err := s.kv.Put(ctx, s.k.replica(r.Repository, r.SnapshotID), mustJSON(r)); err != nil {
		return fmt.Errorf("metadata: put replica record of snapshot %s in %s: %w", r.SnapshotID, r.Repository, err)
	}
	return nil
}

// GetReplica returns the replica record of a snapshot in a repository, or
// ErrNotFound.
func (s *EtcdStore) GetReplica(ctx context.Context, repo, snapshotID string) (*ReplicaRecord, error) {
	var r ReplicaRecord
	if err := s.getJSON(ctx, s.k.replica(repo, snapshotID), &r); err != nil {
		return nil, fmt.Errorf("replica record of snapshot %s in %s: %w", snapshotID, repo, err)
	}
	return &r, nil
}

// ListReplicas returns every replica record of repo, by snapshot id.
func (s *EtcdStore) ListReplicas(ctx context.Context, repo string) ([]*ReplicaRecord, error) {
	var out []*ReplicaRecord
	if err := listJSON(ctx, s, s.k.replicaPrefix(repo), 0, &out); err != nil {
		return nil, fmt.Errorf("metadata: list replicas of %s: %w", repo, err)
	}
	return out, nil
}

func (s *EtcdStore) getJSON(ctx context.Context, key string, v any) error {
	resp, err := s.kv.Get(ctx, key)
	if err != nil {
		return fmt.Errorf("metadata: get: %w", err)
	}
	if len(resp.Kvs) == 0 {
		return ErrNotFound
	}
	if err := json.Unmarshal(resp.Kvs[0].Value, v); err != nil {
		return fmt.Errorf("metadata: decode %q: %w", key, err)
	}
	return nil
}

func listJSON[T any](ctx context.Context, s *EtcdStore, prefix string, limit int, out *[]*T) error {
	return s.scan(ctx, prefix, prefixEnd(prefix), false, func(key, val []byte) (string, bool, error) {
		v := new(T)
		if err := json.Unmarshal(val, v); err != nil {
			return "", false, fmt.Errorf("decode %q: %w", key, err)
		}
		*out = append(*out, v)
		return "", limit > 0 && len(*out) >= limit, nil
	})
}
