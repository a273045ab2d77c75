package datapath

import (
	"net/netip"
	"testing"

	"github.com/cilium/ebpf"
)

// runOut runs prog on pkt and returns the verdict and the packet as the
// program left it.
func runOut(t *testing.T, prog *ebpf.Program, pkt []byte) (uint32, []byte) {
	t.Helper()
	opts := &ebpf.RunOptions{Data: pkt, DataOut: make([]byte, len(pkt)+256)}
	ret, err := prog.Run(opts)
	if err != nil {
		t.Fatal(err)
	}
	return ret, opts.DataOut
}

// TestTCHairpin: a pod reaching itself through its Service per packet is
// masqueraded to the node's address and turned back into its veth; its
// answer, to the node's address, comes back to it from itself, and the
// pod's ingress program translates that to the Service, as the client's
// socket expects. Without a node address, nothing is turned back.
func TestTCHairpin(t *testing.T) {
	d := openTest(t, testConfig(t))
	pod, node := netip.MustParseAddr("10.244.0.2"), netip.MustParseAddr("192.168.200.11")
	mustUpsert(t, d, svcOf("10.96.0.10:80", "10.244.0.2:8080"))
	syn := testPkt{src: netip.AddrPortFrom(pod, 40000), dst: ap("10.96.0.10:80"), proto: 6, tcpFlags: tcpSYN}
	bindTest(t, d, pod)

	if ret, _ := runOut(t, d.objs.KpFromPod, syn.bytes()); ret != tcActOK {
		t.Fatalf("without a node address: verdict %d, want it passed as before", ret)
	}
	if err := d.SetNodeAddr(node); err != nil {
		t.Fatal(err)
	}
	syn.src = netip.AddrPortFrom(pod, 40001)
	ret, out := runOut(t, d.objs.KpFromPod, syn.bytes())
	if ret != tcActRedirect {
		t.Fatalf("hairpin SYN: verdict %d, want TC_ACT_REDIRECT (back into the pod)", ret)
	}
	got := parsePkt(t, out)
	checkCsums(t, got)
	if got.src != netip.AddrPortFrom(node, 40001) || got.dst != ap("10.244.0.2:8080") {
		t.Fatalf("hairpin SYN turned back as %s -> %s, want %s:40001 -> the pod's 8080", got.src, got.dst, node)
	}

	// The pod answers the node's address.
	synAck := testPkt{src: ap("10.244.0.2:8080"), dst: netip.AddrPortFrom(node, 40001), proto: 6, tcpFlags: tcpSYN | tcpACK}
	ret, out = runOut(t, d.objs.KpFromPod, synAck.bytes())
	if ret != tcActRedirect {
		t.Fatalf("hairpin SYN-ACK: verdict %d, want TC_ACT_REDIRECT", ret)
	}
	got = parsePkt(t, out)
	checkCsums(t, got)
	if got.src != ap("10.244.0.2:8080") || got.dst != netip.AddrPortFrom(pod, 40001) {
		t.Fatalf("hairpin SYN-ACK turned back as %s -> %s, want the pod's 8080 -> its 40001", got.src, got.dst)
	}
	// ... and reaches the client socket from the Service.
	ret, out = runOut(t, d.objs.KpToPod, out)
	if ret != tcActOK {
		t.Fatalf("to-pod verdict %d for the hairpin answer", ret)
	}
	got = parsePkt(t, out)
	checkCsums(t, got)
	if got.src != ap("10.96.0.10:80") || got.dst != netip.AddrPortFrom(pod, 40001) {
		t.Fatalf("the answer reached the client as %s -> %s, want from the Service 10.96.0.10:80", got.src, got.dst)
	}

	// Other traffic to the node's address is not touched.
	other := testPkt{src: ap("10.244.0.2:8080"), dst: netip.AddrPortFrom(node, 40999), proto: 6, tcpFlags: tcpACK}
	if ret, _ := runOut(t, d.objs.KpFromPod, other.bytes()); ret != tcActOK {
		t.Fatalf("a pod's packet to the node's address: verdict %d, want it passed", ret)
	}
}
