package main

import (
	"context"
	"strings"
	"testing"

	"github.com/custos-backup/custos/agent"
)

func TestVersion(t *testing.T) {
	for _, args := range [][]string{{"version"}, {"--version"}} {
		out, _, err := runCLI(context.Background(), args...)
		if err != nil {
			t.Fatalf("custos %s: %v", strings.Join(args, " "), err)
		}
		if want := "custos " + agent.Version() + "\n"; out != want {
			t.Errorf("custos %s printed %q, want %q", strings.Join(args, " "), out, want)
		}
	}
	if !strings.Contains(agent.Version(), "go1.") {
		t.Errorf("Version() = %q, want it to name the Go version", agent.Version())
	}
}
