package datapath

import (
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"testing"

	"github.com/kpath/kpath/internal/model"
	"github.com/kpath/kpath/internal/policy"
	"github.com/kpath/kpath/internal/policy/policytest"
)

// loadPolicy writes what the agent would for node: the ipcache, every
// local pod as an endpoint of its policy set, and the sets' entries.
func loadPolicy(t testing.TB, d *Datapath, s *policy.Store, addrs []netip.Addr, node string) map[netip.Addr]bool {
	t.Helper()
	local := map[netip.Addr]bool{}
	sets := map[string]uint32{}
	for _, ip := range addrs {
		if id := s.IdentityOf(ip, node); id != policy.IdentityWorld {
			if err := d.SetIPCache(ip, uint32(id)); err != nil {
				t.Fatal(err)
			}
		}
		p := s.Peer(ip).Pod
		if p == nil || p.NodeName != node {
			continue
		}
		local[ip] = true
		ps := s.SetOf(p)
		set, ok := sets[ps.Key]
		e := s.Compile(ps)
		if !ok {
			set = uint32(len(sets) + 1)
			sets[ps.Key] = set
			if err := d.ApplyPolicy([]PolicyChange{{Set: set, Add: e.Entries, AddCIDR: e.CIDRs}}); err != nil {
				t.Fatal(err)
			}
		}
		ep := Endpoint{Set: set, Identity: uint32(s.IdentityOf(ip, node)), IngressIsolated: e.IngressIsolated, EgressIsolated: e.EgressIsolated}
		if err := d.SetEndpoint(ip, ep); err != nil {
			t.Fatal(err)
		}
	}
	return local
}

// policyPkt is a first packet from src to dst: a TCP SYN, a UDP datagram,
// an SCTP INIT-like header or an ICMP echo request.
func policyPkt(src, dst netip.Addr, proto model.Protocol, sport, dport uint16) []byte {
	p := testPkt{src: netip.AddrPortFrom(src, sport), dst: netip.AddrPortFrom(dst, dport), proto: uint8(proto), tcpFlags: tcpSYN}
	switch proto {
	case model.SCTP:
		h := make([]byte, 12)
		binary.BigEndian.PutUint16(h[0:], sport)
		binary.BigEndian.PutUint16(h[2:], dport)
		p.rawL4 = h
	case 1: // ICMP echo request
		p.rawL4 = []byte{8, 0, 0, 0, byte(sport >> 8), byte(sport), 0, 1} // the identifier tells pings apart
	}
	return p.bytes()
}

// TestPolicyProgramsMatchEvaluator: for random clusters, the programs on
// the pods' veths, run on crafted packets over the maps the compiler
// filled, give the reference evaluator's verdict for every (source,
// destination, protocol, port): egress at the source's kp_from_pod,
// ingress at the destination's kp_to_pod.
func TestPolicyProgramsMatchEvaluator(t *testing.T) {
	protos := []model.Protocol{model.TCP, model.UDP, model.SCTP, 1}
	ports := []uint16{80, 81, 1080}
	checked, denied := 0, 0
	for seed := range uint64(12) {
		t.Run(fmt.Sprint("seed", seed), func(t *testing.T) {
			d := openTest(t, testConfig(t))
			r := rand.New(rand.NewPCG(seed, 7))
			s, addrs := policytest.RandomCluster(r, 1+r.IntN(6))
			local := loadPolicy(t, d, s, addrs, "n1")
			sport := uint16(10000)
			for _, src := range addrs {
				for _, dst := range addrs {
					if src == dst || !local[src] && !local[dst] {
						continue
					}
					for _, proto := range protos {
						for _, port := range ports {
							if proto == 1 {
								port = 0
							}
							sport++
							want := s.EvaluateIPs(src, dst, proto, port)
							pkt := policyPkt(src, dst, proto, sport, port)
							if local[src] {
								ret, _ := fromPod(t, d, pkt)
								if got := ret == tcActOK; got != want.Egress.Allowed {
									t.Fatalf("egress %s -> %s %s/%d: program %v, evaluator %v (%s)", src, dst, proto, port, got, want.Egress.Allowed, want.Egress.Reason)
								}
								checked++
							}
							if local[dst] {
								ret, _ := runProg(t, d.objs.KpToPod, pkt)
								if got := ret == tcActOK; got != want.Ingress.Allowed {
									t.Fatalf("ingress %s -> %s %s/%d: program %v, evaluator %v (%s)", src, dst, proto, port, got, want.Ingress.Allowed, want.Ingress.Reason)
								}
								checked++
							}
							if !want.Allowed {
								denied++
							}
						}
					}
				}
			}
		})
	}
	t.Logf("%d verdicts checked, %d flows denied", checked, denied)
	if denied == 0 || denied == checked {
		t.Fatalf("the generated clusters are degenerate: %d of %d denied", denied, checked)
	}
}

