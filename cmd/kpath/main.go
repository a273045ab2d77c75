// Command kpath is the kpath command line.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/kpath/kpath/internal/cli"
)

func main() {
	// Commands see Ctrl-C and SIGTERM as a cancelled context, so long ones
	// (bench, lab) tear down what they started instead of dying mid-way.
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	err := cli.NewRoot().ExecuteContext(ctx)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "kpath:", err)
		os.Exit(1)
	}
}
