package metadata

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Store is the small part of the catalog that most callers need. Callers
// that need more take *EtcdStore or define their own interface.
type Store interface {
	AddDataset(ctx context.Context, b *Backup, d *Dataset) error
	FindAtoms(ctx context.Context, req FindRequest) ([]*Backup, error)
	GetBackup(ctx context.Context, id string) (*Backup, error)
}

var _ Store = (*EtcdStore)(nil)

// Options configure an EtcdStore. The zero value works.
type Options struct {
	// Prefix of every key; default "/custos/". Must end with "/".
	Prefix string
	// SpoolDir holds records that could not be written to etcd. Empty
	// disables the spool: AddDataset then fails when etcd does.
	SpoolDir string
	// Host names this agent in job status updates (StartUpdates).
	// Default: os.Hostname().
	Host string
	// Logger; default slog.Default().
	Logger *slog.Logger
	// WriteTimeout bounds each etcd transaction of an AddDataset attempt;
	// when one fails the record is spooled, and so are later records,
	// without trying etcd, until the spool flusher gets one through.
	// Default 5s.
	WriteTimeout time.Duration
	// MinBackoff and MaxBackoff bound the spool flusher's retry delay,
	// which doubles from one to the other and is jittered down by up to
	// half (internal/backoff); defaults 1s and 1m.
	MinBackoff, MaxBackoff time.Duration
	// LeaseTTL of the job status lease; default 15s. etcd rounds it up to
	// its minimum (about 2s with default timing).
	LeaseTTL time.Duration
	// MaxTxnOps caps operations per transaction; default 128 (etcd's
	// default --max-txn-ops).
	MaxTxnOps int
	// PageSize is the number of keys per range request; default 256.
	PageSize int
	// OnSpoolDepth, when set, is called with the new depth after every
	// change (from any goroutine; keep it fast).
	OnSpoolDepth func(depth int)
	// OnSetAside, when set, is called for a spooled record that the
	// catalog refused for good and that was set aside: the backup it
	// records is not findable, and whoever reported it ok must hear.
	OnSetAside func(FailedRecord)
}

