package cli

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"

	"github.com/go-logr/logr"
	"github.com/spf13/cobra"
	"k8s.io/klog/v2"

	"github.com/kpath/kpath/internal/bench"
	"github.com/kpath/kpath/internal/testenv"
)

func newPodStartCommand() *cobra.Command {
	o := bench.PodStartOptions{Pods: 200, Nodes: 2}
	var setups, images, out string
	cmd := &cobra.Command{
		Use:   "pod-start",
		Short: "Pod start with kpath: creation to address and to Ready, CNI ADD as containerd calls it, the agents' CPU and memory",
		Long: `Pod start with kpath, on each kind of lab node in turn, in one run: --pods idle
pods are created at once (placed round-robin by nodeName, so the scheduler is not
measured) and each one's creation -> address (status.podIP) and creation -> Ready
are timed from a watch (p50, p99, max). On real nodes also containerd's
RunPodSandbox, from its log: the sandbox made and its network set up, CNI ADD as
containerd calls it. The agents' CPU (mean) and RSS (peak) at idle and while the
pods start; with helm, the DaemonSet's rollout after a configuration change.

Setups: lab (the lab's own runtime and agents), containerd (real kubelet and
containerd, the lab's agents), helm (real nodes, kpath installed by its chart).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			binDir, k8sBin, err := labBinaries()
			if err != nil {
				return err
			}
			o.Setups = strings.Split(setups, ",")
			o.BinDir, o.K8sBin, o.Progress = binDir, k8sBin, cmd.ErrOrStderr()
			if images == "" {
				images = filepath.Join(binDir, "images")
			}
			o.ImageDir = images
			for _, s := range o.Setups {
				if s == bench.SetupHelm {
					d, err := testenv.HelmBinDir()
					if err != nil {
						return err
					}
					o.HelmBin = filepath.Join(d, "helm")
				}
			}
			klog.SetLogger(logr.Discard())
			res := bench.PodStart(cmd.Context(), o)
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 2, 4, 2, ' ', 0)
			fmt.Fprintf(tw, "SETUP\tPODS\tCREATE->IP p50/p99/max\tCREATE->READY p50/p99/max\tRUNPODSANDBOX p50/p99\tAGENT IDLE cpu/rss\tAGENT DURING cpu/rss\tROLLOUT\n")
			ms := func(d bench.Dist) string { return fmt.Sprintf("%.0f/%.0f/%.0f ms", d.P50, d.P99, d.Max) }
			use := func(us []bench.AgentUse) string {
				var parts []string
				for _, u := range us {
					parts = append(parts, fmt.Sprintf("%s %.0fm/%.0fMiB", u.Node, u.CPUMilli, u.RSSMiB))
				}
				return strings.Join(parts, ", ")
			}
			failed := 0
			for _, r := range res {
				if r.Error != "" {
					failed++
					fmt.Fprintf(tw, "%s\tfailed: %s\n", r.Setup, r.Error)
					continue
				}
				sb := "-"
				if r.Sandbox != nil {
					sb = fmt.Sprintf("%.0f/%.0f ms", r.Sandbox.P50, r.Sandbox.P99)
				}
				rollout := r.Rollout
				if rollout == "" {
					rollout = "-"
				}
				fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\t%s\t%s\t%s\n", r.Setup, r.Pods, ms(r.CreateToIP), ms(r.CreateToReady), sb, use(r.AgentIdle), use(r.AgentBusy), rollout)
			}
			tw.Flush()
			fmt.Fprintln(cmd.OutOrStdout(), "(noise: p99 against p50 of one run; run it again to see the spread between runs)")
			if out != "" {
				data, err := json.MarshalIndent(res, "", "  ")
				if err != nil {
					return err
				}
				if err := os.WriteFile(out, append(data, '\n'), 0o644); err != nil {
					return err
				}
			}
			if failed > 0 {
				return fmt.Errorf("%d setups failed", failed)
			}
			return nil
		},
	}
	cmd.Flags().IntVar(&o.Pods, "pods", o.Pods, "pods to start (placed round-robin over the nodes)")
	cmd.Flags().IntVar(&o.Nodes, "nodes", o.Nodes, "nodes")
	cmd.Flags().StringVar(&setups, "setups", strings.Join([]string{bench.SetupLab, bench.SetupContainerd, bench.SetupHelm}, ","), "what runs the pods: lab, containerd, helm")
	cmd.Flags().StringVar(&images, "images", "", "images for real nodes (default: make image's bin/images)")
	cmd.Flags().StringVar(&out, "out", "", "write the results as JSON here")
	return cmd
}
