// Package agent is kpath-agent: it watches the API server and keeps the
// node's eBPF datapath in sync, serves health, readiness and Prometheus
// metrics, and a local API on a unix socket for the kpath CLI.
package agent

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	"github.com/kpath/kpath/internal/datapath"
	"github.com/kpath/kpath/internal/hubble"
	"github.com/kpath/kpath/internal/model"
	"github.com/kpath/kpath/internal/routing"
)

// Config is the agent's configuration, from a YAML file and flags.
type Config struct {
	// Kubeconfig path; empty means in-cluster configuration.
	Kubeconfig string `json:"kubeconfig,omitempty"`
	// NodeName is this node's Node object name (default: hostname).
	NodeName string `json:"nodeName,omitempty"`
	// BPFFS and PinDir locate the pinned datapath.
	BPFFS  string `json:"bpffs,omitempty"`
	PinDir string `json:"pinDir,omitempty"`
	// KubeProxyReplacement: kpath handles Services. Off, another proxy
	// (kube-proxy) does; kpath keeps pod networking and leaves every
	// service address untouched.
	KubeProxyReplacement bool `json:"kubeProxyReplacement"`
	// SocketHook translates Services at connect() for every socket under
	// CgroupRoot. Off, pods' traffic is translated per packet on their
	// veths; the node's own sockets (host network), which have no veth,
	// still get the hook, limited to the node's network namespace.
	SocketHook bool `json:"socketHook"`
	// NetworkPolicy enforces Kubernetes NetworkPolicy on this node's pods.
	NetworkPolicy bool `json:"networkPolicy"`
	// Flows reports connections, translations and drops (flow events).
	Flows bool `json:"flows"`
	// FlowRingSize is how many recent flows the agent keeps.
	FlowRingSize int `json:"flowRingSize,omitempty"`
	// DropEventsPerSec limits drop events per CPU.
	DropEventsPerSec uint32 `json:"dropEventsPerSecond,omitempty"`
	// HubbleSocket serves Hubble's Observer API (the hubble CLI:
	// --server unix://PATH), root only; "" disables.
	HubbleSocket string `json:"hubbleSocket,omitempty"`
	// HubbleListenAddress serves the same API over TCP (host:port, as
	// Cilium's hubble-listen-address; ":4244" is Hubble's port) for
	// hubble-relay, which finds every node's through the Peer service.
	// It speaks mTLS (HubbleTLS) unless HubbleDisableTLS. "": off.
	HubbleListenAddress string `json:"hubbleListenAddress,omitempty"`
	// HubbleTLS secures HubbleListenAddress as Cilium's Hubble does: the
	// server's certificate and key, and the CAs whose client certificates
	// (hubble-relay's) it accepts. The certificate holds the node's name
	// NODE.CLUSTER.hubble-grpc.cilium.io (ClusterName), which relay checks.
	HubbleTLS *HubbleTLS `json:"hubbleTLS,omitempty"`
	// HubbleDisableTLS serves HubbleListenAddress in plaintext: every
	// pod's flows to whoever reaches the address. Only where nothing but
	// the cluster does.
	HubbleDisableTLS bool `json:"hubbleDisableTLS,omitempty"`
	// ClusterName names the cluster in Hubble's TLS server names
	// (Cilium's cluster-name; "default").
	ClusterName string `json:"clusterName,omitempty"`
	// FlowExport writes flows to a file as Hubble's exporter does (JSON
	// lines, size-based rotation, allow and deny filters); nil: off.
	FlowExport *hubble.ExportOptions `json:"flowExport,omitempty"`
	// CgroupRoot is the cgroup v2 directory for the socket hook ("auto":
	// where the unified hierarchy is mounted).
	CgroupRoot string `json:"cgroupRoot,omitempty"`
	// Devices are the node's uplinks: NodePorts, external and load-balancer
	// IPs are served there to traffic from outside the node.
	Devices []string `json:"devices,omitempty"`
	// TCAttach is auto, tcx or legacy.
	TCAttach string `json:"tcAttach,omitempty"`
	// Selection is the backend selection: random or maglev.
	Selection       string            `json:"selection,omitempty"`
	MaglevTableSize uint32            `json:"maglevTableSize,omitempty"`
	MapSizes        datapath.MapSizes `json:"mapSizes"`
	// MetricsAddr serves /metrics, /healthz and /readyz ("" disables).
	MetricsAddr string `json:"metricsAddr,omitempty"`
	// Routing is native, direct or vxlan (see internal/routing).
	Routing string `json:"routing,omitempty"`
	// ClusterCIDR holds every pod address; pod traffic to anywhere else is
	// masqueraded to the node's address on the devices. Empty: no masquerade.
	ClusterCIDR string `json:"clusterCIDR,omitempty"`
	// PodCIDR is this node's pod CIDR for IPAM; empty: Node.spec.podCIDR.
	PodCIDR string `json:"podCIDR,omitempty"`
	// IPAMDir keeps the node's address allocations.
	IPAMDir string `json:"ipamDir,omitempty"`
	// HealthCheckBind is the address health check node ports listen on
	// ("" or 0.0.0.0: every address of the node).
	HealthCheckBind string `json:"healthCheckBindAddress,omitempty"`
	// APISocket is the unix socket of the local API (root only).
	APISocket string `json:"apiSocket,omitempty"`
	// CNIConfDir is where the agent writes kpath's network configuration
	// (CNIConfName) once it is ready to serve pods, naming APISocket as
	// the plugin's way to it: the node turns Ready only then. "": the
	// configuration is someone else's to write (the lab's own runtime).
	CNIConfDir string `json:"cniConfDir,omitempty"`
	// ResyncPeriod is how often everything is recomputed and orphans pruned.
	ResyncPeriod metav1.Duration `json:"resyncPeriod,omitempty"`
	// CTGCInterval is how often expired connections are collected.
	CTGCInterval metav1.Duration `json:"conntrackGCInterval,omitempty"`
	// ProxyName: handle services whose service.kubernetes.io/service-proxy-name
	// label equals it (empty: only services without the label).
	ProxyName string `json:"proxyName,omitempty"`
}