func (o *Options) setDefaults() error {
	if o.Prefix == "" {
		o.Prefix = defaultPrefix
	}
	if o.Prefix[len(o.Prefix)-1] != '/' {
		return fmt.Errorf("%w: key prefix %q must end with '/'", ErrInvalid, o.Prefix)
	}
	if o.Host == "" {
		h, err := os.Hostname()
		if err != nil {
			return fmt.Errorf("metadata: host name: %w", err)
		}
		o.Host = h
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.WriteTimeout <= 0 {
		o.WriteTimeout = 5 * time.Second
	}
	if o.MinBackoff <= 0 {
		o.MinBackoff = time.Second
	}
	if o.MaxBackoff < o.MinBackoff {
		o.MaxBackoff = max(time.Minute, o.MinBackoff)
	}
	if o.LeaseTTL <= 0 {
		o.LeaseTTL = 15 * time.Second
	}
	if o.MaxTxnOps <= 0 {
		o.MaxTxnOps = 128
	}
	if o.PageSize <= 0 {
		o.PageSize = 256
	}
	return nil
}

// EtcdStore is the catalog kept in etcd. It is safe for concurrent use.
type EtcdStore struct {
	cli  *clientv3.Client
	kv   clientv3.KV // cli.KV; internal tests wrap it to count reads
	opts Options
	k    keys
	log  *slog.Logger

	spool *spool // nil without SpoolDir
	kick  chan struct{}

	// attempts counts the failed flushes of spooled records while etcd
	// answered (see maxSpoolAttempts), by file name.
	attemptsMu sync.Mutex
	attempts   map[string]int

	runCtx context.Context // lives until Close
	cancel context.CancelFunc
	wg     sync.WaitGroup

	leaseMu sync.Mutex
	lease   clientv3.LeaseID // 0: none granted or lost
	noLease bool             // set by Close: grant no new lease

	// Whether etcd is believed down (see markDown, markUp); only tracked
	// with a spool, the only place a record can go instead.
	healthMu sync.Mutex
	down     bool
	upCtx    context.Context // cancelled when down is set
	upCancel context.CancelCauseFunc

	// directTried counts AddDataset calls that tried etcd directly,
	// directFailed those of them that found etcd unreachable themselves
	// (and so waited for its error or WriteTimeout). Tests read them.
	directTried, directFailed atomic.Int64

	// testHook, when set (tests only), is called with the write's context
	// between the steps of a write split over several transactions; an
	// error stops the write there, as a crash would.
	testHook func(ctx context.Context, step string) error

	closeOnce sync.Once
}

// NewStore returns a store on an open etcd client. The store does not own
// the client: close the client after the store. When SpoolDir is set, the
// records already in the spool are flushed by a background goroutine that
// runs until Close.
func NewStore(cli *clientv3.Client, opts Options) (*EtcdStore, error) {
	if cli == nil {
		return nil, fmt.Errorf("%w: nil etcd client", ErrInvalid)
	}
	if err := opts.setDefaults(); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &EtcdStore{
		cli:      cli,
		kv:       cli.KV,
		opts:     opts,
		k:        keys{p: opts.Prefix},
		log:      opts.Logger.With("component", "metadata"),
		kick:     make(chan struct{}, 1),
		attempts: map[string]int{},
		runCtx:   ctx,
		cancel:   cancel,
	}
	s.upCtx, s.upCancel = context.WithCancelCause(context.Background())
	if opts.SpoolDir != "" {
		sp, err := openSpool(opts.SpoolDir, opts.OnSpoolDepth)
		if err != nil {
			cancel()
			return nil, err
		}
		s.spool = sp
		s.wg.Add(1)
		go s.flushLoop()
		if sp.depth() > 0 {
			s.log.Info("catalog spool holds records from an earlier run", "dir", opts.SpoolDir, "depth", sp.depth())
			s.poke()
		}
	}
	return s, nil
}

// Client returns the etcd client the store uses (for locks and elections
// under LockPrefix).
func (s *EtcdStore) Client() *clientv3.Client { return s.cli }

// Prefix returns the key prefix of this catalog.
func (s *EtcdStore) Prefix() string { return s.opts.Prefix }

// LockPrefix returns the reserved prefix for clientv3/concurrency mutexes.
func (s *EtcdStore) LockPrefix() string { return s.opts.Prefix + nsLocks }

// ElectionPrefix returns the reserved prefix for clientv3/concurrency
// elections.
func (s *EtcdStore) ElectionPrefix() string { return s.opts.Prefix + nsElection }

// JournalPrefix returns the reserved prefix for workflow journals.
func (s *EtcdStore) JournalPrefix() string { return s.opts.Prefix + nsJournal }

// Close stops the flusher and the job status updates and revokes the job
// status lease, so this host's active jobs vanish at once. Records still in
// the spool stay on disk for the next store. Safe to call twice.
func (s *EtcdStore) Close() error {
	var err error
	s.closeOnce.Do(func() {
		// Take the lease before cancelling: the keep-alive goroutine
		// forgets it when its channel closes.
		s.leaseMu.Lock()
		id := s.lease
		s.lease = 0
		s.noLease = true
		s.leaseMu.Unlock()
		s.cancel()
		s.wg.Wait()
		if id != 0 {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			if _, rerr := s.cli.Revoke(ctx, id); rerr != nil {
				err = fmt.Errorf("metadata: revoke job status lease %x: %w", int64(id), rerr)
			}
		}
	})
	return err
}

func (s *EtcdStore) closed() bool { return s.runCtx.Err() != nil }

// Stored forms. The backup record is Backup without Datasets.
type datasetRecord struct {
	BackupID  string    `json:"backup_id"`
	Host      string    `json:"host"`
	Timestamp time.Time `json:"timestamp"`
	// Gen names the dataset version's atom set: its list chunks and atom
	// records carry it in their keys. "" in records from before atom
	// sets, which list their atoms in Dataset.Atoms.
	Gen string `json:"gen,omitempty"`
	// Sum identifies the backup header and dataset as added, so that
	// adding the same again writes nothing.
	Sum     string   `json:"sum,omitempty"`
	Dataset *Dataset `json:"dataset"`
}

// decodeDatasetRecord decodes a dataset record; AtomCount is set also for
// records from before it existed.
func decodeDatasetRecord(key, val []byte) (*datasetRecord, error) {
	var rec datasetRecord
	if err := json.Unmarshal(val, &rec); err != nil || rec.Dataset == nil {
		return nil, fmt.Errorf("decode dataset record %q: %v", key, err)
	}
	if rec.Gen == "" {
		rec.Dataset.AtomCount = len(rec.Dataset.Atoms)
	}
	return &rec, nil
}

type atomRecord struct {
	BackupID  string    `json:"backup_id"`
	DatasetID string    `json:"dataset_id"`
	Host      string    `json:"host"`
	Timestamp time.Time `json:"timestamp"`
	Atom      Atom      `json:"atom"`
}

func mustJSON(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		// Only plain structs of strings, numbers and times go through here.
		panic(fmt.Sprintf("metadata: marshal %T: %v", v, err))
	}
	return string(b)
}

