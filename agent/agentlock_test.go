package agent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"
)

// TestSecondAgentExits starts a real agent, then a second one on the same
// config: the second must fail at once, naming the first one's pid and
// status page, and leave the first one running.
func TestSecondAgentExits(t *testing.T) {
	ctx := testContext(t)
	ts := newSetup(t, "@every 1h", nil)
	runCtx, stop := context.WithCancel(ctx)
	defer stop()
	addr := make(chan string, 1)
	started := make(chan *Agent, 1)
	done := make(chan error, 1)
	go func() {
		done <- Run(runCtx, ts.cfgPath, RunOptions{Logger: testLogger(t), Listening: func(s string) { addr <- s }, Started: func(a *Agent) { started <- a }})
	}()
	var url string
	select {
	case url = <-addr:
	case err := <-done:
		t.Fatalf("first agent: %v", err)
	}
	<-started

	err := Run(ctx, ts.cfgPath, RunOptions{Logger: testLogger(t)})
	if !errors.Is(err, errAgentRunning) {
		t.Fatalf("second agent: %v, want errAgentRunning", err)
	}
	for _, want := range []string{fmt.Sprintf("pid %d", os.Getpid()), "http://" + url + "/"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("second agent's error %q does not name %q", err, want)
		}
	}
	select {
	case err := <-done:
		t.Fatalf("the first agent stopped: %v", err)
	default:
	}
	stop()
	if err := <-done; err != nil {
		t.Errorf("first agent: %v", err)
	}
	// Once the first has stopped, an agent starts again.
	ctx2, stop2 := context.WithCancel(ctx)
	done2 := make(chan error, 1)
	go func() {
		done2 <- Run(ctx2, ts.cfgPath, RunOptions{Logger: testLogger(t), Started: func(*Agent) { stop2() }})
	}()
	if err := <-done2; err != nil {
		t.Errorf("agent after the first stopped: %v", err)
	}
}
