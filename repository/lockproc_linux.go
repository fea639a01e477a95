package repository

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
)

// thisProcess describes the running process for its lock file. The boot id
// and pid namespace say where a pid means something: two hosts may share a
// hostname, and containers sharing a hostname may have separate pid
// namespaces, so a pid is only probed when both match.
func thisProcess() processInfo {
	host, _ := os.Hostname()
	p := processInfo{Hostname: host, PID: os.Getpid()}
	if b, err := os.ReadFile("/proc/sys/kernel/random/boot_id"); err == nil {
		p.BootID = strings.TrimSpace(string(b))
	}
	if ns, err := os.Readlink("/proc/self/ns/pid"); err == nil {
		p.PIDNamespace = ns
	}
	if st, err := processStart(p.PID); err == nil {
		p.StartTicks = st
	}
	return p
}

// processStart returns the start time of process pid in clock ticks after
// boot (field 22 of /proc/<pid>/stat).
func processStart(pid int) (uint64, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, err
	}
	// The command name (field 2) is in parentheses and may hold spaces or
	// parentheses itself; the fields after the last ')' are plain.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, fmt.Errorf("/proc/%d/stat: no command name", pid)
	}
	f := strings.Fields(string(b[i+1:]))
	const startField = 22 - 3 // fields after ')' start with field 3
	if len(f) <= startField {
		return 0, fmt.Errorf("/proc/%d/stat: %d fields", pid, len(f)+2)
	}
	return strconv.ParseUint(f[startField], 10, 64)
}

// processGone reports whether no process pid started at startTicks runs in
// this pid namespace. startTicks 0 means unknown: then only a missing pid
// counts as gone.
func processGone(pid int, startTicks uint64) bool {
	if pid <= 0 {
		return false
	}
	// Signal 0 probes without sending; EPERM means the process exists
	// under another user.
	if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
		return true
	}
	if startTicks == 0 {
		return false
	}
	st, err := processStart(pid)
	if errors.Is(err, os.ErrNotExist) {
		return true
	}
	// The pid was reused by a process started at another time.
	return err == nil && st != startTicks
}
