package metadata

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// maxTxnBytes bounds the key and value bytes of one transaction that the
// store builds. etcd refuses a request above its --max-request-bytes
// (1.5 MiB by default) and the client one above 2 MiB; the rest is left
// for protobuf framing and compares.
const maxTxnBytes = 1 << 20

// maxWriteAttempts bounds how often write starts again when the backup or
// dataset record changed between its read and its guarded switch (another
// writer of the same dataset).
const maxWriteAttempts = 5

// errRaced: the guard of the switch transaction failed.
var errRaced = errors.New("metadata: backup or dataset record changed during the write")

// Steps of a write split over several transactions, for testHook.
const (
	stepAtomsWritten   = "atoms-written"   // new atom records put, dataset record not yet switched
	stepRecordSwitched = "record-switched" // dataset record switched, stale atom records not yet deleted
)

// datasetWrite is what write puts for one AddDataset.
type datasetWrite struct {
	what            string
	h               *Backup
	source, dataset string
	hk              string        // backup record
	create          []clientv3.Op // backup record and its time indexes, for a new backup
	record          []clientv3.Op // backup-ds index and dataset record
	dsKey           string
	atoms           []clientv3.Op // atom record puts
	names           map[string]bool
}

func opBytes(ops ...clientv3.Op) int {
	n := 0
	for _, op := range ops {
		n += len(op.KeyBytes()) + len(op.ValueBytes()) + 16
	}
	return n
}

func (s *EtcdStore) fits(ops []clientv3.Op) bool {
	return len(ops) <= s.opts.MaxTxnOps && opBytes(ops...) <= maxTxnBytes
}

func (s *EtcdStore) planWrite(b *Backup, d *Dataset) *datasetWrite {
	h := header(b)
	hv := mustJSON(h)
	w := &datasetWrite{
		what:    fmt.Sprintf("backup %s dataset %s/%s", h.ID, d.Source, d.Name),
		h:       h,
		source:  d.Source,
		dataset: d.Name,
		hk:      s.k.backup(h.ID),
		dsKey:   s.k.dataset(d.Source, d.Name, h.Timestamp, h.ID),
		names:   make(map[string]bool, len(d.Atoms)),
	}
	w.create = []clientv3.Op{
		clientv3.OpPut(w.hk, hv),
		clientv3.OpPut(s.k.backupTime(h), hv),
		clientv3.OpPut(s.k.backupHost(h), hv),
	}
	w.record = []clientv3.Op{
		clientv3.OpPut(s.k.backupDS(h.ID, d.Source, d.Name), ""),
		clientv3.OpPut(w.dsKey, mustJSON(datasetRecord{BackupID: h.ID, Host: h.Host, Timestamp: h.Timestamp, Dataset: d})),
	}
	w.atoms = make([]clientv3.Op, 0, len(d.Atoms))
	for _, a := range d.Atoms {
		w.names[a.Name] = true
		v := mustJSON(atomRecord{BackupID: h.ID, DatasetID: d.ID, Host: h.Host, Timestamp: h.Timestamp, Atom: a})
		w.atoms = append(w.atoms, clientv3.OpPut(s.k.atom(AtomName(d.Source, d.Name, a.Name), h.Timestamp, h.ID), v))
	}
	return w
}