func header(b *Backup) *Backup {
	return &Backup{ID: b.ID, Timestamp: b.Timestamp.UTC(), Host: b.Host}
}

// AddDataset records dataset d of backup b, with its atoms: see
// RecordDataset, which also says whether the record went to the spool.
func (s *EtcdStore) AddDataset(ctx context.Context, b *Backup, d *Dataset) error {
	_, err := s.RecordDataset(ctx, b, d)
	return err
}

// Recorded says where RecordDataset put a record. Either place is
// durable: etcd, or the spool on disk (synced).
type Recorded struct {
	// Spooled: the record waits in the spool folder (etcd did not answer,
	// or older records wait before it); the flusher writes it to etcd
	// later, or sets it aside if etcd refuses it (see FailedRecords).
	Spooled bool
	// SpoolDepth is the number of records waiting in the spool after
	// this call, this one included when Spooled.
	SpoolDepth int
}

// RecordDataset records dataset d of backup b, with its atoms, of any
// number. It is idempotent: the same backup and dataset twice leave one
// record. Adding a dataset again replaces its atom set. It fails with
// ErrInvalid for bad names or a record etcd refuses as such, and
// ErrConflict when b.ID is already recorded with another host or
// timestamp. An error means the record is neither in etcd nor spooled.
//
// When etcd does not answer within WriteTimeout and a spool is configured,
// the record is written to the spool and RecordDataset returns Spooled
// and no error; a background flusher writes it when etcd is back. The
// store then takes etcd as down: later records go straight to the spool,
// without waiting, until the flusher gets a record through. While the
// spool is not empty new records queue behind it, so records reach etcd
// in the order they were added.
func (s *EtcdStore) RecordDataset(ctx context.Context, b *Backup, d *Dataset) (Recorded, error) {
	if err := validate(b, d); err != nil {
		return Recorded{}, err
	}
	if s.closed() {
		return Recorded{}, ErrClosed
	}
	if s.spool == nil {
		return Recorded{}, s.write(ctx, b, d)
	}
	spooled := func() (Recorded, error) {
		s.poke()
		return Recorded{Spooled: true, SpoolDepth: s.spool.depth()}, nil
	}
	rec := spoolRecord{Backup: header(b), Dataset: d}
	up, isUp := s.etcdUp()
	if !isUp {
		if err := s.spool.add(rec); err != nil {
			return Recorded{}, err
		}
		return spooled()
	}
	queued, err := s.spool.addIfNotEmpty(rec)
	if err != nil {
		return Recorded{}, err
	}
	if queued {
		return spooled()
	}
	// Another call that finds etcd down cancels this one, which would
	// otherwise wait for the same timeout before spooling.
	wctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	stop := context.AfterFunc(up, func() { cancel(context.Cause(up)) })
	defer stop()
	s.directTried.Add(1)
	err = s.write(wctx, b, d)
	if err == nil || permanent(err) {
		return Recorded{}, err
	}
	if ctx.Err() == nil && !errors.Is(context.Cause(wctx), errEtcdDown) {
		// This write found etcd down itself (not the caller giving up,
		// not cancelled because another write found it down).
		s.directFailed.Add(1)
		s.markDown(err)
	}
	s.log.Warn("catalog write failed; spooling the record", "backup", b.ID, "dataset", d.Source+"/"+d.Name, "err", err)
	if serr := s.spool.add(rec); serr != nil {
		return Recorded{}, fmt.Errorf("metadata: backup %s dataset %s/%s: etcd: %w; spool: %w", b.ID, d.Source, d.Name, err, serr)
	}
	return spooled()
}

