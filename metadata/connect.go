package metadata

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/url"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/custos-backup/custos/metadata/etcdserver"
)

// maxCallSendMsgSize is the etcd client's gRPC send limit (its default,
// set explicitly). The store's requests stay below maxTxnBytes plus
// framing, which is also below the embedded server's MaxRequestBytes.
const maxCallSendMsgSize = 2 << 20

// The store's largest transaction must pass both the client and the
// embedded server, with room for framing (a build error otherwise).
const (
	_ uint = maxCallSendMsgSize - maxTxnBytes - 256<<10
	_ uint = etcdserver.MaxRequestBytes - maxTxnBytes - 256<<10
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
	// ReadOnly is for a command that only reads an embedded catalog:
	// when no server runs on DataDir and the last one stopped cleanly,
	// Connect reads the database file (etcdserver.OpenSnapshot) instead
	// of starting a server, which takes most of a second on a large
	// catalog. The connection's client then answers KV reads only, all
	// at the revision of the snapshot; writes and leases fail with
	// ErrReadOnly, and watches end at once, cancelled.
	ReadOnly bool `yaml:"-" json:"-"`
	// Unchecked returns the client of an external cluster even when no
	// endpoint answers yet: etcd's client connects once one does. The
	// agent uses it so that backups (spooling their records) do not wait
	// for the catalog to come up.
	Unchecked bool `yaml:"-" json:"-"`
}

// ErrUnreachable marks a catalog none of whose endpoints answered.
var ErrUnreachable = errors.New("the catalog does not answer")

