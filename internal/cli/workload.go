package cli

import (
	"context"
	"fmt"
	"os/signal"
	"sort"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/kpath/kpath/internal/workload"
)

func newWorkloadCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "workload",
		Short: "Programs that kpath's demo and lab run inside pods",
	}
	var cfg workload.EchoConfig
	echo := &cobra.Command{
		Use:   "echo",
		Short: "Serve HTTP and UDP, answering every request with --name",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			err := workload.RunEcho(ctx, cfg, func() { fmt.Fprintln(cmd.OutOrStdout(), "ready") })
			if ctx.Err() != nil {
				return nil
			}
			return err
		},
	}
	echo.Flags().StringVar(&cfg.Name, "name", "echo", "the answer")
	echo.Flags().StringVar(&cfg.HTTPAddr, "http", ":8080", `HTTP listen address ("" for none)`)
	echo.Flags().StringVar(&cfg.UDPAddr, "udp", ":5353", `UDP listen address ("" for none)`)

	var (
		n       int
		timeout time.Duration
	)
	probe := &cobra.Command{
		Use:   "probe URL",
		Short: "Send GET requests, each on a new connection, and report who answered and how fast",
		Args:  cobra.ExactArgs(1),
	}
	out := outputFlag(probe)
	probe.RunE = func(cmd *cobra.Command, args []string) error {
		r := workload.ProbeHTTP(context.Background(), args[0], n, timeout)
		err := render(cmd.OutOrStdout(), *out, r, func(tw *tabwriter.Writer) {
			names := make([]string, 0, len(r.Backends))
			for b := range r.Backends {
				names = append(names, b)
			}
			sort.Strings(names)
			fmt.Fprintf(tw, "%d requests to %s in %s (p50 %s, p99 %s), %d failed\n",
				r.Requests, r.URL, r.Total.Round(time.Millisecond), r.P50.Round(time.Microsecond), r.P99.Round(time.Microsecond), r.Failures)
			fmt.Fprintln(tw, "ANSWERED BY\tREQUESTS")
			for _, b := range names {
				fmt.Fprintf(tw, "%s\t%d\n", b, r.Backends[b])
			}
		})
		if err != nil {
			return err
		}
		if r.Failures > 0 {
			return fmt.Errorf("%d of %d requests failed; last error: %s", r.Failures, r.Requests, r.LastErr)
		}
		return nil
	}
	probe.Flags().IntVarP(&n, "requests", "n", 100, "number of requests")
	probe.Flags().DurationVar(&timeout, "timeout", 3*time.Second, "timeout per request")
	idle := &cobra.Command{
		Use:   "idle",
		Short: "Do nothing until stopped (a pod to run commands in)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			<-ctx.Done()
			return nil
		},
	}
	cmd.AddCommand(echo, probe, idle)
	return cmd
}
