// Package metadata is the custos catalog: which backups exist, which
// datasets and atoms they hold, where their snapshots live, which jobs are
// running now, and the fixity and replica records of the repositories. The
// catalog lives in etcd, either an embedded server inside the agent
// (subpackage etcdserver) or an external cluster. KEYS.md in this folder is
// the key layout.
//
// # Model
//
// A Backup is one run of one host; it holds Datasets, each stored as one
// or more repository snapshots and listing its Atoms (the restorable
// units, each with the snapshot that holds it). Job status, fixity results
// and replica records are kept beside them. Source and dataset names may
// not contain "/" or NUL; atom names may contain "/" but not NUL. Errors
// wrap ErrInvalid, ErrConflict, ErrNotFound or ErrClosed.
//
// # Opening the catalog
//
// Connect returns a client and, when this process started it, the embedded
// server. The agent sets Config.Own: it serves the embedded catalog and
// writes its client URL to the data directory. A CLI leaves Own false: it
// connects to that endpoint when it answers and otherwise starts the
// server itself for as long as it runs, or, when it only reads and the
// last server stopped cleanly, reads the database file without a server.
// The store (NewStore) is closed before the connection.
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
// EtcdStore is the catalog on etcd, under one key prefix. Writes of a
// dataset are idempotent and replace its atom set; finds return backups,
// newest first, holding only the matching datasets and atoms. Job status
// entries are replaced per host and bound to a lease; fixity results keep
// a history per pack; replica records are per repository and snapshot.
// Callers that need only part of it name that part as an interface where
// they use it (Store is the record-and-find part).
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
