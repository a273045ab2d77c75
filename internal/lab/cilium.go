package lab

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/yaml"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kpath/kpath/internal/cniapi"
	"github.com/kpath/kpath/internal/testenv"
)

// The real Cilium as a lab node's dataplane (--services cilium): the
// node's pod networking, routing, services and NetworkPolicy by
// cilium-agent, its pods wired by cilium-cni, in place of kpath. Each agent
// runs in its node's network namespace and in a mount namespace of the
// node's own, so that its bpffs, its run directory and its socket-LB
// cgroup root are the node's and nothing of it reaches the host:
//
//   - a fresh bpffs on /sys/fs/bpf;
//   - a tmpfs on /run (cilium-agent writes /run/cilium whatever its
//     --state-dir), with the host's /run/netns bound back into it, so the
//     pods' namespaces the runtime makes stay visible;
//   - /proc/sys/kernel read-only (the agent would tune host-wide sysctls);
//   - its lib directory (the BPF sources it compiles at start) and state
//     directory under the lab's directory;
//   - a cgroup namespace rooted at the node's cgroup (where the runtime
//     puts the pods), so the cgroup2 it mounts for its socket LB is the
//     node's.
//
// The mount namespace is kept by a bind mount of its file in the node's
// lab directory, as ip netns keeps network namespaces, so cilium-cni runs
// in it too.
//
// Configuration, after Azure's published cilium-config for "Azure CNI
// powered by Cilium": native routing, kube-proxy replacement, L7 proxy,
// Hubble and IPv6 off, CRD identity allocation, EndpointSlices, BPF host
// routing with per-endpoint routes. IPAM is "kubernetes" (the Node's pod
// CIDR, which kube-controller-manager allocates) rather than Azure's
// delegated plugin, which needs Azure's CNS: the agent's work per pod is
// the same, and the pod CIDRs are those every other lab mode uses. No
// masquerading: the lab's vnet routes pod CIDRs, as Azure's SDN does.

// ciliumNode is a node's Cilium paths.
type ciliumNode struct {
	dir     string // <lab>/<node>/cilium
	mountNS string // the node's mount namespace, bound here
	sock    string // the agent's API socket, as the host sees it
}

func ciliumPaths(labDir string, n NodeInfo) ciliumNode {
	dir := filepath.Join(labDir, n.Name, "cilium")
	return ciliumNode{dir: dir, mountNS: filepath.Join(dir, "ns", "mnt"), sock: filepath.Join(dir, "state", "cilium.sock")}
}

// nsenterNode runs args in the node's network and mount namespaces.
func (c ciliumNode) nsenter(n NodeInfo, args ...string) *exec.Cmd {
	return exec.Command("nsenter", append([]string{"--net=/run/netns/" + n.Netns, "--mount=" + c.mountNS, "--"}, args...)...)
}

// setupMountNS makes the node's mount namespace and its mounts.
func (c ciliumNode) setupMountNS(n NodeInfo, ciliumBin string) error {
	nsDir := filepath.Dir(c.mountNS)
	for _, d := range []string{nsDir, filepath.Join(c.dir, "lib"), filepath.Join(c.dir, "state"), filepath.Join(c.dir, "netns-view")} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return err
		}
	}
	// A namespace file can only be bound on a mount of private
	// propagation.
	for _, cmd := range [][]string{
		{"mount", "--bind", nsDir, nsDir},
		{"mount", "--make-private", nsDir},
	} {
		if err := run(cmd[0], cmd[1:]...); err != nil {
			return err
		}
	}
	if err := os.WriteFile(c.mountNS, nil, 0o600); err != nil {
		return err
	}
	// Slave propagation: mounts made on the host (new pod namespaces)
	// reach the node; the node's own mounts stay there.
	if err := run("unshare", "--mount="+c.mountNS, "--propagation", "slave", "true"); err != nil {
		return fmt.Errorf("mount namespace for %s: %w", n.Name, err)
	}
	view := filepath.Join(c.dir, "netns-view")
	script := strings.Join([]string{
		"set -e",
		// The host's bpffs leaves the node's view (the agent wants a
		// single mount there): a fresh one in its place.
		"while mountpoint -q /sys/fs/bpf; do umount -l /sys/fs/bpf; done",
		"mount -t bpf bpf /sys/fs/bpf",
		"mount --rbind /run/netns " + view,
		"mount -t tmpfs -o mode=755 tmpfs /run",
		"mkdir -p /run/netns",
		"mount --rbind " + view + " /run/netns",
		"umount -l " + view,
		"mount --bind /proc/sys/kernel /proc/sys/kernel",
		"mount -o remount,bind,ro /proc/sys/kernel",
		// The agent compiles from <lib-dir>/bpf and writes its feature
		// probes there: a copy per node.
		"cp -r " + filepath.Join(ciliumBin, "bpf") + " " + filepath.Join(c.dir, "lib"),
	}, "\n")
	cmd := exec.Command("nsenter", "--mount="+c.mountNS, "--", "sh", "-c", script)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("mounts of %s's namespace: %w: %s", n.Name, err, out)
	}
	return nil
}