// HubbleTLS is the Hubble TCP listener's mTLS: PEM files.
type HubbleTLS struct {
	CertFile      string   `json:"certFile"`
	KeyFile       string   `json:"keyFile"`
	ClientCAFiles []string `json:"clientCAFiles"`
}

// DefaultConfig is the production configuration.
func DefaultConfig() Config {
	dp := datapath.DefaultConfig()
	host, _ := os.Hostname()
	return Config{
		NodeName:             host,
		BPFFS:                dp.BPFFS,
		PinDir:               dp.PinDir,
		SocketHook:           true,
		NetworkPolicy:        true,
		Flows:                true,
		FlowRingSize:         4095,
		DropEventsPerSec:     dp.DropEventsPerSec,
		HubbleSocket:         "/run/kpath/hubble.sock",
		ClusterName:          "default",
		KubeProxyReplacement: true,
		CgroupRoot:           "auto",
		TCAttach:             string(dp.TCAttach),
		Selection:            "random",
		MaglevTableSize:      dp.MaglevTableSize,
		MapSizes:             dp.Sizes,
		MetricsAddr:          ":9964",
		APISocket:            "/run/kpath/agent.sock",
		IPAMDir:              "/var/lib/kpath/ipam",
		Routing:              "native",
		ResyncPeriod:         metav1.Duration{Duration: 5 * time.Minute},
		CTGCInterval:         metav1.Duration{Duration: 30 * time.Second},
	}
}

// LoadFile overlays a YAML (or JSON) configuration file onto c; fields the
// file does not mention keep their values. Unknown fields are errors.
func (c *Config) LoadFile(path string) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("read config file: %w", err)
	}
	if err := yaml.UnmarshalStrict(data, c); err != nil {
		return fmt.Errorf("config file %s: %w", path, err)
	}
	return nil
}

// Datapath is the datapath configuration c implies.
func (c Config) Datapath() datapath.Config {
	d := datapath.DefaultConfig()
	d.BPFFS, d.PinDir = c.BPFFS, c.PinDir
	d.Sizes = c.MapSizes
	d.MaglevTableSize = c.MaglevTableSize
	d.TCAttach = datapath.AttachMode(c.TCAttach)
	d.FlowEvents = c.Flows
	d.DropEventsPerSec = c.DropEventsPerSec
	return d
}

