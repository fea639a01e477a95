package backendtest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"

	"github.com/custos-backup/custos/repository/backend"
)

// Op names a backend operation.
type Op string

// The operations a Faulty can intercept.
const (
	OpSave   Op = "Save"
	OpLoad   Op = "Load"
	OpStat   Op = "Stat"
	OpList   Op = "List"
	OpRemove Op = "Remove"
)

// ErrInjected is wrapped by the errors of Fail rules.
var ErrInjected = errors.New("injected fault")

// Rule intercepts the calls of one operation on one object type.
type Rule struct {
	Op   Op
	Type backend.FileType // "" = any type
	// Skip lets this many matching calls through untouched first.
	Skip int
	// Times is how many matching calls (after Skip) the rule applies to;
	// 0 means all of them.
	Times int
	// Before runs when a matching call starts, before it reaches the
	// wrapped backend. A non-nil error becomes the call's result and the
	// wrapped backend never sees the call. Before may block, to hold a
	// writer at a chosen point while the test runs something else; it
	// should then also return when ctx ends.
	Before func(ctx context.Context, h backend.Handle) error
	// After runs when a matching call has returned from the wrapped
	// backend (for List: after the whole listing). A non-nil error
	// replaces the call's result (the call has happened all the same).
	After func(ctx context.Context, h backend.Handle, err error) error

	seen, hit int
}

// Fail returns a Before that fails the call with an error naming the
// object and reason, wrapping ErrInjected.
func Fail(reason string) func(context.Context, backend.Handle) error {
	return func(_ context.Context, h backend.Handle) error {
		return fmt.Errorf("%s: %s: %w", h, reason, ErrInjected)
	}
}

// Call is one call a Faulty saw, as it returned.
type Call struct {
	Op     Op
	Handle backend.Handle // for List: only Type is set
	Err    error
}

// Faulty wraps a real backend and injects faults, pauses or observers by
// rules; with no rules it is the wrapped backend. It also records every
// call, so that a test can assert the order in which objects were written.
type Faulty struct {
	backend.Backend
	mu    sync.Mutex
	rules []*Rule
	calls []Call
}

// NewFaulty wraps be.
func NewFaulty(be backend.Backend) *Faulty { return &Faulty{Backend: be} }

// Add installs a rule; rules are tried in the order they were added and
// the first that applies to a call wins.
func (f *Faulty) Add(r *Rule) {
	f.mu.Lock()
	f.rules = append(f.rules, r)
	f.mu.Unlock()
}

// Reset removes every rule and forgets the recorded calls.
func (f *Faulty) Reset() {
	f.mu.Lock()
	f.rules, f.calls = nil, nil
	f.mu.Unlock()
}

// Calls returns the calls recorded so far, in the order they returned.
func (f *Faulty) Calls() []Call {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]Call(nil), f.calls...)
}

// Hits returns how many calls r has applied to.
func (f *Faulty) Hits(r *Rule) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return r.hit
}

// match finds the rule for a call and counts it.
func (f *Faulty) match(op Op, t backend.FileType) *Rule {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, r := range f.rules {
		if r.Op != op || (r.Type != "" && r.Type != t) {
			continue
		}
		r.seen++
		if r.seen <= r.Skip || (r.Times > 0 && r.hit >= r.Times) {
			continue
		}
		r.hit++
		return r
	}
	return nil
}

// do runs one call under the rules and records it.
func (f *Faulty) do(ctx context.Context, op Op, h backend.Handle, call func() error) error {
	r := f.match(op, h.Type)
	var err error
	if r != nil && r.Before != nil {
		err = r.Before(ctx, h)
	}
	if err == nil {
		err = call()
		if r != nil && r.After != nil {
			err = r.After(ctx, h, err)
		}
	}
	f.mu.Lock()
	f.calls = append(f.calls, Call{Op: op, Handle: h, Err: err})
	f.mu.Unlock()
	return err
}

// Save implements backend.Backend.
func (f *Faulty) Save(ctx context.Context, h backend.Handle, rd io.ReadSeeker, size int64) error {
	return f.do(ctx, OpSave, h, func() error { return f.Backend.Save(ctx, h, rd, size) })
}

// Load implements backend.Backend.
func (f *Faulty) Load(ctx context.Context, h backend.Handle, length int, offset int64) (io.ReadCloser, error) {
	var rc io.ReadCloser
	err := f.do(ctx, OpLoad, h, func() (err error) {
		rc, err = f.Backend.Load(ctx, h, length, offset)
		return err
	})
	if err != nil && rc != nil {
		_ = rc.Close()
		rc = nil
	}
	return rc, err
}

// Stat implements backend.Backend.
func (f *Faulty) Stat(ctx context.Context, h backend.Handle) (backend.FileInfo, error) {
	var fi backend.FileInfo
	err := f.do(ctx, OpStat, h, func() (err error) {
		fi, err = f.Backend.Stat(ctx, h)
		return err
	})
	return fi, err
}

// List implements backend.Backend.
func (f *Faulty) List(ctx context.Context, t backend.FileType, fn func(backend.FileInfo) error) error {
	return f.do(ctx, OpList, backend.Handle{Type: t}, func() error { return f.Backend.List(ctx, t, fn) })
}

// Remove implements backend.Backend.
func (f *Faulty) Remove(ctx context.Context, h backend.Handle) error {
	return f.do(ctx, OpRemove, h, func() error { return f.Backend.Remove(ctx, h) })
}
