package cli

import (
	"encoding/json"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/go-logr/logr"
	"github.com/spf13/cobra"
	"k8s.io/klog/v2"

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
			if p := r.Policy; p != nil {
				fmt.Fprintf(tw, "policies loaded (%d namespaces, %d pods, %d local)\t%d in %s\t\n", p.Namespaces, p.Pods, p.LocalPods, p.Policies, p.LoadTime.Round(time.Millisecond))
				fmt.Fprintf(tw, "policy change -> enforced p50 (%d changes)\t%s\t\n", p.Changes, ms(p.P50))
				fmt.Fprintf(tw, "policy change -> enforced p90\t%s\t\n", ms(p.P90))
				fmt.Fprintf(tw, "policy change -> enforced p99\t%s\t<= 250 ms\n", ms(p.P99))
				fmt.Fprintf(tw, "policy change -> enforced max\t%s\t\n", ms(p.Max))
			}
		})
	}
	cp.Flags().IntVar(&o.Services, "services", 1000, "services to load")
	cp.Flags().IntVar(&o.Backends, "backends", 60, "endpoints per service")
	cp.Flags().IntVar(&o.Changes, "changes", 200, "EndpointSlice changes to time")
	cp.Flags().IntVar(&o.Policies, "policies", 2000, "NetworkPolicies to load (four per namespace; 0: no policy part)")
	cp.Flags().IntVar(&o.PolicyChanges, "policy-changes", 200, "NetworkPolicy changes to time")
	cp.Flags().StringVar(&o.BinDir, "k8s-bin", "", "directory with kube-apiserver (default: make k8s-bins' cache)")
	cmd.AddCommand(cp, newLatencyCommand(), newScaleCommand(), newProbeCommand(), newPodStartCommand())
	return cmd
}

// newProbeCommand is E2's probe client, which kpath bench scale starts in
// the measured node's cgroup (so its connections take a pod's path) and
// stops with SIGTERM.
func newProbeCommand() *cobra.Command {
	var netns, url string
	var d time.Duration
	var untilStopped bool
	cmd := &cobra.Command{
		Use:    "probe",
		Short:  "E2's probe: requests through a Service on a held and on new connections; prints the counts as JSON",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGTERM, os.Interrupt)
			defer stop()
			var until <-chan struct{}
			if untilStopped {
				until = ctx.Done()
			}
			st := bench.ProbeService(netns, url, d, until)
			return json.NewEncoder(cmd.OutOrStdout()).Encode(st)
		},
	}
	cmd.Flags().StringVar(&netns, "netns", "", "network namespace to send from (a pod's)")
	cmd.Flags().StringVar(&url, "url", "", "the Service's URL")
	cmd.Flags().DurationVar(&d, "for", time.Second, "run this long")
	cmd.Flags().BoolVar(&untilStopped, "until-stopped", false, "after --for, go on until SIGTERM")
	return cmd
}

