package cli

import (
	"github.com/spf13/cobra"
)

// NewRoot returns the kpath command.
func NewRoot() *cobra.Command {
	root := &cobra.Command{
		Use:           "kpath",
		Short:         "kpath: an eBPF dataplane for Kubernetes pod networking",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(newDPCommand(), newWorkloadCommand(), newBenchCommand(), newLabCommand(), newImageCommand())
	addAgentCommands(root)
	return root
}
