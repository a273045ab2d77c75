package cli

import (
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/kpath/kpath/internal/connectivity"
	"github.com/kpath/kpath/internal/lab"
)

func newCheckConnectivityCommand() *cobra.Command {
	var (
		services string
		all      bool
		jsonOut  string
		runtime  string
		images   string
		install  string
	)
	cmd := &cobra.Command{
		Use:   "check-connectivity",
		Short: "Run the connectivity matrix in labs of its own, each service dataplane next to the real kube-proxy's",
		Long: `Run the connectivity matrix: real connections from pods (on a backend's node and
on another), from the nodes' own namespaces (host network) and from outside the nodes,
over TCP and UDP (connected and unconnected) from AF_INET and dual-stack AF_INET6
(v4-mapped) sockets, to ClusterIPs, NodePorts, external and load-balancer IPs with
Cluster and Local traffic policies, a pod's own Service, a Service without backends,
session affinity, trafficDistribution (PreferSameNode, PreferClose: the lab's nodes are in
zones) and the kubernetes Service. Each service dataplane runs in a 2-node lab
of its own (named conn-*, one at a time, beside any other lab), first the reference,
kube-proxy in iptables mode. Prints each cell where a dataplane differs from the
reference (all of them with --all) and exits 1 when one serves a cell worse.

With --runtime containerd every lab's nodes are real (a kubelet and containerd each, make
image first), and with --install helm kpath's own modes are installed there by its chart
(make helm-bins), as a user installs them; the kube-proxy reference runs on the same real
nodes.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			modes := strings.Split(services, ",")
			for _, m := range modes {
				if !slices.Contains(lab.ServiceModes, m) {
					return fmt.Errorf("--services %q: want some of %v", m, lab.ServiceModes)
				}
			}
			binDir, k8sBin, err := labBinaries()
			if err != nil {
				return err
			}
			o := connectivity.LabOptions{BinDir: binDir, K8sBin: k8sBin, Runtime: runtime, Install: install,
				Log: func(f string, a ...any) { fmt.Fprintf(cmd.ErrOrStderr(), time.Now().Format("15:04:05 ")+f+"\n", a...) }}
			if o.ImageDir, o.HelmBin, err = realNodeFiles(runtime, install, images); err != nil {
				return err
			}
			got := map[string]map[string]connectivity.Result{}
			for i, m := range append([]string{connectivity.Reference}, modes...) {
				r, err := connectivity.RunInLab(cmd.Context(), fmt.Sprintf("conn-%d", i), m, o)
				if err != nil {
					return err
				}
				got[m] = r
			}
			cells := connectivity.LabCells()
			if jsonOut != "" {
				b, _ := json.MarshalIndent(got, "", "  ")
				if err := os.WriteFile(jsonOut, b, 0o644); err != nil {
					return err
				}
			}
			connectivity.Print(cmd.OutOrStdout(), cells, got[connectivity.Reference], modes, got, all)
			for _, b := range connectivity.TopologyBroken(cells, got[connectivity.Reference]) {
				fmt.Fprintf(cmd.OutOrStdout(), "%s (the reference): topology-aware routing not kept: %s\n", connectivity.Reference, b)
			}
			for _, d := range connectivity.Differences(cells, got[connectivity.Reference], modes, got) {
				if d.Worse != "" {
					return fmt.Errorf("a dataplane serves cells worse than %s (or does not keep to topology hints)", connectivity.Reference)
				}
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&services, "services", "kpath,kpath-tc", "service dataplanes to check (comma-separated): "+strings.Join(lab.ServiceModes, ", "))
	cmd.Flags().BoolVar(&all, "all", false, "print every cell, not only those that differ")
	cmd.Flags().StringVar(&jsonOut, "json", "", "also write every result to this file")
	cmd.Flags().StringVar(&runtime, "runtime", lab.RuntimeLab, `what runs the nodes' pods: "lab" or "containerd" (real nodes; make image first)`)
	cmd.Flags().StringVar(&images, "images", "", "with --runtime containerd: the images to import into every node (default: make image's bin/images)")
	cmd.Flags().StringVar(&install, "install", "", `with --runtime containerd: "helm" installs kpath's modes by its chart (make helm-bins)`)
	return cmd
}
