package agent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"time"
)

// lockDataset takes the exclusive lock of one dataset on this host, waiting
// for it until ctx ends. It is a flock on a file under work_dir/locks, so it
// holds between the agent and a "custos backup" run at the same time, and
// it is released by the kernel if the process dies.
func lockDataset(ctx context.Context, workDir, source, dataset string) (unlock func(), err error) {
	dir := filepath.Join(workDir, "locks")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("lock dataset %s/%s: %w", source, dataset, err)
	}
	p := filepath.Join(dir, source+"__"+dataset+".lock")
	f, err := os.OpenFile(p, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("lock dataset %s/%s: %w", source, dataset, err)
	}
	wait := 50 * time.Millisecond
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			return func() {
				_ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
				f.Close()
			}, nil
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) {
			f.Close()
			return nil, fmt.Errorf("lock dataset %s/%s: %w", source, dataset, err)
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, fmt.Errorf("dataset %s/%s is being backed up by another job; gave up waiting: %w", source, dataset, context.Cause(ctx))
		case <-time.After(wait):
		}
		wait = min(2*wait, time.Second)
	}
}
