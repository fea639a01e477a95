package agent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
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

// agentLock is the one-agent-per-work_dir lock: a flock on
// work_dir/agent.pid, which holds the running agent's pid and status URL so
// that a second start can name them. The kernel drops it if the agent dies.
type agentLock struct{ f *os.File }

// errAgentRunning is returned when another agent holds the work_dir.
var errAgentRunning = errors.New("another agent is running with this work_dir")

func lockAgent(workDir string) (*agentLock, error) {
	if err := os.MkdirAll(workDir, 0o700); err != nil {
		return nil, fmt.Errorf("work_dir %s: %w", workDir, err)
	}
	p := filepath.Join(workDir, "agent.pid")
	f, err := os.OpenFile(p, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("agent lock %s: %w", p, err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		defer f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			who, _ := os.ReadFile(p)
			return nil, fmt.Errorf("%w (%s): %s", errAgentRunning, p, strings.TrimSpace(string(who)))
		}
		return nil, fmt.Errorf("agent lock %s: %w", p, err)
	}
	l := &agentLock{f: f}
	if err := l.record(""); err != nil {
		l.release()
		return nil, err
	}
	return l, nil
}

// record writes who holds the lock: "pid N[, status page URL]".
func (l *agentLock) record(url string) error {
	s := fmt.Sprintf("pid %d", os.Getpid())
	if url != "" {
		s += ", status page " + url
	}
	if err := l.f.Truncate(0); err != nil {
		return fmt.Errorf("agent lock: %w", err)
	}
	if _, err := l.f.WriteAt([]byte(s+"\n"), 0); err != nil {
		return fmt.Errorf("agent lock: %w", err)
	}
	return nil
}

func (l *agentLock) release() {
	_ = l.f.Truncate(0)
	_ = syscall.Flock(int(l.f.Fd()), syscall.LOCK_UN)
	_ = l.f.Close()
}
