package metadata

import (
	"context"
	"errors"
	"fmt"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/custos-backup/custos/metadata/etcdserver"
)

// TLSConfig names the files for TLS to an external etcd cluster.
type TLSConfig struct {
	CAFile     string `yaml:"ca_file" json:"ca_file,omitempty"`
	CertFile   string `yaml:"cert_file" json:"cert_file,omitempty"`
	KeyFile    string `yaml:"key_file" json:"key_file,omitempty"`
	ServerName string `yaml:"server_name" json:"server_name,omitempty"`
}

// Config says where the catalog lives: an embedded server on DataDir
// (Embedded) or an external cluster (Endpoints).
type Config struct {
	Embedded bool   `yaml:"embedded" json:"embedded"`
	DataDir  string `yaml:"data_dir" json:"data_dir,omitempty"`
	// Own is for the agent: serve the embedded catalog from this process.
	// If another process serves DataDir, wait (until ctx is done) for it
	// to stop. Without Own, Connect uses a running server's endpoint and
	// starts one only when none answers (the CLI case).
	Own       bool       `yaml:"-" json:"-"`
	Endpoints []string   `yaml:"endpoints" json:"endpoints,omitempty"`
	TLS       *TLSConfig `yaml:"tls" json:"tls,omitempty"`
	// DialTimeout for each connection attempt; default 5s.
	DialTimeout time.Duration `yaml:"dial_timeout" json:"dial_timeout,omitempty"`
	Username    string        `yaml:"username" json:"username,omitempty"`
	Password    string        `yaml:"password" json:"-"`
	// Server tunes an embedded server that Connect starts.
	Server etcdserver.Options `yaml:"-" json:"-"`
}

// Conn is an open catalog connection.
type Conn struct {
	Client *clientv3.Client
	// Server is the embedded server this process started, or nil when it
	// uses someone else's server or an external cluster.
	Server *etcdserver.Embedded
}

// Close closes the client, then the server if this process started it.
// Safe to call twice.
func (c *Conn) Close() error {
	err := c.Client.Close()
	if errors.Is(err, context.Canceled) {
		err = nil // a second Close reports the first cancellation
	}
	if c.Server != nil {
		err = errors.Join(err, c.Server.Close())
	}
	return err
}

// Connect opens the catalog described by cfg. For an embedded catalog
// without Own it first tries the endpoint that a running server wrote to
// DataDir, and starts a server itself only when nothing answers there and
// the data directory is free. ctx bounds the whole attempt.
func Connect(ctx context.Context, cfg Config) (*Conn, error) {
	if cfg.DialTimeout <= 0 {
		cfg.DialTimeout = 5 * time.Second
	}
	switch {
	case cfg.Embedded && len(cfg.Endpoints) > 0:
		return nil, fmt.Errorf("%w: catalog config sets both embedded and endpoints", ErrInvalid)
	case cfg.Embedded && cfg.DataDir == "":
		return nil, fmt.Errorf("%w: embedded catalog needs a data dir", ErrInvalid)
	case !cfg.Embedded && len(cfg.Endpoints) == 0:
		return nil, fmt.Errorf("%w: catalog config names no endpoints and is not embedded", ErrInvalid)
	}
	if !cfg.Embedded {
		cli, err := dial(ctx, cfg, cfg.Endpoints)
		if err != nil {
			return nil, err
		}
		return &Conn{Client: cli}, nil
	}
	wait := 100 * time.Millisecond
	for {
		if !cfg.Own {
			ep, err := etcdserver.ReadEndpoint(cfg.DataDir)
			if err != nil {
				return nil, err
			}
			if ep != "" {
				if cli, err := dial(ctx, cfg, []string{ep}); err == nil {
					return &Conn{Client: cli}, nil
				}
			}
		}
		srv, err := etcdserver.StartEmbedded(ctx, cfg.DataDir, cfg.Server)
		if err == nil {
			cli, err := dial(ctx, cfg, srv.Endpoints())
			if err != nil {
				return nil, errors.Join(err, srv.Close())
			}
			return &Conn{Client: cli, Server: srv}, nil
		}
		if !errors.Is(err, etcdserver.ErrLocked) {
			return nil, err
		}
		// Another process serves the directory (maybe still starting, or
		// stopping): look again shortly.
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, fmt.Errorf("metadata: catalog in %s is served by another process that does not answer: %w", cfg.DataDir, ctx.Err())
		case <-t.C:
		}
		wait = min(2*wait, time.Second)
	}
}

// dial connects and checks that the first endpoint answers.
func dial(ctx context.Context, cfg Config, endpoints []string) (*clientv3.Client, error) {
	ccfg := clientv3.Config{
		Endpoints:   endpoints,
		DialTimeout: cfg.DialTimeout,
		Username:    cfg.Username,
		Password:    cfg.Password,
		Context:     context.WithoutCancel(ctx),
		// The client logs every retry; the store reports errors itself.
		Logger: zap.NewNop(),
	}
	if cfg.TLS != nil {
		info := transport.TLSInfo{
			CertFile:      cfg.TLS.CertFile,
			KeyFile:       cfg.TLS.KeyFile,
			TrustedCAFile: cfg.TLS.CAFile,
			ServerName:    cfg.TLS.ServerName,
		}
		tc, err := info.ClientConfig()
		if err != nil {
			return nil, fmt.Errorf("metadata: catalog TLS config: %w", err)
		}
		ccfg.TLS = tc
	}
	cli, err := clientv3.New(ccfg)
	if err != nil {
		return nil, fmt.Errorf("metadata: connect to catalog %v: %w", endpoints, err)
	}
	sctx, cancel := context.WithTimeout(ctx, cfg.DialTimeout)
	defer cancel()
	var lastErr error
	for _, ep := range endpoints {
		if _, lastErr = cli.Status(sctx, ep); lastErr == nil {
			return cli, nil
		}
	}
	_ = cli.Close()
	return nil, fmt.Errorf("metadata: catalog %v does not answer: %w", endpoints, lastErr)
}
