package agent

import (
	"errors"
	"fmt"
	"log/slog"
	"sync"

	"github.com/custos-backup/custos/handlers"
	"github.com/custos-backup/custos/jobs"
	"github.com/custos-backup/custos/shell"
)

// RuntimeContext is one consistent view of the configuration and the things
// derived from it. A job takes one when it starts and keeps it to the end, so
// that a reload in the middle of a backup does not change the rules under it.
// It is immutable.
type RuntimeContext struct {
	Config     *Config
	Generation int   // 1 for the first config, +1 per successful reload
	Seed       int64 // from random_seed_file: per-host jitter of schedules

	shell    *shell.Shell
	shells   map[string]*shell.Shell     // by source name: its priority
	handlers map[string]handlers.Handler // by source name
}

// Shell returns the shell configured by agent.yml (nice, ionice, dry-run).
func (rc *RuntimeContext) Shell() *shell.Shell { return rc.shell }

// SourceShell returns the shell of a source's jobs: agent.yml's, at the
// source's nice_level and io_class where it sets them. A nil source (a
// repository's job, or a restore of a source no longer configured) gets
// the defaults.
func (rc *RuntimeContext) SourceShell(src *SourceSpec) *shell.Shell {
	if src != nil {
		if sh := rc.shells[src.Name]; sh != nil {
			return sh
		}
	}
	return rc.shell
}

// Handler returns the handler of a source (its handler spec with the
// source's params on top).
func (rc *RuntimeContext) Handler(source string) handlers.Handler { return rc.handlers[source] }

// Source returns the named source or nil.
func (rc *RuntimeContext) Source(name string) *SourceSpec { return rc.Config.Source(name) }

// newRuntimeContext derives a RuntimeContext from a loaded config. It reads
// (and on first use creates) the random seed file.
func newRuntimeContext(cfg *Config, gen int, log *slog.Logger) (*RuntimeContext, error) {
	// Any content works as a seed; the file is created with random bytes
	// on first use, so two hosts get different schedule offsets and one
	// host keeps its offsets across restarts.
	seed, err := jobs.LoadOrCreateSeed(cfg.RandomSeedFile)
	if err != nil {
		return nil, fmt.Errorf("random_seed_file %s: %w", cfg.RandomSeedFile, err)
	}
	sh := shell.New(shell.Options{
		NiceLevel: cfg.DefaultNiceLevel,
		IOClass:   cfg.DefaultIOClass,
		DryRun:    cfg.DryRun,
		Logger:    log,
		Env:       []string{"CUSTOS_HOST=" + cfg.Hostname, "CUSTOS_CONFIG_DIR=" + cfg.Dir},
	})
	rc := &RuntimeContext{Config: cfg, Generation: gen, Seed: seed, shell: sh, shells: map[string]*shell.Shell{}, handlers: map[string]handlers.Handler{}}
	for _, s := range cfg.Sources {
		if s.NiceLevel != nil || s.IOClass != nil {
			o := sh.Options()
			if s.NiceLevel != nil {
				o.NiceLevel = *s.NiceLevel
			}
			if s.IOClass != nil {
				o.IOClass = *s.IOClass
			}
			rc.shells[s.Name] = shell.New(o)
		}
		h, err := NewHandler(cfg.Handler(s.Handler), s)
		if err != nil {
			return nil, fmt.Errorf("source %s: %w", s.Name, err)
		}
		rc.handlers[s.Name] = h
	}
	return rc, nil
}

// ConfigManager holds the current RuntimeContext and replaces it on reload.
type ConfigManager struct {
	path string
	log  *slog.Logger

	mu      sync.Mutex
	cur     *RuntimeContext
	changed chan struct{} // closed and replaced on every successful reload
}

// NewConfigManager loads the configuration at path.
func NewConfigManager(path string, log *slog.Logger) (*ConfigManager, error) {
	if log == nil {
		log = slog.Default()
	}
	cfg, err := LoadConfig(path)
	if err != nil {
		return nil, err
	}
	rc, err := newRuntimeContext(cfg, 1, log)
	if err != nil {
		return nil, err
	}
	return &ConfigManager{path: path, log: log, cur: rc, changed: make(chan struct{})}, nil
}

// Current returns the current configuration view. Callers keep it for the
// length of one job.
func (m *ConfigManager) Current() *RuntimeContext {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.cur
}

// Changed returns a channel that is closed at the next successful reload.
func (m *ConfigManager) Changed() <-chan struct{} {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.changed
}

// Reload reads the configuration files again. If they have errors the
// running configuration stays in force, the errors are logged, and returned.
// This is what SIGHUP calls.
func (m *ConfigManager) Reload() error {
	cfg, err := LoadConfig(m.path)
	if err == nil {
		err = m.apply(cfg)
	}
	if err != nil {
		var ce ConfigErrors
		if errors.As(err, &ce) {
			for _, e := range ce {
				m.log.Error("config reload: keeping the running configuration", "error", e.Error())
			}
		} else {
			m.log.Error("config reload: keeping the running configuration", "error", err)
		}
		return err
	}
	m.log.Info("config reloaded", "file", m.path, "generation", m.Current().Generation, "sources", len(cfg.Sources))
	return nil
}

func (m *ConfigManager) apply(cfg *Config) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	rc, err := newRuntimeContext(cfg, m.cur.Generation+1, m.log)
	if err != nil {
		return err
	}
	m.cur = rc
	close(m.changed)
	m.changed = make(chan struct{})
	return nil
}
