package main

import (
	"bytes"
	"os"
	"strings"
	"testing"

	"github.com/spf13/cobra"
)

// TestUnknownSubcommandFails walks every command group: a misspelt
// subcommand must be an error (non-zero exit), never help and success.
func TestUnknownSubcommandFails(t *testing.T) {
	var groups [][]string
	var walk func(c *cobra.Command, path []string)
	var runnable = map[string]bool{}
	walk = func(c *cobra.Command, path []string) {
		if c.HasSubCommands() {
			groups = append(groups, path)
			// A command that does its own work and has subcommands too
			// (custos fixity, custos fixity report) runs when called bare.
			runnable[strings.Join(path, " ")] = c.Annotations[runnableGroup] != ""
		}
		for _, sub := range c.Commands() {
			walk(sub, append(append([]string(nil), path...), sub.Name()))
		}
	}
	walk(newRootCmd(), nil)
	if len(groups) < 3 {
		t.Fatalf("found only the command groups %v", groups)
	}
	for _, g := range groups {
		t.Run(strings.Join(append([]string{"custos"}, g...), " "), func(t *testing.T) {
			var out bytes.Buffer
			root := newRootCmd()
			root.SetArgs(append(append([]string(nil), g...), "chek"))
			root.SetOut(&out)
			root.SetErr(&out)
			err := root.Execute()
			if err == nil || !strings.Contains(err.Error(), `unknown command "chek"`) {
				t.Fatalf("err %v, want unknown command (output %q)", err, out.String())
			}

			if runnable[strings.Join(g, " ")] {
				return
			}
			out.Reset()
			root = newRootCmd()
			root.SetArgs(g)
			root.SetOut(&out)
			root.SetErr(&out)
			if err := root.Execute(); err != nil {
				t.Fatalf("the bare group: %v", err)
			}
			if !strings.Contains(out.String(), "Available Commands") {
				t.Errorf("the bare group printed no help: %q", out.String())
			}
		})
	}
}

// TestMain lets the test binary stand in for the custos binary: tests that
// need a real custos process (the agent's worker processes) start it with
// CUSTOS_TEST_AS_CUSTOS=1, and it then runs main with its arguments.
// With CUSTOS_TEST_TRACE=FILE it first appends its arguments to FILE, so
// that a test knows which processes ran, however short-lived.
func TestMain(m *testing.M) {
	if os.Getenv("CUSTOS_TEST_AS_CUSTOS") == "1" {
		if trace := os.Getenv("CUSTOS_TEST_TRACE"); trace != "" {
			f, err := os.OpenFile(trace, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o600)
			if err == nil {
				_, _ = f.WriteString(strings.Join(os.Args[1:], " ") + "\n")
				_ = f.Close()
			}
		}
		main()
		return
	}
	os.Exit(m.Run())
}
