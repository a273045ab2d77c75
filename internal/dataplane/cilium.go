package dataplane

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

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/yaml"

	"github.com/kpath/kpath/internal/datapath"
	"github.com/kpath/kpath/internal/nsutil"
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

// cilium is the real cilium-agent as a node's dataplane, in place of
// kpath-agent.
type cilium struct{ c Cluster }

func (d cilium) Mode() string { return "cilium" }

func (d cilium) paths(n Node) ciliumNode { return ciliumPaths(d.c.Dir, n) }

func (d cilium) log(n Node) string { return filepath.Join(d.c.nodeDir(n), "cilium-agent.log") }

func ciliumPaths(labDir string, n Node) ciliumNode {
	dir := filepath.Join(labDir, n.Name, "cilium")
	return ciliumNode{dir: dir, mountNS: filepath.Join(dir, "ns", "mnt"), sock: filepath.Join(dir, "state", "cilium.sock")}
}

// nsenterNode runs args in the node's network and mount namespaces.
func (c ciliumNode) nsenter(n Node, args ...string) *exec.Cmd {
	return exec.Command("nsenter", append([]string{"--net=/run/netns/" + n.Netns, "--mount=" + c.mountNS, "--"}, args...)...)
}

// setupMountNS makes the node's mount namespace and its mounts.
func (c ciliumNode) setupMountNS(n Node, ciliumBin string) error {
	for _, d := range []string{filepath.Join(c.dir, "lib"), filepath.Join(c.dir, "state"), filepath.Join(c.dir, "netns-view")} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return err
		}
	}
	// Slave propagation: mounts made on the host (new pod namespaces)
	// reach the node; the node's own mounts stay there.
	if err := nsutil.NewMountNS(c.mountNS); err != nil {
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
func (c ciliumNode) args(cl Cluster) []string {
	return []string{
		"--k8s-kubeconfig-path=" + cl.Kubeconfig,
		"--cluster-name=kpath-lab", "--cluster-id=0",
		"--routing-mode=native", "--ipv4-native-routing-cidr=" + cl.ClusterCIDR, "--auto-direct-node-routes=false",
		"--kube-proxy-replacement=true", "--bpf-lb-sock=true",
		// AKS's 65536 holds ~6k services of 10 endpoints; the benchmarks
		// go to 110k service slots (E1) and 244k (E2's c): kpath's room.
		"--bpf-lb-map-max=262144",
		"--enable-ipv4=true", "--enable-ipv6=false",
		"--enable-l7-proxy=false", "--enable-hubble=false",
		"--identity-allocation-mode=crd", "--enable-cilium-endpoint-slice=true",
		"--ipam=kubernetes", "--k8s-require-ipv4-pod-cidr=true",
		"--enable-endpoint-routes=true", "--enable-ipv4-masquerade=false", "--enable-bpf-masquerade=false",
		"--devices=eth0", "--direct-routing-device=eth0",
		"--enable-health-checking=false", "--enable-endpoint-health-checking=false",
		"--cni-exclusive=false", "--write-cni-conf-when-ready=",
		// In its cgroup namespace (see Start): the agent mounts
		// cgroup2 here, the node's cgroup its root.
		"--bpf-root=/sys/fs/bpf", "--cgroup-root=/run/cilium/cgroupv2",
		"--lib-dir=" + filepath.Join(c.dir, "lib"), "--state-dir=" + filepath.Join(c.dir, "state"),
		"--socket-path=" + c.sock,
		"--prometheus-serve-addr=127.0.0.1:9962", "--agent-health-port=9879",
		"--enable-policy=default",
	}
}

// Start runs cilium-agent on node n, restarted as a DaemonSet's pod would
// be, and waits until its API answers.
func (d cilium) Start(ctx context.Context, n Node, k Keeper) (CNI, error) {
	c := d.paths(n)
	if err := c.setupMountNS(n, d.c.CiliumBin); err != nil {
		return CNI{}, err
	}
	logPath := d.log(n)
	exited, err := k.Keep("cilium-agent on "+n.Name, func() (*exec.Cmd, func(), error) {
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
		cmd := c.nsenter(n, append([]string{"unshare", "--cgroup", "--", filepath.Join(d.c.CiliumBin, "cilium-agent")}, c.args(d.c)...)...)
		cmd.Env = append(os.Environ(), "K8S_NODE_NAME="+n.Name,
			// clang >= 18.1 (hack/cilium/build.sh links it here).
			"PATH="+filepath.Join(d.c.CiliumBin, "bin-path")+":"+os.Getenv("PATH"))
		cmd.Stdout, cmd.Stderr = logf, logf
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, UseCgroupFD: true, CgroupFD: int(cg.Fd())}
		return cmd, func() { logf.Close(); cg.Close() }, nil
	})
	if err != nil {
		return CNI{}, fmt.Errorf("start cilium-agent on %s: %w", n.Name, err)
	}
	// Its BPF programs are compiled at start: a minute or two here.
	for deadline := time.Now().Add(5 * time.Minute); time.Now().Before(deadline); time.Sleep(time.Second) {
		if up, _ := d.Up(ctx, n); up {
			binDir, conf, err := d.cni(n)
			return CNI{BinDir: binDir, Conf: conf}, err
		}
		select {
		case <-exited:
			return CNI{}, fmt.Errorf("cilium-agent on %s exited (log: %s):\n%s", n.Name, logPath, TailFile(logPath, 15))
		default:
		}
	}
	return CNI{}, fmt.Errorf("cilium-agent on %s not ready within 5 minutes (log: %s):\n%s", n.Name, logPath, TailFile(logPath, 15))
}

