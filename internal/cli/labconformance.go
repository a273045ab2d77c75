package cli

import (
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/kpath/kpath/internal/conformance"
	"github.com/kpath/kpath/internal/lab"
	"github.com/kpath/kpath/internal/testenv"
)

func newConformanceCommand() *cobra.Command {
	var (
		o         conformance.Options
		focus     []string
		images    string
		reference string
		helpSkips bool
	)
	cmd := &cobra.Command{
		Use:   "conformance",
		Short: "Run the upstream Kubernetes SIG Network e2e tests on a lab of real nodes",
		Long: `Run the upstream e2e suite (e2e.test and ginkgo built from the pinned Kubernetes) on a
lab of real nodes (a kubelet and containerd each) named conformance, with the cluster's DNS
(CoreDNS of the pinned version, deployed as the kube-dns addon) and Services served by
--services. The suite's images are built here without Docker (agnhost from the pinned
module's source) and imported into every node: no test reaches for a registry.

The selection: SIG Network's [Conformance] tests, its Services tests, the NetworkPolicy
suite (Netpol), the Networking granular checks and the Traffic Distribution tests, without [Serial], [Disruptive],
[Flaky] tests and features kpath does not claim (kpath lab conformance --help-skips lists
each with why). --focus and --skip replace them.

Writes junit.xml, summary.json (passed, failed, skipped, each failure with its message)
and e2e.log (the suite's output) into --out, and prints the summary. With --reference
(an earlier run's --out, kube-proxy's), it lists every test that passed there and not here. Needs make build
image k8s-bins e2e-bins coredns-bins (and helm-bins with --install helm).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if helpSkips {
				for _, s := range append(conformance.Skipped, conformance.MachineSkips()...) {
					fmt.Fprintf(cmd.OutOrStdout(), "%-40s %s\n", s.Pattern, s.Why)
				}
				return nil
			}
			if !slices.Contains(lab.ServiceModes, o.Services) || o.Services == "cilium" {
				return fmt.Errorf("--services %q: want one of %v but cilium", o.Services, lab.ServiceModes)
			}
			if len(focus) > 0 {
				o.Focus = focus
			}
			binDir, k8sBin, err := labBinaries()
			if err != nil {
				return err
			}
			o.BinDir, o.K8sBin = binDir, k8sBin
			if o.CoreDNSBin, err = testenv.CoreDNSBinDir(); err != nil {
				return fmt.Errorf("the cluster DNS: %w", err)
			}
			if o.ImageDir, o.HelmBin, err = realNodeFiles(lab.RuntimeContainerd, o.Install, images); err != nil {
				return err
			}
			o.Log = func(f string, a ...any) { fmt.Fprintf(cmd.ErrOrStderr(), time.Now().Format("15:04:05 ")+f+"\n", a...) }
			s, err := conformance.Run(cmd.Context(), o)
			if err != nil {
				return err
			}
			s.Print(cmd.OutOrStdout())
			if reference != "" {
				ref, err := conformance.ReadSummary(filepath.Join(reference, "summary.json"))
				if err != nil {
					return fmt.Errorf("--reference: %w", err)
				}
				reg := s.Regressions(ref)
				fmt.Fprintf(cmd.OutOrStdout(), "against %s (%s): %d of its %d passed tests did not pass here\n", reference, ref.Services, len(reg), ref.Passed)
				for _, t := range reg {
					fmt.Fprintf(cmd.OutOrStdout(), "  %s\n", t)
				}
				if len(reg) > 0 {
					return fmt.Errorf("%d tests pass with %s and not with %s", len(reg), ref.Services, s.Services)
				}
				return nil
			}
			if s.Failed > 0 {
				return fmt.Errorf("%d tests failed (details in %s)", s.Failed, o.Out)
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&o.Services, "services", "kpath", "what serves Services: "+strings.Join(lab.ServiceModes, ", ")+" (not cilium)")
	cmd.Flags().StringVar(&o.Install, "install", "", `"helm" installs kpath by its chart instead of the lab running its agents`)
	cmd.Flags().StringArrayVar(&focus, "focus", nil, "run the tests matching this regular expression (repeatable; default: the selection above)")
	cmd.Flags().StringVar(&o.Skip, "skip", "", "leave out the tests matching this regular expression (default: the selection's skips)")
	cmd.Flags().StringVar(&o.Out, "out", "conformance-results", "where junit.xml, summary.json and e2e.log go")
	cmd.Flags().IntVar(&o.Nodes, "nodes", 3, "real nodes in the lab (the selection needs 3: one test of externalTrafficPolicy changes and the trafficDistribution tests skip themselves with fewer; three of those need 6, 2 in each of 3 zones)")
	cmd.Flags().IntVar(&o.Procs, "procs", 4, "ginkgo processes running tests at once")
	cmd.Flags().StringVar(&o.Busybox, "busybox", "/bin/busybox", "a static busybox for the images' small tools (Debian's busybox-static)")
	cmd.Flags().StringVar(&images, "images", "", "the project's images (default: make image's bin/images)")
	cmd.Flags().DurationVar(&o.Timeout, "timeout", 3*time.Hour, "how long the suite may run")
	cmd.Flags().StringVar(&reference, "reference", "", "an earlier run's --out (kube-proxy's): fail on each test that passed there and not here, instead of on every failure")
	cmd.Flags().BoolVar(&helpSkips, "help-skips", false, "list what the default selection leaves out, and why")
	return cmd
}
