// Package cniplugin is kpath-cni, the CNI plugin (spec 1.1: ADD, DEL,
// CHECK, STATUS, GC, VERSION). It wires a pod with a veth pair whose host
// side is named from the container ID, the pod's address from the agent's
// IPAM as a /32 with a default route through a link-local gateway, static
// neighbour entries on both sides (no ARP, no address on the host side),
// and a /32 route to the pod on the host; the agent attaches the pod's
// programs to the host side.
package cniplugin

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/netip"
	"path/filepath"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	types100 "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/containernetworking/plugins/pkg/utils/sysctl"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/kpath/kpath/internal/cniapi"
)

// PluginType is the "type" of kpath's network configuration.
const PluginType = "kpath"

// DefaultAgentSocket is where the agent listens.
const DefaultAgentSocket = "/run/kpath/agent.sock"

// NetConf is kpath's network configuration.
type NetConf struct {
	types.NetConf
	// AgentSocket is the agent's API socket.
	AgentSocket string `json:"agentSocket,omitempty"`
	// MTU overrides the MTU the agent derives from the uplink.
	MTU int `json:"mtu,omitempty"`
}

// Supported lists the CNI versions kpath-cni speaks.
var Supported = version.PluginSupports("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")

// ConfVersion is the CNI version of the network configuration kpath
// installs on a node: the newest every runtime kpath meets reads results of
// (containerd 1.6's libcni refuses 1.1.0 results, and a pod then never gets
// its network). The plugin speaks every version of Supported.
const ConfVersion = "1.0.0"

func invalidConfig(format string, a ...any) error {
	return types.NewError(types.ErrInvalidNetworkConfig, "invalid kpath network configuration", fmt.Sprintf(format, a...))
}

// parseConf validates the network configuration on stdin.
func parseConf(data []byte) (*NetConf, error) {
	conf := &NetConf{}
	if err := json.Unmarshal(data, conf); err != nil {
		return nil, types.NewError(types.ErrDecodingFailure, "cannot decode network configuration", err.Error())
	}
	if conf.Type != PluginType {
		return nil, invalidConfig("type is %q, want %q", conf.Type, PluginType)
	}
	if conf.CNIVersion == "" {
		return nil, invalidConfig("cniVersion is missing")
	}
	if conf.AgentSocket == "" {
		conf.AgentSocket = DefaultAgentSocket
	}
	if !filepath.IsAbs(conf.AgentSocket) {
		return nil, invalidConfig("agentSocket %q must be an absolute path", conf.AgentSocket)
	}
	if conf.MTU != 0 && (conf.MTU < 576 || conf.MTU > 65535) {
		return nil, invalidConfig("mtu %d is outside 576..65535", conf.MTU)
	}
	return conf, nil
}

// HostIfName is the host-side veth name for a container's interface:
// "kp" and 11 hex digits of a hash, deterministic so DEL finds it without
// state and short enough for IFNAMSIZ.
func HostIfName(containerID, ifName string) string {
	h := sha256.Sum256([]byte(containerID + "/" + ifName))
	return "kp" + hex.EncodeToString(h[:])[:11]
}

func agentError(err error) error {
	if errors.Is(err, cniapi.ErrUnavailable) {
		return types.NewError(types.ErrTryAgainLater, "kpath-agent is not ready: try again later", err.Error())
	}
	return types.NewError(types.ErrInternal, "kpath-agent refused the request", err.Error())
}

// Main runs the plugin.
func Main() {
	skel.PluginMainFuncs(skel.CNIFuncs{Add: cmdAdd, Del: cmdDel, Check: cmdCheck, Status: cmdStatus, GC: cmdGC},
		Supported, "kpath-cni: kpath's pod network plugin")
}

var gateway = netip.MustParseAddr("169.254.1.1")

// k8sArgs are the CNI_ARGS a Kubernetes runtime passes (others, such as
// K8S_POD_UID, are ignored).
type k8sArgs struct {
	types.CommonArgs
	K8S_POD_NAMESPACE types.UnmarshallableString // spelled as the runtime does
	K8S_POD_NAME      types.UnmarshallableString
}

