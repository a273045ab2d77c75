package test

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/kpath/kpath/internal/model"
	"github.com/kpath/kpath/internal/routing"
	"github.com/kpath/kpath/internal/testutil"
)

// TestRoutingModes wires two nodes on one segment (a bridge in a "vnet"
// namespace, the cloud network) with a pod each, and checks pod-to-pod
// traffic across nodes in each routing mode. Only native mode has the vnet
// route pod CIDRs; direct and vxlan must work without it.
func TestRoutingModes(t *testing.T) {
	for _, mode := range []routing.Mode{routing.Native, routing.Direct, routing.VXLAN} {
		t.Run(string(mode), func(t *testing.T) {
			testutil.RequireRoot(t)
			testutil.RequireTool(t, "ip")
			id := testutil.UniqueID()
			vnet := testutil.NewNetns(t, "kpt-"+id+"-vnet")
			testutil.Run(t, "ip", "netns", "exec", vnet, "sysctl", "-qw", "net.ipv4.ip_forward=1")
			testutil.Run(t, "ip", "-n", vnet, "link", "add", "br0", "type", "bridge")
			testutil.Run(t, "ip", "-n", vnet, "addr", "add", "192.168.100.1/24", "dev", "br0")
			testutil.Run(t, "ip", "-n", vnet, "link", "set", "br0", "up")

			type node struct {
				ns, ip, pod string
				cidr        netip.Prefix
			}
			nodes := []node{
				{ip: "192.168.100.11", pod: "10.244.1.2", cidr: netip.MustParsePrefix("10.244.1.0/24")},
				{ip: "192.168.100.12", pod: "10.244.2.2", cidr: netip.MustParsePrefix("10.244.2.0/24")},
			}
			var objs []*model.Node
			var podNS []string
			for i := range nodes {
				n := &nodes[i]
				n.ns = testutil.NewNetns(t, fmt.Sprintf("kpt-%s-n%d", id, i))
				testutil.Run(t, "ip", "netns", "exec", n.ns, "sysctl", "-qw", "net.ipv4.ip_forward=1")
				testutil.Run(t, "ip", "-n", n.ns, "link", "add", "eth0", "type", "veth", "peer", "name", fmt.Sprintf("n%d", i), "netns", vnet)
				testutil.Run(t, "ip", "-n", vnet, "link", "set", fmt.Sprintf("n%d", i), "master", "br0", "up")
				testutil.Run(t, "ip", "-n", n.ns, "addr", "add", n.ip+"/24", "dev", "eth0")
				testutil.Run(t, "ip", "-n", n.ns, "link", "set", "eth0", "up")
				testutil.Run(t, "ip", "-n", n.ns, "route", "add", "default", "via", "192.168.100.1")
				pod := testutil.NewNetns(t, fmt.Sprintf("kpt-%s-p%d", id, i))
				testutil.WirePod(t, testutil.PodSpec{Node: n.ns, Pod: pod, HostIf: fmt.Sprintf("kpt%sp%d", id, i), Addr: n.pod})
				podNS = append(podNS, pod)
				if mode == routing.Native {
					testutil.Run(t, "ip", "-n", vnet, "route", "add", n.cidr.String(), "via", n.ip)
				}
				objs = append(objs, &model.Node{Name: fmt.Sprint("n", i), Addrs: []netip.Addr{netip.MustParseAddr(n.ip)}, PodCIDR: n.cidr})
			}
			sync := func(i int, nodes []*model.Node) {
				t.Helper()
				r := routing.New(routing.Config{Mode: mode, LocalNode: fmt.Sprint("n", i), Device: "eth0"})
				err := testutil.InNetns(fmt.Sprintf("kpt-%s-n%d", id, i), func() error { return r.Sync(objs[i].PodCIDR, nodes) })
				if err != nil {
					t.Fatalf("sync node %d: %v", i, err)
				}
			}
			for i := range nodes {
				sync(i, objs)
				sync(i, objs) // idempotent
			}

			startHelper(t, podNS[1], "backend", "pod-on-n1", nil)
			client := startHelper(t, podNS[0], "client", "pod-on-n0", nil)
			if got := client.do(t, fmt.Sprintf("lines %s:%d 3", nodes[1].pod, linePort)).Counts; got["pod-on-n1"] != 3 {
				t.Fatalf("%s: pod on n0 -> pod on n1: %v", mode, got)
			}

			// A node that leaves takes its route with it.
			sync(0, objs[:1])
			var left int
			_ = testutil.InNetns(nodes[0].ns, func() error {
				rs, _ := netlink.RouteListFiltered(unix.AF_INET, &netlink.Route{Protocol: routing.RouteProtocol}, netlink.RT_FILTER_PROTOCOL)
				left = len(rs)
				return nil
			})
			if left != 0 {
				t.Errorf("%d kpath routes left after the remote node went away", left)
			}
			if r := client.try(t, fmt.Sprintf("lines %s:%d 1", nodes[1].pod, linePort)); mode != routing.Native && r.Err == "" {
				t.Errorf("traffic still flows to a node whose route was removed")
			} else if mode != routing.Native && !strings.Contains(r.Err, "timeout") && !strings.Contains(r.Err, "unreachable") && !strings.Contains(r.Err, "refused") {
				t.Logf("after removal: %s", r.Err)
			}
		})
	}
}