func newLatencyCommand() *cobra.Command {
	o := bench.LatencyOptions{}
	var quick bool
	var from, docs string
	cmd := &cobra.Command{
		Use:   "latency",
		Short: "E1: service routing latency vs cluster size, every service dataplane in the same run",
		Long: `E1 (BENCHMARKS.md): a one-node lab per service dataplane (none, kpath, kpath-tc,
kube-proxy-iptables, kube-proxy-nftables); S simulated services of 10 endpoints on
remote nodes; ApacheBench from a client pod to the echo pod directly and through its
ClusterIP, alternating, with disjoint client port ranges; loaded (-c 16, 20 EndpointSlice
changes per second) and quiet (-c 1). The labs run side by side: every round measures
each mode in turn while the other labs are frozen (SIGSTOP), so the machine's drift
falls on all modes alike. Five labs at 10k services need about 8 GiB of memory.

Writes latency.json, latency.csv, latency.svg and latency.md to --out after every
scenario, and each mode's kpath-agent and kube-proxy logs to --out/logs at the end.
--docs also writes the results section of a markdown file (between the
"e1-latency" markers) and the chart next to it. --from re-renders the outputs of an
earlier run's latency.json without measuring; given several files, it merges them,
each later run's modes replacing the earlier's (a mode re-measured after a fix).`,
		Example: `  kpath bench latency --quick
  kpath bench latency --out out/e1 --docs docs/benchmarks.md
  kpath bench latency --from out/e1/latency.json --docs docs/benchmarks.md`,
		Args: cobra.NoArgs,
	}
	out := outputFlag(cmd)
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		var (
			run    *bench.LatencyRun
			runErr error
		)
		if from != "" {
			var runs []*bench.LatencyRun
			for _, f := range strings.Split(from, ",") {
				r, err := bench.ReadLatencyRun(f)
				if err != nil {
					return err
				}
				runs = append(runs, r)
			}
			r, err := bench.MergeLatencyRuns(runs...)
			if err != nil {
				return err
			}
			run = r
			if o.OutDir != "" && (len(runs) > 1 || o.OutDir != filepath.Dir(from)) {
				if err := bench.WriteLatencyResults(o.OutDir, run); err != nil {
					return err
				}
			}
		} else {
			if quick {
				o.Points, o.Requests, o.Rounds = []int{0, 100, 500, 1600}, 10000, 2
			}
			if o.K8sBin == "" {
				dir, err := testenv.BinDir()
				if err != nil {
					return err
				}
				o.K8sBin = dir
			}
			if o.BinDir == "" {
				self, err := os.Executable()
				if err != nil {
					return err
				}
				o.BinDir = filepath.Dir(self)
			}
			if slices.Contains(o.Modes, "cilium") {
				dir, err := testenv.CiliumBinDir()
				if err != nil {
					return fmt.Errorf("mode cilium: %w (make cilium-bins builds it)", err)
				}
				o.CiliumBin = dir
			}
			o.Progress = cmd.ErrOrStderr()
			o.Command = "kpath " + strings.Join(os.Args[1:], " ")
			// The labs' node runtimes run in this process; their watches
			// fail while their lab is frozen and resume after. client-go
			// says so through klog, which would bury the progress lines.
			klog.SetLogger(logr.Discard())
			run, runErr = bench.Latency(cmd.Context(), o)
			if run == nil {
				return runErr
			}
		}
		if docs != "" {
			if err := bench.WriteLatencyDocs(docs, run); err != nil {
				return err
			}
		}
		err := render(cmd.OutOrStdout(), *out, run, func(tw *tabwriter.Writer) {
			fmt.Fprintln(tw, "MODE\tSCENARIO\tSERVICES\tPODS\tTARGET\tTOTAL ms\tMEAN ms\tP50 ms\tP99 ms\tREADY ms\tRSS MiB\tCPU s\tCHURN /s\tFAILED")
			for _, r := range run.Rows {
				fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%s\t%.0f\t%.3f\t%.2f\t%.2f\t%.0f\t%.0f\t%.1f\t%.1f\t%d\n", r.Mode, r.Scenario, r.Services, r.Pods,
					r.Target, r.TotalMs, r.MeanMs, r.P50Ms, r.P99Ms, r.ReadyMs, r.RSSMiB, r.CPUSeconds, r.ChurnPerSec, r.Failed)
			}
			tw.Flush()
			fmt.Fprintln(tw)
			fmt.Fprintln(tw, "TARGET (BENCHMARKS.md E1)\tMEASURED\tMET")
			for _, t := range bench.LatencyTargets(run) {
				fmt.Fprintf(tw, "%s\t%s\t%s\n", t.Name, t.Measured, t.Verdict())
			}
		})
		if err != nil {
			return err
		}
		return runErr
	}
	cmd.Flags().IntSliceVar(&o.Points, "points", []int{0, 100, 500, 1600, 5000, 10000}, "numbers of simulated services (10 endpoints each)")
	cmd.Flags().IntVar(&o.Requests, "requests", 50000, "ab requests per run")
	cmd.Flags().IntVar(&o.Rounds, "rounds", 3, "direct/service alternations per point")
	cmd.Flags().StringSliceVar(&o.Modes, "modes", []string{"none", "kpath", "kpath-tc", "kube-proxy-iptables", "kube-proxy-nftables", "cilium"},
		"service dataplanes (cilium: the real cilium-agent, make cilium-bins); also kpath-policy: kpath with the client and echo pods isolated and allowed to each other by NetworkPolicy; kpath-noflows: kpath with flow events off")
	cmd.Flags().StringSliceVar(&o.Scenarios, "scenario", []string{"loaded", "quiet"}, "loaded and/or quiet")
	cmd.Flags().StringVar(&o.OutDir, "out", "out/e1", "directory for latency.{json,csv,svg,md}")
	cmd.Flags().BoolVar(&quick, "quick", false, "S up to 1.6k, 10,000 requests, 2 rounds")
	cmd.Flags().StringVar(&from, "from", "", "re-render this latency.json instead of measuring; A.json,B.json merges runs, B's modes replacing A's")
	cmd.Flags().StringVar(&docs, "docs", "", "markdown file whose E1 section (and chart beside it) to rewrite, e.g. docs/benchmarks.md")
	cmd.Flags().StringVar(&o.K8sBin, "k8s-bin", "", "directory with the Kubernetes binaries (default: make k8s-bins' cache)")
	return cmd
}

