package main

import (
	"log/slog"
	"os"
	godebug "runtime/debug"

	"github.com/spf13/cobra"

	"github.com/custos-backup/custos/agent"
)

// newWorkerCmd is the agent's worker mode: the agent starts "custos worker
// ingest -c FILE" through its Shell (at the configured nice level and I/O
// class) for each dataset it backs up, sends the job on standard input and
// reads progress and the result as JSON lines from standard output. Not
// for people, so hidden.
func newWorkerCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:    "worker",
		Short:  "Run one job of the agent (started by the agent)",
		Hidden: true,
	}
	var path string
	ingest := &cobra.Command{
		Use:   "ingest",
		Short: "Back up the dataset described on standard input",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if _, set := os.LookupEnv("GOGC"); !set {
				godebug.SetGCPercent(backupGCPercent)
			}
			ctx := cmd.Context()
			// Log records go to the agent with the result, as JSON, and
			// the agent logs them as its own; stderr is left for what
			// bypasses slog (a panic).
			out := agent.NewWorkerOutput(cmd.OutOrStdout())
			log := slog.New(slog.NewJSONHandler(out, &slog.HandlerOptions{Level: slog.LevelInfo}))
			slog.SetDefault(log)
			env, err := openCLIWith(ctx, path, true, log)
			if err != nil {
				return err
			}
			defer env.Close()
			return agent.RunWorkerIngest(ctx, env.mgr, env.cm.Current(), cmd.InOrStdin(), out)
		},
	}
	configFlag(ingest, &path)
	cmd.AddCommand(ingest)
	return cmd
}
