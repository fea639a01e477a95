package jobs

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/robfig/cron/v3"
)

// Entry is one scheduled activity.
type Entry struct {
	// Name is unique within the scheduler and seeds the @random_every
	// offset, so keep it stable (e.g. "ingest/<source>").
	Name string
	// Schedule is a spec accepted by ParseSchedule.
	Schedule string
	// Run is called at every activation, in its own goroutine. It should
	// be quick: build jobs and Submit them to a Runner.
	Run func(ctx context.Context)
}

// EntryStatus describes a scheduled entry for the status page.
type EntryStatus struct {
	Name     string    `json:"name"`
	Schedule string    `json:"schedule"`
	Next     time.Time `json:"next,omitzero"`
	Prev     time.Time `json:"prev,omitzero"`
}

// SchedulerOptions configure a Scheduler.
type SchedulerOptions struct {
	// Seed makes @random_every offsets differ between hosts; see
	// LoadOrCreateSeed.
	Seed int64
	// Location for cron specs without CRON_TZ; nil means time.Local.
	Location *time.Location
	// Logger; nil means slog.Default().
	Logger *slog.Logger
}

// Scheduler fires entries on their schedules (robfig/cron underneath).
type Scheduler struct {
	seed int64
	log  *slog.Logger
	cron *cron.Cron

	mu      sync.Mutex
	entries map[string]*schedEntry
	ctx     context.Context
	cancel  context.CancelFunc
	started bool
}

type schedEntry struct {
	spec string
	id   cron.EntryID
	run  func(context.Context)
}

// NewScheduler returns a stopped Scheduler with no entries.
func NewScheduler(opts SchedulerOptions) *Scheduler {
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	loc := opts.Location
	if loc == nil {
		loc = time.Local
	}
	cl := cronLogger{log}
	return &Scheduler{
		seed:    opts.Seed,
		log:     log,
		cron:    cron.New(cron.WithLocation(loc), cron.WithLogger(cl), cron.WithChain(cron.Recover(cl))),
		entries: map[string]*schedEntry{},
		ctx:     context.Background(),
	}
}

// Set replaces all entries at once (config reload). Every entry is checked
// first; on any error nothing changes. Entries whose name and schedule are
// unchanged keep their timing; only their Run func is replaced.
func (s *Scheduler) Set(entries []Entry) error {
	parsed := make(map[string]cron.Schedule, len(entries))
	var errs []error
	for i, e := range entries {
		switch {
		case e.Name == "":
			errs = append(errs, fmt.Errorf("schedule entry %d: empty name", i))
			continue
		case e.Run == nil:
			errs = append(errs, fmt.Errorf("schedule entry %q: no Run func", e.Name))
		}
		if _, dup := parsed[e.Name]; dup {
			errs = append(errs, fmt.Errorf("schedule entry %q: duplicate name", e.Name))
			continue
		}
		sched, err := ParseHostSchedule(e.Schedule, s.seed, e.Name)
		if err != nil {
			errs = append(errs, fmt.Errorf("schedule entry %q: %w", e.Name, err))
		}
		parsed[e.Name] = sched
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	want := make(map[string]Entry, len(entries))
	for _, e := range entries {
		want[e.Name] = e
	}
	for name, old := range s.entries {
		if e, ok := want[name]; !ok || strings.TrimSpace(e.Schedule) != old.spec {
			s.cron.Remove(old.id)
			delete(s.entries, name)
		}
	}
	for _, e := range entries {
		if old, ok := s.entries[e.Name]; ok {
			old.run = e.Run
			continue
		}
		name := e.Name
		id := s.cron.Schedule(parsed[name], cron.FuncJob(func() { s.fire(name) }))
		s.entries[name] = &schedEntry{spec: strings.TrimSpace(e.Schedule), id: id, run: e.Run}
	}
	s.log.Info("schedule updated", "entries", len(s.entries))
	return nil
}

func (s *Scheduler) fire(name string) {
	s.mu.Lock()
	e, ok := s.entries[name]
	ctx := s.ctx
	var run func(context.Context)
	if ok {
		run = e.run
	}
	s.mu.Unlock()
	if run == nil {
		return
	}
	s.log.Debug("schedule fired", "entry", name)
	run(ctx)
}

// Start starts firing entries. Run funcs get a context carrying the values
// of ctx, cancelled when ctx is or when Stop is called.
func (s *Scheduler) Start(ctx context.Context) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.started {
		return
	}
	s.started = true
	s.ctx, s.cancel = context.WithCancel(ctx)
	s.cron.Start()
}

// Stop stops firing, cancels the context of running Run funcs and waits for
// them to return, or for ctx.
func (s *Scheduler) Stop(ctx context.Context) error {
	s.mu.Lock()
	if !s.started {
		s.mu.Unlock()
		return nil
	}
	s.started = false
	cancel := s.cancel
	s.mu.Unlock()
	stopped := s.cron.Stop()
	cancel()
	select {
	case <-stopped.Done():
		return nil
	case <-ctx.Done():
		return fmt.Errorf("stop scheduler: entries still running: %w", ctx.Err())
	}
}

// Entries returns the entries with their next and previous activation,
// ordered by name.
func (s *Scheduler) Entries() []EntryStatus {
	s.mu.Lock()
	byID := make(map[cron.EntryID]EntryStatus, len(s.entries))
	for name, e := range s.entries {
		byID[e.id] = EntryStatus{Name: name, Schedule: e.spec}
	}
	s.mu.Unlock()
	out := make([]EntryStatus, 0, len(byID))
	for _, ce := range s.cron.Entries() {
		st, ok := byID[ce.ID]
		if !ok {
			continue
		}
		st.Next, st.Prev = ce.Next, ce.Prev
		if st.Next.IsZero() {
			// Not started yet: cron computes Next only when running.
			st.Next = ce.Schedule.Next(time.Now())
		}
		out = append(out, st)
	}
	slices.SortFunc(out, func(a, b EntryStatus) int { return cmp.Compare(a.Name, b.Name) })
	return out
}

// cronLogger sends robfig/cron's logs to slog.
type cronLogger struct{ l *slog.Logger }

func (c cronLogger) Info(msg string, kv ...any) { c.l.Debug("cron: "+msg, kv...) }
func (c cronLogger) Error(err error, msg string, kv ...any) {
	c.l.Error("cron: "+msg, append([]any{"error", err}, kv...)...)
}
