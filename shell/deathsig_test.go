package shell

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestMain lets the test binary run a Shell command as a child of its own
// (CUSTOS_SHELL_TEST_CHILD=1), so that a test can kill that child with
// SIGKILL and look at what became of the command.
func TestMain(m *testing.M) {
	if os.Getenv("CUSTOS_SHELL_TEST_CHILD") == "1" {
		_ = New(Options{}).Run(context.Background(), os.Getenv("CUSTOS_SHELL_TEST_COMMAND"))
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// TestCommandDiesWithItsRunner: a process that runs a command and is then
// killed with SIGKILL (no chance to cancel) does not leave the command
// running.
func TestCommandDiesWithItsRunner(t *testing.T) {
	const marker = "43.125"
	child := exec.Command(os.Args[0], "-test.run=^$")
	child.Env = append(os.Environ(), "CUSTOS_SHELL_TEST_CHILD=1", "CUSTOS_SHELL_TEST_COMMAND=exec sleep "+marker)
	if err := child.Start(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for len(pidsWithArg(marker)) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the command never started")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := child.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = child.Wait()
	for len(pidsWithArg(marker)) > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("the command outlived the process that ran it: pids %v", pidsWithArg(marker))
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// pidsWithArg lists live (not zombie) processes with an argument equal
// to arg.
func pidsWithArg(arg string) []int {
	var pids []int
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/cmdline")
		if err != nil || len(b) == 0 {
			continue
		}
		st, _ := os.ReadFile("/proc/" + e.Name() + "/stat")
		if i := bytes.LastIndexByte(st, ')'); i > 0 && strings.HasPrefix(string(st[i+1:]), " Z") {
			continue
		}
		for _, a := range bytes.Split(b, []byte{0}) {
			if string(a) == arg {
				pids = append(pids, pid)
			}
		}
	}
	return pids
}