// GetBackup returns backup id with all its datasets and their atoms, or
// ErrNotFound.
func (s *EtcdStore) GetBackup(ctx context.Context, id string) (*Backup, error) {
	resp, err := s.kv.Get(ctx, s.k.backup(id))
	if err != nil {
		return nil, fmt.Errorf("metadata: get backup %s: %w", id, err)
	}
	if len(resp.Kvs) == 0 {
		return nil, fmt.Errorf("backup %s: %w", id, ErrNotFound)
	}
	var b Backup
	if err := json.Unmarshal(resp.Kvs[0].Value, &b); err != nil {
		return nil, fmt.Errorf("metadata: decode backup %s: %w", id, err)
	}
	if err := s.fillDatasets(ctx, []*Backup{&b}, resp.Header.Revision, true); err != nil {
		return nil, err
	}
	return &b, nil
}

// ListBackups returns the newest backups first, with their datasets but
// not their atoms (Dataset.AtomCount says how many). An empty host means
// all hosts; limit <= 0 means no limit.
func (s *EtcdStore) ListBackups(ctx context.Context, host string, limit int) ([]*Backup, error) {
	start := s.k.p + nsBackupTime
	if host != "" {
		start = s.k.backupHostPrefix(host)
	}
	var out []*Backup
	var rev int64
	err := s.scanAt(ctx, start, prefixEnd(start), false, 0, &rev, nil, func(key, val []byte) (string, bool, error) {
		var b Backup
		if err := json.Unmarshal(val, &b); err != nil {
			return "", false, fmt.Errorf("metadata: decode backup index %q: %w", key, err)
		}
		out = append(out, &b)
		return "", limit > 0 && len(out) >= limit, nil
	})
	if err != nil {
		return nil, fmt.Errorf("metadata: list backups of host %q: %w", host, err)
	}
	if err := s.fillDatasets(ctx, out, rev, false); err != nil {
		return nil, err
	}
	return out, nil
}

// DatasetVersions returns the recorded versions of one dataset, newest
// first, each as a Backup holding just that dataset with its atoms. An
// empty host means all hosts; limit <= 0 means no limit.
func (s *EtcdStore) DatasetVersions(ctx context.Context, source, dataset, host string, limit int) ([]*Backup, error) {
	if err := checkName("source", source, false); err != nil {
		return nil, err
	}
	if err := checkName("dataset", dataset, false); err != nil {
		return nil, err
	}
	p := s.k.datasetVersions(source, dataset)
	var out []*Backup
	var recs []*datasetRecord
	var rev int64
	err := s.scanAt(ctx, p, prefixEnd(p), false, 0, &rev, nil, func(key, val []byte) (string, bool, error) {
		rec, err := decodeDatasetRecord(key, val)
		if err != nil {
			return "", false, err
		}
		if host != "" && rec.Host != host {
			return "", false, nil
		}
		recs = append(recs, rec)
		out = append(out, &Backup{ID: rec.BackupID, Timestamp: rec.Timestamp, Host: rec.Host, Datasets: []*Dataset{rec.Dataset}})
		return "", limit > 0 && len(out) >= limit, nil
	})
	if err == nil {
		err = s.fillAtoms(ctx, recs, rev)
	}
	if err != nil {
		return nil, fmt.Errorf("metadata: versions of dataset %s/%s: %w", source, dataset, err)
	}
	return out, nil
}

