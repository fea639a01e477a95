//go:build !linux

package shell

import (
	"errors"
	"syscall"
)

// applyPriority sets the nice level; I/O classes exist on Linux only.
func applyPriority(pid, nice, ioClass int) []error {
	var errs []error
	if nice != 0 {
		if err := syscall.Setpriority(syscall.PRIO_PROCESS, pid, nice); err != nil {
			errs = append(errs, err)
		}
	}
	if ioClass != 0 {
		errs = append(errs, errors.New("I/O scheduling classes are only supported on Linux"))
	}
	return errs
}
