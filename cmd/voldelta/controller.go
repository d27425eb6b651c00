package main

import "github.com/spf13/cobra"

// newControllerCmd is `voldelta controller`: being built (issue 11).
func newControllerCmd() *cobra.Command {
	return &cobra.Command{Use: "controller", Short: "Run the Migration controller in the source cluster", Hidden: true}
}
