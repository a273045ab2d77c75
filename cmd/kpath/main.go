// Command kpath is the kpath command line.
package main

import (
	"fmt"
	"os"

	"github.com/kpath/kpath/internal/cli"
)

func main() {
	if err := cli.NewRoot().Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "kpath:", err)
		os.Exit(1)
	}
}
