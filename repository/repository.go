package repository

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/custos-backup/custos/repository/backend"
	"github.com/custos-backup/custos/repository/format"
	"github.com/custos-backup/custos/repository/index"
	"github.com/klauspost/compress/zstd"
)

// ErrWrongPassword is wrapped by Open when no key file opens with the password.
var ErrWrongPassword = format.ErrWrongPassword

// ErrNotInitialized is wrapped by Open when the location holds no repository.
var ErrNotInitialized = errors.New("repository not initialized (no config object)")

// InitOptions configure a new repository.
type InitOptions struct {
	Password    []byte // required unless Unencrypted
	Unencrypted bool   // recorded in config; no keys/ then
	KDF         string // "argon2id" (default) or "scrypt"
	PackSize    int64  // target pack size in bytes; 0 = 16 MiB
	// Chunker is "gear" (the default) or "rabin": restic's chunker, for a
	// repository that receives copies from one that uses it and should
	// deduplicate its own backups against them.
	Chunker string

	// kdfParams overrides the KDF cost (tests use cheap parameters).
	kdfParams *format.KdfParams
}

// Repository is an open repository. It is safe for concurrent use.
type Repository struct {
	be   backend.Backend
	cfg  *format.Config
	seal *format.Sealer
	log  *slog.Logger
	// master and keyName (the key file that opened it) serve key
	// management; both are empty for an unencrypted repository.
	master  []byte
	keyName string

	idxMu sync.RWMutex
	idx   *index.Index
	// refreshMu serialises rebuilding and refreshing the index, so that
	// two refreshes cannot both load the same new files or replace each
	// other's index.
	refreshMu sync.Mutex
	// indexLoads counts index files read (tests check that a refresh
	// reads only the new ones).
	indexLoads atomic.Int64
	// conns, when not 0, is how many requests readers keep in flight
	// (SetConnections); else the backend's backend.Connections.
	conns atomic.Int32
	// checkPre is what OpenForCheck fetches for the first Check (nil once
	// taken).
	checkPre atomic.Pointer[checkPrefetch]

	encoders sync.Pool // *zstd.Encoder
	decoders sync.Pool // *zstd.Decoder

	// testHookChunk, when set, runs after each chunk a backup reads from a
	// file (path is the source path, n the chunk number), so tests can
	// change the file deterministically while it is being read.
	testHookChunk func(path string, n int)
	// testHookReuse, when set, learns how many chunks of its parent's a
	// changed large file was found to begin with (reusableChunks).
	testHookReuse func(path string, reused int)
	// commitEvery, when not 0, replaces the blobs a backup holds in
	// uploaded packs before it indexes them (tests use a few).
	commitEvery int
	// packsInMemory forces in-memory packs (no staging in the backend or
	// in temp files); tests use it to cover that mode.
	packsInMemory bool
	// leftoverAge, when not 0, replaces backend.LeftoverAge for backups,
	// so that tests need not wait a day.
	leftoverAge time.Duration
}

