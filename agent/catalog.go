package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/custos-backup/custos/metadata"
	"github.com/custos-backup/custos/metadata/etcdserver"
)

// Catalog is an open connection to the catalog: the metadata store and the
// connection under it (with the embedded etcd server when this process
// runs it).
type Catalog struct {
	Store *metadata.EtcdStore
	// Index answers finds from memory in the agent (Serve); nil in the
	// commands, which read etcd.
	Index *metadata.Index
	// Damaged is set when the embedded catalog's database cannot be read:
	// the store then reaches no server and spools every record. It says
	// what is wrong and what to do.
	Damaged error
	conn    *metadata.Conn

	stopIndex context.CancelFunc
	indexDone chan struct{}

	closeOnce sync.Once
	closeErr  error
}

// CatalogOptions say how to open the catalog.
type CatalogOptions struct {
	// Serve: this process is the agent and runs the embedded server
	// itself. While another process serves work_dir/etcd (a custos command
	// started while no agent ran, or another agent) it waits for it to stop,
	// until ctx ends, and logs that it waits.
	// Without Serve, a command connects to the running agent's embedded
	// server when there is one, and starts its own for the time it runs
	// when there is not.
	Serve bool
	// ReadOnly is for a command that only reads: without Serve, an
	// embedded catalog that no server holds is read from its files when
	// its last server stopped cleanly (metadata.Config.ReadOnly), which
	// saves starting a server. Writes then fail.
	ReadOnly bool
	// EtcdOptions tune the embedded server (tests pin ports).
	EtcdOptions etcdserver.Options
	// SpoolDir keeps catalog records while etcd is unreachable. "" means
	// no spool (a command that only reads). Two processes must not share
	// one spool folder.
	SpoolDir string
	// OnSpoolDepth is passed to the store.
	OnSpoolDepth func(int)
	// OnSetAside is passed to the store.
	OnSetAside func(metadata.FailedRecord)
	// Store, when set, may adjust the store's options (timeouts, backoff)
	// before it opens.
	Store  func(*metadata.Options)
	Logger *slog.Logger
}

const (
	// commandCatalogWait bounds how long a command waits for the
	// embedded catalog when another process holds it without answering
	// (an agent that is starting answers well within it).
	commandCatalogWait = 30 * time.Second
	// catalogWaitNotice is when the agent says that it is waiting for the
	// embedded catalog to become free.
	catalogWaitNotice = 3 * time.Second
)

// OpenCatalog opens the catalog named by cfg.MetaDB through
// metadata.Connect: an external cluster, or the embedded server (served by
// this process with Serve, otherwise the agent's or, when no agent runs,
// this process's own).
func OpenCatalog(ctx context.Context, cfg *Config, opts CatalogOptions) (*Catalog, error) {
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	mc := cfg.MetaDB.metadataConfig()
	mc.Embedded, mc.DataDir, mc.Own, mc.Server = cfg.MetaDB.Embedded, cfg.MetaDB.DataDir, opts.Serve, opts.EtcdOptions
	mc.ReadOnly = opts.ReadOnly && !opts.Serve
	if !mc.Embedded {
		mc.DataDir = ""
	}
	where := fmt.Sprintf("the catalog at %v", cfg.MetaDB.Endpoints)
	if mc.Embedded {
		where = "the embedded catalog in " + mc.DataDir
	}
	cctx := ctx
	if mc.Embedded && !opts.Serve {
		var cancel context.CancelFunc
		cctx, cancel = context.WithTimeoutCause(ctx, commandCatalogWait,
			fmt.Errorf("%s is locked by another process that does not answer on its endpoint", where))
		defer cancel()
	}
	if mc.Embedded && opts.Serve {
		notice := time.AfterFunc(catalogWaitNotice, func() {
			opts.Logger.Warn("waiting for the embedded catalog: another process serves it (a custos command that will finish, or another agent with this work_dir)", "data_dir", mc.DataDir)
		})
		defer notice.Stop()
	}
	conn, err := metadata.Connect(cctx, mc)
	var damaged error
	if err != nil && errors.Is(err, etcdserver.ErrDamaged) {
		damaged = fmt.Errorf("%w. %s", err, damagedAdvice(cfg, opts.SpoolDir))
		if opts.SpoolDir == "" {
			return nil, damaged
		}
		// Backups go on; their records wait in the spool.
		opts.Logger.Error("the catalog cannot be opened; backups go on and their records are spooled", "error", damaged)
		conn, err = metadata.Offline(mc.DataDir)
	}
	if err != nil && errors.Is(err, metadata.ErrUnreachable) && !mc.Embedded && opts.Serve && opts.SpoolDir != "" {
		// The agent starts anyway: backups run and spool their records,
		// and the client connects once a member answers.
		opts.Logger.Error("the catalog does not answer; backups go on, their records are spooled until it does", "endpoints", mc.Endpoints, "error", err)
		mc.Unchecked = true
		conn, err = metadata.Connect(ctx, mc)
	}
	if err != nil {
		if c := context.Cause(cctx); c != nil && ctx.Err() == nil {
			err = fmt.Errorf("%w: %v", err, c)
		}
		return nil, fmt.Errorf("open %s: %w", where, err)
	}
	mo := metadata.Options{
		Prefix:       cfg.MetaDB.Prefix,
		SpoolDir:     opts.SpoolDir,
		Host:         cfg.Hostname,
		Logger:       opts.Logger,
		OnSpoolDepth: opts.OnSpoolDepth,
		OnSetAside:   opts.OnSetAside,
	}
	if opts.Store != nil {
		opts.Store(&mo)
	}
	st, err := metadata.NewStore(conn.Client, mo)
	if err != nil {
		return nil, errors.Join(fmt.Errorf("open %s: %w", where, err), conn.Close())
	}
	c := &Catalog{Store: st, conn: conn, Damaged: damaged}
	if opts.Serve {
		// The agent answers finds (the API, restores) from memory: a
		// find over 100,000 atoms would otherwise read and decode each
		// atom record from etcd.
		c.Index = metadata.NewIndex(st)
		ictx, cancel := context.WithCancel(context.WithoutCancel(ctx))
		c.stopIndex, c.indexDone = cancel, make(chan struct{})
		go func() {
			defer close(c.indexDone)
			c.Index.Run(ictx)
		}()
	}
	return c, nil
}

