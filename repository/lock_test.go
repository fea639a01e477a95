package repository

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os/exec"
	"slices"
	"testing"
	"time"

	"github.com/custos-backup/custos/repository/backend"
	"github.com/custos-backup/custos/repository/backend/backendtest"
	"github.com/custos-backup/custos/repository/format"
)

// deadProcess returns the identity of a real process of this host that has
// exited: a child started, identified while it runs, then ended. Even if
// its pid is reused meanwhile, the start time tells the two apart.
func deadProcess(t *testing.T) processInfo {
	t.Helper()
	cmd := exec.Command("/bin/sh", "-c", "cat >/dev/null")
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := thisProcess()
	p.PID = cmd.Process.Pid
	st, err := processStart(p.PID)
	if err != nil {
		t.Fatalf("start time of child %d: %v", p.PID, err)
	}
	p.StartTicks = st
	_ = in.Close()
	if err := cmd.Wait(); err != nil {
		t.Fatal(err)
	}
	return p
}

func writeLockFile(t *testing.T, r *Repository, name string, li lockInfo) {
	t.Helper()
	b, err := json.Marshal(&li)
	if err != nil {
		t.Fatal(err)
	}
	if err := saveBytes(context.Background(), r.be, backend.Handle{Type: backend.LockFile, Name: name}, r.seal.Seal(nil, b)); err != nil {
		t.Fatal(err)
	}
}

// TestLockOfGoneProcess: an exclusive lock refreshed a moment ago blocks
// only while its process may still run.
func TestLockOfGoneProcess(t *testing.T) {
	me := thisProcess()
	if me.BootID == "" || me.StartTicks == 0 {
		t.Fatalf("no boot id or start time for this process: %+v", me)
	}
	dead := deadProcess(t)
	with := func(f func(p *processInfo)) processInfo {
		p := dead
		f(&p)
		return p
	}
	tests := []struct {
		name  string
		proc  processInfo
		stale bool
	}{
		{"killed process of this host", dead, true},
		{"pid reused by this very process", with(func(p *processInfo) { p.PID = me.PID }), true},
		{"this process", me, false},
		{"other host", with(func(p *processInfo) { p.Hostname += "-other" }), false},
		{"other boot", with(func(p *processInfo) { p.BootID = "00000000-0000-0000-0000-000000000000" }), false},
		{"other pid namespace", with(func(p *processInfo) { p.PIDNamespace = "pid:[1]" }), false},
		{"lock from before boot ids were recorded", with(func(p *processInfo) { p.BootID, p.PIDNamespace, p.StartTicks = "", "", 0 }), false},
		{"live process, start time unknown", with(func(p *processInfo) { p.PID, p.StartTicks = me.PID, 0 }), false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			r, _ := newTestRepo(t, false)
			now := time.Now()
			li := lockInfo{Version: format.Version, Exclusive: true, Created: now, Refreshed: now}
			li.setProcess(tc.proc)
			writeLockFile(t, r, "other", li)
			l, err := r.Lock(ctx, false)
			switch {
			case tc.stale && err != nil:
				t.Fatalf("lock of a gone process blocks: %v", err)
			case !tc.stale && !errors.Is(err, ErrLocked):
				t.Fatalf("lock of a process that may run: err %v, want ErrLocked", err)
			}
			if l != nil {
				if err := l.Unlock(ctx); err != nil {
					t.Fatal(err)
				}
			}
			n, err := r.RemoveStaleLocks(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if want := map[bool]int{true: 1, false: 0}[tc.stale]; n != want {
				t.Errorf("RemoveStaleLocks removed %d, want %d", n, want)
			}
			n, err = r.RemoveAllLocks(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if want := map[bool]int{true: 0, false: 1}[tc.stale]; n != want {
				t.Errorf("RemoveAllLocks removed %d, want %d", n, want)
			}
		})
	}
}

func TestUnindexedCutoff(t *testing.T) {
	me := thisProcess()
	dead := deadProcess(t)
	tStart := time.Now()
	grace := tStart.Add(-pruneGrace)
	older := tStart.Add(-5 * time.Hour)
	lock := func(name string, created, refreshed time.Time, p processInfo) lockEntry {
		li := &lockInfo{Version: format.Version, Created: created, Refreshed: refreshed}
		li.setProcess(p)
		return lockEntry{Name: name, Info: li}
	}
	other := processInfo{Hostname: "elsewhere", PID: 7}
	tests := []struct {
		name  string
		locks []lockEntry
		want  time.Time
	}{
		{"no locks", nil, grace},
		{"own lock", []lockEntry{lock("own", older, tStart, me)}, grace},
		{"live lock of another host", []lockEntry{lock("a", older, tStart, other)}, older},
		{"live lock younger than the grace", []lockEntry{lock("a", tStart.Add(-time.Hour), tStart, other)}, grace},
		{"lock not refreshed for long", []lockEntry{lock("a", older, older, other)}, grace},
		{"lock of a killed process", []lockEntry{lock("a", older, tStart, dead)}, grace},
		{"unreadable lock", []lockEntry{{Name: "a", Err: errors.New("bad")}}, time.Time{}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := unindexedCutoff(tc.locks, "own", tStart, tStart, me); !got.Equal(tc.want) {
				t.Errorf("cutoff %v, want %v", got, tc.want)
			}
		})
	}
}

