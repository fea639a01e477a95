package repository

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// buildCustos builds the custos command into a temporary folder.
func buildCustos(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "custos")
	cmd := exec.Command("go", "build", "-o", bin, "github.com/custos-backup/custos/cmd/custos")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// TestCrashDuringBackup kills `custos repo backup` with SIGKILL at random
// moments. After every kill the repository must check clean and the next
// backup must succeed; at the end the latest snapshot restores byte-exact.
func TestCrashDuringBackup(t *testing.T) {
	bin := buildCustos(t)
	ctx := context.Background()
	_, dir := newSmallPackRepo(t, "pw")
	src := t.TempDir()
	const dirs, files, size = 4, 8, 1 << 20
	writeTreeOfFiles(t, src, dirs, files, size, 1)

	backupCmd := func() *exec.Cmd {
		cmd := exec.Command(bin, "repo", "backup", "--dataset", "d", "--host", "h", "--quiet", src)
		cmd.Env = append(os.Environ(), "CUSTOS_REPOSITORY="+dir, "CUSTOS_PASSWORD=pw", "CUSTOS_PASSWORD_FILE=")
		return cmd
	}
	if out, err := backupCmd().CombinedOutput(); err != nil {
		t.Fatalf("first backup: %v\n%s", err, out)
	}
	rng := rand.New(rand.NewPCG(42, 43))
	// mutate changes a third of the files so that every backup writes packs.
	mutate := func(round int) {
		for k := range files * dirs / 3 {
			n := rng.IntN(files * dirs)
			p := filepath.Join(src, fmt.Sprintf("d%02d", n/files), fmt.Sprintf("f-%02d.bin", n%files))
			writeFile(t, p, randBytes(uint64(1000*(round+1)+k), size), 0o644)
		}
	}
	// Calibrate the kill delays with one complete incremental run.
	mutate(-1)
	start := time.Now()
	if out, err := backupCmd().CombinedOutput(); err != nil {
		t.Fatalf("calibration backup: %v\n%s", err, out)
	}
	full := max(time.Since(start), 50*time.Millisecond)

	const rounds = 24
	killedMidway := 0
	for round := range rounds {
		mutate(round)
		cmd := backupCmd()
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Duration(rng.Int64N(int64(full))))
		_ = cmd.Process.Kill()
		err := cmd.Wait()
		var ee *exec.ExitError
		if errors.As(err, &ee) && !ee.Exited() {
			killedMidway++
		} else if err != nil {
			t.Fatalf("round %d: backup failed on its own: %v", round, err)
		}

		r := reopen(t, dir, "pw")
		res, err := r.Check(ctx, CheckOptions{ReadData: round%5 == 4})
		if err != nil {
			t.Fatalf("round %d: check: %v", round, err)
		}
		if len(res.Problems) > 0 {
			t.Fatalf("round %d: check after kill -9: %+v", round, res.Problems)
		}
		if _, err := r.Backup(ctx, src, nil, BackupOptions{Dataset: "d", Host: "h"}); err != nil {
			t.Fatalf("round %d: backup after kill -9: %v", round, err)
		}
	}
	t.Logf("%d of %d backups were killed while running", killedMidway, rounds)
	if killedMidway == 0 {
		t.Error("no kill hit a running backup; the test proved nothing")
	}
	r := reopen(t, dir, "pw")
	mustCheckClean(t, r, true)
	sn, err := r.FindSnapshot(ctx, "latest", "d", "h")
	if err != nil {
		t.Fatal(err)
	}
	restoreCompare(t, r, sn, src)
}

// TestConcurrentBackups runs two backups into one repository at the same
// time through separate handles; both must succeed and restore.
func TestConcurrentBackups(t *testing.T) {
	ctx := context.Background()
	_, dir := newSmallPackRepo(t, "pw")
	srcs := []string{t.TempDir(), t.TempDir()}
	for i, s := range srcs {
		writeTreeOfFiles(t, s, 3, 4, 500<<10, uint64(100*i))
		// Shared content: both backups may try to store it at once.
		writeFile(t, filepath.Join(s, "shared.bin"), randBytes(7, 2<<20), 0o644)
	}
	handles := []*Repository{reopen(t, dir, "pw"), reopen(t, dir, "pw")}
	snaps := make([]*Snapshot, 2)
	errs := make([]error, 2)
	var wg sync.WaitGroup
	for i := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			snaps[i], errs[i] = handles[i].Backup(ctx, srcs[i], nil, BackupOptions{Dataset: fmt.Sprint("ds", i), Host: "h"})
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("backup %d: %v", i, err)
		}
	}
	r := reopen(t, dir, "pw")
	mustCheckClean(t, r, true)
	for i := range 2 {
		restoreCompare(t, r, snaps[i], srcs[i])
	}
}
