package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os/signal"
	"sort"
	"strings"
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
		Long: `Serve HTTP and UDP, answering every request with --name: an HTTP
response body, or a UDP datagram back to every datagram.

--http and --udp take a listen address each and may be repeated or hold a
comma-separated list, e.g. --http :8080,:80,:81 --udp :8080 --udp :80.`,
		Args: cobra.NoArgs,
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
	echo.Flags().StringSliceVar(&cfg.HTTPAddrs, "http", []string{":8080"}, `HTTP listen addresses, repeated or comma-separated ("" for none)`)
	echo.Flags().StringSliceVar(&cfg.UDPAddrs, "udp", []string{":5353"}, `UDP listen addresses, repeated or comma-separated ("" for none)`)

	var (
		n     int
		popts workload.ProbeOptions
	)
	probe := &cobra.Command{
		Use:   "probe http://HOST[:PORT][/PATH] | tcp://HOST:PORT | udp://HOST:PORT",
		Short: "Send requests, each on a new connection or socket, and report who answered and how fast",
		Long: `Send requests, each on a new connection or socket, and report who answered
and how fast.

http:// and tcp:// (the same) send HTTP GET requests, each on a new TCP
connection; the answer is the response body. udp:// sends datagrams, each
from a new socket (a new source port, so a flow of its own), and waits up
to --timeout for a reply datagram: the answer is its content. The socket is
connected unless --udp-unconnected, which sends with sendto from an
unconnected socket and counts a reply from any other address as a failure.`,
		Args: cobra.ExactArgs(1),
	}
	out := outputFlag(probe)
	probe.RunE = func(cmd *cobra.Command, args []string) error {
		r, err := workload.Probe(context.Background(), args[0], n, popts)
		if err != nil {
			return err
		}
		err = render(cmd.OutOrStdout(), *out, r, func(tw *tabwriter.Writer) {
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
	probe.Flags().DurationVar(&popts.Timeout, "timeout", 3*time.Second, "timeout per request")
	probe.Flags().BoolVar(&popts.UDPUnconnected, "udp-unconnected", false, "udp://: send from an unconnected socket (sendto) instead of a connected one")
	probe.Flags().BoolVar(&popts.V4Mapped, "v4-mapped", false, "send from a dual-stack AF_INET6 socket to the IPv4 target as ::ffff:a.b.c.d (as Java and .NET do)")
	probe.Flags().BoolVar(&popts.Source, "source", false, `ask the echo server which address the request came from (answers "NAME from IP")`)
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
	var saDir string
	sandbox := &cobra.Command{
		Use:   "sandbox [--serviceaccount DIR] -- COMMAND [args...]",
		Short: "Run a command with what a container would give it (the lab's runtime uses it)",
		Long: `Run a command with what a container gives a pod's process: with
--serviceaccount, DIR (token, ca.crt, namespace) at ` + workload.ServiceAccountDir + `,
where in-cluster clients read them. Needs a mount namespace of its own, as
ip netns exec makes: the mounts are the command's alone.`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(_ *cobra.Command, args []string) error {
			return workload.Sandbox(saDir, args)
		},
	}
	sandbox.Flags().StringVar(&saDir, "serviceaccount", "", "directory with the pod's service account token, ca.crt and namespace")
	inCluster := &cobra.Command{
		Use:   "in-cluster",
		Short: "List the pods of this pod's namespace as an in-cluster client does (through the kubernetes Service)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ns, pods, err := workload.InClusterPods(cmd.Context())
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%d pods in %s: %s\n", len(pods), ns, strings.Join(pods, " "))
			return nil
		},
	}
	var (
		dcfg   workload.DisruptionConfig
		status string
	)
	disruption := &cobra.Command{
		Use:   "disruption --hold HOST:PORT... --stream URL... [--status ADDR]",
		Short: "Hold long-lived connections and stream requests, counting what a fault or an upgrade breaks",
		Long: `Hold long-lived connections and stream requests, counting what a fault or an
upgrade breaks (as Cilium's connection-disruption test does across upgrades).

Each --hold target gets --conns TCP connections, opened once, each sending an
HTTP request every --interval on the same connection (keep-alive) to an echo
server. A connection that fails once, or that a different backend starts
answering, is cut, and is not reopened. Each --stream URL is requested every
--interval on a new connection, counting failures. --status serves the counts
as JSON (GET /); they are printed when the command is stopped.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			d, err := workload.StartDisruption(ctx, dcfg)
			if err != nil {
				return err
			}
			if status != "" {
				ln, err := net.Listen("tcp", status)
				if err != nil {
					return fmt.Errorf("status: %w", err)
				}
				srv := &http.Server{Handler: d, ReadHeaderTimeout: 5 * time.Second}
				go func() { _ = srv.Serve(ln) }()
				defer srv.Close()
			}
			fmt.Fprintln(cmd.OutOrStdout(), "running")
			<-ctx.Done()
			return json.NewEncoder(cmd.OutOrStdout()).Encode(d.Status())
		},
	}
	disruption.Flags().StringSliceVar(&dcfg.Hold, "hold", nil, "HOST:PORT of an echo server to hold connections to (repeatable)")
	disruption.Flags().IntVar(&dcfg.Conns, "conns", 4, "connections held to each --hold target")
	disruption.Flags().StringSliceVar(&dcfg.Stream, "stream", nil, "http:// URL to request on new connections (repeatable)")
	disruption.Flags().DurationVar(&dcfg.Interval, "interval", 100*time.Millisecond, "time between requests on each connection and stream")
	disruption.Flags().DurationVar(&dcfg.Timeout, "timeout", 2*time.Second, "timeout of each request")
	disruption.Flags().StringVar(&status, "status", ":9090", `address serving the counts as JSON ("" for none)`)
	cmd.AddCommand(echo, probe, idle, sandbox, inCluster, disruption)
	return cmd
}