// isolate puts ip under a set that allows TCP port from peer only (nothing
// at all with peer invalid), both directions isolated.
func isolate(t *testing.T, d *Datapath, ip netip.Addr, set uint32, peer uint32, port uint16) {
	t.Helper()
	add := map[policy.Entry]uint32{}
	if peer != 0 {
		add[policy.Entry{Ingress: true, Peer: peer, Proto: model.TCP, Port: port, PortBits: 16}] = 1
	}
	if err := d.ApplyPolicy([]PolicyChange{{Set: set, Add: add}}); err != nil {
		t.Fatal(err)
	}
	if err := d.SetEndpoint(ip, Endpoint{Set: set, Identity: 300, IngressIsolated: true, EgressIsolated: true}); err != nil {
		t.Fatal(err)
	}
}

// TestPolicyConnectionLifecycle: an allowed connection's replies pass both
// ways through egress-isolated pods; a policy change that denies it stops
// its established packets at once (the new revision makes the cached
// verdict stale); a change that allows again resumes it; denials are
// counted by direction.
func TestPolicyConnectionLifecycle(t *testing.T) {
	d := openTest(t, testConfig(t))
	client, server := netip.MustParseAddr("10.0.1.2"), netip.MustParseAddr("10.0.1.3")
	if err := d.SetIPCache(client, 301); err != nil {
		t.Fatal(err)
	}
	isolate(t, d, server, 1, 301, 80)
	cp, sp := netip.AddrPortFrom(client, 40000), netip.AddrPortFrom(server, 80)
	syn := testPkt{src: cp, dst: sp, proto: 6, tcpFlags: tcpSYN}.bytes()
	synack := testPkt{src: sp, dst: cp, proto: 6, tcpFlags: tcpSYN | tcpACK}.bytes()
	ack := testPkt{src: cp, dst: sp, proto: 6, tcpFlags: tcpACK}.bytes()

	expect := func(what string, prog func() uint32, want uint32) {
		t.Helper()
		if got := prog(); got != want {
			t.Fatalf("%s: verdict %d, want %d", what, got, want)
		}
	}
	toServer := func(pkt []byte) func() uint32 {
		return func() uint32 { r, _ := runProg(t, d.objs.KpToPod, pkt); return r }
	}
	fromServer := func(pkt []byte) func() uint32 {
		return func() uint32 { r, _ := fromPod(t, d, pkt); return r }
	}
	expect("SYN to the server", toServer(syn), tcActOK)
	// The server is egress-isolated with no egress rule: only because its
	// SYN-ACK is a reply does it pass.
	expect("SYN-ACK from the server", fromServer(synack), tcActOK)
	expect("ACK to the server", toServer(ack), tcActOK)
	other := testPkt{src: sp, dst: netip.AddrPortFrom(client, 40001), proto: 6, tcpFlags: tcpSYN}.bytes()
	expect("a new connection from the egress-isolated server", fromServer(other), tcActShot)

	// Policy changes: the entry goes, the revision moves.
	if err := d.ApplyPolicy([]PolicyChange{{Set: 1, DeleteAll: true}}); err != nil {
		t.Fatal(err)
	}
	expect("established packet before the revision moves (cached)", toServer(ack), tcActOK)
	if _, err := d.BumpPolicyRevision(); err != nil {
		t.Fatal(err)
	}
	expect("established packet after a change that denies it", toServer(ack), tcActShot)
	// Decided as the server's own new connection: it is egress-isolated.
	expect("the server's reply of a denied connection", fromServer(synack), tcActShot)
	isolate(t, d, server, 1, 301, 80)
	if _, err := d.BumpPolicyRevision(); err != nil {
		t.Fatal(err)
	}
	expect("established packet after the policy allows again", toServer(ack), tcActOK)
	expect("reply after the policy allows again", fromServer(synack), tcActOK)

	if n := d.counter(t, "policy denied", "to-pod"); n != 1 {
		t.Errorf("ingress policy drops counted %d, want 1", n)
	}
	if n := d.counter(t, "policy denied", "from-pod"); n != 2 {
		t.Errorf("egress policy drops counted %d, want 2", n)
	}
}