// commit runs one transaction within WriteTimeout, so that a large
// dataset gets time in proportion to its transactions. etcd's refusal of
// an oversized request is ErrInvalid: retrying it from the spool could
// never succeed and would hold up every record behind it.
func (s *EtcdStore) commit(ctx context.Context, txn func(clientv3.Txn) clientv3.Txn) (*clientv3.TxnResponse, error) {
	ctx, cancel := context.WithTimeout(ctx, s.opts.WriteTimeout)
	defer cancel()
	resp, err := txn(s.kv.Txn(ctx)).Commit()
	if errors.Is(err, rpctypes.ErrRequestTooLarge) {
		return nil, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	return resp, err
}

// write puts the records of one dataset so that every reader, at every
// revision and after a crash at any point, sees the dataset's atoms as
// the dataset record lists them: the old set or the new one, never a mix.
// Readers trust an atom record only when the dataset record of its
// version lists the atom (see FindAtoms), so the order is:
//
//  1. put the atom records of the new set (invisible while the record
//     does not list them; shared atoms keep being shown from the record);
//  2. switch: put the dataset record (and, for a new backup, the backup
//     record and its indexes), guarded by the mod revisions read before;
//  3. delete the atom records the old record listed and the new one does
//     not, guarded by the record still being the one step 2 wrote.
//
// When all of it fits in one transaction (MaxTxnOps, maxTxnBytes) it is
// one transaction. Repeating a write rewrites the same keys.
func (s *EtcdStore) write(ctx context.Context, b *Backup, d *Dataset) error {
	w := s.planWrite(b, d)
	for attempt := 1; ; attempt++ {
		err := s.writeOnce(ctx, w)
		if !errors.Is(err, errRaced) || attempt >= maxWriteAttempts {
			return err
		}
		s.log.Debug("catalog record changed during the write; writing again", "backup", w.h.ID, "dataset", w.source+"/"+w.dataset, "attempt", attempt)
	}
}

func concatOps(parts ...[]clientv3.Op) []clientv3.Op {
	var out []clientv3.Op
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}

func firstKV(r *clientv3.TxnResponse, i int) *mvccpb.KeyValue {
	if kvs := r.Responses[i].GetResponseRange().Kvs; len(kvs) > 0 {
		return kvs[0]
	}
	return nil
}

func (s *EtcdStore) writeOnce(ctx context.Context, w *datasetWrite) error {
	// The first transaction reads the backup and dataset records. When
	// everything fits in one transaction it instead writes it all if both
	// are absent (a new backup's first dataset, the common case), and
	// reads them only when they are not.
	read := func(t clientv3.Txn) clientv3.Txn {
		return t.Then(clientv3.OpGet(w.hk), clientv3.OpGet(w.dsKey))
	}
	all := concatOps(w.create, w.record, w.atoms)
	fast := s.fits(all)
	if fast {
		read = func(t clientv3.Txn) clientv3.Txn {
			return t.If(clientv3.Compare(clientv3.CreateRevision(w.hk), "=", 0),
				clientv3.Compare(clientv3.ModRevision(w.dsKey), "=", 0)).
				Then(all...).
				Else(clientv3.OpGet(w.hk), clientv3.OpGet(w.dsKey))
		}
	}
	resp, err := s.commit(ctx, read)
	if err != nil {
		return fmt.Errorf("metadata: write %s: %w", w.what, err)
	}
	if fast && resp.Succeeded {
		return nil // wrote everything
	}
	bkv, dkv := firstKV(resp, 0), firstKV(resp, 1)

	var cmps []clientv3.Cmp
	var sw []clientv3.Op // the switch
	if bkv == nil {
		cmps = append(cmps, clientv3.Compare(clientv3.CreateRevision(w.hk), "=", 0))
		sw = append(sw, w.create...)
	} else {
		var old Backup
		if err := json.Unmarshal(bkv.Value, &old); err != nil {
			return fmt.Errorf("metadata: write %s: decode backup record: %w", w.what, err)
		}
		if old.Host != w.h.Host || !old.Timestamp.Equal(w.h.Timestamp) {
			return fmt.Errorf("%w: %s: backup recorded with host %q time %s, got host %q time %s",
				ErrConflict, w.what, old.Host, old.Timestamp.Format(time.RFC3339Nano), w.h.Host, w.h.Timestamp.Format(time.RFC3339Nano))
		}
		cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(w.hk), "=", bkv.ModRevision))
	}
	var dsRev int64
	if dkv != nil {
		dsRev = dkv.ModRevision
	}
	cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(w.dsKey), "=", dsRev))
	sw = append(sw, w.record...)
	stale := s.staleAtoms(w, dkv)

	if all := concatOps(sw, w.atoms, stale); s.fits(all) {
		r, err := s.commit(ctx, func(t clientv3.Txn) clientv3.Txn { return t.If(cmps...).Then(all...) })
		if err != nil {
			return fmt.Errorf("metadata: write %s: %w", w.what, err)
		}
		if !r.Succeeded {
			return fmt.Errorf("metadata: write %s: %w", w.what, errRaced)
		}
		return nil
	}

	// Too large for one transaction: the three steps.
	if _, err := s.commitBatches(ctx, w.atoms, nil); err != nil {
		return fmt.Errorf("metadata: write atoms of %s: %w", w.what, err)
	}
	if err := s.runHook(ctx, stepAtomsWritten); err != nil {
		return err
	}
	r, err := s.commit(ctx, func(t clientv3.Txn) clientv3.Txn { return t.If(cmps...).Then(sw...) })
	if err != nil {
		return fmt.Errorf("metadata: write %s: %w", w.what, err)
	}
	if !r.Succeeded {
		return fmt.Errorf("metadata: write %s: %w", w.what, errRaced)
	}
	if err := s.runHook(ctx, stepRecordSwitched); err != nil {
		return err
	}
	if len(stale) == 0 {
		return nil
	}
	// The record is in etcd, and readers ignore atom records it does not
	// list: what is left is cleanup. If it fails, the leftovers stay
	// invisible and only take space, and a retry could not find them any
	// more (the record no longer names them), so the write still counts
	// as done.
	guard := clientv3.Compare(clientv3.ModRevision(w.dsKey), "=", r.Header.Revision)
	done, err := s.commitBatches(ctx, stale, &guard)
	switch {
	case err != nil:
		s.log.Warn("could not delete atom records the dataset no longer has; they stay, unused",
			"backup", w.h.ID, "dataset", w.source+"/"+w.dataset, "left", len(stale)-done, "err", err)
	case done < len(stale):
		// Another write of this dataset switched the record meanwhile; it
		// may list some of these atoms again, so they must stay.
		s.log.Info("dataset record replaced during cleanup; leaving the rest of its stale atom records",
			"backup", w.h.ID, "dataset", w.source+"/"+w.dataset, "left", len(stale)-done)
	}
	return nil
}

