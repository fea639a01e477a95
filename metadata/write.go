package metadata

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Request size limits. etcd refuses a request above its
// --max-request-bytes (etcdserver.MaxRequestBytes, which the embedded
// server sets explicitly; an external cluster must not set less) and the
// gRPC client one above its send limit (maxCallSendMsgSize, set by
// Connect). The store builds no transaction above maxTxnBytes of keys and
// values, leaving the rest for protobuf framing and compares; no single
// key and value can come near it (names are bounded by maxNameBytes, atom
// list chunks by chunkBytes).
const (
	maxTxnBytes = 1 << 20
	// chunkBytes bounds one chunk of a dataset version's atom list.
	chunkBytes = 128 << 10
)

// maxWriteAttempts bounds how often write starts again when the backup or
// dataset record changed between its read and its guarded switch (another
// writer of the same dataset).
const maxWriteAttempts = 5

// errRaced: the guard of the switch transaction failed: another write of
// the same backup or dataset record, or a sweep that took the new atom set
// for a leftover (SweepAtomSets).
var errRaced = errors.New("metadata: backup or dataset record changed, or the new atom set was swept, during the write")

// Steps of a write split over several transactions, for testHook.
const (
	stepAtomsWritten   = "atoms-written"   // new atom set put, dataset record not yet switched
	stepRecordSwitched = "record-switched" // dataset record switched, old atom set not yet deleted
)