// TestPolicyFromNodeAndSelf: the node's own addresses always reach an
// isolated pod, another node's do not; a pod reaching itself through a
// service (hairpin) is allowed; a later fragment whose first fragment was
// never seen is dropped for an isolated pod.
func TestPolicyFromNodeAndSelf(t *testing.T) {
	d := openTest(t, testConfig(t))
	pod := netip.MustParseAddr("10.0.1.3")
	host, remote := netip.MustParseAddr("192.168.0.1"), netip.MustParseAddr("192.168.0.2")
	if err := d.SetIPCache(host, uint32(policy.IdentityHost)); err != nil {
		t.Fatal(err)
	}
	if err := d.SetIPCache(remote, uint32(policy.IdentityRemoteNode)); err != nil {
		t.Fatal(err)
	}
	isolate(t, d, pod, 7, 0, 0)
	run := func(src netip.Addr, sport uint16) uint32 {
		r, _ := runProg(t, d.objs.KpToPod, policyPkt(src, pod, model.TCP, sport, 8080))
		return r
	}
	if r := run(host, 1); r != tcActOK {
		t.Errorf("from this node: verdict %d, want allowed", r)
	}
	if r := run(remote, 2); r != tcActShot {
		t.Errorf("from another node: verdict %d, want dropped", r)
	}
	if r := run(pod, 3); r != tcActOK {
		t.Errorf("from the pod itself: verdict %d, want allowed", r)
	}
	frag := testPkt{src: netip.AddrPortFrom(host, 4), dst: netip.AddrPortFrom(pod, 8080), proto: 17, fragOff: 3, ipID: 9, rawL4: []byte("tail"), skipL4Header: true}
	frag.src = netip.AddrPortFrom(remote, 4)
	if r, _ := runProg(t, d.objs.KpToPod, frag.bytes()); r != tcActShot {
		t.Errorf("stray later fragment to an isolated pod: verdict %d, want dropped", r)
	}
}

// TestPolicyServiceConnectionCut: the egress verdict of an established
// service connection is cached in its service entry; a change that denies
// the backend stops the connection, one that allows it again resumes it.
func TestPolicyServiceConnectionCut(t *testing.T) {
	d := openTest(t, testConfig(t))
	mustUpsert(t, d, svcOf("10.96.0.10:80", "10.0.2.5:8080"))
	client := netip.MustParseAddr("10.0.1.2")
	if err := d.SetIPCache(netip.MustParseAddr("10.0.2.5"), 302); err != nil {
		t.Fatal(err)
	}
	allow := func() {
		if err := d.ApplyPolicy([]PolicyChange{{Set: 4, Add: map[policy.Entry]uint32{{Peer: 302, Proto: model.TCP, Port: 8080, PortBits: 16}: 1}}}); err != nil {
			t.Fatal(err)
		}
		if _, err := d.BumpPolicyRevision(); err != nil {
			t.Fatal(err)
		}
	}
	if err := d.SetEndpoint(client, Endpoint{Set: 4, Identity: 301, EgressIsolated: true}); err != nil {
		t.Fatal(err)
	}
	allow()
	cp := netip.AddrPortFrom(client, 40000)
	run := func(flags uint8) uint32 {
		r, _ := fromPod(t, d, testPkt{src: cp, dst: ap("10.96.0.10:80"), proto: 6, tcpFlags: flags}.bytes())
		return r
	}
	for i, f := range []uint8{tcpSYN, tcpACK, tcpACK} {
		if r := run(f); r != tcActOK {
			t.Fatalf("packet %d of an allowed service connection: verdict %d", i, r)
		}
	}
	if err := d.ApplyPolicy([]PolicyChange{{Set: 4, DeleteAll: true}}); err != nil {
		t.Fatal(err)
	}
	if _, err := d.BumpPolicyRevision(); err != nil {
		t.Fatal(err)
	}
	if r := run(tcpACK); r != tcActShot {
		t.Fatalf("established service connection after a change that denies its backend: verdict %d", r)
	}
	if r := run(tcpACK); r != tcActShot {
		t.Fatalf("second packet after the deny (cached): verdict %d", r)
	}
	allow()
	if r := run(tcpACK); r != tcActOK {
		t.Fatalf("after the policy allows again: verdict %d", r)
	}
}
