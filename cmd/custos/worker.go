package main

import (
	"fmt"
	"log/slog"
	"os"
	godebug "runtime/debug"
	"slices"
	"strings"

	"github.com/spf13/cobra"

	"github.com/custos-backup/custos/agent"
)

// newWorkerCmd is the agent's worker mode: for each job's data work the
// agent starts "custos worker KIND -c FILE" through its Shell (at the
// source's or the default nice level and I/O class), sends the job on
// standard input and reads progress, log records and the result as JSON
// lines from standard output. Not for people, so hidden.
func newWorkerCmd() *cobra.Command {
	var path string
	kinds := agent.WorkerKinds()
	cmd := &cobra.Command{
		Use:       "worker KIND",
		Short:     "Run one job of the agent (started by the agent)",
		Long:      "Run the job described on standard input; KIND is one of " + strings.Join(kinds, ", ") + ".",
		Hidden:    true,
		Args:      cobra.ExactArgs(1),
		ValidArgs: kinds,
		RunE: func(cmd *cobra.Command, args []string) error {
			kind := args[0]
			if !slices.Contains(kinds, kind) {
				return fmt.Errorf("unknown worker kind %q (want one of %s)", kind, strings.Join(kinds, ", "))
			}
			// Every kind streams packs and blobs as backup and restore
			// do: the same GC setting keeps the peak low.
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
			return agent.RunWorker(ctx, env.mgr, env.cm.Current(), kind, cmd.InOrStdin(), out)
		},
	}
	configFlag(cmd, &path)
	return cmd
}