// args are cilium-agent's flags on node n (see the configuration
// above).
func (c ciliumNode) args(env *testenv.Env, n NodeInfo) []string {
	return []string{
		"--k8s-kubeconfig-path=" + env.Kubeconfig,
		"--cluster-name=kpath-lab", "--cluster-id=0",
		"--routing-mode=native", "--ipv4-native-routing-cidr=" + ClusterCIDR, "--auto-direct-node-routes=false",
		"--kube-proxy-replacement=true", "--bpf-lb-sock=true",
		// AKS's 65536 holds ~6k services of 10 endpoints; the benchmarks
		// go to 110k service slots (E1) and 244k (E2's c): kpath's room.
		"--bpf-lb-map-max=262144",
		"--enable-ipv4=true", "--enable-ipv6=false",
		"--enable-l7-proxy=false", "--enable-hubble=false",
		"--identity-allocation-mode=crd",
		"--ipam=kubernetes", "--k8s-require-ipv4-pod-cidr=true",
		"--enable-endpoint-routes=true", "--enable-ipv4-masquerade=false", "--enable-bpf-masquerade=false",
		"--devices=eth0", "--direct-routing-device=eth0",
		"--enable-health-checking=false", "--enable-endpoint-health-checking=false",
		"--cni-exclusive=false", "--write-cni-conf-when-ready=",
		// In its cgroup namespace (see startCilium): the agent mounts
		// cgroup2 here, the node's cgroup its root.
		"--bpf-root=/sys/fs/bpf", "--cgroup-root=/run/cilium/cgroupv2",
		"--lib-dir=" + filepath.Join(c.dir, "lib"), "--state-dir=" + filepath.Join(c.dir, "state"),
		"--socket-path=" + c.sock,
		"--prometheus-serve-addr=127.0.0.1:9962", "--agent-health-port=9879",
		"--enable-policy=default",
	}
}

// startCilium runs cilium-agent on node n, restarted as a DaemonSet's pod
// would be, and waits until its API answers.
func startCilium(o Options, env *testenv.Env, n NodeInfo, procs *children) error {
	c := ciliumPaths(o.Dir, n)
	if err := c.setupMountNS(n, o.CiliumBin); err != nil {
		return err
	}
	logPath := filepath.Join(o.Dir, n.Name, "cilium-agent.log")
	exited, err := procs.keep("cilium-agent on "+n.Name, func() (*exec.Cmd, func(), error) {
		logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
		if err != nil {
			return nil, nil, err
		}
		cg, err := os.Open(n.Cgroup)
		if err != nil {
			logf.Close()
			return nil, nil, err
		}
		// Born in the node's cgroup, the agent unshares a cgroup namespace
		// rooted there: the cgroup2 it mounts for its socket LB has the
		// node's cgroup as its root, so the programs land on the node, not
		// on the host's root.
		cmd := c.nsenter(n, append([]string{"unshare", "--cgroup", "--", filepath.Join(o.CiliumBin, "cilium-agent")}, c.args(env, n)...)...)
		cmd.Env = append(os.Environ(), "K8S_NODE_NAME="+n.Name,
			// clang >= 18.1 (hack/cilium/build.sh links it here).
			"PATH="+filepath.Join(o.CiliumBin, "bin-path")+":"+os.Getenv("PATH"))
		cmd.Stdout, cmd.Stderr = logf, logf
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, UseCgroupFD: true, CgroupFD: int(cg.Fd())}
		return cmd, func() { logf.Close(); cg.Close() }, nil
	}, o.Log)
	if err != nil {
		return fmt.Errorf("start cilium-agent on %s: %w", n.Name, err)
	}
	// Its BPF programs are compiled at start: a minute or two here.
	for deadline := time.Now().Add(5 * time.Minute); time.Now().Before(deadline); time.Sleep(time.Second) {
		if out, err := c.dbg(o.CiliumBin, n, "status", "--brief").CombinedOutput(); err == nil && strings.HasPrefix(strings.TrimSpace(string(out)), "OK") {
			return nil
		}
		select {
		case <-exited:
			return fmt.Errorf("cilium-agent on %s exited (log: %s):\n%s", n.Name, logPath, tailFile(logPath, 15))
		default:
		}
	}
	return fmt.Errorf("cilium-agent on %s not ready within 5 minutes (log: %s):\n%s", n.Name, logPath, tailFile(logPath, 15))
}

