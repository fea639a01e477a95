package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"

	"github.com/spf13/cobra"

	"github.com/custos-backup/custos/agent"
)

func newReplicateCmd() *cobra.Command {
	var path, source, dataset string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "replicate",
		Short: "Copy snapshots to the replica repositories now, in this process, and exit",
		Long: `Copy every snapshot of each replicated dataset (every source with a
replicate setting, or one with --source; one dataset with --dataset) that a
target repository lacks, sending only the blobs it lacks, and record in the
catalog which repositories hold each snapshot. An interrupted run resumes:
the next one sends only what the target does not hold yet. Exits non-zero
if any copy failed.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if dataset != "" && source == "" {
				return errors.New("--dataset needs --source")
			}
			ctx := cmd.Context()
			env, err := openCLI(ctx, path, false, slog.LevelInfo)
			if err != nil {
				return err
			}
			defer env.Close()
			results, err := agent.ReplicateNow(ctx, env.mgr, env.cm.Current(), source, dataset)
			out := cmd.OutOrStdout()
			if asJSON {
				enc := json.NewEncoder(out)
				enc.SetIndent("", "  ")
				if results == nil {
					results = []*agent.ReplicateResult{}
				}
				if jerr := enc.Encode(results); jerr != nil {
					return jerr
				}
				return err
			}
			for _, r := range results {
				status := fmt.Sprintf("ok  %d snapshot(s) held, %d written, %d blobs, %s sent", r.Snapshots, r.Written, r.BlobsCopied, agent.HumanBytes(r.BytesCopied))
				if r.Err != nil {
					status = "FAILED: " + r.Err.Error()
				}
				fmt.Fprintf(out, "%s/%s -> %s  %s\n", r.Source, r.Dataset, r.To, status)
			}
			return err
		},
	}
	configFlag(cmd, &path)
	cmd.Flags().StringVar(&source, "source", "", "only this source")
	cmd.Flags().StringVar(&dataset, "dataset", "", "only this dataset of --source")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}
