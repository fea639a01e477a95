package backendtest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/custos-backup/custos/repository/backend"
)

func TestMem(t *testing.T) {
	Run(t, func(*testing.T) backend.Backend { return NewMem() })
}

// TestFaultyPassesThrough: a Faulty with no rules is the backend it wraps.
func TestFaultyPassesThrough(t *testing.T) {
	Run(t, func(*testing.T) backend.Backend { return NewFaulty(NewMem()) })
}

// TestFaultyRules: Skip, Times and the type filter pick exactly the calls
// a rule applies to; a failed Save stores nothing and is recorded.
func TestFaultyRules(t *testing.T) {
	ctx := context.Background()
	f := NewFaulty(NewMem())
	r := &Rule{Op: OpSave, Type: backend.IndexFile, Skip: 1, Times: 2, Before: Fail("disk full")}
	f.Add(r)
	var failed []string
	for i := range 5 {
		for _, typ := range []backend.FileType{backend.PackFile, backend.IndexFile} {
			h := backend.Handle{Type: typ, Name: fmt.Sprintf("n%d", i)}
			err := f.Save(ctx, h, bytes.NewReader([]byte("x")), 1)
			if err != nil {
				if !errors.Is(err, ErrInjected) || !strings.Contains(err.Error(), h.String()) {
					t.Errorf("Save %s: %v, want an injected error naming it", h, err)
				}
				failed = append(failed, h.String())
				if _, err := f.Stat(ctx, h); !errors.Is(err, backend.ErrNotExist) {
					t.Errorf("Stat %s after an injected failure: %v", h, err)
				}
			}
		}
	}
	if want := []string{"index/n1", "index/n2"}; !slices.Equal(failed, want) {
		t.Errorf("failed saves %v, want %v", failed, want)
	}
	if n := f.Hits(r); n != 2 {
		t.Errorf("rule applied %d times, want 2", n)
	}
	var saves int
	for _, c := range f.Calls() {
		if c.Op == OpSave {
			saves++
		}
	}
	if saves != 10 {
		t.Errorf("%d saves recorded, want 10", saves)
	}
}