// damagedAdvice says what to do about a damaged embedded catalog.
func damagedAdvice(cfg *Config, spool string) string {
	s := "custos goes on without it: "
	if spool != "" {
		s += "backups run and their catalog records wait in the spool " + spool + ". "
	} else {
		s += "backups run and their catalog records are spooled, but find and restore need the catalog. "
	}
	return s + "To start a new catalog: stop the agent, move " + cfg.MetaDB.DataDir +
		" aside (keep it for inspection) and start the agent again; it writes the spooled records into the new catalog. " +
		"Backups recorded only in the old catalog stay in their repositories (custos repo snapshots) but find does not show them"
}

// indexedStore is the store with finds answered by the index.
type indexedStore struct {
	*metadata.EtcdStore
	idx *metadata.Index
}

func (s indexedStore) FindAtoms(ctx context.Context, req metadata.FindRequest) ([]*metadata.Backup, error) {
	return s.idx.FindAtoms(ctx, req)
}

// Finder is the store as the Manager uses it: finds go through the index
// when there is one.
func (c *Catalog) Finder() CatalogStore {
	if c.Index != nil {
		return indexedStore{c.Store, c.Index}
	}
	return c.Store
}

// AgentSpoolDir is the agent's catalog spool; CLISpoolDir is the one of
// "custos backup", kept apart because both may run at once.
func AgentSpoolDir(cfg *Config) string { return filepath.Join(cfg.WorkDir, "spool") }

// CLISpoolDir is the catalog spool of "custos backup".
func CLISpoolDir(cfg *Config) string { return filepath.Join(cfg.WorkDir, "spool-cli") }

// Embedded returns the embedded server this process runs, or nil.
func (c *Catalog) Embedded() *etcdserver.Embedded { return c.conn.Server }

// Close closes the store, the client and the embedded server, in that
// order. Later calls return the first one's result.
func (c *Catalog) Close() error {
	c.closeOnce.Do(func() {
		if c.stopIndex != nil {
			c.stopIndex()
			<-c.indexDone
		}
		c.closeErr = errors.Join(c.Store.Close(), c.conn.Close())
	})
	return c.closeErr
}

// RunningAgentAddr returns the address (host:port) of the status page of
// the agent that holds work_dir, as its lock file says, or "" when none
// does. The file may be stale after a crash: callers fall back when
// nothing answers there.
func RunningAgentAddr(workDir string) string {
	b, err := os.ReadFile(filepath.Join(workDir, "agent.pid"))
	if err != nil {
		return ""
	}
	_, url, ok := strings.Cut(strings.TrimSpace(string(b)), "status page ")
	if !ok {
		return ""
	}
	url = strings.TrimPrefix(strings.TrimPrefix(url, "https://"), "http://")
	return strings.TrimSuffix(url, "/")
}
