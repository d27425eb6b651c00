package main

import "github.com/spf13/cobra"

// newMigrateCmd is `voldelta migrate`: being built (issue 11).
func newMigrateCmd() *cobra.Command {
	return &cobra.Command{Use: "migrate", Short: "Watch and drive warm migrations (Migration resources)", Hidden: true}
}
