package test

import (
	"encoding/json"
	"fmt"
	"net/url"
	"os/exec"
	"path/filepath"
	"time"

	networkingv1 "k8s.io/api/networking/v1"

	"github.com/kpath/kpath/internal/datapath"
)

// forgedSources: with x/a admitting ingress from x/b alone, a pod that
// forges x/b's address gets nothing through to x/a, neither from x/a's own
// node (x/c) nor from the other node (y/b, beside x/b), over TCP or UDP, to
// the pod or to its Service. x/b sending the very same packets from its own
// address is the control that they would arrive, and x/c sending them from
// its own that policy refuses them. The forgers' nodes count the drops as
// invalid sources and report flows naming the real sender.
func (n *npCluster) forgedSources(bin string) {
	t := n.t
	t.Helper()
	n.apply(netpol("x", "only-b", sel("pod", "a"), ingressOnly, []networkingv1.NetworkPolicyIngressRule{{
		From: []networkingv1.NetworkPolicyPeer{{PodSelector: sel("pod", "b")}}}}, nil))
	n.expect("x/a admits x/b alone")

	var svcIP string
	for _, tg := range n.targets {
		if tg.viaSvcIP {
			u, err := url.Parse(tg.url)
			if err != nil {
				t.Fatal(err)
			}
			svcIP = u.Hostname()
		}
	}
	target, allowed := n.clients["x/a"], n.ips["x/b"]
	dsts := []string{n.ips["x/a"] + ":80", svcIP + ":80"}
	const per = 20
	send := func(from, src string) {
		t.Helper()
		for _, dst := range dsts {
			for _, proto := range []string{"tcp", "udp"} {
				cmd := fmt.Sprintf("forge %s %s %s %d", src, dst, proto, per)
				if r := n.clients[from].do(t, cmd); r.Counts["sent"] != per {
					t.Fatalf("%s: %s sent %d", from, cmd, r.Counts["sent"])
				}
			}
		}
	}
	captured := func() map[string]int {
		t.Helper()
		return target.do(t, "captured 80 500ms").Counts
	}

	// Controls: the packets arrive from their owner; policy refuses x/c's.
	target.do(t, "capture")
	send("x/b", allowed)
	send("x/c", n.ips["x/c"])
	got := captured()
	for _, proto := range []string{"tcp", "udp"} {
		if want := per * len(dsts); got[proto+" "+allowed] != want {
			t.Fatalf("control: x/a got %d %s packets from x/b, want %d (the sender or the capture does not work): %v",
				got[proto+" "+allowed], proto, want, got)
		}
		if c := got[proto+" "+n.ips["x/c"]]; c != 0 {
			t.Fatalf("control: x/a got %d %s packets from x/c, which policy refuses", c, proto)
		}
	}

	before := map[string]uint64{}
	for _, node := range n.st.Nodes {
		before[node.Name] = n.invalidSources(bin, node.Name)
	}
	target.do(t, "capture")
	send("x/c", allowed) // x/a's node
	send("y/b", allowed) // the other node
	if got := captured(); len(got) != 0 {
		t.Errorf("forged as x/b, packets reached x/a: %v", got)
	}
	for _, node := range n.st.Nodes {
		if d := n.invalidSources(bin, node.Name) - before[node.Name]; d < per*uint64(2*len(dsts)) {
			t.Errorf("%s counted %d invalid sources, want at least %d", node.Name, d, per*2*len(dsts))
		}
	}
	// The drop names the pod that sent it, with the address it forged.
	for node, sender := range map[int]string{0: "x/c", 1: "y/b"} {
		found := false
		waitFor(t, 10*time.Second, "invalid source flow of "+sender, func() bool {
			for _, f := range observeFlows(t, bin, n.st.Nodes[node].AgentSocket, "--verdict", "DROPPED") {
				if f.DropReason == datapath.ReasonInvalidSource && f.Source.Name() == sender && f.Source.IP.String() == allowed {
					found = true
				}
			}
			return found
		})
	}
}

// invalidSources is a node's count of packets dropped as invalid sources.
func (n *npCluster) invalidSources(bin, node string) uint64 {
	t := n.t
	t.Helper()
	for _, nd := range n.st.Nodes {
		if nd.Name != node {
			continue
		}
		out, err := exec.Command("nsenter", "--net=/run/netns/"+nd.Netns, filepath.Join(bin, "kpath"), "dp",
			"--pin-dir", nd.PinDir, "counters", "-o", "json").Output()
		if err != nil {
			t.Fatalf("kpath dp counters on %s: %v", node, err)
		}
		var cs []datapath.Counter
		if err := json.Unmarshal(out, &cs); err != nil {
			t.Fatalf("kpath dp counters on %s: %v: %s", node, err, out)
		}
		return datapath.CounterPackets(cs, datapath.ReasonInvalidSource, "from-pod")
	}
	t.Fatalf("no node %s", node)
	return 0
}