// Init creates a new repository in be, which must not hold one yet.
func Init(ctx context.Context, be backend.Backend, opts InitOptions) (*Repository, error) {
	if _, err := be.Stat(ctx, backend.Handle{Type: backend.ConfigFile}); err == nil {
		return nil, fmt.Errorf("init %s: a repository already exists there", be.Location())
	} else if !errors.Is(err, backend.ErrNotExist) {
		return nil, fmt.Errorf("init %s: %w", be.Location(), err)
	}
	cfg, err := format.NewRepoConfig(opts.PackSize, opts.Unencrypted, opts.Chunker)
	if err != nil {
		return nil, fmt.Errorf("init %s: %w", be.Location(), err)
	}
	var master []byte
	var keyName string
	if !opts.Unencrypted {
		if len(opts.Password) == 0 {
			return nil, fmt.Errorf("init %s: a password is required for an encrypted repository", be.Location())
		}
		kdf := opts.KDF
		var params format.KdfParams
		switch kdf {
		case format.KdfScrypt:
			params = format.DefaultScrypt
		case "", format.KdfArgon2id:
			kdf, params = format.KdfArgon2id, format.DefaultArgon2id
		default:
			return nil, fmt.Errorf("init %s: unknown KDF %q", be.Location(), opts.KDF)
		}
		if opts.kdfParams != nil {
			params = *opts.kdfParams
		}
		master = make([]byte, format.KeySize)
		if _, err := rand.Read(master); err != nil {
			return nil, err
		}
		kb, err := format.NewKeyFile(kdf, params, opts.Password, master)
		if err != nil {
			return nil, fmt.Errorf("init %s: key: %w", be.Location(), err)
		}
		keyName = format.HashID(kb).String()
		if err := saveBytes(ctx, be, backend.Handle{Type: backend.KeyFile, Name: keyName}, kb); err != nil {
			return nil, fmt.Errorf("init %s: %w", be.Location(), err)
		}
	}
	s, err := format.NewSealer(master)
	if err != nil {
		return nil, err
	}
	cb, err := format.EncodeConfigFile(cfg, s)
	if err != nil {
		return nil, err
	}
	// The config goes last: its presence is what makes a repository.
	if err := saveBytes(ctx, be, backend.Handle{Type: backend.ConfigFile}, cb); err != nil {
		return nil, fmt.Errorf("init %s: %w", be.Location(), err)
	}
	r := newRepository(be, cfg, s)
	r.master, r.keyName = master, keyName
	return r, nil
}

// repoLogger is the logger of everything done to the repository on be.
func repoLogger(be backend.Backend) *slog.Logger {
	return slog.Default().With("repository", be.Location())
}

func newRepository(be backend.Backend, cfg *format.Config, s *format.Sealer) *Repository {
	return &Repository{be: be, cfg: cfg, seal: s, log: repoLogger(be), idx: index.New()}
}

// Open opens the repository in be. password is ignored for an unencrypted
// repository.
//
// A damaged index file (one that does not verify) does not stop it: it is
// logged and left out, so that backups go on (storing the blobs it lists
// again, with a warning in the snapshot) and restores of everything else
// work. Failing to read an index file is an error. Prune re-reads every
// index file itself and refuses while one is damaged.
func Open(ctx context.Context, be backend.Backend, password []byte) (*Repository, error) {
	pre := prefetchIndex(ctx, be)
	defer pre.stop()
	r, err := openConfig(ctx, be, password)
	if err != nil {
		return nil, err
	}
	if err := r.loadIndexSkipDamaged(ctx, pre); err != nil {
		return nil, fmt.Errorf("open %s: load index: %w", be.Location(), err)
	}
	r.retainPackCopies()
	return r, nil
}

// packRetainer is a cache that keeps copies of packs (backend/cache).
type packRetainer interface {
	RetainPacks(keep func(name string) bool) int
}

// retainPackCopies drops the cached copies of packs the index no longer
// names: pruned since, by this host or another.
func (r *Repository) retainPackCopies() {
	pr, ok := backend.As[packRetainer](r.be)
	if !ok {
		return
	}
	x := r.index()
	n := pr.RetainPacks(func(name string) bool {
		id, err := format.ParseID(name)
		return err == nil && x.HasPack(id)
	})
	if n > 0 {
		r.log.Debug("removed cached copies of packs no longer in the index", "repository", r.be.Location(), "copies", n)
	}
}

