// Command custos is the backup and preservation agent and its command line.
//
// The command is thin: it parses flags, calls into the packages that do the
// work, and prints. Subcommands are grouped by file: repo*.go holds the
// repository commands that need no agent and no etcd; agent*.go holds the
// agent, backup, find, restore and config commands, and status.go the
// status command, which asks a running agent.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"runtime/pprof"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/custos-backup/custos/agent"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := newRootCmd().ExecuteContext(ctx)
	code := exitCode(ctx, err)
	stop()
	if err != nil && code != exitInterrupted {
		fmt.Fprintln(os.Stderr, "custos:", err)
	} else if code == exitInterrupted {
		fmt.Fprintln(os.Stderr, "custos: interrupted")
	}
	os.Exit(code)
}

func newRootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:   "custos",
		Short: "Backup and preservation agent",
		Long: `custos: backup and preservation agent.

Exit status: 0 ok; 1 failure; 3 a backup was saved but some files could not
be read; 10 no repository at the location; 12 wrong password; 130
interrupted (Ctrl-C, SIGTERM).`,
		SilenceUsage:  true,
		SilenceErrors: true,
		Version:       agent.Version(),
	}
	root.SetVersionTemplate("custos {{.Version}}\n")
	root.AddCommand(&cobra.Command{
		Use:   "version",
		Short: "Print the version of custos",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			_, err := fmt.Fprintln(cmd.OutOrStdout(), "custos", agent.Version())
			return err
		},
	})
	// A developer's aid for profiling real runs (bench/compare.sh data);
	// hidden because users never need it.
	var cpuProfile string
	var profFile *os.File
	root.PersistentFlags().BoolP("quiet", "q", false, "print nothing on success (errors still go to standard error)")
	root.PersistentFlags().StringVar(&cpuProfile, "cpu-profile", "", "write a CPU profile to this file")
	_ = root.PersistentFlags().MarkHidden("cpu-profile")
	root.PersistentPreRunE = func(*cobra.Command, []string) error {
		if cpuProfile == "" {
			return nil
		}
		f, err := os.Create(cpuProfile)
		if err != nil {
			return fmt.Errorf("cpu profile: %w", err)
		}
		profFile = f
		return pprof.StartCPUProfile(f)
	}
	root.PersistentPostRunE = func(*cobra.Command, []string) error {
		if profFile == nil {
			return nil
		}
		pprof.StopCPUProfile()
		return profFile.Close()
	}
	root.AddCommand(newRepoCmd())
	addAgentCommands(root)
	failOnUnknownSubcommands(root)
	return root
}

// failOnUnknownSubcommands makes every command group reject arguments that
// name no subcommand. Cobra otherwise prints the group's help and exits 0
// for "custos repo chek", so a typo in a script passes silently. A group
// called with nothing still prints its help.
func failOnUnknownSubcommands(cmd *cobra.Command) {
	if !cmd.HasSubCommands() {
		return
	}
	if cmd.Run == nil && cmd.RunE == nil {
		cmd.Args = func(c *cobra.Command, args []string) error {
			if len(args) > 0 {
				return fmt.Errorf("unknown command %q for %q (see %s --help)", args[0], c.CommandPath(), c.CommandPath())
			}
			return nil
		}
		cmd.RunE = func(c *cobra.Command, _ []string) error { return c.Help() }
	}
	for _, sub := range cmd.Commands() {
		failOnUnknownSubcommands(sub)
	}
}

// quietFlag reports whether -q/--quiet is set for cmd (the root's, or a
// command group's own).
func quietFlag(cmd *cobra.Command) bool {
	q, _ := cmd.Flags().GetBool("quiet")
	return q
}