// fillAtoms reads the atom lists of records at revision rev.
func (s *EtcdStore) fillAtoms(ctx context.Context, recs []*datasetRecord, rev int64) error {
	for _, rec := range recs {
		if rec.Gen == "" {
			continue // listed in the record itself
		}
		d := rec.Dataset
		atoms, err := s.atomList(ctx, d.Source, d.Name, rec.Timestamp, rec.BackupID, rec.Gen, rev)
		if err != nil {
			return fmt.Errorf("atoms of backup %s dataset %s/%s: %w", rec.BackupID, d.Source, d.Name, err)
		}
		d.Atoms = atoms
	}
	return nil
}

// fillDatasets loads every dataset record of the given backups at
// revision rev, with their atoms when withAtoms is set.
func (s *EtcdStore) fillDatasets(ctx context.Context, bs []*Backup, rev int64, withAtoms bool) error {
	type ref struct {
		b   *Backup
		key string
	}
	var refs []ref
	for _, b := range bs {
		p := s.k.backupDSPrefix(b.ID)
		err := s.scanAt(ctx, p, prefixEnd(p), true, 0, &rev, nil, func(key, _ []byte) (string, bool, error) {
			src, ds, ok := strings.Cut(string(key[len(p):]), "/")
			if !ok || src == "" || ds == "" {
				return "", false, fmt.Errorf("malformed key %q", key)
			}
			refs = append(refs, ref{b, s.k.dataset(src, ds, b.Timestamp, b.ID)})
			return "", false, nil
		})
		if err != nil {
			return fmt.Errorf("metadata: datasets of backup %s: %w", b.ID, err)
		}
	}
	keys := make([]string, len(refs))
	for i, r := range refs {
		keys[i] = r.key
	}
	vals, err := s.getMany(ctx, keys, rev)
	if err != nil {
		return fmt.Errorf("metadata: load dataset records: %w", err)
	}
	var recs []*datasetRecord
	for i, r := range refs {
		if vals[i] == nil {
			continue // index written, record not (yet): skip
		}
		rec, err := decodeDatasetRecord([]byte(r.key), vals[i])
		if err != nil {
			return fmt.Errorf("metadata: %w", err)
		}
		if !withAtoms {
			rec.Dataset.Atoms = nil
		}
		recs = append(recs, rec)
		r.b.Datasets = append(r.b.Datasets, rec.Dataset)
	}
	if withAtoms {
		if err := s.fillAtoms(ctx, recs, rev); err != nil {
			return fmt.Errorf("metadata: %w", err)
		}
	}
	for _, b := range bs {
		sortDatasets(b.Datasets)
	}
	return nil
}

func sortDatasets(ds []*Dataset) {
	sort.Slice(ds, func(i, j int) bool {
		if ds[i].Source != ds[j].Source {
			return ds[i].Source < ds[j].Source
		}
		return ds[i].Name < ds[j].Name
	})
}