// Conn is an open catalog connection.
type Conn struct {
	Client *clientv3.Client
	// Server is the embedded server this process started, or nil when it
	// uses someone else's server or an external cluster.
	Server *etcdserver.Embedded
	// snapshot is the database read by a ReadOnly connection, or nil.
	snapshot *etcdserver.Snapshot
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
	if c.snapshot != nil {
		err = errors.Join(err, c.snapshot.Close())
		c.snapshot = nil
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
		if cfg.TLS != nil {
			for _, ep := range cfg.Endpoints {
				// etcd's client drops TLS for http:// endpoints without a
				// word: the configured certificates would be ignored.
				if strings.HasPrefix(strings.ToLower(ep), "http://") {
					return nil, fmt.Errorf("%w: catalog endpoint %s is plain http although TLS is configured (use https://)", ErrInvalid, ep)
				}
			}
		}
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
		if cfg.ReadOnly && !cfg.Own {
			snap, err := etcdserver.OpenSnapshot(cfg.DataDir)
			switch {
			case err == nil:
				return &Conn{Client: snapshotClient(snap), snapshot: snap}, nil
			case errors.Is(err, etcdserver.ErrDamaged):
				return nil, err
			}
			// Locked (a server is starting or stopping) or not clean (a
			// server must replay its WAL first): as without ReadOnly.
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

// dial connects and checks that at least one endpoint answers. The
// endpoints are asked at once, each within DialTimeout, so a member that is
// down does not use up the time of the others. When none answers, the
// error says for each endpoint why (connection refused, a certificate the
// other side rejects), because etcd's client only reports a deadline.
func dial(ctx context.Context, cfg Config, endpoints []string) (*clientv3.Client, error) {
	ccfg := clientv3.Config{
		Endpoints:   endpoints,
		DialTimeout: cfg.DialTimeout,
		Username:    cfg.Username,
		Password:    cfg.Password,
		Context:     context.WithoutCancel(ctx),
		// The client logs every retry; the store reports errors itself.
		Logger: zap.NewNop(),
		// Explicit, and what the store's transactions are sized for
		// (maxTxnBytes); a larger request is refused by the client.
		MaxCallSendMsgSize: maxCallSendMsgSize,
	}
	if cfg.TLS != nil {
		tc, err := cfg.TLS.clientConfig()
		if err != nil {
			return nil, err
		}
		ccfg.TLS = tc
	}
	cli, err := clientv3.New(ccfg)
	if err != nil {
		return nil, fmt.Errorf("metadata: connect to catalog %v: %w", endpoints, err)
	}
	if cfg.Unchecked {
		return cli, nil
	}
	if err := checkEndpoints(ctx, cli, ccfg.TLS, endpoints, cfg.DialTimeout); err != nil {
		_ = cli.Close()
		return nil, fmt.Errorf("metadata: catalog %v does not answer: %w", endpoints, errors.Join(ErrUnreachable, err))
	}
	return cli, nil
}

// clientConfig loads the files. An error names the file, never its
// contents.
func (t *TLSConfig) clientConfig() (*tls.Config, error) {
	if (t.CertFile == "") != (t.KeyFile == "") {
		return nil, fmt.Errorf("%w: catalog TLS needs both cert_file and key_file (cert_file %q, key_file %q)", ErrInvalid, t.CertFile, t.KeyFile)
	}
	info := transport.TLSInfo{
		CertFile:      t.CertFile,
		KeyFile:       t.KeyFile,
		TrustedCAFile: t.CAFile,
		ServerName:    t.ServerName,
	}
	tc, err := info.ClientConfig()
	if err != nil {
		return nil, fmt.Errorf("metadata: catalog TLS config: %w", err)
	}
	return tc, nil
}

// checkEndpoints returns nil as soon as one endpoint answers a status
// request, else the reasons of all.
func checkEndpoints(ctx context.Context, cli *clientv3.Client, tc *tls.Config, endpoints []string, timeout time.Duration) error {
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	// Cancel first, then wait: once one endpoint answered, the checks of
	// members that are down end at once instead of at their timeout.
	defer func() {
		cancel()
		wg.Wait()
	}()
	type result struct {
		i   int
		err error
	}
	results := make(chan result, len(endpoints))
	for i, ep := range endpoints {
		wg.Go(func() {
			sctx, scancel := context.WithTimeout(ctx, timeout)
			defer scancel()
			_, err := cli.Status(sctx, ep)
			if err != nil && ctx.Err() == nil {
				// The status error is only a deadline: look for the cause
				// within a second budget of the same size.
				pctx, pcancel := context.WithTimeout(ctx, timeout)
				defer pcancel()
				if perr := probe(pctx, ep, tc); perr != nil {
					err = perr
				}
				err = fmt.Errorf("%s: %w", ep, err)
			}
			results <- result{i, err}
		})
	}
	errs := make([]error, len(endpoints))
	for range endpoints {
		r := <-results
		if r.err == nil {
			return nil
		}
		errs[r.i] = r.err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	return errors.Join(errs...)
}

// probe connects to ep by hand to find out why a status request failed:
// the TCP connection, the TLS handshake, and a short read that receives the
// server's alert when it rejects the client certificate after a TLS 1.3
// handshake. It returns nil when it finds nothing wrong.
func probe(ctx context.Context, ep string, tc *tls.Config) error {
	host, secure := ep, tc != nil
	if u, err := url.Parse(ep); err == nil && u.Host != "" {
		host = u.Host
		switch u.Scheme {
		case "https", "unixs":
			secure = true
		case "http", "unix":
			secure = false
		}
	}
	network := "tcp"
	if u, err := url.Parse(ep); err == nil && (u.Scheme == "unix" || u.Scheme == "unixs") {
		network, host = "unix", u.Host+u.Path
	}
	var d net.Dialer
	raw, err := d.DialContext(ctx, network, host)
	if err != nil {
		return err
	}
	defer raw.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = raw.SetDeadline(dl)
	}
	if !secure {
		// Does the server want TLS? A handshake that gets as far as the
		// server's certificate says so.
		c := tls.Client(raw, &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS12})
		if c.HandshakeContext(ctx) == nil {
			return errors.New("the server speaks TLS: use an https:// endpoint and set ca_file")
		}
		return nil
	}
	if tc == nil {
		tc = &tls.Config{MinVersion: tls.VersionTLS12}
	} else {
		tc = tc.Clone()
	}
	if tc.ServerName == "" {
		if h, _, err := net.SplitHostPort(host); err == nil {
			tc.ServerName = h
		}
	}
	c := tls.Client(raw, tc)
	if err := c.HandshakeContext(ctx); err != nil {
		return fmt.Errorf("TLS handshake: %w", err)
	}
	// A server that accepts us waits for the client's first bytes; one
	// that rejects our certificate sends an alert.
	_ = c.SetReadDeadline(time.Now().Add(min(time.Second, time.Until(deadlineOr(ctx, time.Now().Add(time.Second))))))
	var b [1]byte
	if _, err := c.Read(b[:]); err != nil {
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			return nil
		}
		return fmt.Errorf("TLS: %w", err)
	}
	return nil
}

func deadlineOr(ctx context.Context, t time.Time) time.Time {
	if dl, ok := ctx.Deadline(); ok {
		return dl
	}
	return t
}

// Offline returns a connection to no server, for a process that goes on
// while its embedded catalog cannot be opened (etcdserver.ErrDamaged):
// every request fails, so a store on it spools the records it is given,
// and its flusher writes them once a catalog answers (in a later run).
// dataDir is the catalog's data directory; nothing listens on the socket
// path named after it.
func Offline(dataDir string) (*Conn, error) {
	cli, err := clientv3.New(clientv3.Config{
		Endpoints: []string{"unix://" + filepath.Join(dataDir, "no-server-catalog-damaged.sock")},
		Logger:    zap.NewNop(),
	})
	if err != nil {
		return nil, fmt.Errorf("metadata: offline catalog: %w", err)
	}
	return &Conn{Client: cli}, nil
}
