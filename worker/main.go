// Command worker is Gantry's data plane: it runs the compute kernels, averages gradients
// with its peers over NATS and writes checkpoints to the object store.
package main

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"
)

func main() {
	root := &cobra.Command{
		Use:           "worker",
		Short:         "Gantry's data plane: trains, all-reduces, checkpoints and generates",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(newTrainCmd())
	root.AddCommand(newJoinCmd())
	root.AddCommand(newGenerateCmd())
	if err := root.Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "worker:", err)
		os.Exit(1)
	}
}