// dbg runs cilium-dbg against node n's agent.
func (d cilium) dbg(n Node, args ...string) *exec.Cmd {
	c := d.paths(n)
	return c.nsenter(n, append([]string{filepath.Join(d.c.CiliumBin, "cilium-dbg"), "-H", "unix://" + c.sock}, args...)...)
}

// ciliumCNI writes node n's cilium-cni wrapper, which runs the plugin in
// the node's mount namespace (where the agent's socket and its run
// directory are), and returns its directory and the network configuration
// Cilium installs (05-cilium.conflist).
func (d cilium) cni(n Node) (binDir string, conf []byte, err error) {
	c := d.paths(n)
	binDir = filepath.Join(c.dir, "cni-bin")
	if err := os.MkdirAll(binDir, 0o755); err != nil {
		return "", nil, err
	}
	wrapper := fmt.Sprintf("#!/bin/sh\nCILIUM_SOCK=%s exec nsenter --mount=%s -- %s \"$@\"\n", c.sock, c.mountNS, filepath.Join(d.c.CiliumBin, "cilium-cni"))
	if err := os.WriteFile(filepath.Join(binDir, "cilium-cni"), []byte(wrapper), 0o755); err != nil {
		return "", nil, err
	}
	conf = []byte(fmt.Sprintf(`{"cniVersion":"0.3.1","name":"cilium","plugins":[{"type":"cilium-cni","enable-debug":false,"log-file":%q}]}`,
		filepath.Join(c.dir, "cilium-cni.log")))
	return binDir, conf, nil
}