// TestLockRequests: what taking a lock asks of the backend, which on
// remote storage is a round trip per step. A shared lock (every backup)
// is written and then checked, without a look before and without reading
// its own file back; other holders' files are read at the same time. An
// exclusive lock looks before it writes too. Either kind, refused, leaves
// no file of its own.
func TestLockRequests(t *testing.T) {
	ops := func(calls []backendtest.Call) []string {
		var out []string
		for _, c := range calls {
			if c.Handle.Type == backend.LockFile {
				out = append(out, string(c.Op))
			}
		}
		return out
	}
	cases := []struct {
		name      string
		exclusive bool
		others    int // shared locks held by others
		want      []string
	}{
		{"shared alone", false, 0, []string{"Save", "List"}},
		{"shared among three", false, 3, []string{"Save", "List", "Load", "Load", "Load"}},
		{"exclusive alone", true, 0, []string{"List", "Save", "List"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			r, f := newFaultyRepo(t)
			now := time.Now().UTC()
			for i := range tc.others {
				li := lockInfo{Version: 1, Created: now, Refreshed: now}
				li.setProcess(thisProcess())
				writeLockFile(t, r, fmt.Sprintf("%064x", i+1), li)
			}
			f.Reset()
			if tc.others > 0 {
				// Every other lock file is being loaded before any load
				// returns: they are read at once, not one after another.
				f.Add(&backendtest.Rule{Op: backendtest.OpLoad, Type: backend.LockFile, Times: tc.others, Before: together(tc.others)})
			}
			l, err := r.Lock(ctx, tc.exclusive)
			if err != nil {
				t.Fatal(err)
			}
			if got := ops(f.Calls()); !slices.Equal(got, tc.want) {
				t.Errorf("lock files: %v, want %v", got, tc.want)
			}
			if err := l.Unlock(ctx); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestRefusedLockLeavesNoFile: a shared lock refused because an exclusive
// one is held, and an exclusive one refused because a shared one is,
// leave the held lock the only file in locks/.
func TestRefusedLockLeavesNoFile(t *testing.T) {
	for _, held := range []bool{true, false} {
		ctx := context.Background()
		r, _ := newTestRepo(t, false)
		h, err := r.Lock(ctx, held)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := r.Lock(ctx, !held); !errors.Is(err, ErrLocked) {
			t.Fatalf("exclusive=%v while exclusive=%v is held: %v, want ErrLocked", !held, held, err)
		}
		locks, err := r.listLocks(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(locks) != 1 || locks[0].Name != h.Name() {
			t.Errorf("exclusive=%v held, exclusive=%v refused: locks/ holds %v, want only %s", held, !held, locks, h.Name())
		}
		if err := h.Unlock(ctx); err != nil {
			t.Fatal(err)
		}
	}
}
