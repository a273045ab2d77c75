// Package routing makes other nodes' pod CIDRs reachable from this node:
//
//   - native: the network routes pod CIDRs (as Azure does for overlay pod
//     CIDRs); nothing is added on the node;
//   - direct: a route to each remote node's pod CIDR via that node's
//     address, for nodes that share a layer-2 segment;
//   - vxlan: a VXLAN device; each remote pod CIDR is routed through it to
//     the remote node's tunnel endpoint, with permanent neighbour and FDB
//     entries, so nothing is learnt by flooding.
//
// Routes kpath adds carry their own protocol number, so after a restart
// the ones whose node has gone are found and removed.
package routing

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/kpath/kpath/internal/model"
)

// Mode is a routing mode.
type Mode string

// Routing modes.
const (
	Native Mode = "native"
	Direct Mode = "direct"
	VXLAN  Mode = "vxlan"
)

// ParseMode accepts native, direct or vxlan.
func ParseMode(s string) (Mode, error) {
	switch m := Mode(s); m {
	case Native, Direct, VXLAN:
		return m, nil
	}
	return "", fmt.Errorf("routing mode %q: want native, direct or vxlan", s)
}

// RouteProtocol marks the routes kpath owns (see /etc/iproute2/rt_protos).
const RouteProtocol = netlink.RouteProtocol(0xb7)

// VXLAN parameters: the Linux default port and the overhead to subtract
// from the uplink MTU (outer IPv4 20 + UDP 8 + VXLAN 8 + inner Ethernet 14).
const (
	VXLANDevice   = "kpath_vxlan"
	VXLANPort     = 8472
	VXLANID       = 1
	VXLANOverhead = 50
)

// Config configures a Router.
type Config struct {
	Mode Mode
	// LocalNode is this node's name; its own entry is skipped.
	LocalNode string
	// Device is the uplink; the VXLAN device sends through it.
	Device string
}

// Router keeps the node's routes to other nodes' pod CIDRs.
type Router struct {
	cfg Config
}

// New returns a router; nothing changes until Sync.
func New(cfg Config) *Router { return &Router{cfg: cfg} }

// remote is what a node contributes: its pod CIDR and address.
type remote struct {
	cidr netip.Prefix
	addr netip.Addr
}

func remotes(local string, nodes []*model.Node) []remote {
	var out []remote
	for _, n := range nodes {
		if n.Name == local || !n.PodCIDR.IsValid() || len(n.Addrs) == 0 {
			continue
		}
		out = append(out, remote{n.PodCIDR.Masked(), n.Addrs[0]})
	}
	slices.SortFunc(out, func(a, b remote) int { return a.cidr.Addr().Compare(b.cidr.Addr()) })
	return out
}

// VTEPMAC derives a node's VXLAN device MAC from its pod CIDR, so nodes
// agree on each other's MACs without exchanging them.
func VTEPMAC(cidr netip.Prefix) net.HardwareAddr {
	a := cidr.Masked().Addr().As4()
	return net.HardwareAddr{0x0e, 0xb7, a[0], a[1], a[2], a[3]}
}

// vtepAddr is the address of a node's VXLAN device: its pod CIDR's
// network address, which IPAM never hands to a pod.
func vtepAddr(cidr netip.Prefix) net.IP { return net.IP(cidr.Masked().Addr().AsSlice()) }

// Remove deletes every route kpath made (RouteProtocol) and its VXLAN
// device: what kpath leaves when it is uninstalled.
func Remove() error { return (&Router{}).prune(nil, nil) }