// datasetWrite is what write puts for one AddDataset.
type datasetWrite struct {
	what            string
	h               *Backup
	source, dataset string
	hk              string        // backup record
	create          []clientv3.Op // backup record and its time indexes, for a new backup
	record          []clientv3.Op // backup-ds index and dataset record (the switch)
	dsKey           string
	chunk0          string        // the new atom set's list chunk 000000 ("": no atoms)
	sum             string        // content of the dataset as added
	atoms           []clientv3.Op // the atom set: list chunks, then atom records

	// A peer sync's write (writeGuarded): the dataset record must still
	// be at expectRev (0: absent), and extra goes into the switch, so
	// that the record and the sync's own bookkeeping change together.
	expectRev *int64
	extra     []clientv3.Op
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

// newGen returns a fresh atom set id. Every write gets its own, so an atom
// set, once superseded, is never made current again and can be deleted
// without a guard.
func newGen() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// contentSum identifies what AddDataset was given, so that adding the
// same again (a retried or re-spooled record) finds it already done.
func contentSum(h *Backup, d *Dataset) string {
	sum := sha256.Sum256([]byte(mustJSON(struct {
		H *Backup  `json:"h"`
		D *Dataset `json:"d"`
	}{h, d})))
	return hex.EncodeToString(sum[:16])
}

func (s *EtcdStore) planWrite(b *Backup, d *Dataset) (*datasetWrite, error) {
	h := header(b)
	hv := mustJSON(h)
	dd := *d
	dd.AtomCount = len(d.Atoms)
	gen := newGen()
	w := &datasetWrite{
		what:    fmt.Sprintf("backup %s dataset %s/%s", h.ID, d.Source, d.Name),
		h:       h,
		source:  d.Source,
		dataset: d.Name,
		hk:      s.k.backup(h.ID),
		dsKey:   s.k.dataset(d.Source, d.Name, h.Timestamp, h.ID),
		sum:     contentSum(h, &dd),
	}
	w.create = []clientv3.Op{
		clientv3.OpPut(w.hk, hv),
		clientv3.OpPut(s.k.backupTime(h), hv),
		clientv3.OpPut(s.k.backupHost(h), hv),
	}
	atoms := dd.Atoms
	dd.Atoms = nil
	w.record = []clientv3.Op{
		clientv3.OpPut(s.k.backupDS(h.ID, d.Source, d.Name), ""),
		clientv3.OpPut(w.dsKey, mustJSON(datasetRecord{BackupID: h.ID, Host: h.Host, Timestamp: h.Timestamp, Gen: gen, Sum: w.sum, Dataset: &dd})),
	}
	// The list chunks, by bytes.
	var chunk []byte
	n := 0
	flush := func() {
		if len(chunk) > 0 {
			chunk = append(chunk, ']')
			key := s.k.datasetAtomsChunk(d.Source, d.Name, h.Timestamp, h.ID, gen, n)
			if n == 0 {
				w.chunk0 = key
			}
			w.atoms = append(w.atoms, clientv3.OpPut(key, string(chunk)))
			chunk, n = nil, n+1
		}
	}
	for _, a := range atoms {
		aj := mustJSON(a)
		if len(chunk)+len(aj)+2 > chunkBytes {
			flush()
		}
		if len(chunk) == 0 {
			chunk = append(chunk, '[')
		} else {
			chunk = append(chunk, ',')
		}
		chunk = append(chunk, aj...)
	}
	flush()
	for _, a := range atoms {
		v := mustJSON(atomRecord{BackupID: h.ID, DatasetID: d.ID, Host: h.Host, Timestamp: h.Timestamp, Atom: a})
		w.atoms = append(w.atoms, clientv3.OpPut(s.k.atom(AtomName(d.Source, d.Name, a.Name), h.Timestamp, h.ID, gen), v))
	}
	for _, op := range concatOps(w.create, w.record, w.atoms) {
		if opBytes(op) > maxTxnBytes {
			return nil, fmt.Errorf("%w: %s: key %.60q with its value is %d bytes, more than one etcd request may hold", ErrInvalid, w.what, op.KeyBytes(), opBytes(op))
		}
	}
	return w, nil
}

// commit runs one transaction within WriteTimeout, so that a large
// dataset gets time in proportion to its transactions. A request that etcd
// or the client refuses as such (too large, too many operations) is
// ErrInvalid: retrying it could never succeed.
func (s *EtcdStore) commit(ctx context.Context, txn func(clientv3.Txn) clientv3.Txn) (*clientv3.TxnResponse, error) {
	ctx, cancel := context.WithTimeout(ctx, s.opts.WriteTimeout)
	defer cancel()
	resp, err := txn(s.kv.Txn(ctx)).Commit()
	if err != nil && refused(err) {
		return nil, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	return resp, err
}

// refused reports whether err says that the request itself is bad, so
// that sending it again cannot succeed: etcd's InvalidArgument errors
// (request too large, too many operations, duplicate key) and the gRPC
// client's refusal to send a message above its limit. etcd's "too many
// requests" is also ResourceExhausted but passes with time, so the client
// refusal is told by its message.
func refused(err error) bool {
	if errors.Is(err, rpctypes.ErrRequestTooLarge) || errors.Is(err, rpctypes.ErrTooManyOps) {
		return true
	}
	st, ok := status.FromError(err)
	if !ok {
		var se interface{ GRPCStatus() *status.Status }
		if !errors.As(err, &se) {
			return false
		}
		st = se.GRPCStatus()
	}
	switch st.Code() {
	case codes.InvalidArgument:
		return true
	case codes.ResourceExhausted:
		return strings.Contains(st.Message(), "larger than max")
	}
	return false
}

// write puts the records of one dataset so that every reader, at every
// revision and after a crash at any point, sees the dataset version's
// atoms as one whole atom set: the old one or the new one, never a mix.
// A dataset record names its atom set (gen), and readers trust an atom
// record or list chunk only when its gen is the one the record names (see
// FindAtoms), so the order is:
//
//  1. put the new atom set, list chunks and atom records under a fresh
//     gen (invisible while the record names another);
//  2. switch: put the dataset record naming the new gen (and, for a new
//     backup, the backup record and its indexes), guarded by the mod
//     revisions read before;
//  3. delete the atom set the old record named, which no record can name
//     again.
//
// When all of it fits in one transaction (MaxTxnOps, maxTxnBytes) it is
// one transaction. Adding what is already recorded writes nothing.
func (s *EtcdStore) write(ctx context.Context, b *Backup, d *Dataset) error {
	w, err := s.planWrite(b, d)
	if err != nil {
		return err
	}
	return s.writePlanned(ctx, w)
}

// errMovedOn: a guarded write or removal found the dataset record at
// another revision than the caller compared.
var errMovedOn = errors.New("metadata: the dataset record changed since it was compared")

// writeGuarded is write for the peer sync: only while the dataset record
// is at mod revision expectRev (0: absent; errMovedOn otherwise), and with
// extra in the transaction that switches the record.
func (s *EtcdStore) writeGuarded(ctx context.Context, b *Backup, d *Dataset, expectRev int64, extra []clientv3.Op) error {
	if err := validate(b, d); err != nil {
		return err
	}
	w, err := s.planWrite(b, d)
	if err != nil {
		return err
	}
	w.expectRev, w.extra = &expectRev, extra
	return s.writePlanned(ctx, w)
}

func (s *EtcdStore) writePlanned(ctx context.Context, w *datasetWrite) error {
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
	all := concatOps(w.create, w.record, w.atoms, w.extra)
	fast := s.fits(all) && (w.expectRev == nil || *w.expectRev == 0)
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
	var old *datasetRecord
	if dkv != nil {
		dsRev = dkv.ModRevision
	}
	if w.expectRev != nil && dsRev != *w.expectRev {
		return fmt.Errorf("metadata: write %s: %w", w.what, errMovedOn)
	}
	if dkv != nil {
		old = &datasetRecord{}
		if err := json.Unmarshal(dkv.Value, old); err != nil || old.Dataset == nil {
			// Readers cannot use that record either; its atoms become
			// invisible once the new record replaces it.
			s.log.Warn("undecodable dataset record is replaced without deleting its atoms", "key", string(dkv.Key), "err", err)
			old = nil
		} else if old.Sum == w.sum {
			return s.commitExtra(ctx, w, dsRev) // already recorded, as it is (a retry)
		}
	}
	cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(w.dsKey), "=", dsRev))
	sw = append(sw, w.record...)
	sw = append(sw, w.extra...)
	stale, err := s.staleAtoms(ctx, w, old, dsRev)
	if err != nil {
		return fmt.Errorf("metadata: write %s: read the atoms it replaces: %w", w.what, err)
	}

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
	if w.chunk0 != "" {
		// A sweep that takes this set for a leftover deletes its chunks
		// first, and nothing of it once chunk 000000 is back
		// (SweepAtomSets): so while chunk 000000 is here, every key put
		// above is here too. Without it the switch fails and the write
		// starts again, putting the whole set again.
		cmps = append(cmps, clientv3.Compare(clientv3.Version(w.chunk0), ">", 0))
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
	// The record is in etcd and names the new set: what is left is
	// cleanup. If it fails, the old set stays, invisible, and only takes
	// space; the write still counts as done.
	if _, err := s.commitBatches(ctx, stale, nil); err != nil {
		s.log.Warn("could not delete the atom set the dataset record no longer names; it stays, unused",
			"backup", w.h.ID, "dataset", w.source+"/"+w.dataset, "err", err)
	}
	return nil
}

// commitExtra writes the extra operations of a write whose record is
// already as given, while it stays at dsRev.
func (s *EtcdStore) commitExtra(ctx context.Context, w *datasetWrite, dsRev int64) error {
	if len(w.extra) == 0 {
		return nil
	}
	r, err := s.commit(ctx, func(t clientv3.Txn) clientv3.Txn {
		return t.If(clientv3.Compare(clientv3.ModRevision(w.dsKey), "=", dsRev)).Then(w.extra...)
	})
	if err != nil {
		return fmt.Errorf("metadata: write %s: %w", w.what, err)
	}
	if !r.Succeeded {
		return fmt.Errorf("metadata: write %s: %w", w.what, errRaced)
	}
	return nil
}

// staleAtoms returns the deletes of the atom set that old (the dataset
// record at revision rev; nil when there is none) names.
func (s *EtcdStore) staleAtoms(ctx context.Context, w *datasetWrite, old *datasetRecord, rev int64) ([]clientv3.Op, error) {
	if old == nil {
		return nil, nil
	}
	if old.Gen == "" {
		// A record from before atom sets lists its atoms itself.
		var ops []clientv3.Op
		for _, a := range old.Dataset.Atoms {
			ops = append(ops, clientv3.OpDelete(s.k.atom(AtomName(w.source, w.dataset, a.Name), w.h.Timestamp, w.h.ID, "")))
		}
		return ops, nil
	}
	atoms, err := s.atomList(ctx, w.source, w.dataset, w.h.Timestamp, w.h.ID, old.Gen, rev)
	if err != nil {
		return nil, err
	}
	p := s.k.datasetAtomsPrefix(w.source, w.dataset, w.h.Timestamp, w.h.ID, old.Gen)
	ops := []clientv3.Op{clientv3.OpDelete(p, clientv3.WithRange(prefixEnd(p)))}
	for _, a := range atoms {
		ops = append(ops, clientv3.OpDelete(s.k.atom(AtomName(w.source, w.dataset, a.Name), w.h.Timestamp, w.h.ID, old.Gen)))
	}
	return ops, nil
}

// atomList reads the atom list of one atom set at revision rev (0: the
// latest).
func (s *EtcdStore) atomList(ctx context.Context, source, dataset string, ts time.Time, backupID, gen string, rev int64) ([]Atom, error) {
	p := s.k.datasetAtomsPrefix(source, dataset, ts, backupID, gen)
	var out []Atom
	err := s.scanAt(ctx, p, prefixEnd(p), false, chunkPage, &rev, nil, func(key, val []byte) (string, bool, error) {
		chunk, err := decodeAtoms(val)
		if err != nil {
			return "", false, fmt.Errorf("decode atom list %q: %w", key, err)
		}
		out = append(out, chunk...)
		return "", false, nil
	})
	return out, err
}

// chunkPage is the page size for reading atom list chunks (at most
// chunkBytes each), so that one response stays near 2 MiB.
const chunkPage = 16

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
