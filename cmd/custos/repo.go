package main

import "github.com/spf13/cobra"

// newRepoCmd returns the "custos repo" command group.
func newRepoCmd() *cobra.Command {
	return &cobra.Command{Use: "repo", Short: "Work with a repository directly (no agent, no etcd)"}
}
