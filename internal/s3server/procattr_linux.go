package s3server

import "syscall"

// procAttr puts the server in its own process group, so Stop can kill it and
// anything it started, and kills it if the test binary dies first.
func procAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}
