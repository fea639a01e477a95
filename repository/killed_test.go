package repository

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/custos-backup/custos/repository/backend"
	"github.com/custos-backup/custos/repository/backend/local"
)

// repoFiles lists the object files (and, separately, the temp files) of a
// local repository by their path under it.
func repoFiles(t *testing.T, dir string) (objects, temps map[string]bool) {
	t.Helper()
	objects, temps = map[string]bool{}, map[string]bool{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if errors.Is(err, fs.ErrNotExist) {
			return nil // removed while walking
		}
		if err != nil || d.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		if strings.HasPrefix(d.Name(), local.TempPrefix) {
			temps[rel] = true
		} else {
			objects[rel] = true
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return objects, temps
}

// killPoint names a moment in a command's run by what the repository
// shows: reached compares the files before the command with the files now.
type killPoint struct {
	name    string
	reached func(before, now map[string]bool, temps map[string]bool) bool
}

func appeared(folder string) func(before, now, _ map[string]bool) bool {
	return func(before, now, _ map[string]bool) bool {
		for p := range now {
			if strings.HasPrefix(p, folder+"/") && !before[p] {
				return true
			}
		}
		return false
	}
}

func vanished(folder string) func(before, now, _ map[string]bool) bool {
	return func(before, now, _ map[string]bool) bool {
		for p := range before {
			if strings.HasPrefix(p, folder+"/") && !now[p] {
				return true
			}
		}
		return false
	}
}

func tempIn(folder string) func(_, _, temps map[string]bool) bool {
	return func(_, _, temps map[string]bool) bool {
		for p := range temps {
			if strings.HasPrefix(p, folder+"/") {
				return true
			}
		}
		return false
	}
}

// runAndKill starts cmd and sends it SIGKILL as soon as the repository in
// dir shows point. It reports whether the kill hit the running command;
// a command that finished first must have succeeded.
func runAndKill(t *testing.T, cmd *exec.Cmd, dir string, point killPoint) bool {
	t.Helper()
	before, _ := repoFiles(t, dir)
	out := &strings.Builder{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	for {
		select {
		case err := <-exited:
			if err != nil {
				t.Fatalf("%s failed on its own before %q: %v\n%s", cmd.Args, point.name, err, out)
			}
			return false
		default:
		}
		now, temps := repoFiles(t, dir)
		if point.reached(before, now, temps) {
			_ = cmd.Process.Kill()
			err := <-exited
			var ee *exec.ExitError
			return errors.As(err, &ee) && !ee.Exited()
		}
		time.Sleep(time.Millisecond)
	}
}

// afterKill checks what must hold after any kill -9: a backup by the
// binary succeeds at once, check is clean, unlock removes the dead lock,
// and a prune past the grace period leaves exactly the indexed packs and
// no temp files, with every snapshot still restorable.
func afterKill(t *testing.T, bin, dir string, env []string, killed bool, srcs map[string]string) {
	t.Helper()
	ctx := context.Background()
	run := func(args ...string) string {
		t.Helper()
		cmd := exec.Command(bin, args...)
		cmd.Env = env
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("custos %s after kill -9: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	// The dead process's lock, if it still had one: under load the kill
	// can land after the process removed its lock but before it exited.
	objects, _ := repoFiles(t, dir)
	dead := len(filterPrefix(objects, "locks/"))
	if !killed && dead != 0 {
		t.Errorf("a process that exited on its own left %d lock(s)", dead)
	}
	if dead > 1 {
		t.Errorf("one killed process left %d locks", dead)
	}
	after := t.TempDir()
	writeTreeOfFiles(t, after, 1, 3, 100<<10, 777)
	run("repo", "backup", "--dataset", "after", "--host", "h", "--quiet", after)
	srcs["after"] = after
	run("repo", "check")
	want := fmt.Sprintf("removed %d lock(s)", dead)
	if out := run("repo", "unlock"); !strings.Contains(out, want) {
		t.Errorf("unlock after the kill said %q, want %q", out, want)
	}
	if objects, _ := repoFiles(t, dir); len(filterPrefix(objects, "locks/")) != 0 {
		t.Errorf("locks left after unlock: %v", filterPrefix(objects, "locks/"))
	}

	r := reopen(t, dir, "pw")
	lock, err := r.Lock(ctx, true)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.prune(ctx, lock, time.Now().Add(pruneGrace+time.Hour), PruneOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := lock.Unlock(ctx); err != nil {
		t.Fatal(err)
	}
	objects, temps := repoFiles(t, dir)
	if len(temps) != 0 {
		t.Errorf("temp files survive a prune past the grace period: %v", temps)
	}
	indexed := indexedPacks(r)
	for p := range filterPrefix(objects, "data/") {
		id, err := ParseID(filepath.Base(p))
		if err != nil || !indexed[id] {
			t.Errorf("unindexed pack %s survives a prune past the grace period", p)
		}
	}
	mustCheckClean(t, r, true)
	for ds, src := range srcs {
		sn, err := r.FindSnapshot(ctx, "latest", ds, "h")
		if err != nil {
			t.Fatalf("dataset %s: %v", ds, err)
		}
		restoreCompare(t, r, sn, src)
	}
}

func filterPrefix(m map[string]bool, prefix string) map[string]bool {
	out := map[string]bool{}
	for p := range m {
		if strings.HasPrefix(p, prefix) {
			out[p] = true
		}
	}
	return out
}

// TestKilledPrune kills `custos repo prune` with SIGKILL at several points
// of its run (bug 3 of issue 11: every backup then failed for half an hour
// on the dead process's exclusive lock).
func TestKilledPrune(t *testing.T) {
	bin := buildCustos(t)
	points := []killPoint{
		{"lock taken", appeared("locks")},
		{"rewritten pack being written", tempIn("data")},
		{"rewritten pack written", appeared("data")},
		{"new index written", appeared("index")},
		{"first pack deleted", vanished("data")},
	}
	hits := 0
	for _, pt := range points {
		t.Run(strings.ReplaceAll(pt.name, " ", "_"), func(t *testing.T) {
			ctx := context.Background()
			r, dir := newSmallPackRepo(t, "pw")
			env := append(os.Environ(), "CUSTOS_REPOSITORY="+dir, "CUSTOS_PASSWORD=pw", "CUSTOS_PASSWORD_FILE=")
			// Two snapshots sharing half their files; forgetting the
			// first leaves packs wholly and partly unused.
			src := t.TempDir()
			writeTreeOfFiles(t, src, 4, 8, 256<<10, 1)
			first, err := r.Backup(ctx, src, nil, BackupOptions{Dataset: "d", Host: "h"})
			if err != nil {
				t.Fatal(err)
			}
			writeTreeOfFiles(t, filepath.Join(src, "d00"), 2, 8, 256<<10, 2)
			for i := range 2 {
				if err := os.RemoveAll(filepath.Join(src, "d0"+string(rune('1'+i)))); err != nil {
					t.Fatal(err)
				}
			}
			if _, err := r.Backup(ctx, src, nil, BackupOptions{Dataset: "d", Host: "h"}); err != nil {
				t.Fatal(err)
			}
			if err := r.be.Remove(ctx, backend.Handle{Type: backend.SnapshotFile, Name: first.ID.String()}); err != nil {
				t.Fatal(err)
			}
			cmd := exec.Command(bin, "repo", "prune", "--max-unused", "0%")
			cmd.Env = env
			killed := runAndKill(t, cmd, dir, pt)
			if killed {
				hits++
			}
			t.Logf("killed while running: %v", killed)
			afterKill(t, bin, dir, env, killed, map[string]string{"d": src})
		})
	}
	if hits < 2 {
		t.Errorf("only %d of %d kills hit a running prune; the test proved little", hits, len(points))
	}
}

// TestKilledBackup kills `custos repo backup` with SIGKILL at several
// points: what it leaves (its lock, staged and finished packs never
// indexed) must block nothing and be reclaimed by the next prune past the
// grace period.
func TestKilledBackup(t *testing.T) {
	bin := buildCustos(t)
	points := []killPoint{
		{"lock taken", appeared("locks")},
		{"pack being staged", tempIn("data")},
		{"first pack written", appeared("data")},
		{"index written", appeared("index")},
	}
	hits := 0
	for _, pt := range points {
		t.Run(strings.ReplaceAll(pt.name, " ", "_"), func(t *testing.T) {
			_, dir := newSmallPackRepo(t, "pw")
			env := append(os.Environ(), "CUSTOS_REPOSITORY="+dir, "CUSTOS_PASSWORD=pw", "CUSTOS_PASSWORD_FILE=")
			src := t.TempDir()
			writeTreeOfFiles(t, src, 4, 8, 256<<10, 3)
			cmd := exec.Command(bin, "repo", "backup", "--dataset", "d", "--host", "h", "--quiet", src)
			cmd.Env = env
			killed := runAndKill(t, cmd, dir, pt)
			if killed {
				hits++
			}
			t.Logf("killed while running: %v", killed)
			srcs := map[string]string{}
			if !killed {
				srcs["d"] = src
			}
			afterKill(t, bin, dir, env, killed, srcs)
		})
	}
	if hits < 2 {
		t.Errorf("only %d of %d kills hit a running backup; the test proved little", hits, len(points))
	}
}
