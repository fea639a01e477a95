package main

import "github.com/spf13/cobra"

// addAgentCommands adds the agent, backup, find, restore and config commands.
func addAgentCommands(root *cobra.Command) {}
