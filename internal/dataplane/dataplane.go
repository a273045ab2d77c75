// Package dataplane runs a lab node's service dataplane behind one
// interface: kpath (with its socket hook or per packet only), the real
// kube-proxy (iptables or nftables, with kpath wiring the pods), the real
// Cilium, or none. The lab starts it on its nodes; the benchmarks ask it
// whether it holds their objects, which processes to sample and where its
// logs are, the same way for every implementation.
package dataplane

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/kpath/kpath/internal/procstat"
	"k8s.io/client-go/rest"
)

// Modes are the service dataplanes a lab node can run.
var Modes = []string{"kpath", "kpath-tc", "kube-proxy-iptables", "kube-proxy-nftables", "cilium", "none"}

// Node is one lab node, as the lab records it.
type Node struct {
	Name        string `json:"name"`
	Netns       string `json:"netns"`
	PinDir      string `json:"pinDir"` // the node datapath's, under the bpffs
	IP          string `json:"ip"`
	PodCIDR     string `json:"podCIDR"`
	AgentSocket string `json:"agentSocket"`
	// HubbleSocket serves Hubble's Observer API (hubble --server unix://...).
	HubbleSocket string `json:"hubbleSocket"`
	// HubbleAddress is the same API over TCP, where hubble-relay dials it.
	HubbleAddress string `json:"hubbleAddress"`
	Cgroup        string `json:"cgroup"`
	// Zone is the node's topology.kubernetes.io/zone label.
	Zone string `json:"zone,omitempty"`
}

// Cluster is what every node's dataplane of one lab shares.
type Cluster struct {
	// Dir is the lab's directory: node n's files are under Dir/n.Name.
	Dir        string
	Kubeconfig string
	// Routing is the lab's pod routing (native or tunnel); ClusterCIDR
	// holds every pod CIDR.
	Routing, ClusterCIDR string
	// BinDir holds kpath, kpath-agent and kpath-cni; K8sBin kube-proxy;
	// CiliumBin cilium-agent, cilium-cni, cilium-dbg, the agent's BPF
	// sources and Cilium's CRDs (hack/cilium/build.sh).
	BinDir, K8sBin, CiliumBin string
	// HubbleTLSDir holds the Hubble mTLS files (hubble-ca.crt, and
	// NODE.crt/NODE.key per node): kpath's agents serve Hubble over TCP
	// with them. "": plaintext.
	HubbleTLSDir string
	// AgentArgs are extra kpath-agent flags.
	AgentArgs []string
	Log       func(format string, args ...any)
}

// Keeper starts a node's processes for a dataplane; the lab's supervisor
// is one.
type Keeper interface {
	// Keep starts the process mk makes and starts a new one each time it
	// exits, as a DaemonSet's pod restarts its container, until the lab
	// stops; the channel closes when the first one exits.
	Keep(what string, mk func() (*exec.Cmd, func(), error)) (<-chan struct{}, error)
	// Start starts cmd once; the channel closes when it has exited and
	// onExit ran.
	Start(cmd *exec.Cmd, onExit func()) (<-chan struct{}, error)
}

// CNI is how a node's runtime wires its pods: the plugin directory and the
// network configuration list it calls through libcni.
type CNI struct {
	BinDir string
	Conf   []byte
}

// Want is the set of objects a node's dataplane must hold to be ready.
type Want struct {
	// Services with endpoints the node must program (every one the
	// cluster has, the kubernetes service included), and the
	// EndpointSlices among them (for dataplanes that report them).
	Services, Slices int
	// Added services and slices since Since, for dataplanes that report
	// changes rather than what they hold (kube-proxy).
	Since Counters
	Added int
}

// Counters are a dataplane's cumulative counts of service and endpoint
// changes seen, and of its full resyncs and their seconds (kube-proxy's
// metrics; zero for the others, which report what they hold instead).
type Counters struct{ Services, Endpoints, FullSyncs, FullSyncSeconds float64 }

// Gauges are what a node's agent holds now, for E2: its Go heap in use,
// the addresses its ipcache maps to identities, the identities it knows
// (0 where not reported) and the service backends it programmed.
type Gauges struct {
	HeapBytes                     float64
	IPCache, Identities, Backends int
}

