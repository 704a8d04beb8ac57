// Command worker is Gantry's data plane: it runs the compute kernels, averages gradients
// with its peers over NATS and writes checkpoints to the object store.
package main

import (
	"fmt"
	"os"

	"github.com/hashicorp/go-hclog"
	"github.com/spf13/cobra"
)

func main() {
	root := &cobra.Command{
		Use:           "worker",
		Short:         "Gantry's data plane: trains, all-reduces, checkpoints and generates",
		SilenceUsage:  true,
		SilenceErrors: true,
		// Every command with --log-level: a misspelt level is refused, not taken as info.
		PersistentPreRunE: checkLogLevel,
	}
	root.AddCommand(newTrainCmd())
	root.AddCommand(newJoinCmd())
	root.AddCommand(newGenerateCmd())
	if err := root.Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "worker:", err)
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