// Validate reports every problem with c at once, before anything is
// loaded or attached.
func (c Config) Validate() error {
	var errs []error
	if c.NodeName == "" {
		errs = append(errs, errors.New("nodeName is empty (and the hostname could not be read)"))
	}
	if c.Kubeconfig != "" {
		if _, err := os.Stat(c.Kubeconfig); err != nil {
			errs = append(errs, fmt.Errorf("kubeconfig: %w", err))
		}
	}
	if _, err := model.ParseSelection(c.Selection); err != nil {
		errs = append(errs, err)
	}
	if err := c.Datapath().Validate(); err != nil {
		errs = append(errs, err)
	}
	if c.KubeProxyReplacement && c.CgroupRoot != "auto" && !filepath.IsAbs(c.CgroupRoot) {
		errs = append(errs, fmt.Errorf("cgroupRoot %q: want an absolute path or auto", c.CgroupRoot))
	}
	for _, d := range c.Devices {
		if d == "" || len(d) > 15 {
			errs = append(errs, fmt.Errorf("device %q: not an interface name", d))
		}
	}
	if c.MetricsAddr != "" {
		if _, _, err := net.SplitHostPort(c.MetricsAddr); err != nil {
			errs = append(errs, fmt.Errorf("metricsAddr %q: %w", c.MetricsAddr, err))
		}
	}
	if c.HubbleListenAddress != "" {
		if _, port, err := net.SplitHostPort(c.HubbleListenAddress); err != nil {
			errs = append(errs, fmt.Errorf("hubbleListenAddress %q: %w", c.HubbleListenAddress, err))
		} else if p, err := strconv.ParseUint(port, 10, 16); err != nil || p == 0 {
			errs = append(errs, fmt.Errorf("hubbleListenAddress %q: want a port from 1 to 65535 (Hubble's is 4244); relay reaches every node on it", c.HubbleListenAddress))
		}
		if !c.Flows {
			errs = append(errs, errors.New("hubbleListenAddress is set but flows are off: set flows: true"))
		}
		switch t := c.HubbleTLS; {
		case t == nil && !c.HubbleDisableTLS:
			errs = append(errs, fmt.Errorf("hubbleListenAddress %q serves every pod's flows: give hubbleTLS (certFile, keyFile, clientCAFiles: mTLS, as Cilium's Hubble), or set hubbleDisableTLS: true to serve them in plaintext", c.HubbleListenAddress))
		case t != nil && c.HubbleDisableTLS:
			errs = append(errs, errors.New("hubbleTLS and hubbleDisableTLS are both set: choose one"))
		case t != nil && (t.CertFile == "" || t.KeyFile == "" || len(t.ClientCAFiles) == 0):
			errs = append(errs, errors.New("hubbleTLS: want certFile, keyFile and clientCAFiles (the CAs of hubble-relay's client certificates)"))
		}
	}
	if _, err := routing.ParseMode(c.Routing); err != nil {
		errs = append(errs, err)
	}
	if c.Routing == string(routing.VXLAN) && len(c.Devices) == 0 {
		errs = append(errs, errors.New("routing vxlan needs a device (the underlay)"))
	}
	if c.ClusterCIDR != "" {
		if p, err := netip.ParsePrefix(c.ClusterCIDR); err != nil || !p.Addr().Is4() {
			errs = append(errs, fmt.Errorf("clusterCIDR %q: want an IPv4 CIDR", c.ClusterCIDR))
		}
	}
	if c.PodCIDR != "" {
		if p, err := netip.ParsePrefix(c.PodCIDR); err != nil || !p.Addr().Is4() {
			errs = append(errs, fmt.Errorf("podCIDR %q: want an IPv4 CIDR", c.PodCIDR))
		}
	}
	if c.IPAMDir == "" || !filepath.IsAbs(c.IPAMDir) {
		errs = append(errs, fmt.Errorf("ipamDir %q: want an absolute path", c.IPAMDir))
	}
	if c.APISocket == "" || !filepath.IsAbs(c.APISocket) {
		errs = append(errs, fmt.Errorf("apiSocket %q: want an absolute path", c.APISocket))
	}
	if c.CNIConfDir != "" && !filepath.IsAbs(c.CNIConfDir) {
		errs = append(errs, fmt.Errorf("cniConfDir %q: want an absolute path", c.CNIConfDir))
	}
	if c.HubbleSocket != "" && !filepath.IsAbs(c.HubbleSocket) {
		errs = append(errs, fmt.Errorf("hubbleSocket %q: want an absolute path", c.HubbleSocket))
	}
	if c.FlowExport != nil {
		if err := c.FlowExport.Validate(); err != nil {
			errs = append(errs, err)
		}
	}
	if c.FlowRingSize < 1 || c.FlowRingSize > 1<<20 {
		errs = append(errs, fmt.Errorf("flowRingSize %d: want 1 to 1048576", c.FlowRingSize))
	}
	if c.ResyncPeriod.Duration < time.Second {
		errs = append(errs, fmt.Errorf("resyncPeriod %s: at least 1s", c.ResyncPeriod.Duration))
	}
	if c.CTGCInterval.Duration < time.Second {
		errs = append(errs, fmt.Errorf("conntrackGCInterval %s: at least 1s", c.CTGCInterval.Duration))
	}
	return errors.Join(errs...)
}
