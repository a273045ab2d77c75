package cli

import (
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/kpath/kpath/internal/bench"
	"github.com/kpath/kpath/internal/testenv"
)

func newBenchCommand() *cobra.Command {
	cmd := &cobra.Command{Use: "bench", Short: "Run kpath's benchmark experiments (BENCHMARKS.md)"}
	o := bench.ControlPlaneOptions{}
	cp := &cobra.Command{
		Use:   "control-plane",
		Short: "E3: Service/EndpointSlice change -> datapath latency, and agent start -> ready, under load",
		Long: `E3: start a real etcd and kube-apiserver, load SERVICES x BACKENDS, run one real
agent (root: it loads the datapath), then time EndpointSlice changes from the API call
to the datapath map holding the result, and the agent's start to ready, cold and
restarted over its pinned maps.`,
		Args: cobra.NoArgs,
	}
	out := outputFlag(cp)
	cp.RunE = func(cmd *cobra.Command, _ []string) error {
		if o.BinDir == "" {
			dir, err := testenv.BinDir()
			if err != nil {
				return err
			}
			o.BinDir = dir
		}
		o.Progress = cmd.ErrOrStderr()
		r, err := bench.ControlPlane(cmd.Context(), o)
		if err != nil {
			return err
		}
		ms := func(d time.Duration) string { return fmt.Sprintf("%.1f ms", float64(d.Microseconds())/1000) }
		return render(cmd.OutOrStdout(), *out, r, func(tw *tabwriter.Writer) {
			fmt.Fprintf(tw, "E3 control-plane reaction: %d services x %d backends (%d endpoints)\n", r.Services, r.Backends, r.Services*r.Backends)
			fmt.Fprintln(tw, "MEASURE\tVALUE\tTARGET")
			fmt.Fprintf(tw, "objects loaded in\t%s\t\n", r.LoadTime.Round(time.Millisecond))
			fmt.Fprintf(tw, "change -> datapath p50 (%d changes)\t%s\t\n", r.Changes, ms(r.P50))
			fmt.Fprintf(tw, "change -> datapath p90\t%s\t\n", ms(r.P90))
			fmt.Fprintf(tw, "change -> datapath p99\t%s\t<= 100 ms\n", ms(r.P99))
			fmt.Fprintf(tw, "change -> datapath max\t%s\t\n", ms(r.Max))
			fmt.Fprintf(tw, "agent start -> ready, cold\t%s\t\n", ms(r.ColdReady))
			fmt.Fprintf(tw, "agent restart -> ready, pinned maps\t%s\t\n", ms(r.RestartReady))
			fmt.Fprintf(tw, "frontends lost on restart\t%d (of %d)\t0\n", r.LostOnRestart, r.FrontendsAfter)
		})
	}
	cp.Flags().IntVar(&o.Services, "services", 1000, "services to load")
	cp.Flags().IntVar(&o.Backends, "backends", 60, "endpoints per service")
	cp.Flags().IntVar(&o.Changes, "changes", 200, "EndpointSlice changes to time")
	cp.Flags().StringVar(&o.BinDir, "k8s-bin", "", "directory with kube-apiserver (default: make k8s-bins' cache)")
	cmd.AddCommand(cp)
	return cmd
}
