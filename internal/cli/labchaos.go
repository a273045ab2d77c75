package cli

import (
	"encoding/json"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/kpath/kpath/internal/chaos"
	"github.com/kpath/kpath/internal/lab"
)

func newChaosCommand() *cobra.Command {
	var (
		o      chaos.Options
		faults string
		out    string
		images string
	)
	cmd := &cobra.Command{
		Use:   "chaos",
		Short: "Run a lab under load while its agents, API server and etcd fail; count what the load lost and what was left behind",
		Long: `A 2-node lab of its own (named chaos, beside any other lab) under load: clients on
both nodes send requests through an echo Service's ClusterIP and the other node's NodePort
(a new connection each, every 20 ms), keep long-lived connections through the ClusterIP (a
request on each every 100 ms), and probe over TCP and UDP a pod whose NetworkPolicy admits
only app=allowed (an allowed client probes it too, the control); pods are created and
deleted all along (--churn a second, each deleted 2 s after it was created). Meanwhile
the faults run one after the other, each followed by --settle of load:

  agent-kill             SIGKILL a node's agent (--agent-kills times, alternating nodes);
                         the lab starts it again, as a DaemonSet would
  apiserver-restart      stop kube-apiserver and start it again
  etcd-restart           stop etcd behind the running API server and start it again
  apiserver-unreachable  every node's traffic to the API server dropped for --unreachable
  runtime-kill           crash each node's runtime (the lab's kubelet) in turn, 5 s apart;
                         the lab starts it again, and it must tear down what was deleted;
                         with --runtime containerd, SIGKILL each node's containerd, then
                         its kubelet, 5 s apart (the lab restarts them)
  ct-flood               a new pod floods the echo pods with new flows (up to 40,000 a
                         second, UDP to every port and TCP attempts) for --flood-for, more
                         than the connection table (131,072 entries in this run) holds;
                         then it is deleted
  policy-fill            a new pod gets policies of 500 ports each until its node's policy
                         map (16,384 entries in this run) refuses them; a port none opens
                         is probed meanwhile; then they are deleted

Then the churned pods are deleted and what the nodes still hold for pods that are gone is
counted: addresses allocated, policy endpoints, identities, ipcache entries,
connection-tracking entries, service backends and unused policy sets. Prints both as
tables; targets: no established connection cut, no denied probe answered, nothing left.
Exits 1 when a target is missed.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			binDir, k8sBin, err := labBinaries()
			if err != nil {
				return err
			}
			o.Kpath = filepath.Join(binDir, "kpath")
			o.Faults = strings.Split(faults, ",")
			if faults == "" {
				o.Faults = nil
			}
			dir, err := os.MkdirTemp("", "kpath-chaos-")
			if err != nil {
				return err
			}
			defer os.RemoveAll(dir)
			o.Lab.Name, o.Lab.Dir, o.Lab.Nodes, o.Lab.Routing = "chaos", filepath.Join(dir, "lab"), 2, "native"
			o.Lab.BinDir, o.Lab.K8sBin = binDir, k8sBin
			if o.Lab.ImageDir, _, err = realNodeFiles(o.Lab.Runtime, "", images); err != nil {
				return err
			}
			o.Log = func(f string, a ...any) { fmt.Fprintf(cmd.ErrOrStderr(), time.Now().Format("15:04:05 ")+f+"\n", a...) }
			if err := os.MkdirAll(out, 0o755); err != nil {
				return err
			}
			labLog, err := os.Create(filepath.Join(out, "lab.log"))
			if err != nil {
				return err
			}
			defer labLog.Close()
			o.Lab.Log = func(f string, a ...any) { fmt.Fprintf(labLog, time.Now().Format("15:04:05.000 ")+f+"\n", a...) }
			o.LogDir = out
			rep, err := chaos.Run(cmd.Context(), o)
			if rep != nil {
				if werr := rep.WriteJSON(out); werr != nil && err == nil {
					err = werr
				}
				rep.WriteTable(cmd.OutOrStdout())
			}
			if err != nil {
				return err
			}
			if f := rep.Failures(); len(f) > 0 {
				return fmt.Errorf("targets missed: %s", strings.Join(f, "; "))
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&o.Lab.Services, "services", "kpath", fmt.Sprintf("the lab's service dataplane (%s)", strings.Join(lab.ServiceModes, ", ")))
	cmd.Flags().StringVar(&o.Lab.Runtime, "runtime", lab.RuntimeLab, fmt.Sprintf("the nodes' runtime: %s (the lab's own) or %s (a real kubelet and containerd per node; make image first)", lab.RuntimeLab, lab.RuntimeContainerd))
	cmd.Flags().StringVar(&images, "images", "", "with --runtime containerd: the images to import into every node (default: make image's bin/images)")
	cmd.Flags().StringVar(&faults, "faults", strings.Join(chaos.Faults, ","), "the faults, in order")
	cmd.Flags().IntVar(&o.AgentKills, "agent-kills", 3, "agent kills in the agent-kill fault")
	cmd.Flags().DurationVar(&o.Unreachable, "unreachable", time.Minute, "how long the API server is unreachable")
	cmd.Flags().DurationVar(&o.FloodFor, "flood-for", 30*time.Second, "how long the ct-flood fault floods")
	cmd.Flags().IntVar(&o.Churn, "churn", 20, "pods created a second (each deleted 2 s later)")
	cmd.Flags().IntVar(&o.Held, "held", 4, "long-lived connections per client")
	cmd.Flags().DurationVar(&o.Settle, "settle", 10*time.Second, "load before the first fault and after each recovery")
	cmd.Flags().StringVar(&out, "out", "chaos-results", "where chaos.json, the lab's log (the nodes' runtimes) and the agents' logs go")
	return cmd
}

// newChaosProbeCommand is the load's client, run by kpath lab chaos in a
// pod's network namespace.
func newChaosProbeCommand() *cobra.Command {
	var netns, config, flood string
	cmd := &cobra.Command{
		Use:    "chaos-probe",
		Short:  "kpath lab chaos's client: runs its load from a pod until SIGTERM, printing its counts as JSON lines",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGTERM, os.Interrupt)
			defer stop()
			if flood != "" {
				var fc chaos.FloodConfig
				if err := json.Unmarshal([]byte(flood), &fc); err != nil {
					return fmt.Errorf("--flood: %w", err)
				}
				return chaos.Flood(ctx, netns, fc, cmd.OutOrStdout())
			}
			var cfg chaos.ProbeConfig
			if err := json.Unmarshal([]byte(config), &cfg); err != nil {
				return fmt.Errorf("--config: %w", err)
			}
			return chaos.Probe(ctx, netns, cfg, cmd.OutOrStdout(), 250*time.Millisecond)
		},
	}
	cmd.Flags().StringVar(&netns, "netns", "", "network namespace to send from (a pod's)")
	cmd.Flags().StringVar(&config, "config", "{}", "the probe's configuration (chaos.ProbeConfig as JSON)")
	cmd.Flags().StringVar(&flood, "flood", "", "flood instead, until SIGTERM (chaos.FloodConfig as JSON), then print what was sent")
	return cmd
}