// getKVs fetches keys in transactions of at most MaxTxnOps gets, all at
// revision *rev (0: the first transaction's, which it sets); missing keys
// give nil.
func (s *EtcdStore) getKVs(ctx context.Context, keys []string, rev *int64) ([]*mvccpb.KeyValue, error) {
	out := make([]*mvccpb.KeyValue, len(keys))
	for lo := 0; lo < len(keys); lo += s.opts.MaxTxnOps {
		hi := min(lo+s.opts.MaxTxnOps, len(keys))
		var opts []clientv3.OpOption
		if *rev != 0 {
			opts = append(opts, clientv3.WithRev(*rev))
		}
		ops := make([]clientv3.Op, 0, hi-lo)
		for _, k := range keys[lo:hi] {
			ops = append(ops, clientv3.OpGet(k, opts...))
		}
		resp, err := s.kv.Txn(ctx).Then(ops...).Commit()
		if err != nil {
			return nil, err
		}
		if *rev == 0 {
			*rev = resp.Header.Revision
		}
		for i := range resp.Responses {
			out[lo+i] = firstKV(resp, i)
		}
	}
	return out, nil
}

// getMany fetches the values of keys (getKVs) at revision rev (0: the
// latest); missing keys give nil.
func (s *EtcdStore) getMany(ctx context.Context, keys []string, rev int64) ([][]byte, error) {
	kvs, err := s.getKVs(ctx, keys, &rev)
	if err != nil {
		return nil, err
	}
	out := make([][]byte, len(kvs))
	for i, kv := range kvs {
		if kv != nil {
			out[i] = kv.Value
		}
	}
	return out, nil
}

// scan walks [start, end) in pages of PageSize keys at one revision. fn
// returns a key to jump to (must be > the current key; "" for none) and
// whether to stop.
func (s *EtcdStore) scan(ctx context.Context, start, end string, keysOnly bool, fn func(key, val []byte) (jump string, stop bool, err error)) error {
	var rev int64
	return s.scanAt(ctx, start, end, keysOnly, 0, &rev, nil, fn)
}

// maxScanPage bounds the growing pages of a scan (about 3 MiB of atom
// records).
const maxScanPage = 8192

// scanAt is scan at revision *rev, in pages of limit keys (0: PageSize);
// when *rev is 0 it is set to the revision of the first read, so that
// several scans can share it. page, when set, sees each page before fn
// sees its keys.
func (s *EtcdStore) scanAt(ctx context.Context, start, end string, keysOnly bool, limit int, rev *int64,
	page func(kvs []*mvccpb.KeyValue) error, fn func(key, val []byte) (jump string, stop bool, err error)) error {
	if limit <= 0 {
		limit = s.opts.PageSize
	}
	// etcd walks its index over the whole rest of the range for every
	// page, to count it, so a scan of n keys in pages of a fixed size
	// costs n²/size: pages grow (up to maxScanPage) while the walk uses
	// most keys it reads, and shrink back when it jumps over most.
	grow := limit
	for start < end {
		opts := []clientv3.OpOption{clientv3.WithRange(end), clientv3.WithLimit(int64(grow))}
		if keysOnly {
			opts = append(opts, clientv3.WithKeysOnly())
		}
		if *rev != 0 {
			opts = append(opts, clientv3.WithRev(*rev))
		}
		resp, err := s.kv.Get(ctx, start, opts...)
		if err != nil {
			return err
		}
		if *rev == 0 {
			*rev = resp.Header.Revision
		}
		if page != nil {
			if err := page(resp.Kvs); err != nil {
				return err
			}
		}
		next := ""
		skipped := 0
		for _, kv := range resp.Kvs {
			if next != "" && string(kv.Key) < next {
				skipped++
				continue
			}
			jump, stop, err := fn(kv.Key, kv.Value)
			if err != nil || stop {
				return err
			}
			next = jump
		}
		if !resp.More || len(resp.Kvs) == 0 {
			return nil
		}
		start = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
		if next > start {
			start = next
		}
		if 2*skipped > len(resp.Kvs) {
			grow = limit // mostly jumped over: values read in vain
		} else {
			grow = min(2*grow, max(limit, maxScanPage))
		}
	}
	return nil
}
