// Package metadata is the custos catalog: which backups exist, which
// datasets and atoms they hold, where their snapshots live, which jobs are
// running now, and the fixity and replica records of the repositories. The
// catalog lives in etcd, either an embedded server inside the agent
// (subpackage etcdserver) or an external cluster. KEYS.md in this folder is
// the key layout.
//
// # Model
//
//	Backup{ID, Timestamp, Host, Datasets []*Dataset}
//	Dataset{ID, Source, Name, Handler, Atoms []Atom, SnapshotID, Repository,
//	        TotalFiles, TotalBytes, BytesAdded, Duration time.Duration}
//	Dataset.AtomCount                     // number of atoms, also when Atoms is not filled in
//	Atom{Name, Path, SnapshotID}          // SnapshotID: the snapshot holding the atom
//	AtomName(source, dataset, atom) string  // "source/dataset/atom"
//	SplitAtomName(name) (source, dataset, atom string, ok bool)
//	FindRequest{Pattern, Host, NumVersions, OlderThan}
//	JobStatus{Host, JobID, Kind, Source, Dataset, BackupID, DatasetID, State,
//	          StartedAt, Progress *JobProgress, Message}
//	FixityResult{Repository, Pack, Time, OK, Bytes, Error, Host,
//	             DamagedBlobs, Atoms, Healed}
//	ReplicaRecord{Repository, SnapshotID, FromRepository, SourceSnapshot,
//	              Source, Dataset, BackupID, Time, Verified, BlobsCopied, BytesCopied}
//
// Source and dataset names may not contain "/" or NUL; atom names may
// contain "/" but not NUL. Errors: ErrInvalid, ErrConflict, ErrNotFound,
// ErrClosed (test with errors.Is).
//
// # Opening the catalog
//
//	conn, err := metadata.Connect(ctx, metadata.Config{Embedded: true, DataDir: dir, Own: true})
//	defer conn.Close()                 // after store.Close()
//	store, err := metadata.NewStore(conn.Client, metadata.Options{SpoolDir: spoolDir, Host: host})
//	defer store.Close()
//
// Config{Embedded, DataDir, Own, Endpoints, TLS *TLSConfig{CAFile, CertFile,
// KeyFile, ServerName}, DialTimeout, Username, Password, Server
// etcdserver.Options}. The agent sets Own: it serves the embedded catalog
// and writes its client URL to DataDir/endpoint. A CLI leaves Own false: it
// connects to that endpoint when it answers and otherwise starts the
// server itself for as long as it runs. Conn{Client, Server} (Server is nil
// when another process serves).
//
// Connect asks every endpoint at once and succeeds as soon as one answers
// (each within DialTimeout), so a member that is down does not block it;
// the client then balances over all endpoints. When none answers, the
// error names each endpoint with its cause (connection refused, "tls:
// certificate required", "x509: certificate signed by unknown authority",
// "the server speaks TLS"), found by a second probe of at most DialTimeout.
//
// # External cluster over TLS
//
// TLS is used when Config.TLS is set. The endpoints are then https://
// URLs; an http:// endpoint is refused with ErrInvalid, because etcd's
// client would silently talk plain text to it. Supported settings:
//
//   - CAFile: PEM bundle of the CAs that sign the etcd servers'
//     certificates, read once by Connect. Empty means the system's roots.
//   - CertFile, KeyFile: PEM client certificate and key, for clusters
//     that run with --client-cert-auth. Both or neither (ErrInvalid). Key
//     types: what crypto/tls loads (RSA, ECDSA, Ed25519; PKCS#1, SEC 1 or
//     PKCS#8). etcd's TLS code reads these two files again for every new
//     connection, so a renewed certificate is used without a restart
//     (from etcd's source; not covered by a test here).
//   - ServerName: the name to verify the servers' certificates against,
//     when it differs from the host in the endpoint URLs.
//
// TLS 1.2 is the minimum. Not supported: encrypted key files, CRLs,
// skipping verification, TLS for the embedded server. Username and
// Password (etcd's own auth) are passed to etcd's client, with or without
// TLS (not covered by a test here). The agent's agent.yml sets Endpoints
// and the three files (metadb: endpoints, ca_file, cert_file, key_file;
// paths relative to agent.yml), not ServerName or a username. Package
// metadata/etcdtest starts such clusters for tests.
//
// # EtcdStore
//
//	NewStore(cli *clientv3.Client, Options) (*EtcdStore, error)
//	Options{Prefix ("/custos/"), SpoolDir, Host, Logger, WriteTimeout (5s),
//	        MinBackoff (1s), MaxBackoff (1m), LeaseTTL (15s), MaxTxnOps (128),
//	        PageSize (256), OnSpoolDepth func(int)}
//
//	AddDataset(ctx, *Backup, *Dataset) error        // idempotent, replaces the atom set; spools when etcd is down
//	RecordDataset(ctx, *Backup, *Dataset) (Recorded{Spooled, SpoolDepth}, error) // AddDataset, saying where it went
//	FindAtoms(ctx, FindRequest) ([]*Backup, error)  // Backup→Dataset→matching atoms, newest first
//	GetBackup(ctx, id) (*Backup, error)             // with all datasets and atoms; ErrNotFound
//	ListBackups(ctx, host, limit) ([]*Backup, error) // newest first; host "" = all; datasets without atoms
//	DatasetVersions(ctx, source, dataset, host, limit) ([]*Backup, error) // newest first
//	PutJobStatus(ctx, host, []JobStatus) error      // replaces host's jobs; lease-bound
//	StartUpdates(ctx, func() []JobStatus, interval) // PutJobStatus(Options.Host, fn()) every interval
//	ActiveJobs(ctx) ([]JobStatus, error)
//	PutFixityResult(ctx, *FixityResult) error
//	GetFixityResult(ctx, repo, pack) (*FixityResult, error)
//	ListFixityResults(ctx, repo) ([]*FixityResult, error) // latest per pack
//	FixityHistory(ctx, repo, pack, limit) ([]*FixityResult, error) // newest first
//	PutReplica(ctx, *ReplicaRecord) error
//	GetReplica(ctx, repo, snapshotID) (*ReplicaRecord, error)
//	ListReplicas(ctx, repo) ([]*ReplicaRecord, error)
//	SpoolDepth() int; FlushSpool(ctx) error
//	SpoolFailed() int; FailedRecords() ([]FailedRecord, error) // records set aside for good
//	Client(); Prefix(); LockPrefix(); ElectionPrefix(); JournalPrefix()
//	Close() error  // stops background work, revokes the job lease
//
// Store is the three-method interface {AddDataset, FindAtoms, GetBackup}.
//
// # Find
//
// Pattern is a glob over source/dataset/atom with path.Match syntax per
// segment; a pattern also selects everything below a name it matches
// ("src/db" = every atom of dataset db), and "*" alone selects everything.
// FindAtoms range-scans only the keys under the pattern's literal prefix
// (the part before the first of *?[\), in pages, and jumps past an atom's
// remaining versions once it has NumVersions (default 1) of them; Host and
// OlderThan filter versions before they are counted. The dataset record is
// the authority on its atoms: it names one atom set, and a version counts
// only when the record of its dataset version, read at the same revision,
// names the atom record's set. So a dataset added again with other atoms
// is found with exactly its new set, and a reader never sees a mix of the
// old and the new set, nor part of a set being written (KEYS.md, Writes).
//
// # Size
//
// A dataset may hold any number of atoms (tested with 100,000): the record
// stays small, and the atoms and their list are written in transactions
// sized by bytes, below the explicit request limits of the embedded server
// and the client, before one small transaction makes them visible.
//
// # Durability
//
// AddDataset is meant to be called after the snapshot is durable in the
// repository. It tries etcd (WriteTimeout per transaction); if that fails and SpoolDir is
// set, the record is written to the spool (one file per record, temp file
// + fsync + rename) and RecordDataset returns Spooled and no error: the
// record is durable either way, and an error means it is neither in etcd
// nor spooled. A background flusher writes spooled records oldest first,
// with exponential backoff, and a new store on the same spool dir flushes
// what an earlier process left. Records that can never be written
// (ErrInvalid, ErrConflict, unreadable, or failing maxSpoolAttempts times
// while etcd answers) are set aside with their reason (FailedRecords) and
// logged, so they never block the queue.
//
// A write that does not get through marks etcd down: later AddDataset calls
// go straight to the spool without trying etcd (so a source run with many
// datasets waits for WriteTimeout once, not once per dataset), and direct
// writes still in flight are cancelled and spooled. The first record the
// flusher gets through clears the mark; new records still queue behind the
// spool until it is empty, then go to etcd directly again. Without a spool
// every call tries etcd.
//
// Job status entries are bound to a lease the store keeps alive: when the
// agent dies they vanish after LeaseTTL; Close revokes the lease at once.
package metadata
