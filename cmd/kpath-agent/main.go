// Command kpath-agent runs kpath's node agent.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/kpath/kpath/internal/agent"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := agent.NewCommand().ExecuteContext(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "kpath-agent:", err)
		os.Exit(1)
	}
}
