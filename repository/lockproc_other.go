//go:build !linux

package repository

import "os"

// thisProcess describes the running process for its lock file. Outside
// Linux there is no boot id, pid namespace or start time to record, and
// processGone cannot tell, so such locks go stale by age only.
func thisProcess() processInfo {
	host, _ := os.Hostname()
	return processInfo{Hostname: host, PID: os.Getpid()}
}

// processGone cannot tell on this system and says no, the safe answer.
func processGone(int, uint64) bool { return false }
