// Command coordinator is Gantry's control plane: it plans a training job (dataset shards,
// the progressive-growing schedule, checkpoint commits), is elected through etcd, and in
// `dev` mode runs everything on one machine.
package main

import (
	"fmt"
	"os"

	"github.com/hashicorp/go-hclog"
	"github.com/spf13/cobra"
)

func main() {
	root := &cobra.Command{
		Use:           "coordinator",
		Short:         "Gantry's control plane: plans, schedules and commits StyleGAN training jobs",
		SilenceUsage:  true,
		SilenceErrors: true,
		// Every command with --log-level: a misspelt level is refused, not taken as info.
		PersistentPreRunE: checkLogLevel,
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

// checkLogLevel refuses a --log-level that hclog does not know.
func checkLogLevel(cmd *cobra.Command, _ []string) error {
	f := cmd.Flags().Lookup("log-level")
	if f == nil {
		return nil
	}
	if hclog.LevelFromString(f.Value.String()) == hclog.NoLevel {
		return fmt.Errorf("%s: --log-level %q: want trace, debug, info, warn, error or off", cmd.Name(), f.Value.String())
	}
	return nil
}