// tailFile is the last n lines of a log.
func tailFile(path string, n int) string {
	data, _ := os.ReadFile(path)
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// dbg runs cilium-dbg against node n's agent.
func (c ciliumNode) dbg(ciliumBin string, n NodeInfo, args ...string) *exec.Cmd {
	return c.nsenter(n, append([]string{filepath.Join(ciliumBin, "cilium-dbg"), "-H", "unix://" + c.sock}, args...)...)
}

// ciliumCNI writes node n's cilium-cni wrapper, which runs the plugin in
// the node's mount namespace (where the agent's socket and its run
// directory are), and returns its directory and the network configuration
// Cilium installs (05-cilium.conflist).
func ciliumCNI(o Options, n NodeInfo) (binDir string, conf []byte, err error) {
	c := ciliumPaths(o.Dir, n)
	binDir = filepath.Join(c.dir, "cni-bin")
	if err := os.MkdirAll(binDir, 0o755); err != nil {
		return "", nil, err
	}
	wrapper := fmt.Sprintf("#!/bin/sh\nCILIUM_SOCK=%s exec nsenter --mount=%s -- %s \"$@\"\n", c.sock, c.mountNS, filepath.Join(o.CiliumBin, "cilium-cni"))
	if err := os.WriteFile(filepath.Join(binDir, "cilium-cni"), []byte(wrapper), 0o755); err != nil {
		return "", nil, err
	}
	conf = []byte(fmt.Sprintf(`{"cniVersion":"0.3.1","name":"cilium","plugins":[{"type":"cilium-cni","enable-debug":false,"log-file":%q}]}`,
		filepath.Join(c.dir, "cilium-cni.log")))
	return binDir, conf, nil
}

// applyCiliumCRDs creates Cilium's CustomResourceDefinitions (the
// operator's job in a cluster; the agents wait for them) from the pinned
// module's YAML, which hack/cilium/build.sh copies beside the binaries.
// cfg reaches the API server (in the vnet namespace).
func applyCiliumCRDs(ctx context.Context, cfg *rest.Config, ciliumBin string) error {
	dc, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return err
	}
	files, err := filepath.Glob(filepath.Join(ciliumBin, "crds", "*", "*.yaml"))
	if err != nil || len(files) == 0 {
		return fmt.Errorf("no Cilium CRDs under %s (run hack/cilium/build.sh)", filepath.Join(ciliumBin, "crds"))
	}
	crds := dc.Resource(schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"})
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			return err
		}
		var obj unstructured.Unstructured
		if err := yaml.Unmarshal(data, &obj.Object); err != nil {
			return fmt.Errorf("CRD %s: %w", f, err)
		}
		if _, err := crds.Create(ctx, &obj, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("create CRD %s: %w", obj.GetName(), err)
		}
	}
	return nil
}

// unmountUnder unmounts what is mounted under dir (the Cilium nodes'
// namespace files and binds), deepest first, so that their namespaces and
// bpffs go once their processes have.
func unmountUnder(dir string) error {
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return err
	}
	var points []string
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) > 4 && (f[4] == dir || strings.HasPrefix(f[4], dir+"/")) {
			points = append(points, f[4])
		}
	}
	var firstErr error
	for i := len(points) - 1; i >= 0; i-- {
		if err := syscall.Unmount(points[i], syscall.MNT_DETACH); err != nil && firstErr == nil && err != syscall.EINVAL {
			firstErr = fmt.Errorf("unmount %s: %w", points[i], err)
		}
	}
	return firstErr
}

// AgentHealth is node n's dataplane agent as kpath lab status shows it:
// kpath-agent's readiness, or cilium-agent's own status line.
func (s *State) AgentHealth(n NodeInfo) string {
	if s.Services == "cilium" {
		c := ciliumPaths(s.Dir, n)
		out, err := c.dbg(s.CiliumBin, n, "status", "--brief").CombinedOutput()
		line, _, _ := strings.Cut(strings.TrimSpace(string(out)), "\n")
		if err != nil {
			return "cilium-agent down: " + line
		}
		return "cilium-agent " + line
	}
	var st struct{ Ready bool }
	if err := cniapi.NewClient(n.AgentSocket).Do("GET", "/v1/status", nil, &st); err != nil {
		return "kpath-agent down"
	}
	if !st.Ready {
		return "kpath-agent starting"
	}
	return "kpath-agent ready"
}

// CiliumServices counts the ClusterIP frontends node n's cilium-agent holds
// with at least one backend (its own view, from cilium-dbg service list).
func (s *State) CiliumServices(ctx context.Context, n NodeInfo) (int, error) {
	c := ciliumPaths(s.Dir, n)
	cmd := c.dbg(s.CiliumBin, n, "service", "list", "-o", "json")
	out, err := cmd.Output()
	if err != nil {
		return 0, fmt.Errorf("cilium-dbg service list on %s: %w", n.Name, err)
	}
	var svcs []struct {
		Spec struct {
			BackendAddresses []json.RawMessage `json:"backend-addresses"`
			Flags            struct {
				Type string `json:"type"`
			} `json:"flags"`
		} `json:"spec"`
	}
	if err := json.Unmarshal(out, &svcs); err != nil {
		return 0, fmt.Errorf("cilium-dbg service list on %s: %w", n.Name, err)
	}
	count := 0
	for _, sv := range svcs {
		if len(sv.Spec.BackendAddresses) > 0 && sv.Spec.Flags.Type == "ClusterIP" {
			count++
		}
	}
	return count, ctx.Err()
}
