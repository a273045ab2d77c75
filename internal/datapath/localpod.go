package datapath

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/cilium/ebpf"
	"github.com/vishvananda/netlink"
)

// Source validation: kp_local_pod binds each address of a pod of this node
// to the host-side interface the pod lives behind, and kp_from_pod drops
// whatever a pod sends from an address not bound to its interface
// (bpf/lib/srcval.h). A pod attached without a binding can send nothing.

// BindPod binds addr to the interface with index ifindex: packets from that
// interface may carry it as their source. An address bound elsewhere moves.
func (d *Datapath) BindPod(ifindex int, addr netip.Addr) error {
	if !addr.Is4() {
		return fmt.Errorf("bind %s to interface %d: only IPv4 pod addresses are supported", addr, ifindex)
	}
	if ifindex <= 0 {
		return fmt.Errorf("bind %s: invalid interface index %d", addr, ifindex)
	}
	if err := d.objs.KpLocalPod.Put(addrToBPF(addr), kpathLocalPod{Ifindex: uint32(ifindex)}); err != nil {
		return mapWriteError(kpathMapKpLocalPod, "endpoints", err)
	}
	return nil
}

// UnbindPod forgets addr: no interface may send from it any more. It is not
// an error when it was not bound.
func (d *Datapath) UnbindPod(addr netip.Addr) error {
	if !addr.Is4() {
		return nil
	}
	if err := d.objs.KpLocalPod.Delete(addrToBPF(addr)); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("unbind %s: %w", addr, err)
	}
	return nil
}

// LocalPods reads every binding: pod address -> interface index.
func (d *Datapath) LocalPods() (map[netip.Addr]int, error) {
	out := map[netip.Addr]int{}
	var (
		k uint32
		v kpathLocalPod
	)
	it := d.objs.KpLocalPod.Iterate()
	for it.Next(&k, &v) {
		out[addrFromBPF(k)] = int(v.Ifindex)
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("read local pods: %w", err)
	}
	return out, nil
}

// AttachPod binds the pod's addresses to the host side of its veth, then
// attaches the per-packet programs there: kp_from_pod on ingress, kp_to_pod
// on egress. Binding first means the programs never see the pod without
// its addresses; a pod given none can send nothing. Attaching again is a
// no-op that also upgrades the programs to this process's version.
func (d *Datapath) AttachPod(ifname string, addrs ...netip.Addr) error {
	l, err := netlink.LinkByName(ifname)
	if err != nil {
		return fmt.Errorf("attach to %s: %w", ifname, err)
	}
	for _, a := range addrs {
		if err := d.BindPod(l.Attrs().Index, a); err != nil {
			return fmt.Errorf("attach to %s: %w", ifname, err)
		}
	}
	return d.attachTC(ifname, podHooks)
}