// PolicyView answers what a node's datapath decides now for a new
// connection.
type PolicyView interface {
	// AllowedIn tells whether a new TCP connection from peer to port on
	// the local endpoint local is let in.
	AllowedIn(local, peer netip.Addr, port uint16) (bool, error)
	Close() error
}

// ErrNotMeasured is a figure a dataplane does not report.
var ErrNotMeasured = errors.New("not reported by this dataplane")

// Dataplane is one service dataplane of a lab.
type Dataplane interface {
	// Mode is one of Modes.
	Mode() string
	// Setup prepares the cluster once, before any node starts.
	Setup(ctx context.Context, cfg *rest.Config) error
	// Start runs the dataplane's processes on n and returns once they
	// answer, with how n's runtime wires its pods.
	Start(ctx context.Context, n Node, k Keeper) (CNI, error)
	// Ready tells whether n's dataplane holds every object of w, and
	// what it shows otherwise.
	Ready(ctx context.Context, n Node, w Want) (bool, string)
	// Up tells whether n's agent answers and is ready, with its start ->
	// ready when it reports one (0 otherwise).
	Up(ctx context.Context, n Node) (bool, time.Duration)
	// Reset removes the state a restarted agent resumes from (pinned
	// maps, restored endpoints); the agent must not be running.
	Reset(n Node) error
	// Counters reads n's change counters (zero where not counted).
	Counters(ctx context.Context, n Node) (Counters, error)
	// Gauges reads n's agent's gauges.
	Gauges(ctx context.Context, n Node) (Gauges, error)
	// Drops are n's datapath drop counters by direction/reason.
	Drops(ctx context.Context, n Node) map[string]uint64
	// OpenPolicy reads n's policy decisions from its datapath's maps,
	// without work for the agent.
	OpenPolicy(ctx context.Context, n Node) (PolicyView, error)
	// Agent is n's service dataplane process, whose CPU and memory the
	// benchmarks report.
	Agent(n Node) Process
	// Logs are the log files of n's processes.
	Logs(n Node) []string
	// Health is n's agent's state, one line, for kpath lab status.
	Health(ctx context.Context, n Node) string
}

// New returns the dataplane of mode for cluster c.
func New(mode string, c Cluster) (Dataplane, error) {
	if c.Log == nil {
		c.Log = func(string, ...any) {}
	}
	k := kpath{c: c, mode: mode}
	switch mode {
	case "kpath", "kpath-tc", "none":
		return k, nil
	case "kube-proxy-iptables", "kube-proxy-nftables":
		return kubeProxy{kpath: k, proxyMode: strings.TrimPrefix(mode, "kube-proxy-")}, nil
	case "cilium":
		if c.Routing != "native" || c.CiliumBin == "" || c.Dir == "/run" || strings.HasPrefix(c.Dir, "/run/") {
			return nil, fmt.Errorf("services cilium: needs native routing (got %q), the Cilium binaries (make cilium-bins; got %q) and a lab directory outside /run (got %s)", c.Routing, c.CiliumBin, c.Dir)
		}
		return cilium{c: c}, nil
	}
	return nil, fmt.Errorf("service dataplane %q: want one of %v", mode, Modes)
}

// Process names a running process: its binary, and arguments its command
// line holds (a lab's processes are told apart by their paths).
type Process struct {
	Binary string
	Args   []string
}

// Pid is the process's, 0 when none runs (a wrapper such as nsenter with
// the same arguments is not it).
func (p Process) Pid() int {
	pids := procstat.Find(func(argv []string) bool {
		return filepath.Base(argv[0]) == p.Binary && !slices.ContainsFunc(p.Args, func(a string) bool { return !slices.Contains(argv, a) })
	})
	if len(pids) == 0 {
		return 0
	}
	return pids[0]
}

// nodeDir is node n's directory in the lab.
func (c Cluster) nodeDir(n Node) string { return filepath.Join(c.Dir, n.Name) }

func run(name string, args ...string) error {
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %v: %s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}