func newScaleCommand() *cobra.Command {
	o := bench.DefaultScaleOptions()
	var quick bool
	var scenarios, dataplanes, from string
	cmd := &cobra.Command{
		Use:   "scale",
		Short: "E2: the agent's CPU and memory at 1,000 nodes and 100,000 pods (scenarios a, b, c)",
		Long: `E2 (BENCHMARKS.md): a lab with one real node (a real kpath-agent with its
production defaults, its share of the pods run for real through the CNI plugin),
NODES-1 more Node objects and PODS pods as API objects with their status written,
on the plan's namespaces, deployments and labels; (b) adds the plan's
NetworkPolicies; (c) has 60% of the pods, behind 4 Services a namespace of 60 pods
each (EndpointSlices by the real kube-controller-manager), and 8 policies a
namespace. Pods ramp from --start-pods to the scenario's pods, then --steady of
--changes-per-sec pod changes (created, deleted, relabelled), with --policy-changes
timed (change -> enforced) in (b) and (c). Then the agent is restarted over its
pinned maps while a probe holds a connection through a Service and opens new ones,
and started cold. Every second it samples the agent's CPU, RSS, Go heap, BPF map
memory and the bytes it receives, and the API server's, etcd's and the controller
manager's CPU apart. With --dataplanes kpath,cilium each scenario runs again with
the real cilium-agent on the measured node, the harness writing the CiliumNodes,
CiliumIdentities and CiliumEndpointSlices the other nodes' agents and Cilium's
operator would (docs/cilium.md). Writes scale.json, a CSV per scenario and
dataplane, the chart scale.svg and kpath-agent's heap profiles to --out.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if quick {
				q := o.Quick()
				for _, f := range []string{"nodes", "pods", "local-pods", "start-pods", "policies"} {
					if cmd.Flags().Changed(f) {
						return fmt.Errorf("--quick sets --%s; give one or the other", f)
					}
				}
				o = q
			}
			if from != "" {
				r, err := bench.LoadScaleRuns(strings.Split(from, ","))
				if err != nil {
					return err
				}
				r.Print(cmd.OutOrStdout())
				return r.Write(o.Out)
			}
			o.Scenarios, o.Dataplanes = strings.Split(scenarios, ","), strings.Split(dataplanes, ",")
			binDir, k8sBin, err := labBinaries()
			if err != nil {
				return err
			}
			if slices.Contains(o.Dataplanes, "cilium") {
				if o.CiliumBin, err = testenv.CiliumBinDir(); err != nil {
					return fmt.Errorf("dataplane cilium: %w (make cilium-bins builds it)", err)
				}
			}
			o.BinDir, o.K8sBin, o.Progress = binDir, k8sBin, cmd.ErrOrStderr()
			klog.SetLogger(logr.Discard()) // client-go's throttling notes would cut through the progress line
			r, err := bench.Scale(cmd.Context(), o)
			if r != nil {
				r.Print(cmd.OutOrStdout())
			}
			return err
		},
	}
	f := cmd.Flags()
	f.BoolVar(&quick, "quick", false, "100 nodes, 10,000 pods, 200 policies")
	f.StringVar(&scenarios, "scenarios", strings.Join(o.Scenarios, ","), "scenarios to run: a (pods), b (pods and policies), c (services and policies)")
	f.StringVar(&dataplanes, "dataplanes", strings.Join(o.Dataplanes, ","), "measured node's dataplanes, each scenario in a lab of its own: kpath, cilium (the real cilium-agent, with the CiliumNodes, CiliumIdentities and CiliumEndpointSlices the other nodes' agents and the operator would write)")
	f.IntVar(&o.Nodes, "nodes", o.Nodes, "nodes, the measured one included")
	f.IntVar(&o.Pods, "pods", o.Pods, "pods, the measured node's included")
	f.IntVar(&o.LocalPods, "local-pods", o.LocalPods, "pods run for real on the measured node")
	f.IntVar(&o.StartPods, "start-pods", o.StartPods, "pods before the ramp")
	f.IntVar(&o.Policies, "policies", o.Policies, "NetworkPolicies in scenarios b (4 per namespace) and c (8)")
	f.IntVar(&o.PolicyChanges, "policy-changes", o.PolicyChanges, "policy changes timed in the steady state of b and c")
	f.DurationVar(&o.Steady, "steady", o.Steady, "steady state length")
	f.IntVar(&o.ChangesPerSec, "changes-per-sec", o.ChangesPerSec, "pod changes per second in the steady state")
	f.StringVar(&o.Out, "out", "out/e2", "directory for scale.json, the CSVs, the chart and the heap profiles")
	f.StringVar(&from, "from", "", "re-render these scale.json files (A.json,B.json: B's scenarios replace A's) into --out instead of measuring")
	return cmd
}
