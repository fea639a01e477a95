package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/custos-backup/custos/metadata"
	"github.com/custos-backup/custos/metadata/etcdserver"
)

// Catalog is an open connection to the catalog: the metadata store, its
// etcd client, and the embedded etcd server when this process runs it.
type Catalog struct {
	Store    *metadata.EtcdStore
	cli      *clientv3.Client
	embedded *etcdserver.Embedded
}

// CatalogOptions say how to open the catalog.
type CatalogOptions struct {
	// Serve: this process is the agent and must run the embedded server
	// itself (it fails if another process already serves work_dir/etcd).
	// Without Serve, a command connects to the running agent's embedded
	// server when there is one, and starts its own for the time it runs
	// when there is not.
	Serve bool
	// EtcdOptions tune the embedded server (tests pin ports).
	EtcdOptions etcdserver.Options
	// SpoolDir keeps catalog records while etcd is unreachable. "" means
	// no spool (a command that only reads). Two processes must not share
	// one spool folder.
	SpoolDir string
	// OnSpoolDepth is passed to the store.
	OnSpoolDepth func(int)
	// Store, when set, may adjust the store's options (timeouts, backoff)
	// before it opens.
	Store  func(*metadata.Options)
	Logger *slog.Logger
}

// OpenCatalog opens the catalog named by cfg.MetaDB.
func OpenCatalog(ctx context.Context, cfg *Config, opts CatalogOptions) (*Catalog, error) {
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	c := &Catalog{}
	var endpoints []string
	var tlsInfo *transport.TLSInfo
	switch {
	case !cfg.MetaDB.Embedded:
		endpoints = cfg.MetaDB.Endpoints
		if cfg.MetaDB.CAFile != "" || cfg.MetaDB.CertFile != "" {
			tlsInfo = &transport.TLSInfo{TrustedCAFile: cfg.MetaDB.CAFile, CertFile: cfg.MetaDB.CertFile, KeyFile: cfg.MetaDB.KeyFile}
		}
	case opts.Serve:
		e, err := etcdserver.StartEmbedded(ctx, cfg.MetaDB.DataDir, opts.EtcdOptions)
		if errors.Is(err, etcdserver.ErrLocked) {
			return nil, fmt.Errorf("the embedded catalog in %s is in use: is another custos agent running with this work_dir?", cfg.MetaDB.DataDir)
		}
		if err != nil {
			return nil, fmt.Errorf("start the embedded catalog: %w", err)
		}
		c.embedded = e
		endpoints = e.Endpoints()
	default:
		ep, err := c.connectOrServe(ctx, cfg, opts)
		if err != nil {
			return nil, err
		}
		endpoints = ep
	}
	cli, err := newEtcdClient(endpoints, tlsInfo)
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("connect to the catalog at %v: %w", endpoints, err)
	}
	c.cli = cli
	mo := metadata.Options{
		Prefix:       cfg.MetaDB.Prefix,
		SpoolDir:     opts.SpoolDir,
		Host:         cfg.Hostname,
		Logger:       opts.Logger,
		OnSpoolDepth: opts.OnSpoolDepth,
	}
	if opts.Store != nil {
		opts.Store(&mo)
	}
	st, err := metadata.NewStore(cli, mo)
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("open the catalog: %w", err)
	}
	c.Store = st
	return c, nil
}

// connectOrServe finds the running agent's embedded server, or starts one
// for this command when no agent runs.
func (c *Catalog) connectOrServe(ctx context.Context, cfg *Config, opts CatalogOptions) ([]string, error) {
	dir := cfg.MetaDB.DataDir
	for attempt := 0; attempt < 3; attempt++ {
		if ep, err := etcdserver.ReadEndpoint(dir); err == nil && ep != "" && answers(ctx, ep) {
			return []string{ep}, nil
		}
		e, err := etcdserver.StartEmbedded(ctx, dir, opts.EtcdOptions)
		if errors.Is(err, etcdserver.ErrLocked) {
			// An agent holds the folder but has not written its endpoint
			// yet (it is starting): look again shortly.
			select {
			case <-ctx.Done():
				return nil, ctx.Err()
			case <-time.After(time.Second):
			}
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("start the embedded catalog: %w", err)
		}
		c.embedded = e
		return e.Endpoints(), nil
	}
	return nil, fmt.Errorf("the embedded catalog in %s is locked by another process that does not answer on its endpoint", dir)
}

func answers(ctx context.Context, endpoint string) bool {
	cli, err := newEtcdClient([]string{endpoint}, nil)
	if err != nil {
		return false
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	_, err = cli.Status(ctx, endpoint)
	return err == nil
}

func newEtcdClient(endpoints []string, tlsInfo *transport.TLSInfo) (*clientv3.Client, error) {
	cc := clientv3.Config{
		Endpoints:   endpoints,
		DialTimeout: 5 * time.Second,
		Logger:      zap.NewNop(),
	}
	if tlsInfo != nil {
		tc, err := tlsInfo.ClientConfig()
		if err != nil {
			return nil, fmt.Errorf("catalog TLS files: %w", err)
		}
		cc.TLS = tc
	}
	return clientv3.New(cc)
}

// AgentSpoolDir is the agent's catalog spool; CLISpoolDir is the one of
// "custos backup", kept apart because both may run at once.
func AgentSpoolDir(cfg *Config) string { return filepath.Join(cfg.WorkDir, "spool") }

// CLISpoolDir is the catalog spool of "custos backup".
func CLISpoolDir(cfg *Config) string { return filepath.Join(cfg.WorkDir, "spool-cli") }

// Embedded returns the embedded server this process runs, or nil.
func (c *Catalog) Embedded() *etcdserver.Embedded { return c.embedded }

// Close closes the store, the client and the embedded server, in that order.
func (c *Catalog) Close() error {
	var errs []error
	if c.Store != nil {
		errs = append(errs, c.Store.Close())
	}
	if c.cli != nil {
		errs = append(errs, c.cli.Close())
	}
	if c.embedded != nil {
		errs = append(errs, c.embedded.Close())
	}
	return errors.Join(errs...)
}
