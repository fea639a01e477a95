package metadata

import (
	"context"
	"errors"
	"fmt"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/custos-backup/custos/metadata/etcdserver"
)

// ErrReadOnly is the error of a write to a catalog opened read-only from
// its files (Config.ReadOnly).
var ErrReadOnly = errors.New("metadata: the catalog is open read-only")

// snapshotKV answers the reads of etcd's KV API from a snapshot of an
// embedded catalog's database: every key at one revision, so that the
// store's reads (which pin one revision) see one moment, as they do on a
// server. Writes, compares and other revisions are refused.
type snapshotKV struct {
	s *etcdserver.Snapshot
}

var _ clientv3.KV = snapshotKV{}

// snapshotClient is a client whose KV reads s. It has no connection:
// leases fail with ErrReadOnly and watches end at once, cancelled.
func snapshotClient(s *etcdserver.Snapshot) *clientv3.Client {
	cli := clientv3.NewCtxClient(context.Background())
	cli.KV = snapshotKV{s}
	cli.Lease = noLease{}
	cli.Watcher = noWatch{}
	return cli
}

type noLease struct{}

func (noLease) Grant(context.Context, int64) (*clientv3.LeaseGrantResponse, error) {
	return nil, ErrReadOnly
}

func (noLease) Revoke(context.Context, clientv3.LeaseID) (*clientv3.LeaseRevokeResponse, error) {
	return nil, ErrReadOnly
}

func (noLease) TimeToLive(context.Context, clientv3.LeaseID, ...clientv3.LeaseOption) (*clientv3.LeaseTimeToLiveResponse, error) {
	return nil, ErrReadOnly
}

func (noLease) Leases(context.Context) (*clientv3.LeaseLeasesResponse, error) {
	return nil, ErrReadOnly
}

func (noLease) KeepAlive(context.Context, clientv3.LeaseID) (<-chan *clientv3.LeaseKeepAliveResponse, error) {
	return nil, ErrReadOnly
}

func (noLease) KeepAliveOnce(context.Context, clientv3.LeaseID) (*clientv3.LeaseKeepAliveResponse, error) {
	return nil, ErrReadOnly
}

func (noLease) Close() error { return nil }

type noWatch struct{}

func (noWatch) Watch(context.Context, string, ...clientv3.OpOption) clientv3.WatchChan {
	ch := make(chan clientv3.WatchResponse, 1)
	ch <- clientv3.WatchResponse{Canceled: true}
	close(ch)
	return ch
}

func (noWatch) RequestProgress(context.Context) error { return ErrReadOnly }

func (noWatch) Close() error { return nil }

func (k snapshotKV) Get(ctx context.Context, key string, opts ...clientv3.OpOption) (*clientv3.GetResponse, error) {
	r, err := k.rangeOp(ctx, clientv3.OpGet(key, opts...))
	return (*clientv3.GetResponse)(r), err
}

// GetStream is not used by the store.
func (k snapshotKV) GetStream(context.Context, string, ...clientv3.OpOption) (clientv3.GetStreamChan, error) {
	return nil, fmt.Errorf("%w: streamed reads are not supported", ErrReadOnly)
}

func (k snapshotKV) Put(context.Context, string, string, ...clientv3.OpOption) (*clientv3.PutResponse, error) {
	return nil, ErrReadOnly
}

func (k snapshotKV) Delete(context.Context, string, ...clientv3.OpOption) (*clientv3.DeleteResponse, error) {
	return nil, ErrReadOnly
}

func (k snapshotKV) Compact(context.Context, int64, ...clientv3.CompactOption) (*clientv3.CompactResponse, error) {
	return nil, ErrReadOnly
}

func (k snapshotKV) Do(ctx context.Context, op clientv3.Op) (clientv3.OpResponse, error) {
	if !op.IsGet() {
		return clientv3.OpResponse{}, ErrReadOnly
	}
	r, err := k.rangeOp(ctx, op)
	if err != nil {
		return clientv3.OpResponse{}, err
	}
	return (*clientv3.GetResponse)(r).OpResponse(), nil
}

func (k snapshotKV) Txn(ctx context.Context) clientv3.Txn {
	return &snapshotTxn{ctx: ctx, kv: k}
}

func (k snapshotKV) rangeOp(ctx context.Context, op clientv3.Op) (*pb.RangeResponse, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if r := op.Rev(); r != 0 && r != k.s.Rev() {
		return nil, fmt.Errorf("%w: it holds revision %d only, not %d", ErrReadOnly, k.s.Rev(), r)
	}
	if op.IsSortSet() || op.MinModRev() != 0 || op.MaxModRev() != 0 || op.MinCreateRev() != 0 || op.MaxCreateRev() != 0 {
		return nil, fmt.Errorf("%w: sorted or filtered reads are not supported", ErrReadOnly)
	}
	r := &pb.RangeResponse{Header: &pb.ResponseHeader{Revision: k.s.Rev()}}
	kvs, count := k.s.Range(op.KeyBytes(), op.RangeBytes(), op.Limit(), op.IsKeysOnly())
	r.Count = count
	r.More = int64(len(kvs)) < count
	if !op.IsCountOnly() {
		r.Kvs = kvs
	}
	return r, nil
}

// snapshotTxn runs transactions of reads without conditions (the store's
// batched gets).
type snapshotTxn struct {
	ctx        context.Context
	kv         snapshotKV
	conditions bool
	ops        []clientv3.Op
}

func (t *snapshotTxn) If(cs ...clientv3.Cmp) clientv3.Txn {
	t.conditions = t.conditions || len(cs) > 0
	return t
}

func (t *snapshotTxn) Then(ops ...clientv3.Op) clientv3.Txn {
	t.ops = append(t.ops, ops...)
	return t
}

func (t *snapshotTxn) Else(ops ...clientv3.Op) clientv3.Txn {
	t.conditions = t.conditions || len(ops) > 0
	return t
}

func (t *snapshotTxn) Commit() (*clientv3.TxnResponse, error) {
	if t.conditions {
		return nil, fmt.Errorf("%w: transactions with conditions are not supported", ErrReadOnly)
	}
	r := &clientv3.TxnResponse{Header: &pb.ResponseHeader{Revision: t.kv.s.Rev()}, Succeeded: true}
	for _, op := range t.ops {
		if !op.IsGet() {
			return nil, ErrReadOnly
		}
		rr, err := t.kv.rangeOp(t.ctx, op)
		if err != nil {
			return nil, err
		}
		r.Responses = append(r.Responses, &pb.ResponseOp{Response: &pb.ResponseOp_ResponseRange{ResponseRange: rr}})
	}
	return r, nil
}
