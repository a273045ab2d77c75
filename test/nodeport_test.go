package test

import (
	"fmt"
	"net/netip"
	"os/exec"
	"strings"
	"testing"

	"github.com/kpath/kpath/internal/datapath"
	"github.com/kpath/kpath/internal/masq"
	"github.com/kpath/kpath/internal/model"
	"github.com/kpath/kpath/internal/testutil"
)

// TestNodePortFromOutside sends traffic from a "vnet" namespace (the network
// outside the node) to the node's address: to a NodePort whose backend is
// on the node (the client's address is preserved) and to one whose backend
// sits beyond the vnet on "another node" (the node masquerades, so the
// reply comes back through it and is translated back).
func TestNodePortFromOutside(t *testing.T) {
	testutil.RequireRoot(t)
	testutil.RequireTool(t, "ip", "nft")
	d := openDatapath(t, datapath.AttachAuto)
	l := newTopology(t, nil)
	l.attach(t, d)
	id := testutil.UniqueID()
	const (
		nodeIP   = "192.168.50.1"
		clientIP = "192.168.50.100"
		remoteIP = "10.244.9.2"
	)
	vnet := testutil.NewNetns(t, "kpt-"+id+"-vnet")
	testutil.Run(t, "ip", "netns", "exec", vnet, "sysctl", "-qw", "net.ipv4.ip_forward=1")
	uplink := "kpt" + id + "up"
	testutil.Run(t, "ip", "-n", l.node, "link", "add", uplink, "type", "veth", "peer", "name", "eth0", "netns", vnet)
	testutil.Run(t, "ip", "-n", l.node, "addr", "add", nodeIP+"/24", "dev", uplink)
	testutil.Run(t, "ip", "-n", l.node, "link", "set", uplink, "up")
	testutil.Run(t, "ip", "-n", vnet, "addr", "add", clientIP+"/24", "dev", "eth0")
	testutil.Run(t, "ip", "-n", vnet, "link", "set", "eth0", "up")
	// A backend on "another node", reached through the vnet.
	remote := testutil.NewNetns(t, "kpt-"+id+"-rb")
	testutil.WirePod(t, testutil.PodSpec{Node: vnet, Pod: remote, HostIf: "kpt" + id + "rb", Addr: remoteIP})
	testutil.Run(t, "ip", "-n", l.node, "route", "add", "10.244.9.0/24", "via", clientIP)
	startHelper(t, remote, "backend", remoteIP, nil)
	outside := startHelper(t, vnet, "client", "outside", nil)

	err := testutil.InNetns(l.node, func() error {
		if err := d.AttachDevice(uplink); err != nil {
			return err
		}
		return masq.Ensure(masq.Rules{Devices: []string{uplink}, Mark: datapath.DefaultMasqueradeMark,
			PodCIDR: netip.MustParsePrefix("10.244.0.0/24"), ClusterCIDR: netip.MustParsePrefix("10.244.0.0/16")})
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = exec.Command("ip", "netns", "exec", l.node, "nft", "delete", "table", "ip", masq.Table).Run()
	})

	ext := func(port uint16, backend string) model.Service {
		s := svc(fmt.Sprintf("%s:%d/TCP", nodeIP, port), peerPort, backend)
		s.External = true
		return s
	}
	for _, s := range []model.Service{ext(30080, l.be1), ext(30081, remoteIP)} {
		if err := d.UpsertService(s); err != nil {
			t.Fatal(err)
		}
	}
	// The internal-scope twin of a frontend does not serve outside traffic.
	if err := d.UpsertService(svc(fmt.Sprintf("%s:%d/TCP", nodeIP, 30082), peerPort, l.be2)); err != nil {
		t.Fatal(err)
	}

	local := strings.Fields(outside.do(t, fmt.Sprintf("peer %s:30080", nodeIP)).Answer)
	if len(local) != 2 || local[0] != l.be1 || local[1] != clientIP {
		t.Errorf("NodePort with a local backend: answer %q, want %s seeing the client %s", local, l.be1, clientIP)
	}
	far := strings.Fields(outside.do(t, fmt.Sprintf("peer %s:30081", nodeIP)).Answer)
	if len(far) != 2 || far[0] != remoteIP || far[1] != nodeIP {
		t.Errorf("NodePort with a remote backend: answer %q, want %s seeing the node %s (masqueraded)", far, remoteIP, nodeIP)
	}
	for range 20 {
		if a := strings.Fields(outside.do(t, fmt.Sprintf("peer %s:30081", nodeIP)).Answer); len(a) != 2 || a[0] != remoteIP {
			t.Fatalf("repeated request through the remote backend: %q", a)
		}
	}
	// Pods reaching outside the cluster are masqueraded to the node.
	startHelper(t, vnet, "backend", "vnet-server", nil)
	if a := strings.Fields(l.client.do(t, fmt.Sprintf("peer %s:%d", clientIP, peerPort)).Answer); len(a) != 2 || a[1] != nodeIP {
		t.Errorf("pod -> outside: server saw %q, want the node address %s", a, nodeIP)
	}
	if r := outside.try(t, fmt.Sprintf("peer %s:30082", nodeIP)); r.Err == "" {
		t.Errorf("an internal-only frontend answered traffic from outside: %q", r.Answer)
	}
	cs, err := d.Counters()
	if err != nil {
		t.Fatal(err)
	}
	if in, out := datapath.CounterPackets(cs, "service translated", "host-in"), datapath.CounterPackets(cs, "reply translated", "host-out"); in < 22 || out < 22 {
		t.Errorf("uplink translations: %d in, %d replies out", in, out)
	}
}