func cmdAdd(args *skel.CmdArgs) error {
	conf, err := parseConf(args.StdinData)
	if err != nil {
		return err
	}
	var ka k8sArgs
	ka.IgnoreUnknown = true
	if err := types.LoadArgs(args.Args, &ka); err != nil {
		return types.NewError(types.ErrInvalidEnvironmentVariables, "cannot parse CNI_ARGS", err.Error())
	}
	podNS, podName := string(ka.K8S_POD_NAMESPACE), string(ka.K8S_POD_NAME)
	client := cniapi.NewClient(conf.AgentSocket)
	hostIf := HostIfName(args.ContainerID, args.IfName)
	var alloc cniapi.AllocateResponse
	if err := client.Do("POST", "/v1/cni/allocate", cniapi.AllocateRequest{
		ContainerID: args.ContainerID, IfName: args.IfName, Netns: args.Netns, HostIf: hostIf,
		PodNamespace: podNS, PodName: podName,
	}, &alloc); err != nil {
		return agentError(err)
	}
	mtu := alloc.MTU
	if conf.MTU != 0 {
		mtu = conf.MTU
	}
	netns, err := ns.GetNS(args.Netns)
	if err != nil {
		return types.NewError(types.ErrInvalidNetworkConfig, "cannot open the container's network namespace", err.Error())
	}
	defer netns.Close()

	// A repeated ADD replaces what an earlier one left.
	if l, err := netlink.LinkByName(hostIf); err == nil {
		_ = netlink.LinkDel(l)
	}
	_ = netns.Do(func(ns.NetNS) error {
		if l, err := netlink.LinkByName(args.IfName); err == nil {
			_ = netlink.LinkDel(l)
		}
		return nil
	})
	// One request creates the pair with its peer already in the pod's
	// namespace (no create-then-move, no temporary names).
	veth := &netlink.Veth{
		LinkAttrs: netlink.LinkAttrs{Name: hostIf, MTU: mtu},
		PeerName:  args.IfName, PeerMTU: uint32(mtu), PeerNamespace: netlink.NsFd(int(netns.Fd())),
	}
	if err := netlink.LinkAdd(veth); err != nil {
		return types.NewError(types.ErrInternal, "cannot create the pod's veth pair", err.Error())
	}
	host, err := netlink.LinkByName(hostIf)
	if err != nil {
		return types.NewError(types.ErrInternal, "host-side veth vanished", err.Error())
	}
	if err := netlink.LinkSetUp(host); err != nil {
		return types.NewError(types.ErrInternal, "set the host-side veth up", err.Error())
	}
	hostMAC := host.Attrs().HardwareAddr
	var contMAC net.HardwareAddr
	err = netns.Do(func(ns.NetNS) error {
		link, err := netlink.LinkByName(args.IfName)
		if err != nil {
			return err
		}
		contMAC = link.Attrs().HardwareAddr
		// kpath's datapath is IPv4 only: the pod's programs drop anything
		// else it sends, so it sends none (no router solicitations and
		// duplicate-address probes at link-up, each a drop to report).
		if _, err := sysctl.Sysctl(fmt.Sprintf("net/ipv6/conf/%s/disable_ipv6", args.IfName), "1"); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("disable IPv6 on %s: %w", args.IfName, err)
		}
		if err := netlink.LinkSetUp(link); err != nil {
			return fmt.Errorf("set %s up: %w", args.IfName, err)
		}
		addr := &netlink.Addr{IPNet: &net.IPNet{IP: alloc.Addr.AsSlice(), Mask: net.CIDRMask(32, 32)}}
		if err := netlink.AddrAdd(link, addr); err != nil {
			return fmt.Errorf("add %s to %s: %w", alloc.Addr, args.IfName, err)
		}
		gw := net.IP(gateway.AsSlice())
		// The gateway is the host-side veth: a permanent neighbour entry
		// instead of ARP for an address nobody holds.
		if err := netlink.NeighSet(&netlink.Neigh{LinkIndex: link.Attrs().Index, Family: unix.AF_INET,
			State: netlink.NUD_PERMANENT, IP: gw, HardwareAddr: hostMAC}); err != nil {
			return fmt.Errorf("gateway neighbour: %w", err)
		}
		if err := netlink.RouteAdd(&netlink.Route{LinkIndex: link.Attrs().Index, Scope: netlink.SCOPE_LINK,
			Dst: &net.IPNet{IP: gw, Mask: net.CIDRMask(32, 32)}}); err != nil {
			return fmt.Errorf("gateway route: %w", err)
		}
		if err := netlink.RouteAdd(&netlink.Route{LinkIndex: link.Attrs().Index, Gw: gw}); err != nil {
			return fmt.Errorf("default route: %w", err)
		}
		return nil
	})
	if err != nil {
		return types.NewError(types.ErrInternal, "cannot set up the pod's interface", err.Error())
	}
	podIP := net.IP(alloc.Addr.AsSlice())
	if err := netlink.NeighSet(&netlink.Neigh{LinkIndex: host.Attrs().Index, Family: unix.AF_INET,
		State: netlink.NUD_PERMANENT, IP: podIP, HardwareAddr: contMAC}); err != nil {
		return types.NewError(types.ErrInternal, "pod neighbour entry", err.Error())
	}
	if err := netlink.RouteReplace(&netlink.Route{LinkIndex: host.Attrs().Index, Scope: netlink.SCOPE_LINK,
		Dst: &net.IPNet{IP: podIP, Mask: net.CIDRMask(32, 32)}}); err != nil {
		return types.NewError(types.ErrInternal, "route to the pod", err.Error())
	}
	if err := client.Do("POST", "/v1/cni/attach", cniapi.AttachRequest{
		ContainerID: args.ContainerID, IfName: args.IfName, HostIf: hostIf,
		Addr: alloc.Addr, PodNamespace: podNS, PodName: podName,
	}, nil); err != nil {
		return agentError(err)
	}

	result := &types100.Result{
		CNIVersion: types100.ImplementedSpecVersion,
		Interfaces: []*types100.Interface{
			{Name: hostIf, Mac: hostMAC.String()},
			{Name: args.IfName, Mac: contMAC.String(), Sandbox: args.Netns},
		},
		IPs: []*types100.IPConfig{{
			Interface: types100.Int(1),
			Address:   net.IPNet{IP: podIP, Mask: net.CIDRMask(32, 32)},
			Gateway:   net.IP(gateway.AsSlice()),
		}},
		Routes: []*types.Route{{Dst: net.IPNet{IP: net.IPv4zero, Mask: net.CIDRMask(0, 32)}, GW: net.IP(gateway.AsSlice())}},
	}
	return types.PrintResult(result, conf.CNIVersion)
}

