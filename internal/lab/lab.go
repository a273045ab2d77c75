package lab

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"time"

	"github.com/containernetworking/cni/libcni"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/util/retry"

	"github.com/kpath/kpath/internal/datapath"
	"github.com/kpath/kpath/internal/dataplane"
	"github.com/kpath/kpath/internal/nsutil"
	"github.com/kpath/kpath/internal/procstat"
	"github.com/kpath/kpath/internal/testenv"
)

// Names and addresses the lab uses. Every address lives in namespaces the
// lab creates (the control plane in the vnet's), so labs with different
// names run side by side with the same addresses (kpath bench latency runs
// one per service dataplane).
const (
	DefaultDir  = "/var/lib/kpath-lab"
	ClusterCIDR = "10.244.0.0/16"
	ServiceCIDR = "10.96.0.0/16"
	vnetAddr    = "192.168.200.1"
)

// names are what one lab instance calls its namespaces, pinned datapaths
// and cgroup. The unnamed lab (kpath lab up) has the short names.
type names struct {
	netns  string // prefix of its namespaces: vnet, node-N, node-N-<pod hash>
	pin    string // prefix of its nodes' pin directories under the bpffs
	cgroup string // its cgroup under the cgroup2 root, one child per node
}

var labName = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,18}[a-z0-9])?$`)

func namesFor(name string) (names, error) {
	if name == "" {
		return names{netns: "kplab-", pin: "kpath-lab-", cgroup: "kpath-lab"}, nil
	}
	if !labName.MatchString(name) {
		return names{}, fmt.Errorf("lab name %q: want at most 20 lowercase letters, digits and inner dashes", name)
	}
	return names{netns: "kplab-" + name + "-", pin: "kpath-lab-" + name + "-", cgroup: "kpath-lab-" + name}, nil
}

func (n names) vnet() string { return n.netns + "vnet" }

// ownedName matches what follows an instance's prefix in the names it
// makes, so the unnamed lab's prefix ("kplab-") does not claim a named
// lab's "kplab-NAME-node-1".
var ownedName = regexp.MustCompile(`^(vnet|node-[0-9]+(-[0-9a-f]{8})?)$`)

func owns(prefix, name string) bool {
	rest, ok := strings.CutPrefix(name, prefix)
	return ok && ownedName.MatchString(rest)
}

// NodeInfo describes one lab node.
type NodeInfo = dataplane.Node

// ServiceModes are the service dataplanes a lab node can run: kpath with
// its socket hook, kpath per packet only, the real kube-proxy (kpath keeps
// pod networking with kube-proxy replacement off), the real Cilium in
// place of kpath, or nothing at all (internal/dataplane).
var ServiceModes = dataplane.Modes

// State is what a running lab records in its directory.
type State struct {
	Pid  int    `json:"pid"`
	Name string `json:"name,omitempty"`
	// NetnsPrefix starts the name of every namespace of the lab.
	NetnsPrefix string `json:"netnsPrefix"`
	// Vnet is the namespace of the cloud network and the control plane.
	Vnet     string `json:"vnet"`
	Routing  string `json:"routing"`
	Services string `json:"services"`
	Runtime  string `json:"runtime,omitempty"`
	// Install is "helm" when kpath runs as the chart's DaemonSet, which
	// HelmBin installed from Chart (kpath lab helm runs it).
	Install    string     `json:"install,omitempty"`
	HelmBin    string     `json:"helmBin,omitempty"`
	Chart      string     `json:"chart,omitempty"`
	Kubeconfig string     `json:"kubeconfig"`
	APIServer  string     `json:"apiServer"`
	Nodes      []NodeInfo `json:"nodes"`
	// HubbleRelay is the unix socket of the lab's hubble-relay (every
	// node's flows: hubble --server unix://...); "" when none runs.
	HubbleRelay string `json:"hubbleRelay,omitempty"`
	// HubbleTLS is where the nodes' Hubble mTLS files are: hubble-ca.crt,
	// NODE.crt/.key (servers), relay.crt/.key and client.crt/.key (for
	// hubble observe --server tls://NODE-IP:4244 from the vnet).
	HubbleTLS string `json:"hubbleTLS,omitempty"`
	// Dir is the lab's directory; BinDir kpath's binaries'; CiliumBin the
	// Cilium binaries' (Services cilium).
	Dir       string `json:"dir"`
	BinDir    string `json:"binDir,omitempty"`
	CiliumBin string `json:"ciliumBin,omitempty"`
	Ready     bool   `json:"ready"`
	Error     string `json:"error,omitempty"`
}

// Options configure a lab.
type Options struct {
	// Name tells labs running side by side apart ("" for kpath lab's own).
	Name    string
	Dir     string
	Nodes   int
	Routing string
	// Services is one of ServiceModes (default kpath).
	Services string
	// BinDir holds kpath, kpath-agent and kpath-cni.
	BinDir string
	// K8sBin holds kube-apiserver and friends.
	K8sBin string
	// AgentArgs are extra kpath-agent flags on every node.
	AgentArgs []string
	// HubbleRelay is a hubble-relay binary to run over the nodes' Hubble
	// servers ("" for none).
	HubbleRelay string
	// CiliumBin holds cilium-agent, cilium-cni, cilium-dbg, the agent's
	// BPF sources and CRDs (hack/cilium/build.sh), for Services "cilium".
	CiliumBin string
	// Runtime runs the nodes' pods: RuntimeLab (default) or
	// RuntimeContainerd (a real kubelet and containerd per node).
	Runtime string
	// ImageDir holds the images real nodes import (make image's
	// bin/images): the pause image and every workload's.
	ImageDir string
	// Install is how kpath gets onto the nodes: InstallLab (the lab runs
	// the agents) or InstallHelm (helm install of the chart, with real
	// nodes only).
	Install string
	// HelmBin is the helm CLI (make helm-bins), for InstallHelm.
	HelmBin string
	// ImageDirs hold more images for real nodes (the e2e suite's).
	ImageDirs []string
	// ClusterDNS, on real nodes, is the CoreDNS image to run as the
	// cluster's DNS (the kube-dns Service at ClusterDNSIP, which the
	// kubelets write into pods' resolv.conf); "" for none.
	ClusterDNS string
	// ControlPlane, when set, is given the lab's control plane once it
	// runs: a caller supervising the lab in process (Start) can stop and
	// start its etcd and API server (kpath lab chaos).
	ControlPlane func(*testenv.Env)
	// NodeRuntime, when set, is given each node's runtime (the lab's own,
	// not real nodes'), to crash it (kpath lab chaos).
	NodeRuntime func(*Runtime)
	Log         func(format string, args ...any)
}

// LoadState reads a lab's state.
func LoadState(dir string) (*State, error) {
	data, err := os.ReadFile(filepath.Join(dir, "state.json"))
	if err != nil {
		return nil, err
	}
	var s State
	if err := json.Unmarshal(data, &s); err != nil {
		return nil, fmt.Errorf("lab state: %w", err)
	}
	return &s, nil
}

func (s *State) save(dir string) error {
	data, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	tmp := filepath.Join(dir, "state.json.tmp")
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, filepath.Join(dir, "state.json"))
}

func run(name string, args ...string) error {
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %v: %s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// Supervise builds the lab and keeps it running until ctx ends, then tears
// it down. It is the lab's one long-lived process: the control plane,
// agents and workloads are its children and die with it.
func Supervise(ctx context.Context, o Options) (err error) {
	if o.Services == "" {
		o.Services = "kpath"
	}
	cluster := dataplane.Cluster{Dir: o.Dir, Routing: o.Routing, ClusterCIDR: ClusterCIDR,
		BinDir: o.BinDir, K8sBin: o.K8sBin, CiliumBin: o.CiliumBin, AgentArgs: o.AgentArgs, Log: o.Log}
	if _, err := dataplane.New(o.Services, cluster); err != nil { // before anything is built
		return err
	}
	if err := checkRuntime(&o); err != nil {
		return err
	}
	real := o.Runtime == RuntimeContainerd
	nm, err := namesFor(o.Name)
	if err != nil {
		return err
	}
	st := &State{Pid: os.Getpid(), Name: o.Name, NetnsPrefix: nm.netns, Vnet: nm.vnet(), Routing: o.Routing, Services: o.Services, Runtime: o.Runtime,
		Install: o.Install, Dir: o.Dir, BinDir: o.BinDir, CiliumBin: o.CiliumBin}
	installed := o.Install == InstallHelm
	vnet := st.Vnet
	defer func() {
		if err != nil {
			st.Error = err.Error()
			_ = st.save(o.Dir)
		}
	}()
	if err := os.MkdirAll(o.Dir, 0o700); err != nil {
		return err
	}
	_ = st.save(o.Dir)
	o.Log("creating the vnet namespace %s (the cloud network, %s)", vnet, vnetAddr)
	for _, c := range [][]string{
		{"ip", "netns", "add", vnet},
		{"ip", "-n", vnet, "link", "set", "lo", "up"},
		{"ip", "netns", "exec", vnet, "sysctl", "-qw", "net.ipv4.ip_forward=1"},
		{"ip", "-n", vnet, "link", "add", "br0", "type", "bridge"},
		{"ip", "-n", vnet, "addr", "add", vnetAddr + "/24", "dev", "br0"},
		{"ip", "-n", vnet, "link", "set", "br0", "up"},
	} {
		if err := run(c[0], c[1:]...); err != nil {
			return err
		}
	}
	if err := os.MkdirAll(filepath.Join(o.Dir, "control-plane"), 0o700); err != nil {
		return err
	}
	o.Log("starting the control plane (etcd, kube-apiserver, kube-controller-manager)")
	// The control plane lives in the vnet, on its bridge address: nodes
	// reach it through their default route, and nothing listens outside
	// the lab's namespaces.
	var nodeNames []string
	for i := 1; i <= o.Nodes; i++ {
		nodeNames = append(nodeNames, nodeName(i))
	}
	env, err := testenv.Start(ctx, testenv.Options{Dir: filepath.Join(o.Dir, "control-plane"), BinDir: o.K8sBin,
		ServiceCIDR: ServiceCIDR, ClusterCIDR: ClusterCIDR, Log: o.Log, Netns: vnet, BindAddress: vnetAddr,
		Nodes: nodeNames, Scheduler: true, Kubelets: real})
	if err != nil {
		return err
	}
	defer env.Stop()
	st.Kubeconfig, st.APIServer = env.Kubeconfig, env.APIServerURL
	if o.ControlPlane != nil {
		o.ControlPlane(env)
	}

	cgRoot, err := datapath.CgroupV2Root()
	if err != nil {
		return err
	}
	procs := &children{}
	defer procs.stop(5 * time.Second)
	if st.HubbleTLS, err = hubblePKI(o.Dir, nodeNames); err != nil {
		return err
	}
	cluster.HubbleTLSDir = st.HubbleTLS
	if real {
		if err := ensureHostDirs(o.Dir); err != nil {
			return err
		}
	}
	// Each node's runtime acts as its kubelet (or is one), with its
	// credentials.
	var (
		nodeClients []kubernetes.Interface
		realNodes   []realNode
	)
	for i := 1; i <= o.Nodes; i++ {
		n := NodeInfo{Name: nodeName(i), IP: nodeIP(i), Zone: nodeZone(i)}
		n.Netns, n.PinDir = nm.netns+n.Name, nm.pin+n.Name
		n.Cgroup = filepath.Join(cgRoot, nm.cgroup, n.Name)
		n.AgentSocket = filepath.Join(o.Dir, n.Name, "agent.sock")
		n.HubbleSocket = filepath.Join(o.Dir, n.Name, "hubble.sock")
		n.HubbleAddress = net.JoinHostPort(n.IP, hubblePort)
		if installed {
			// The DaemonSet's /run/kpath (its sockets) and pins, as the
			// node's mount namespace holds them.
			r := newRealNode(o.Dir, nm, n)
			n.AgentSocket, n.HubbleSocket = r.root("/run/kpath/agent.sock"), r.root("/run/kpath/hubble.sock")
			n.PinDir = "kpath"
		}
		o.Log("creating %s (%s)", n.Name, n.IP)
		if err := os.MkdirAll(n.Cgroup, 0o755); err != nil {
			return fmt.Errorf("cgroup for %s: %w", n.Name, err)
		}
		for _, c := range [][]string{
			{"ip", "netns", "add", n.Netns},
			{"ip", "-n", n.Netns, "link", "set", "lo", "up"},
			{"ip", "netns", "exec", n.Netns, "sysctl", "-qw", "net.ipv4.ip_forward=1"},
			{"ip", "-n", n.Netns, "link", "add", "eth0", "type", "veth", "peer", "name", n.Name, "netns", vnet},
			{"ip", "-n", vnet, "link", "set", n.Name, "master", "br0", "up"},
			{"ip", "-n", n.Netns, "addr", "add", n.IP + "/24", "dev", "eth0"},
			{"ip", "-n", n.Netns, "link", "set", "eth0", "up"},
			{"ip", "-n", n.Netns, "route", "add", "default", "via", vnetAddr},
		} {
			if err := run(c[0], c[1:]...); err != nil {
				return err
			}
		}
		nodeCfg, err := env.NodeConfig(n.Name)
		if err != nil {
			return err
		}
		nodeClient, err := kubernetes.NewForConfig(nodeCfg)
		if err != nil {
			return err
		}
		nodeClients = append(nodeClients, nodeClient)
		var cidr string
		if real {
			o.Log("starting containerd and the kubelet on %s", n.Name)
			kubeconfig := filepath.Join(o.Dir, n.Name, "kubelet.kubeconfig")
			if err := env.WriteNodeKubeconfig(n.Name, kubeconfig); err != nil {
				return err
			}
			r := newRealNode(o.Dir, nm, n)
			if err := startRealNode(ctx, o, r, kubeconfig, keeper{procs, o.Log}); err != nil {
				return err
			}
			realNodes = append(realNodes, r)
			cidr, err = waitPodCIDR(ctx, nodeClient, n.Name, 2*time.Minute)
		} else {
			cidr, err = registerNode(ctx, nodeClient, n)
		}
		if err != nil {
			return err
		}
		n.PodCIDR = cidr
		if o.Routing == "native" {
			if err := run("ip", "-n", vnet, "route", "replace", cidr, "via", n.IP); err != nil {
				return err
			}
		}
		st.Nodes = append(st.Nodes, n)
		_ = st.save(o.Dir)
	}

	cluster.Kubeconfig = env.Kubeconfig
	if installed {
		admin, err := kubernetes.NewForConfig(env.Config)
		if err != nil {
			return err
		}
		if err := installChart(ctx, o, st, admin, realNodes); err != nil {
			return err
		}
		if o.HubbleRelay != "" {
			// The chart runs relay: the lab's socket reaches its pod.
			addr, err := relayPodAddress(ctx, admin)
			if err != nil {
				return err
			}
			sock := filepath.Join(o.Dir, "hubble-relay.sock")
			if err := forwardRelay(ctx, st, sock, addr); err != nil {
				return err
			}
			st.HubbleRelay, o.HubbleRelay = sock, ""
		}
		return serve(ctx, o, st, procs)
	}
	dp, err := dataplane.New(o.Services, cluster)
	if err != nil {
		return err
	}
	if err := dp.Setup(ctx, env.Config); err != nil {
		return fmt.Errorf("set up %s: %w", o.Services, err)
	}
	for i, n := range st.Nodes {
		o.Log("starting the %s dataplane and the node runtime on %s", o.Services, n.Name)
		wiring, err := dp.Start(ctx, n, keeper{procs, o.Log})
		if err != nil {
			return err
		}
		if real {
			// The kubelet runs the pods; containerd calls the plugin.
			if err := realNodes[i].installCNI(wiring, filepath.Join(o.BinDir, "loopback")); err != nil {
				return fmt.Errorf("install CNI on %s: %w", n.Name, err)
			}
			continue
		}
		cg, err := os.Open(n.Cgroup)
		if err != nil {
			return err
		}
		netconf, err := libcni.ConfListFromBytes(wiring.Conf)
		if err != nil {
			return err
		}
		rt := &Runtime{Client: nodeClients[i], Node: n.Name, NodeNetns: n.Netns, NetnsPrefix: nm.netns, NetConf: netconf, Cgroup: cg,
			CNI:      libcni.NewCNIConfigWithCacheDir([]string{wiring.BinDir}, filepath.Join(o.Dir, n.Name, "cni-cache"), nil),
			KpathBin: filepath.Join(o.BinDir, "kpath"), LabDir: o.Dir, ServiceAccountCA: env.ServingCert,
			Log: slog.New(slog.NewTextHandler(logWriter(o.Log), nil))}
		if o.NodeRuntime != nil {
			o.NodeRuntime(rt)
		}
		go keepRuntime(ctx, rt, o.Log)
	}
	return serve(ctx, o, st, procs)
}

// serve starts hubble-relay over the nodes, if asked for, marks the lab
// ready and keeps it until ctx ends.
func serve(ctx context.Context, o Options, st *State, procs *children) error {
	if o.ClusterDNS != "" {
		o.Log("deploying the cluster DNS (%s) at %s", o.ClusterDNS, ClusterDNSIP)
		cfg, err := RestConfig(st)
		if err != nil {
			return err
		}
		c, err := kubernetes.NewForConfig(cfg)
		if err != nil {
			return err
		}
		if err := deployClusterDNS(ctx, c, o.ClusterDNS); err != nil {
			return err
		}
	}
	if o.HubbleRelay != "" && len(st.Nodes) > 0 {
		o.Log("starting hubble-relay in %s on %s", st.Vnet, relayAddr)
		sock := filepath.Join(o.Dir, "hubble-relay.sock")
		if err := startRelay(ctx, o, st, sock, procs); err != nil {
			return err
		}
		st.HubbleRelay = sock
	}
	st.Ready = true
	if err := st.save(o.Dir); err != nil {
		return err
	}
	how := "by the lab"
	if o.Install == InstallHelm {
		how = "installed by helm"
	}
	o.Log("lab ready: %d nodes, routing %s, services by %s (%s)", o.Nodes, o.Routing, o.Services, how)
	<-ctx.Done()
	return nil
}

type logWriter func(string, ...any)

func (w logWriter) Write(p []byte) (int, error) {
	w("%s", strings.TrimSpace(string(p)))
	return len(p), nil
}

func nodeName(i int) string { return fmt.Sprintf("node-%d", i) }

// nodeZone is a node's topology.kubernetes.io/zone: node-1 in zone-a,
// node-2 in zone-b, node-3 in zone-c, node-4 in zone-a again, and so on,
// so that topology-aware routing has as many zones as the upstream suite's
// Traffic Distribution tests ask for (three) from three nodes up.
func nodeZone(i int) string { return "zone-" + string(rune('a'+(i-1)%3)) }

func nodeIP(i int) string { return fmt.Sprintf("192.168.200.%d", 10+i) }

// nodeCapacity is what a lab node offers the scheduler: room for the pods
// of any test or benchmark the lab runs (the lab does not enforce it).
var nodeCapacity = corev1.ResourceList{
	corev1.ResourceCPU:    resource.MustParse("64"),
	corev1.ResourceMemory: resource.MustParse("256Gi"),
	corev1.ResourcePods:   resource.MustParse("110000"),
}

// registerNode creates the Node object with the node's own credentials (as
// its kubelet would) and waits for kube-controller-manager to give it a pod
// CIDR.
func registerNode(ctx context.Context, c kubernetes.Interface, n NodeInfo) (string, error) {
	_, err := c.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: n.Name,
		Labels: map[string]string{corev1.LabelHostname: n.Name, corev1.LabelOSStable: "linux", corev1.LabelTopologyZone: n.Zone}}}, metav1.CreateOptions{})
	if err != nil {
		return "", fmt.Errorf("register %s: %w", n.Name, err)
	}
	// kube-controller-manager writes the node too (its pod CIDR).
	err = retry.RetryOnConflict(retry.DefaultRetry, func() error {
		node, err := c.CoreV1().Nodes().Get(ctx, n.Name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		now := metav1.Now()
		node.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: n.IP}, {Type: corev1.NodeHostName, Address: n.Name}}
		node.Status.Conditions = []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue, LastHeartbeatTime: now, LastTransitionTime: now, Reason: "KpathLab"}}
		node.Status.Capacity, node.Status.Allocatable = nodeCapacity, nodeCapacity
		_, err = c.CoreV1().Nodes().UpdateStatus(ctx, node, metav1.UpdateOptions{})
		return err
	})
	if err != nil {
		return "", fmt.Errorf("node %s status: %w", n.Name, err)
	}
	return waitPodCIDR(ctx, c, n.Name, 60*time.Second)
}

// waitPodCIDR waits for node's Node object to get a pod CIDR from
// kube-controller-manager.
func waitPodCIDR(ctx context.Context, c kubernetes.Interface, node string, within time.Duration) (string, error) {
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		got, err := c.CoreV1().Nodes().Get(ctx, node, metav1.GetOptions{})
		if err == nil && got.Spec.PodCIDR != "" {
			if _, err := netip.ParsePrefix(got.Spec.PodCIDR); err == nil {
				return got.Spec.PodCIDR, nil
			}
		}
		time.Sleep(200 * time.Millisecond)
	}
	return "", fmt.Errorf("%s has no pod CIDR after %s (is its kubelet registered? kube-controller-manager allocates them)", node, within)
}

// ProcessAlive reports whether pid runs (a zombie does not).
func ProcessAlive(pid int) bool {
	if pid <= 0 || syscall.Kill(pid, 0) != nil {
		return false
	}
	st, err := procstat.Read(pid)
	return err == nil && st.State != 'Z'
}

// Client returns a client for a lab's API server, which is reachable only
// from inside the lab's vnet namespace.
func Client(st *State) (kubernetes.Interface, error) {
	cfg, err := RestConfig(st)
	if err != nil {
		return nil, err
	}
	return kubernetes.NewForConfig(cfg)
}

// RestConfig reaches the lab's API server (in its vnet namespace) from
// the host, for clients other than the typed one (dynamic, for CRDs).
func RestConfig(st *State) (*rest.Config, error) {
	cfg, err := clientcmd.BuildConfigFromFlags("", st.Kubeconfig)
	if err != nil {
		return nil, err
	}
	cfg.QPS, cfg.Burst = 500, 1000
	cfg.Dial = nsutil.Dialer(st.Vnet)
	return cfg, nil
}
