package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/custos-backup/custos/jobs"
	"github.com/custos-backup/custos/metadata"
	"github.com/custos-backup/custos/metadata/etcdserver"
)

// RunOptions tune Run. The zero value works.
type RunOptions struct {
	Logger *slog.Logger
	// Reload delivers reload requests (the command wires SIGHUP to it).
	Reload <-chan struct{}
	// Listening, when set, is called with the HTTP address once it is
	// listening (tests use port 0).
	Listening func(addr string)
	// HTTPListen overrides agent.yml's http_listen.
	HTTPListen string
	// StopGrace bounds the wait for running jobs to stop; default 30s.
	StopGrace time.Duration
	// EtcdOptions tune the embedded etcd server.
	EtcdOptions etcdserver.Options
	// Retry overrides the retry policy of ingest jobs.
	Retry *jobs.RetryPolicy
	// Started, when set, is called with the agent once it runs.
	Started func(*Agent)
	// Worker, when set, runs each job's data work (ingest, restore,
	// replicate, fixity, sync, retention) in a worker process (the custos
	// command sets it to its own binary).
	Worker *WorkerOptions
}

// Run is the daemon: it loads the config, opens the catalog (starting the
// embedded etcd server unless metadb lists endpoints), schedules the
// sources, serves HTTP, reloads on opts.Reload, and stops when ctx ends.
func Run(ctx context.Context, path string, opts RunOptions) error {
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	cm, err := NewConfigManager(path, log)
	if err != nil {
		return err
	}
	cfg := cm.Current().Config
	lk, err := lockAgent(cfg.WorkDir)
	if err != nil {
		return err
	}
	defer lk.release()
	// A spooled record refused later must reach the agent's outcomes; the
	// agent exists only after the catalog is open, and the spool may be
	// flushed before that: those records wait for it.
	var early setAsideQueue
	cat, err := OpenCatalog(ctx, cfg, CatalogOptions{Serve: true, SpoolDir: AgentSpoolDir(cfg), EtcdOptions: opts.EtcdOptions, Logger: log, OnSetAside: early.add})
	if err != nil {
		return err
	}
	defer cat.Close()

	a := New(cm, cat, Options{Logger: log, Retry: opts.Retry, Worker: opts.Worker})
	early.deliverTo(a.recordSetAside)
	listen := cfg.HTTPListen
	if opts.HTTPListen != "" {
		listen = opts.HTTPListen
	}
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return fmt.Errorf("http_listen %s: %w (is another agent running? change http_listen in %s)", listen, err, cfg.File)
	}
	srv := &http.Server{Handler: a.Handler(), ReadHeaderTimeout: 10 * time.Second}
	srvErr := make(chan error, 1)
	scheme := "http"
	if cfg.HTTP.TLSCertFile != "" {
		scheme = "https"
		go func() { srvErr <- srv.ServeTLS(ln, cfg.HTTP.TLSCertFile, cfg.HTTP.TLSKeyFile) }()
	} else {
		go func() { srvErr <- srv.Serve(ln) }()
	}
	url := scheme + "://" + ln.Addr().String() + "/"
	log.Info("status page", "url", url, "token_required", len(cfg.HTTP.Token.Bytes()) > 0)
	if err := lk.record(url); err != nil {
		log.Warn("cannot record the status page in the agent lock", "error", err)
	}
	if opts.Listening != nil {
		opts.Listening(ln.Addr().String())
	}
	if err := a.Start(ctx); err != nil {
		srv.Close()
		return err
	}
	if opts.Started != nil {
		opts.Started(a)
	}

	var etcdErr <-chan error
	if e := cat.Embedded(); e != nil {
		etcdErr = e.Err()
	}
	var runErr error
loop:
	for {
		select {
		case <-ctx.Done():
			log.Info("stopping: waiting for running jobs to stop")
			break loop
		case <-opts.Reload:
			_ = a.Reload() // logged inside; the old config stays on error
		case err := <-srvErr:
			runErr = fmt.Errorf("http server: %w", err)
			break loop
		case err := <-etcdErr:
			runErr = fmt.Errorf("embedded catalog server failed: %w", err)
			break loop
		}
	}
	grace := opts.StopGrace
	if grace <= 0 {
		grace = 30 * time.Second
	}
	sctx, cancel := context.WithTimeout(context.Background(), grace)
	defer cancel()
	errs := []error{runErr, a.Stop(sctx)}
	if err := srv.Shutdown(sctx); err != nil && !errors.Is(err, http.ErrServerClosed) {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// setAsideQueue holds the records set aside before the agent exists, and
// passes every later one straight on.
type setAsideQueue struct {
	mu      sync.Mutex
	waiting []metadata.FailedRecord
	to      func(metadata.FailedRecord)
}

func (q *setAsideQueue) add(f metadata.FailedRecord) {
	q.mu.Lock()
	to := q.to
	if to == nil {
		q.waiting = append(q.waiting, f)
	}
	q.mu.Unlock()
	if to != nil {
		to(f)
	}
}

// deliverTo passes the waiting records to fn, then every later one.
func (q *setAsideQueue) deliverTo(fn func(metadata.FailedRecord)) {
	q.mu.Lock()
	waiting := q.waiting
	q.waiting, q.to = nil, fn
	q.mu.Unlock()
	for _, f := range waiting {
		fn(f)
	}
}
