package shell

import (
	"fmt"

	"golang.org/x/sys/unix"
)

// Values from linux/ioprio.h.
const (
	ioprioWhoProcess = 1
	ioprioClassShift = 13
	ioprioDefaultLvl = 4 // what ionice(1) uses for realtime and best-effort
)

// applyPriority sets the nice level and I/O class of the single-threaded
// process pid. Zero values are left alone.
func applyPriority(pid, nice, ioClass int) []error {
	var errs []error
	if nice != 0 {
		if err := unix.Setpriority(unix.PRIO_PROCESS, pid, nice); err != nil {
			errs = append(errs, fmt.Errorf("setpriority(%d, %d): %w", pid, nice, err))
		}
	}
	if ioClass != 0 {
		level := ioprioDefaultLvl
		if ioClass == 3 {
			level = 0
		}
		prio := ioClass<<ioprioClassShift | level
		if _, _, e := unix.Syscall(unix.SYS_IOPRIO_SET, ioprioWhoProcess, uintptr(pid), uintptr(prio)); e != 0 {
			errs = append(errs, fmt.Errorf("ioprio_set(%d, class %d): %w", pid, ioClass, e))
		}
	}
	return errs
}
