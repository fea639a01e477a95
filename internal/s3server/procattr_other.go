//go:build unix && !linux

package s3server

import "syscall"

// procAttr puts the server in its own process group, so Stop can kill it and
// anything it started.
func procAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true}
}