// Setup creates Cilium's CustomResourceDefinitions (the
// operator's job in a cluster; the agents wait for them) from the pinned
// module's YAML, which hack/cilium/build.sh copies beside the binaries.
// cfg reaches the API server (in the vnet namespace).
func (d cilium) Setup(ctx context.Context, cfg *rest.Config) error {
	ciliumBin := d.c.CiliumBin
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

// Up: cilium-agent's own status is OK. It reports no start -> ready.
func (d cilium) Up(ctx context.Context, n Node) (bool, time.Duration) {
	out, err := d.dbg(n, "status", "--brief").CombinedOutput()
	return err == nil && strings.HasPrefix(strings.TrimSpace(string(out)), "OK"), 0
}

// Ready: Cilium's own service map holds a ClusterIP frontend with backends
// for every service (cilium-dbg service list, which reads the agent's
// tables).
func (d cilium) Ready(ctx context.Context, n Node, w Want) (bool, string) {
	got, err := d.services(ctx, n)
	if err != nil {
		return false, err.Error()
	}
	if got >= w.Services {
		return true, ""
	}
	return false, fmt.Sprintf("cilium: %d of %d services with backends", got, w.Services)
}

// services counts the ClusterIP frontends n's agent holds with at least one
// backend.
func (d cilium) services(ctx context.Context, n Node) (int, error) {
	out, err := d.dbg(n, "service", "list", "-o", "json").Output()
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
	return count, nil
}

// Reset removes what a restarted agent resumes from: its pinned maps (the
// node's bpffs) and its state directory (restored endpoints).
func (d cilium) Reset(n Node) error {
	c := d.paths(n)
	state := filepath.Join(c.dir, "state")
	// maps.debug and progs.debug are the bpffs's own iterators.
	out, err := c.nsenter(n, "sh", "-c", "find /sys/fs/bpf -mindepth 1 -maxdepth 1 ! -name '*.debug' -exec rm -rf {} + && rm -rf "+state+"/*").CombinedOutput()
	if err != nil {
		return fmt.Errorf("reset cilium on %s: %w: %s", n.Name, err, out)
	}
	return nil
}

func (d cilium) Counters(context.Context, Node) (Counters, error) { return Counters{}, nil }

// The maps Gauges counts, pinned in the node's bpffs.
const (
	ciliumGlobals  = "/sys/fs/bpf/tc/globals/"
	ciliumIPCache  = ciliumGlobals + "cilium_ipcache_v2"
	ciliumBackends = ciliumGlobals + "cilium_lb4_backends_v3"
)

// Gauges: the heap from the agent's metrics, the ipcache's and backends'
// entries counted in its maps (through /proc/PID/root, into its mount
// namespace), as Cilium's scalability report reads them. Identities are
// not reported: cilium_identity counts those the agent allocated (its own
// pods', reserved and well-known), not the cluster's it holds.
func (d cilium) Gauges(ctx context.Context, n Node) (Gauges, error) {
	pid := d.Agent(n).Pid()
	if pid == 0 {
		return Gauges{}, fmt.Errorf("no cilium-agent on %s", n.Name)
	}
	m, err := Scrape(n.Netns, CiliumMetrics)
	if err != nil {
		return Gauges{}, err
	}
	g := Gauges{HeapBytes: m["go_memstats_heap_inuse_bytes"]}
	root := fmt.Sprintf("/proc/%d/root", pid)
	if g.IPCache, err = datapath.CountPinned(root + ciliumIPCache); err != nil {
		return g, err
	}
	if g.Backends, err = datapath.CountPinned(root + ciliumBackends); err != nil {
		return g, err
	}
	return g, nil
}

// Drops are the agent's drop counters (cilium_drop_count_total, from its
// metrics map), by direction/reason.
func (d cilium) Drops(ctx context.Context, n Node) map[string]uint64 {
	m, err := Scrape(n.Netns, CiliumMetrics)
	if err != nil {
		return nil
	}
	out := map[string]uint64{}
	for k, v := range m {
		labels, ok := strings.CutPrefix(k, "cilium_drop_count_total{")
		if !ok {
			continue
		}
		dir, reason := labelOf(labels, "direction"), labelOf(labels, "reason")
		out[strings.ToLower(dir)+"/"+reason] += uint64(v)
	}
	return out
}

// labelOf is label l's value in a sample's a="x",b="y"} labels.
func labelOf(labels, l string) string {
	_, v, ok := strings.Cut(labels, l+`="`)
	if !ok {
		return ""
	}
	v, _, _ = strings.Cut(v, `"`)
	return v
}

// Agent: the node's cilium-agent, told apart from other labs' and nodes'
// by its state directory.
func (d cilium) Agent(n Node) Process {
	return Process{Binary: "cilium-agent", Args: []string{"--state-dir=" + filepath.Join(d.paths(n).dir, "state")}}
}

func (d cilium) Logs(n Node) []string { return []string{d.log(n)} }

// Health is cilium-agent's own status line.
func (d cilium) Health(ctx context.Context, n Node) string {
	out, err := d.dbg(n, "status", "--brief").CombinedOutput()
	line, _, _ := strings.Cut(strings.TrimSpace(string(out)), "\n")
	if err != nil {
		return "cilium-agent down: " + line
	}
	return "cilium-agent " + line
}