// staleAtoms returns deletes for the atom records of the old dataset
// record (dkv; nil when there is none) that the new one does not have.
func (s *EtcdStore) staleAtoms(w *datasetWrite, dkv *mvccpb.KeyValue) []clientv3.Op {
	if dkv == nil {
		return nil
	}
	var old datasetRecord
	if err := json.Unmarshal(dkv.Value, &old); err != nil || old.Dataset == nil {
		// Readers cannot use that record either; its atom records become
		// invisible once the new record replaces it.
		s.log.Warn("undecodable dataset record is replaced without deleting its atom records", "key", string(dkv.Key), "err", err)
		return nil
	}
	var ops []clientv3.Op
	for _, a := range old.Dataset.Atoms {
		if !w.names[a.Name] {
			ops = append(ops, clientv3.OpDelete(s.k.atom(AtomName(w.source, w.dataset, a.Name), w.h.Timestamp, w.h.ID)))
		}
	}
	return ops
}

// commitBatches runs ops in transactions within MaxTxnOps and maxTxnBytes,
// each guarded by guard when it is set. It returns how many ops were
// committed; fewer than len(ops) without error means the guard failed.
func (s *EtcdStore) commitBatches(ctx context.Context, ops []clientv3.Op, guard *clientv3.Cmp) (int, error) {
	done := 0
	for done < len(ops) {
		n, size := 0, 0
		for done+n < len(ops) && n < s.opts.MaxTxnOps {
			sz := opBytes(ops[done+n])
			if n > 0 && size+sz > maxTxnBytes {
				break
			}
			n, size = n+1, size+sz
		}
		batch := ops[done : done+n]
		r, err := s.commit(ctx, func(t clientv3.Txn) clientv3.Txn {
			if guard != nil {
				t = t.If(*guard)
			}
			return t.Then(batch...)
		})
		if err != nil {
			return done, err
		}
		if !r.Succeeded {
			return done, nil
		}
		done += n
	}
	return done, nil
}

func (s *EtcdStore) runHook(ctx context.Context, step string) error {
	if s.testHook == nil {
		return nil
	}
	return s.testHook(ctx, step)
}

// errEtcdDown is the cause with which writes in flight are cancelled when
// another write found etcd unreachable.
var errEtcdDown = errors.New("metadata: etcd unreachable")

// etcdUp reports whether etcd is believed reachable, and a context that is
// cancelled (cause errEtcdDown) as soon as it is marked down.
func (s *EtcdStore) etcdUp() (context.Context, bool) {
	s.healthMu.Lock()
	defer s.healthMu.Unlock()
	return s.upCtx, !s.down
}

// markDown remembers that a write did not get through, so that following
// AddDataset calls go straight to the spool instead of each waiting for
// WriteTimeout, and cancels direct writes in flight, which would wait for
// the same. Only the flusher's success (markUp) clears it.
func (s *EtcdStore) markDown(err error) {
	s.healthMu.Lock()
	defer s.healthMu.Unlock()
	if s.down {
		return
	}
	s.down = true
	s.upCancel(fmt.Errorf("%w: %w", errEtcdDown, err))
	s.log.Warn("etcd unreachable; catalog records go to the spool until it answers again", "err", err)
}

// markUp: a spooled record reached etcd, so new records may try it
// directly again (once the spool is empty; until then they queue behind
// it to keep their order).
func (s *EtcdStore) markUp() {
	s.healthMu.Lock()
	defer s.healthMu.Unlock()
	if !s.down {
		return
	}
	s.down = false
	s.upCtx, s.upCancel = context.WithCancelCause(context.Background())
	s.log.Info("etcd answers again; catalog records go to etcd directly once the spool is empty")
}