// openConfig opens the repository in be without loading its index.
func openConfig(ctx context.Context, be backend.Backend, password []byte) (*Repository, error) {
	// keys/ is listed while the config loads: on remote storage a round
	// trip less (an unencrypted repository does not need the listing).
	type keyListing struct {
		names []string
		err   error
	}
	keys := make(chan keyListing, 1)
	lctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	wg.Add(1)
	go func() {
		defer wg.Done()
		names, err := listKeyNames(lctx, be)
		keys <- keyListing{names, err}
	}()
	b, err := loadSmall(ctx, be, backend.Handle{Type: backend.ConfigFile}, format.MaxConfigSize)
	if errors.Is(err, backend.ErrNotExist) {
		return nil, fmt.Errorf("open %s: %w", be.Location(), ErrNotInitialized)
	}
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", be.Location(), err)
	}
	cf, err := format.DecodeConfigFile(b)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", be.Location(), err)
	}
	var r *Repository
	if cf.Encrypted {
		if len(password) == 0 {
			return nil, fmt.Errorf("open %s: the repository is encrypted and no password was given: %w", be.Location(), ErrWrongPassword)
		}
		kl := <-keys
		if kl.err != nil {
			return nil, fmt.Errorf("open %s: %w", be.Location(), kl.err)
		}
		master, cfg, keyName, err := findMasterKey(ctx, be, kl.names, cf, password)
		if err != nil {
			return nil, fmt.Errorf("open %s: %w", be.Location(), err)
		}
		s, err := format.NewSealer(master)
		if err != nil {
			return nil, err
		}
		r = newRepository(be, cfg, s)
		r.master, r.keyName = master, keyName
	} else {
		s, _ := format.NewSealer(nil)
		cfg, err := format.DecodeRepoConfig(cf, s)
		if err != nil {
			return nil, fmt.Errorf("open %s: %w", be.Location(), err)
		}
		r = newRepository(be, cfg, s)
	}
	return r, nil
}

// Close releases resources. It does not close the backend.
func (r *Repository) Close() error {
	if p := r.checkPre.Swap(nil); p != nil {
		p.stop()
	}
	for {
		e, ok := r.encoders.Get().(*zstd.Encoder)
		if !ok {
			break
		}
		_ = e.Close()
	}
	for {
		d, ok := r.decoders.Get().(*zstd.Decoder)
		if !ok {
			break
		}
		d.Close()
	}
	return nil
}

// SetConnections sets how many requests the repository's readers (check,
// restore, copy, fixity, tree walks) keep in flight on its backend at once.
// n <= 0 restores the default: the backend's own (backend.Connections: S3's
// Options.Connections, 16 unless set), or for a local folder what each
// reader derives from the CPUs.
func (r *Repository) SetConnections(n int) { r.conns.Store(int32(max(0, n))) }

// readers returns how many requests to keep in flight: the configured
// connections, else local, the caller's own choice for a backend that says
// nothing (a local folder).
func (r *Repository) readers(local int) int {
	if n := int(r.conns.Load()); n > 0 {
		return n
	}
	if n := backend.Connections(r.be); n > 0 {
		return n
	}
	return local
}

// Backend returns the storage the repository lives on.
func (r *Repository) Backend() backend.Backend { return r.be }

// ID returns the repository id (64 hex characters).
func (r *Repository) ID() string { return r.cfg.ID }

// Encrypted reports whether the repository is encrypted.
func (r *Repository) Encrypted() bool { return r.seal.Encrypted() }

func (r *Repository) getEncoder() *zstd.Encoder {
	if e, ok := r.encoders.Get().(*zstd.Encoder); ok {
		return e
	}
	e, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithEncoderConcurrency(1),
		zstd.WithEncoderCRC(false), zstd.WithLowerEncoderMem(true), zstd.WithWindowSize(1<<20))
	if err != nil {
		panic(fmt.Sprintf("zstd encoder with constant options: %v", err))
	}
	return e
}

func (r *Repository) putEncoder(e *zstd.Encoder) { r.encoders.Put(e) }

func (r *Repository) getDecoder() *zstd.Decoder {
	if d, ok := r.decoders.Get().(*zstd.Decoder); ok {
		return d
	}
	d, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxMemory(format.MaxBlobSize), zstd.WithDecoderMaxWindow(format.MaxBlobSize))
	if err != nil {
		panic(fmt.Sprintf("zstd decoder with constant options: %v", err))
	}
	return d
}

func (r *Repository) putDecoder(d *zstd.Decoder) { r.decoders.Put(d) }

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
