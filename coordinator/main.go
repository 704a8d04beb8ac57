// Command coordinator is Gantry's control plane: it plans a training job (dataset shards,
// the progressive-growing schedule, checkpoint commits), is elected through etcd, and in
// `dev` mode runs everything on one machine.
package main

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"
)

func main() {
	root := &cobra.Command{
		Use:           "coordinator",
		Short:         "Gantry's control plane: plans, schedules and commits StyleGAN training jobs",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(newDatasetCmd())
	root.AddCommand(newDevCmd())
	root.AddCommand(newServeCmd())
	root.AddCommand(newStatusCmd())
	if err := root.Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "coordinator:", err)
		os.Exit(1)
	}
}