// Sync makes the routes match the nodes. localCIDR is this node's pod CIDR
// (needed for the VXLAN device's address); nodes lists every node.
func (r *Router) Sync(localCIDR netip.Prefix, nodes []*model.Node) error {
	if r.cfg.Mode == Native || r.cfg.Mode == "" {
		return r.prune(nil, nil)
	}
	want := remotes(r.cfg.LocalNode, nodes)
	var (
		link netlink.Link
		err  error
	)
	if r.cfg.Mode == VXLAN {
		if link, err = r.ensureVXLAN(localCIDR); err != nil {
			return err
		}
	}
	var errs []error
	keep := map[netip.Prefix]bool{}
	for _, rm := range want {
		keep[rm.cidr] = true
		dst := &net.IPNet{IP: net.IP(rm.cidr.Addr().AsSlice()), Mask: net.CIDRMask(rm.cidr.Bits(), 32)}
		route := &netlink.Route{Dst: dst, Protocol: RouteProtocol}
		switch r.cfg.Mode {
		case Direct:
			route.Gw = net.IP(rm.addr.AsSlice())
		case VXLAN:
			gw := vtepAddr(rm.cidr)
			mac := VTEPMAC(rm.cidr)
			idx := link.Attrs().Index
			if err := netlink.NeighSet(&netlink.Neigh{LinkIndex: idx, Family: unix.AF_INET, State: netlink.NUD_PERMANENT,
				IP: gw, HardwareAddr: mac}); err != nil {
				errs = append(errs, fmt.Errorf("vxlan neighbour for %s: %w", rm.cidr, err))
				continue
			}
			if err := netlink.NeighSet(&netlink.Neigh{LinkIndex: idx, Family: unix.AF_BRIDGE, Flags: netlink.NTF_SELF,
				State: netlink.NUD_PERMANENT, IP: net.IP(rm.addr.AsSlice()), HardwareAddr: mac}); err != nil {
				errs = append(errs, fmt.Errorf("vxlan fdb for %s: %w", rm.cidr, err))
				continue
			}
			route.LinkIndex, route.Gw, route.Flags = idx, gw, int(netlink.FLAG_ONLINK)
		}
		if err := netlink.RouteReplace(route); err != nil {
			errs = append(errs, fmt.Errorf("route to %s via %s: %w", rm.cidr, rm.addr, err))
		}
	}
	if err := r.prune(keep, link); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// prune deletes kpath's routes to pod CIDRs not in keep (all with nil).
func (r *Router) prune(keep map[netip.Prefix]bool, vxlan netlink.Link) error {
	routes, err := netlink.RouteListFiltered(unix.AF_INET, &netlink.Route{Protocol: RouteProtocol}, netlink.RT_FILTER_PROTOCOL)
	if err != nil {
		return fmt.Errorf("list routes: %w", err)
	}
	var errs []error
	for _, rt := range routes {
		if rt.Dst == nil {
			continue
		}
		p, ok := netip.AddrFromSlice(rt.Dst.IP.To4())
		if !ok {
			continue
		}
		ones, _ := rt.Dst.Mask.Size()
		if keep[netip.PrefixFrom(p, ones)] {
			continue
		}
		if err := netlink.RouteDel(&rt); err != nil {
			errs = append(errs, fmt.Errorf("delete route to %s: %w", rt.Dst, err))
		}
		if vxlan != nil && rt.Gw != nil {
			_ = netlink.NeighDel(&netlink.Neigh{LinkIndex: vxlan.Attrs().Index, Family: unix.AF_INET, IP: rt.Gw})
		}
	}
	if keep == nil {
		if l, err := netlink.LinkByName(VXLANDevice); err == nil {
			_ = netlink.LinkDel(l)
		}
	}
	return errors.Join(errs...)
}

func (r *Router) ensureVXLAN(localCIDR netip.Prefix) (netlink.Link, error) {
	if !localCIDR.IsValid() {
		return nil, errors.New("vxlan routing needs this node's pod CIDR")
	}
	up, err := netlink.LinkByName(r.cfg.Device)
	if err != nil {
		return nil, fmt.Errorf("vxlan underlay device %q: %w", r.cfg.Device, err)
	}
	var src net.IP
	if addrs, err := netlink.AddrList(up, unix.AF_INET); err == nil && len(addrs) > 0 {
		src = addrs[0].IP
	}
	l, err := netlink.LinkByName(VXLANDevice)
	if err != nil {
		v := &netlink.Vxlan{
			LinkAttrs: netlink.LinkAttrs{Name: VXLANDevice, MTU: up.Attrs().MTU - VXLANOverhead, HardwareAddr: VTEPMAC(localCIDR)},
			VxlanId:   VXLANID, VtepDevIndex: up.Attrs().Index, SrcAddr: src, Port: VXLANPort, Learning: false,
		}
		if err := netlink.LinkAdd(v); err != nil {
			return nil, fmt.Errorf("create %s: %w", VXLANDevice, err)
		}
		if l, err = netlink.LinkByName(VXLANDevice); err != nil {
			return nil, err
		}
	}
	addr := &netlink.Addr{IPNet: &net.IPNet{IP: vtepAddr(localCIDR), Mask: net.CIDRMask(32, 32)}}
	if err := netlink.AddrReplace(l, addr); err != nil {
		return nil, fmt.Errorf("address of %s: %w", VXLANDevice, err)
	}
	if err := netlink.LinkSetUp(l); err != nil {
		return nil, fmt.Errorf("set %s up: %w", VXLANDevice, err)
	}
	return l, nil
}