func cmdDel(args *skel.CmdArgs) error {
	conf, err := parseConf(args.StdinData)
	if err != nil {
		return err
	}
	client := cniapi.NewClient(conf.AgentSocket)
	if err := client.Do("POST", "/v1/cni/release", cniapi.ReleaseRequest{ContainerID: args.ContainerID, IfName: args.IfName}, nil); err != nil {
		return agentError(err)
	}
	// Deleting the host side removes the pair; the namespace may be gone.
	if l, err := netlink.LinkByName(HostIfName(args.ContainerID, args.IfName)); err == nil {
		if err := netlink.LinkDel(l); err != nil {
			return types.NewError(types.ErrInternal, "delete host-side veth", err.Error())
		}
	}
	return nil
}

func cmdCheck(args *skel.CmdArgs) error {
	conf, err := parseConf(args.StdinData)
	if err != nil {
		return err
	}
	hostIf := HostIfName(args.ContainerID, args.IfName)
	var st cniapi.CheckResponse
	if err := cniapi.NewClient(conf.AgentSocket).Do("POST", "/v1/cni/check",
		cniapi.CheckRequest{ContainerID: args.ContainerID, IfName: args.IfName, HostIf: hostIf}, &st); err != nil {
		return agentError(err)
	}
	if !st.Addr.IsValid() {
		return fmt.Errorf("kpath-agent holds no address for container %s interface %s", args.ContainerID, args.IfName)
	}
	if !st.Attached {
		return fmt.Errorf("kpath programs are not attached to %s", hostIf)
	}
	if !st.Bound {
		return fmt.Errorf("address %s is not bound to %s: the pod's packets are dropped as invalid sources (ADD again, or restart kpath-agent, which binds every pod it has)", st.Addr, hostIf)
	}
	if _, err := netlink.LinkByName(hostIf); err != nil {
		return fmt.Errorf("host-side veth %s: %w", hostIf, err)
	}
	netns, err := ns.GetNS(args.Netns)
	if err != nil {
		return fmt.Errorf("container network namespace: %w", err)
	}
	defer netns.Close()
	return netns.Do(func(ns.NetNS) error {
		link, err := netlink.LinkByName(args.IfName)
		if err != nil {
			return fmt.Errorf("container interface %s: %w", args.IfName, err)
		}
		addrs, err := netlink.AddrList(link, unix.AF_INET)
		if err != nil {
			return err
		}
		for _, a := range addrs {
			if a.IP.Equal(st.Addr.AsSlice()) {
				return nil
			}
		}
		return fmt.Errorf("container interface %s does not hold %s", args.IfName, st.Addr)
	})
}

func cmdStatus(args *skel.CmdArgs) error {
	conf, err := parseConf(args.StdinData)
	if err != nil {
		return err
	}
	if err := cniapi.NewClient(conf.AgentSocket).Do("GET", "/v1/cni/status", nil, nil); err != nil {
		return types.NewError(types.ErrPluginNotAvailable, "kpath-agent is not ready", err.Error())
	}
	return nil
}

func cmdGC(args *skel.CmdArgs) error {
	conf, err := parseConf(args.StdinData)
	if err != nil {
		return err
	}
	var raw struct {
		Valid []struct {
			ContainerID string `json:"containerID"`
			IfName      string `json:"ifname"`
		} `json:"cni.dev/valid-attachments"`
	}
	if err := json.Unmarshal(args.StdinData, &raw); err != nil {
		return types.NewError(types.ErrDecodingFailure, "cannot decode GC attachments", err.Error())
	}
	req := cniapi.GCRequest{Valid: []cniapi.Attachment{}}
	for _, v := range raw.Valid {
		req.Valid = append(req.Valid, cniapi.Attachment{ContainerID: v.ContainerID, IfName: v.IfName})
	}
	var resp cniapi.GCResponse
	if err := cniapi.NewClient(conf.AgentSocket).Do("POST", "/v1/cni/gc", req, &resp); err != nil {
		return agentError(err)
	}
	// Host-side veths of released attachments whose DEL never came.
	valid := map[string]bool{}
	for _, v := range req.Valid {
		valid[HostIfName(v.ContainerID, v.IfName)] = true
	}
	links, err := netlink.LinkList()
	if err != nil {
		return nil
	}
	for _, l := range links {
		name := l.Attrs().Name
		if _, ok := l.(*netlink.Veth); ok && len(name) == 13 && name[:2] == "kp" && !valid[name] {
			_ = netlink.LinkDel(l)
		}
	}
	return nil
}
