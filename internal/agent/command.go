package agent

import (
	"fmt"
	"log/slog"
	"os"
	"runtime/debug"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// DefaultGOGC is the agent process's GC target unless GOGC is set. Its
// heap is nearly all long-lived (the cluster's pods, policies and
// services) and grows slowly, so collecting at 50% growth instead of Go's
// 100% keeps a third less heap for little CPU (E2, docs/benchmarks.md).
// Under a memory limit, GOMEMLIMIT is set to 90% of it (setMemoryLimit).
const DefaultGOGC = 50

// NewCommand returns the kpath-agent command: a configuration file, then
// flags over it.
func NewCommand() *cobra.Command {
	cfg := DefaultConfig()
	var (
		file     string
		logLevel string
	)
	cmd := &cobra.Command{
		Use:           "kpath-agent",
		Short:         "kpath node agent: keeps the eBPF datapath in sync with the Kubernetes API (replaces kube-proxy)",
		Args:          cobra.NoArgs,
		SilenceUsage:  true,
		SilenceErrors: true,
		RunE: func(cmd *cobra.Command, _ []string) error {
			final := DefaultConfig()
			if file != "" {
				if err := final.LoadFile(file); err != nil {
					return err
				}
			}
			// Flags given on the command line win over the file.
			cmd.Flags().Visit(func(f *pflag.Flag) { applyFlag(&final, &cfg, f.Name) })
			var level slog.Level
			if err := level.UnmarshalText([]byte(logLevel)); err != nil {
				return fmt.Errorf("log level %q: %w", logLevel, err)
			}
			log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
			if os.Getenv("GOGC") == "" {
				debug.SetGCPercent(DefaultGOGC)
			}
			setMemoryLimit(log)
			return Run(cmd.Context(), final, log)
		},
	}
	cmd.AddCommand(newInstallCNICommand(), newMountCgroupCommand(), newMountBPFFSCommand(), newCleanupCommand())
	f := cmd.Flags()
	f.StringVar(&file, "config", "", "YAML configuration file (flags override it)")
	f.StringVar(&logLevel, "log-level", "info", "debug, info, warn or error")
	f.StringVar(&cfg.Kubeconfig, "kubeconfig", cfg.Kubeconfig, "kubeconfig (default: in-cluster)")
	f.StringVar(&cfg.NodeName, "node-name", cfg.NodeName, "this node's name")
	f.StringVar(&cfg.BPFFS, "bpffs", cfg.BPFFS, "bpffs mount point")
	f.StringVar(&cfg.PinDir, "pin-dir", cfg.PinDir, "directory under the bpffs for kpath's maps and links")
	f.BoolVar(&cfg.SocketHook, "socket-hook", cfg.SocketHook, "translate services at connect() with cgroup hooks")
	f.BoolVar(&cfg.NetworkPolicy, "network-policy", cfg.NetworkPolicy, "enforce NetworkPolicy on this node's pods")
	f.BoolVar(&cfg.Flows, "flows", cfg.Flows, "report connections, translations and drops (kpath observe)")
	f.IntVar(&cfg.FlowRingSize, "flow-ring-size", cfg.FlowRingSize, "recent flows kept")
	f.StringVar(&cfg.HubbleSocket, "hubble-socket", cfg.HubbleSocket, `unix socket of Hubble's Observer API ("" disables)`)
	f.StringVar(&cfg.HubbleListenAddress, "hubble-listen-address", cfg.HubbleListenAddress, `TCP address of Hubble's Observer and Peer API for hubble-relay, mTLS (e.g. ":4244"; "" disables)`)
	hubbleTLS := &HubbleTLS{}
	f.StringVar(&hubbleTLS.CertFile, "hubble-tls-cert-file", "", "Hubble TCP listener: the server certificate (PEM), for NODE.CLUSTER.hubble-grpc.cilium.io")
	f.StringVar(&hubbleTLS.KeyFile, "hubble-tls-key-file", "", "Hubble TCP listener: the server key (PEM)")
	f.StringSliceVar(&hubbleTLS.ClientCAFiles, "hubble-tls-client-ca-files", nil, "Hubble TCP listener: CAs of the client certificates it accepts (hubble-relay's)")
	cfg.HubbleTLS = hubbleTLS
	f.BoolVar(&cfg.HubbleDisableTLS, "hubble-disable-tls", cfg.HubbleDisableTLS, "serve the Hubble TCP listener in plaintext (every pod's flows to whoever reaches it)")
	f.StringVar(&cfg.ClusterName, "cluster-name", cfg.ClusterName, "the cluster's name in Hubble's TLS server names")
	f.BoolVar(&cfg.KubeProxyReplacement, "kube-proxy-replacement", cfg.KubeProxyReplacement, "handle Services (off: kube-proxy does; kpath keeps pod networking)")
	f.StringVar(&cfg.CgroupRoot, "cgroup-root", cfg.CgroupRoot, `cgroup v2 directory for the socket hook ("auto")`)
	f.StringVar(&cfg.TCAttach, "tc-attach", cfg.TCAttach, "auto, tcx or legacy")
	f.StringSliceVar(&cfg.Devices, "device", cfg.Devices, "node uplink device serving NodePorts to outside traffic (repeatable)")
	f.StringVar(&cfg.Selection, "selection", cfg.Selection, "backend selection: random or maglev")
	f.Uint32Var(&cfg.MaglevTableSize, "maglev-table-size", cfg.MaglevTableSize, "Maglev table size (prime)")
	f.StringVar(&cfg.MetricsAddr, "metrics-addr", cfg.MetricsAddr, `address for /metrics, /healthz, /readyz ("" disables)`)
	f.StringVar(&cfg.APISocket, "api-socket", cfg.APISocket, "unix socket of the local API")
	f.StringVar(&cfg.CNIConfDir, "cni-conf-dir", cfg.CNIConfDir, `write the CNI network configuration here once ready ("": do not)`)
	f.StringVar(&cfg.PodCIDR, "pod-cidr", cfg.PodCIDR, "this node's pod CIDR for IPAM (default: Node.spec.podCIDR)")
	f.StringVar(&cfg.Routing, "routing", cfg.Routing, "routes to other nodes' pod CIDRs: native, direct or vxlan")
	f.StringVar(&cfg.ClusterCIDR, "cluster-cidr", cfg.ClusterCIDR, "CIDR of all pods; pod traffic leaving it is masqueraded on the devices")
	f.StringVar(&cfg.IPAMDir, "ipam-dir", cfg.IPAMDir, "directory of the node's address allocations")
	f.StringVar(&cfg.HealthCheckBind, "healthcheck-bind-address", cfg.HealthCheckBind, "address for health check node ports (default: all)")
	f.DurationVar(&cfg.ResyncPeriod.Duration, "resync-period", cfg.ResyncPeriod.Duration, "full resync and prune period")
	f.DurationVar(&cfg.CTGCInterval.Duration, "conntrack-gc-interval", cfg.CTGCInterval.Duration, "conntrack garbage collection period")
	f.StringVar(&cfg.ProxyName, "proxy-name", cfg.ProxyName, "service.kubernetes.io/service-proxy-name to handle")
	f.Uint32Var(&cfg.MapSizes.Frontends, "map-size-frontends", cfg.MapSizes.Frontends, "frontend map size")
	f.Uint32Var(&cfg.MapSizes.Backends, "map-size-backends", cfg.MapSizes.Backends, "backend map size")
	f.Uint32Var(&cfg.MapSizes.Slots, "map-size-slots", cfg.MapSizes.Slots, "backend slot map size")
	f.Uint32Var(&cfg.MapSizes.Conntrack, "map-size-conntrack", cfg.MapSizes.Conntrack, "conntrack map size")
	f.Uint32Var(&cfg.MapSizes.Affinity, "map-size-affinity", cfg.MapSizes.Affinity, "session affinity map size")
	f.Uint32Var(&cfg.MapSizes.IPCache, "map-size-ipcache", cfg.MapSizes.IPCache, "ipcache map size (pod and node addresses of the cluster)")
	f.Uint32Var(&cfg.MapSizes.PolicyEntries, "map-size-policy-entries", cfg.MapSizes.PolicyEntries, "policy entries map size (all policy sets)")
	return cmd
}

// applyFlag copies the field behind flag name from src to dst.
func applyFlag(dst, src *Config, name string) {
	switch name {
	case "kubeconfig":
		dst.Kubeconfig = src.Kubeconfig
	case "node-name":
		dst.NodeName = src.NodeName
	case "bpffs":
		dst.BPFFS = src.BPFFS
	case "pin-dir":
		dst.PinDir = src.PinDir
	case "socket-hook":
		dst.SocketHook = src.SocketHook
	case "network-policy":
		dst.NetworkPolicy = src.NetworkPolicy
	case "flows":
		dst.Flows = src.Flows
	case "flow-ring-size":
		dst.FlowRingSize = src.FlowRingSize
	case "hubble-socket":
		dst.HubbleSocket = src.HubbleSocket
	case "hubble-tls-cert-file", "hubble-tls-key-file", "hubble-tls-client-ca-files":
		if dst.HubbleTLS == nil {
			dst.HubbleTLS = &HubbleTLS{}
		}
		switch name {
		case "hubble-tls-cert-file":
			dst.HubbleTLS.CertFile = src.HubbleTLS.CertFile
		case "hubble-tls-key-file":
			dst.HubbleTLS.KeyFile = src.HubbleTLS.KeyFile
		default:
			dst.HubbleTLS.ClientCAFiles = src.HubbleTLS.ClientCAFiles
		}
	case "hubble-disable-tls":
		dst.HubbleDisableTLS = src.HubbleDisableTLS
	case "cluster-name":
		dst.ClusterName = src.ClusterName
	case "hubble-listen-address":
		dst.HubbleListenAddress = src.HubbleListenAddress
	case "map-size-ipcache":
		dst.MapSizes.IPCache = src.MapSizes.IPCache
	case "map-size-policy-entries":
		dst.MapSizes.PolicyEntries = src.MapSizes.PolicyEntries
	case "kube-proxy-replacement":
		dst.KubeProxyReplacement = src.KubeProxyReplacement
	case "cgroup-root":
		dst.CgroupRoot = src.CgroupRoot
	case "tc-attach":
		dst.TCAttach = src.TCAttach
	case "device":
		dst.Devices = src.Devices
	case "selection":
		dst.Selection = src.Selection
	case "maglev-table-size":
		dst.MaglevTableSize = src.MaglevTableSize
	case "metrics-addr":
		dst.MetricsAddr = src.MetricsAddr
	case "api-socket":
		dst.APISocket = src.APISocket
	case "cni-conf-dir":
		dst.CNIConfDir = src.CNIConfDir
	case "pod-cidr":
		dst.PodCIDR = src.PodCIDR
	case "routing":
		dst.Routing = src.Routing
	case "cluster-cidr":
		dst.ClusterCIDR = src.ClusterCIDR
	case "ipam-dir":
		dst.IPAMDir = src.IPAMDir
	case "healthcheck-bind-address":
		dst.HealthCheckBind = src.HealthCheckBind
	case "resync-period":
		dst.ResyncPeriod = src.ResyncPeriod
	case "conntrack-gc-interval":
		dst.CTGCInterval = src.CTGCInterval
	case "proxy-name":
		dst.ProxyName = src.ProxyName
	case "map-size-frontends":
		dst.MapSizes.Frontends = src.MapSizes.Frontends
	case "map-size-backends":
		dst.MapSizes.Backends = src.MapSizes.Backends
	case "map-size-slots":
		dst.MapSizes.Slots = src.MapSizes.Slots
	case "map-size-conntrack":
		dst.MapSizes.Conntrack = src.MapSizes.Conntrack
	case "map-size-affinity":
		dst.MapSizes.Affinity = src.MapSizes.Affinity
	}
}
