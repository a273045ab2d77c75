package cli

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kpath/kpath/internal/lab"
	"github.com/kpath/kpath/internal/routing"
	"github.com/kpath/kpath/internal/testenv"
)

func newLabCommand() *cobra.Command {
	var dir string
	cmd := &cobra.Command{
		Use:   "lab",
		Short: "A real multi-node Kubernetes cluster out of network namespaces, on this machine (root)",
		Long: `kpath lab builds a cluster on one machine: a real etcd, kube-apiserver and
kube-controller-manager; a "vnet" namespace that is the cloud network; node namespaces,
each running a real kpath-agent and a node runtime that runs the pods bound to it,
wired by the real CNI plugin. Pods whose image name contains "echo", "agnhost" or
"netpol" run an echo server, HTTP and UDP, on the first container port (default 8080)
and on 80 and 81, answering with the pod's name; other images run an idle process to
exec commands in.`,
	}
	defDir := lab.DefaultDir
	if d := os.Getenv("KPATH_LAB_DIR"); d != "" {
		defDir = d
	}
	cmd.PersistentFlags().StringVar(&dir, "dir", defDir, "the lab's state directory ($KPATH_LAB_DIR)")

	var (
		nodes    int
		mode     string
		services string
		timeout  time.Duration
		relay    string
		relayBin string // supervise's: a path or ""
		runtime  string
		images   string
		install  string
	)
	up := &cobra.Command{
		Use:   "up",
		Short: "Start the lab",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if _, err := routing.ParseMode(mode); err != nil {
				return err
			}
			if nodes < 1 || nodes > 50 {
				return fmt.Errorf("--nodes %d: want 1..50", nodes)
			}
			if st, err := lab.LoadState(dir); err == nil && lab.ProcessAlive(st.Pid) {
				return fmt.Errorf("a lab is already running (pid %d); run kpath lab down first", st.Pid)
			}
			_ = lab.Down(dir, "", func(string, ...any) {}) // leftovers of a crashed lab
			if err := os.MkdirAll(dir, 0o700); err != nil {
				return err
			}
			self, err := os.Executable()
			if err != nil {
				return err
			}
			logPath := filepath.Join(dir, "supervisor.log")
			logf, err := os.Create(logPath)
			if err != nil {
				return err
			}
			if relay == "auto" {
				relay = ""
				if d, err := testenv.CiliumBinDir(); err == nil {
					if _, err := os.Stat(filepath.Join(d, "hubble-relay")); err == nil {
						relay = filepath.Join(d, "hubble-relay")
					}
				}
			}
			if images, _, err = realNodeFiles(runtime, "", images); err != nil {
				return err
			}
			sup := exec.Command(self, "lab", "supervise", "--dir", dir, "--nodes", fmt.Sprint(nodes), "--routing", mode, "--services", services,
				"--hubble-relay", relay, "--runtime", runtime, "--images", images, "--install", install)
			sup.Stdout, sup.Stderr = logf, logf
			sup.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
			if err := sup.Start(); err != nil {
				return err
			}
			logf.Close()
			go func() { _ = sup.Wait() }()
			out := cmd.OutOrStdout()
			fmt.Fprintf(out, "kpath lab: %d nodes, routing %s (log: %s)\n", nodes, mode, logPath)
			shown := 0
			deadline := time.Now().Add(timeout)
			for {
				shown = showNewLines(out, logPath, shown)
				st, err := lab.LoadState(dir)
				if err == nil && st.Error != "" {
					return fmt.Errorf("lab failed: %s (run kpath lab down to clean up)", st.Error)
				}
				if err == nil && st.Ready {
					fmt.Fprintf(out, "\nready. The API server %s lives in the lab's vnet namespace; use it with:\n  kpath lab kubectl get nodes,pods -A\n  ip netns exec %s kubectl --kubeconfig %s ...\n", st.APIServer, st.Vnet, st.Kubeconfig)
					if st.HubbleRelay != "" {
						fmt.Fprintf(out, "Every node's flows through hubble-relay:\n  hubble observe --server unix://%s\n", st.HubbleRelay)
					}
					return nil
				}
				if !lab.ProcessAlive(sup.Process.Pid) {
					return fmt.Errorf("the lab supervisor exited; see %s", logPath)
				}
				if time.Now().After(deadline) {
					return fmt.Errorf("lab not ready after %s; see %s", timeout, logPath)
				}
				time.Sleep(200 * time.Millisecond)
			}
		},
	}
	up.Flags().IntVar(&nodes, "nodes", 2, "number of nodes")
	up.Flags().StringVar(&mode, "routing", "native", "routing between nodes: native, direct or vxlan")
	up.Flags().StringVar(&services, "services", "kpath", "service dataplane on every node: "+strings.Join(lab.ServiceModes, ", "))
	up.Flags().DurationVar(&timeout, "timeout", 3*time.Minute, "how long to wait for the lab")
	up.Flags().StringVar(&relay, "hubble-relay", "auto", `hubble-relay binary to run over the nodes ("auto": make cilium-bins' if built; "" for none)`)
	up.Flags().StringVar(&runtime, "runtime", lab.RuntimeLab, `what runs the nodes' pods: "lab" (the lab's own runtime) or "containerd" (a real kubelet and containerd per node; make image first)`)
	up.Flags().StringVar(&images, "images", "", "with --runtime containerd: the images to import into every node (default: make image's bin/images)")
	up.Flags().StringVar(&install, "install", "", `with --runtime containerd: "helm" installs kpath's chart on the nodes (the agent as a DaemonSet; make helm-bins) instead of the lab running the agents`)

	supervise := &cobra.Command{
		Use:    "supervise",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			binDir, k8sBin, err := labBinaries()
			if err != nil {
				return err
			}
			logf := func(f string, a ...any) { fmt.Fprintf(os.Stderr, time.Now().Format("15:04:05 ")+f+"\n", a...) }
			var ciliumBin string
			if services == "cilium" {
				if ciliumBin, err = testenv.CiliumBinDir(); err != nil {
					return fmt.Errorf("services cilium: %w (make cilium-bins builds them)", err)
				}
			}
			_, helmBin, err := realNodeFiles("", install, "")
			if err != nil {
				return err
			}
			return lab.Supervise(ctx, lab.Options{Dir: dir, Nodes: nodes, Routing: mode, Services: services,
				BinDir: binDir, K8sBin: k8sBin, HubbleRelay: relayBin, CiliumBin: ciliumBin, Runtime: runtime, ImageDir: images,
				Install: install, HelmBin: helmBin, Log: logf})
		},
	}
	supervise.Flags().IntVar(&nodes, "nodes", 2, "")
	supervise.Flags().StringVar(&mode, "routing", "native", "")
	supervise.Flags().StringVar(&services, "services", "kpath", "")
	supervise.Flags().StringVar(&relayBin, "hubble-relay", "", "")
	supervise.Flags().StringVar(&runtime, "runtime", lab.RuntimeLab, "")
	supervise.Flags().StringVar(&images, "images", "", "")
	supervise.Flags().StringVar(&install, "install", "", "")

	var downName string
	down := &cobra.Command{
		Use:   "down",
		Short: "Stop the lab and remove everything it made",
		Long: `Stop the lab and remove everything it made. A lab that kpath bench or a test
named (its state in --dir says so) is swept by its own names; --name sweeps
the leftovers of a named lab whose directory is gone.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			name := downName
			if st, err := lab.LoadState(dir); err == nil && name == "" {
				name = st.Name
			}
			err := lab.Down(dir, name, func(f string, a ...any) { fmt.Fprintf(cmd.OutOrStdout(), f+"\n", a...) })
			if err == nil {
				fmt.Fprintln(cmd.OutOrStdout(), "lab removed")
			}
			return err
		},
	}

	down.Flags().StringVar(&downName, "name", "", "the lab's name (default: its state's; \"\" for kpath lab up's)")

	status := &cobra.Command{Use: "status", Short: "Show the lab's nodes and pods", Args: cobra.NoArgs}
	statusOut := outputFlag(status)
	status.RunE = func(cmd *cobra.Command, _ []string) error {
		st, err := lab.LoadState(dir)
		if err != nil {
			return fmt.Errorf("no lab in %s: %w", dir, err)
		}
		if !lab.ProcessAlive(st.Pid) {
			return fmt.Errorf("the lab in %s is not running (supervisor pid %d gone); run kpath lab down", dir, st.Pid)
		}
		return render(cmd.OutOrStdout(), *statusOut, st, func(tw *tabwriter.Writer) {
			fmt.Fprintf(tw, "API server:\t%s in namespace %s (kubeconfig %s)\n", st.APIServer, st.Vnet, st.Kubeconfig)
			fmt.Fprintf(tw, "Routing:\t%s\n", st.Routing)
			fmt.Fprintf(tw, "Services:\t%s\n", st.Services)
			if st.Install != "" {
				fmt.Fprintf(tw, "Installed by:\t%s (release %s in %s, chart %s: kpath lab helm ...)\n", st.Install, lab.HelmRelease, lab.HelmNamespace, st.Chart)
			}
			if st.HubbleRelay != "" {
				fmt.Fprintf(tw, "Hubble relay:\thubble observe --server unix://%s\n", st.HubbleRelay)
			}
			fmt.Fprintln(tw)
			fmt.Fprintln(tw, "NODE\tNETNS\tADDRESS\tPOD CIDR\tAGENT")
			for _, n := range st.Nodes {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", n.Name, n.Netns, n.IP, n.PodCIDR, st.AgentHealth(n))
			}
		})
	}

	kubectl := &cobra.Command{
		Use:                "kubectl [args...]",
		Short:              "Run kubectl against the lab",
		DisableFlagParsing: true,
		RunE: func(cmd *cobra.Command, args []string) error {
			st, args, err := passThroughState(dir, args)
			if err != nil {
				return err
			}
			bin, err := testenv.BinDir()
			if err != nil {
				return err
			}
			// The API server is reachable only inside the vnet namespace.
			c := exec.Command("nsenter", append([]string{"--net=/run/netns/" + st.Vnet, filepath.Join(bin, "kubectl"), "--kubeconfig", st.Kubeconfig}, args...)...)
			c.Stdin, c.Stdout, c.Stderr = os.Stdin, cmd.OutOrStdout(), cmd.ErrOrStderr()
			return c.Run()
		},
	}

	helmCmd := &cobra.Command{
		Use:   "helm [args...]",
		Short: "Run helm against a lab brought up with --install helm (kpath's release is " + lab.HelmRelease + " in " + lab.HelmNamespace + ")",
		Long: `Run the pinned helm CLI against the lab, in kpath's namespace, e.g.

  kpath lab helm upgrade kpath CHART --reuse-values --set image.tag=NEW --wait
  kpath lab helm uninstall kpath --wait

(CHART: the chart the lab installed, shown by kpath lab status.)`,
		DisableFlagParsing: true,
		RunE: func(cmd *cobra.Command, args []string) error {
			st, args, err := passThroughState(dir, args)
			if err != nil {
				return err
			}
			c, err := lab.HelmCmd(st, args...)
			if err != nil {
				return err
			}
			c.Stdin, c.Stdout, c.Stderr = os.Stdin, cmd.OutOrStdout(), cmd.ErrOrStderr()
			return c.Run()
		},
	}

	var podNS string
	execCmd := &cobra.Command{
		Use:   "exec POD -- COMMAND [args...]",
		Short: "Run a command in a pod's network namespace and its node's cgroup (real nodes: in its container, as kubectl exec)",
		Args:  cobra.MinimumNArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			st, err := lab.LoadState(dir)
			if err != nil {
				return fmt.Errorf("no lab in %s: %w", dir, err)
			}
			c, err := lab.Client(st)
			if err != nil {
				return err
			}
			p, err := c.CoreV1().Pods(podNS).Get(cmd.Context(), args[0], metav1.GetOptions{})
			if err != nil {
				return err
			}
			if st.Runtime == lab.RuntimeContainerd {
				// A real node's pod: in its container, through the kubelet.
				bin, err := testenv.BinDir()
				if err != nil {
					return err
				}
				kargs := append([]string{"--net=/run/netns/" + st.Vnet, filepath.Join(bin, "kubectl"), "--kubeconfig", st.Kubeconfig,
					"exec", "-n", podNS, args[0], "--"}, args[1:]...)
				c := exec.Command("nsenter", kargs...)
				c.Stdin, c.Stdout, c.Stderr = os.Stdin, cmd.OutOrStdout(), cmd.ErrOrStderr()
				return c.Run()
			}
			var cg string
			for _, n := range st.Nodes {
				if n.Name == p.Spec.NodeName {
					cg = n.Cgroup
				}
			}
			f, err := os.Open(cg)
			if err != nil {
				return fmt.Errorf("pod %s is not on a lab node: %w", args[0], err)
			}
			defer f.Close()
			// As the pod's own processes run: its service account where
			// in-cluster clients look, the kubelet's environment.
			netns, err := st.PodNetns(p.Spec.NodeName, p.UID)
			if err != nil {
				return err
			}
			argv := append([]string{"netns", "exec", netns}, args[1:]...)
			if sa := lab.PodServiceAccountDir(dir, p.Spec.NodeName, p.UID); dirExists(sa) {
				self, err := os.Executable()
				if err != nil {
					return err
				}
				argv = append([]string{"netns", "exec", netns, self, "workload", "sandbox", "--serviceaccount", sa, "--"}, args[1:]...)
			}
			c2 := exec.Command("ip", argv...)
			c2.Env = append(os.Environ(), lab.PodEnv()...)
			c2.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: int(f.Fd())}
			c2.Stdin, c2.Stdout, c2.Stderr = os.Stdin, cmd.OutOrStdout(), cmd.ErrOrStderr()
			return c2.Run()
		},
	}
	execCmd.Flags().StringVarP(&podNS, "namespace", "n", "default", "the pod's namespace")

	var obs observeFlags
	observe := &cobra.Command{
		Use:   "observe",
		Short: "Show the flows of every node of the lab, merged by time (kpath observe's flags)",
		Args:  cobra.NoArgs,
	}
	obs.add(observe)
	observe.RunE = func(cmd *cobra.Command, _ []string) error {
		st, err := lab.LoadState(dir)
		if err != nil {
			return fmt.Errorf("no lab running in %s: %w", dir, err)
		}
		f, err := obs.filter(time.Now())
		if err != nil {
			return err
		}
		return labObserve(cmd.Context(), st, f, &obs, &flowPrinter{w: cmd.OutOrStdout(), format: obs.output})
	}
	cmd.AddCommand(up, supervise, down, status, kubectl, helmCmd, execCmd, observe, newCheckConnectivityCommand(), newConformanceCommand(),
		newChaosCommand(), newChaosProbeCommand())
	return cmd
}

// showNewLines prints lines of path after the first n and returns the new count.
func showNewLines(w io.Writer, path string, n int) int {
	f, err := os.Open(path)
	if err != nil {
		return n
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	i := 0
	for s.Scan() {
		if i >= n && !strings.Contains(s.Text(), "level=") {
			fmt.Fprintln(w, "  "+s.Text())
		}
		i++
	}
	return i
}

func dirExists(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.IsDir()
}

// labBinaries are where a lab finds kpath's binaries (beside this one) and
// the Kubernetes ones.
func labBinaries() (binDir, k8sBin string, err error) {
	self, err := os.Executable()
	if err != nil {
		return "", "", err
	}
	if k8sBin, err = testenv.BinDir(); err != nil {
		return "", "", err
	}
	return filepath.Dir(self), k8sBin, nil
}

// passThroughState serves commands whose flags are another tool's (kubectl,
// helm): only a leading --dir is kpath's. It loads that lab's state and
// returns the arguments left for the tool.
func passThroughState(dir string, args []string) (*lab.State, []string, error) {
	if len(args) >= 2 && args[0] == "--dir" {
		dir, args = args[1], args[2:]
	} else if len(args) >= 1 && strings.HasPrefix(args[0], "--dir=") {
		dir, args = strings.TrimPrefix(args[0], "--dir="), args[1:]
	}
	st, err := lab.LoadState(dir)
	if err != nil {
		return nil, nil, fmt.Errorf("no lab in %s: %w", dir, err)
	}
	return st, args, nil
}

// realNodeFiles finds what real nodes need beside the binaries: with
// runtime containerd the images to import (images, or make image's beside
// this kpath binary), and to install with helm the pinned helm CLI.
func realNodeFiles(runtime, install, images string) (imageDir, helmBin string, err error) {
	if runtime == lab.RuntimeContainerd && images == "" {
		self, err := os.Executable()
		if err != nil {
			return "", "", err
		}
		images = filepath.Join(filepath.Dir(self), "images") // make image's, beside bin/kpath
	}
	if images != "" {
		if imageDir, err = filepath.Abs(images); err != nil {
			return "", "", err
		}
	}
	if install == lab.InstallHelm {
		d, err := testenv.HelmBinDir()
		if err != nil {
			return "", "", fmt.Errorf("install helm: %w", err)
		}
		helmBin = filepath.Join(d, "helm")
	}
	return imageDir, helmBin, nil
}
