package datapath

import (
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/kpath/kpath/internal/model"
)

// Return codes of tc programs.
const (
	tcActOK       = 0
	tcActShot     = 2
	tcActRedirect = 7
)

func l4(s string) model.L4Addr {
	a, err := model.ParseL4Addr(s, model.TCP)
	if err != nil {
		panic(err)
	}
	return a
}

func svcOf(fe string, backends ...string) model.Service {
	s := model.Service{Frontend: l4(fe)}
	for _, b := range backends {
		bb := l4(b)
		bb.Proto = s.Frontend.Proto
		s.Backends = append(s.Backends, bb)
	}
	return s
}

// runProg runs prog once on pkt with BPF_PROG_TEST_RUN.
func runProg(t testing.TB, prog *ebpf.Program, pkt []byte) (uint32, []byte) {
	t.Helper()
	out := make([]byte, len(pkt)+256)
	ret, err := prog.Run(&ebpf.RunOptions{Data: pkt, DataOut: out})
	if err != nil {
		t.Fatalf("BPF_PROG_TEST_RUN: %v", err)
	}
	return ret, out
}

func (d *Datapath) counter(t testing.TB, reason, dir string) uint64 {
	t.Helper()
	cs, err := d.Counters()
	if err != nil {
		t.Fatal(err)
	}
	return CounterPackets(cs, reason, dir)
}

func mustUpsert(t testing.TB, d *Datapath, s model.Service) {
	t.Helper()
	if err := d.UpsertService(s); err != nil {
		t.Fatal(err)
	}
}

func TestTCServiceTranslationAndReply(t *testing.T) {
	for _, proto := range []uint8{6, 17} {
		for _, opts := range [][]byte{nil, {1, 1, 1, 0}} {
			t.Run(fmt.Sprintf("proto%d/options%d", proto, len(opts)), func(t *testing.T) {
				d := openTest(t, testConfig(t))
				p := model.Protocol(proto)
				s := svcOf("10.96.0.10:80/"+p.String(), "10.244.1.5:8080", "10.244.2.6:8081")
				mustUpsert(t, d, s)

				client := ap("10.244.0.2:40000")
				req := testPkt{src: client, dst: ap("10.96.0.10:80"), proto: proto, tcpFlags: tcpSYN, payload: []byte("hello"), ipOptions: opts}
				ret, out := fromPod(t, d, req.bytes())
				if ret != tcActOK {
					t.Fatalf("from-pod verdict %d, want TC_ACT_OK", ret)
				}
				got := parsePkt(t, out)
				checkCsums(t, got)
				if got.src != client {
					t.Errorf("source rewritten to %s", got.src)
				}
				var backend netip.AddrPort
				for _, b := range s.Backends {
					if got.dst == netip.AddrPortFrom(b.Addr, b.Port) {
						backend = got.dst
					}
				}
				if !backend.IsValid() {
					t.Fatalf("destination %s is not a backend of %v", got.dst, s.Backends)
				}
				if string(got.l4[len(got.l4)-5:]) != "hello" {
					t.Errorf("payload changed: %q", got.l4)
				}

				// Later packets of the connection go to the same backend.
				req.tcpFlags = tcpACK
				for range 20 {
					_, out := fromPod(t, d, req.bytes())
					if got := parsePkt(t, out); got.dst != backend {
						t.Fatalf("established packet went to %s, want %s", got.dst, backend)
					}
				}

				// The reply is translated back to the frontend.
				reply := testPkt{src: backend, dst: client, proto: proto, tcpFlags: tcpSYN | tcpACK, payload: []byte("world")}
				ret, out = runProg(t, d.objs.KpToPod, reply.bytes())
				if ret != tcActOK {
					t.Fatalf("to-pod verdict %d", ret)
				}
				got = parsePkt(t, out)
				checkCsums(t, got)
				if got.src != ap("10.96.0.10:80") || got.dst != client {
					t.Fatalf("reply %s -> %s, want 10.96.0.10:80 -> %s", got.src, got.dst, client)
				}

				ct, err := d.Conntrack()
				if err != nil {
					t.Fatal(err)
				}
				if len(ct) != 2 {
					t.Fatalf("conntrack has %d entries, want 2 (service + connection): %+v", len(ct), ct)
				}
				for _, e := range ct {
					if e.State != "established" {
						t.Errorf("entry %s -> %s state %s after the reply, want established", e.Src, e.Dst, e.State)
					}
					want := time.Duration(21600) * time.Second
					if proto == 17 {
						want = time.Minute
					}
					if e.ExpiresIn < want-2*time.Second || e.ExpiresIn > want {
						t.Errorf("entry expires in %s, want about %s", e.ExpiresIn, want)
					}
				}
				if n := d.counter(t, "service translated", "from-pod"); n != 21 {
					t.Errorf("service translated counter = %d, want 21", n)
				}
				if n := d.counter(t, "reply translated", "to-pod"); n != 1 {
					t.Errorf("reply translated counter = %d, want 1", n)
				}
			})
		}
	}
}

// TestTCNoBackendRefused: a packet to a Service port without backends is
// counted as a drop and answered as kube-proxy's REJECT answers it: an
// ICMP port unreachable from the service address, carrying the packet's
// header, sent back where it came from.
func TestTCNoBackendRefused(t *testing.T) {
	d := openTest(t, testConfig(t))
	mustUpsert(t, d, svcOf("10.96.0.11:53/UDP"))
	pkt := testPkt{src: ap("10.244.0.2:5353"), dst: ap("10.96.0.11:53"), proto: 17, payload: []byte("q")}
	in := pkt.bytes()
	bindTest(t, d, pkt.src.Addr())
	ret, out := runOut(t, d.objs.KpFromPod, in)
	if ret != tcActRedirect {
		t.Fatalf("verdict %d for a service without backends, want TC_ACT_REDIRECT (the refusal)", ret)
	}
	if len(out) != 14+56 {
		t.Fatalf("refusal of %d bytes, want 70: % x", len(out), out)
	}
	ip, icmp := out[14:34], out[34:]
	if ip[9] != 1 || netip.AddrFrom4([4]byte(ip[12:16])) != pkt.dst.Addr() || netip.AddrFrom4([4]byte(ip[16:20])) != pkt.src.Addr() {
		t.Errorf("refusal IP header % x: want ICMP from the service to the client", ip)
	}
	if icmp[0] != 3 || icmp[1] != 3 {
		t.Errorf("ICMP type %d code %d, want 3/3 (port unreachable)", icmp[0], icmp[1])
	}
	if ipSum(ip) != 0 || ipSum(icmp) != 0 {
		t.Errorf("checksums do not verify: IP %#x, ICMP %#x", ipSum(ip), ipSum(icmp))
	}
	if got := icmp[8 : 8+28]; string(got) != string(in[14:14+28]) {
		t.Errorf("the ICMP error carries % x, want the packet's header and 8 bytes: % x", got, in[14:14+28])
	}
	if [6]byte(out[0:6]) != [6]byte(in[6:12]) || [6]byte(out[6:12]) != [6]byte(in[0:6]) {
		t.Errorf("Ethernet addresses not swapped")
	}
	if n := d.counter(t, "no service backend", "from-pod"); n != 1 {
		t.Fatalf("no-backend drops = %d, want 1", n)
	}
	// Another port of the same address is not a service: untouched.
	other := testPkt{src: ap("10.244.0.2:5353"), dst: ap("10.96.0.11:54"), proto: 17}
	if ret, _ := fromPod(t, d, other.bytes()); ret != tcActOK {
		t.Fatalf("verdict %d for a non-service port", ret)
	}
}

// ipSum is the one's-complement sum of b, 0 when b's checksum is right.
func ipSum(b []byte) uint16 {
	var s uint32
	for i := 0; i+1 < len(b); i += 2 {
		s += uint32(b[i])<<8 | uint32(b[i+1])
	}
	for s > 0xffff {
		s = s&0xffff + s>>16
	}
	return ^uint16(s)
}

func TestTCNonServiceTrafficUntouched(t *testing.T) {
	d := openTest(t, testConfig(t))
	mustUpsert(t, d, svcOf("10.96.0.10:80", "10.244.1.5:8080"))
	arp := arpFrame(netip.MustParseAddr("10.244.0.2"), netip.MustParseAddr("169.254.1.1"))
	bindTest(t, d, netip.MustParseAddr("10.244.0.2"))
	pkts := [][]byte{
		testPkt{src: ap("10.244.0.2:40000"), dst: ap("10.244.1.5:8080"), proto: 6, tcpFlags: tcpSYN}.bytes(),
		testPkt{src: ap("10.244.0.2:40000"), dst: ap("10.96.0.10:81"), proto: 6, tcpFlags: tcpSYN}.bytes(),
		testPkt{src: ap("10.244.0.2:40000"), dst: ap("10.96.0.10:80"), proto: 17}.bytes(),
		arp,
	}
	for i, in := range pkts {
		for _, prog := range []*ebpf.Program{d.objs.KpFromPod, d.objs.KpToPod} {
			ret, out := runProg(t, prog, in)
			if ret != tcActOK {
				t.Errorf("packet %d: verdict %d", i, ret)
			}
			if string(out[:len(in)]) != string(in) {
				t.Errorf("packet %d: modified", i)
			}
		}
	}
	if n := d.counter(t, "pass", "from-pod"); n != uint64(len(pkts)) {
		t.Errorf("pass counter = %d, want %d", n, len(pkts))
	}
	if ct, _ := d.Conntrack(); len(ct) != 0 {
		t.Errorf("non-service traffic created conntrack entries: %+v", ct)
	}
}

func TestTCUDPWithoutChecksumStaysWithout(t *testing.T) {
	d := openTest(t, testConfig(t))
	mustUpsert(t, d, svcOf("10.96.0.11:53/UDP", "10.244.1.9:5353"))
	pkt := testPkt{src: ap("10.244.0.2:1000"), dst: ap("10.96.0.11:53"), proto: 17, noUDPCsum: true, payload: []byte("q")}
	_, out := fromPod(t, d, pkt.bytes())
	got := parsePkt(t, out)
	checkIPCsum(t, got)
	if got.dst != ap("10.244.1.9:5353") {
		t.Fatalf("dst %s", got.dst)
	}
	if c := binary.BigEndian.Uint16(got.l4[6:]); c != 0 {
		t.Fatalf("UDP checksum became %#04x, want 0 (none)", c)
	}
}

func TestTCSessionAffinityIsSticky(t *testing.T) {
	d := openTest(t, testConfig(t))
	s := svcOf("10.96.0.20:80", "10.244.1.1:80", "10.244.1.2:80", "10.244.1.3:80", "10.244.1.4:80")
	s.Affinity = 3 * time.Hour
	mustUpsert(t, d, s)

	seenAcross := map[netip.AddrPort]bool{}
	for c := range 16 {
		client := netip.AddrFrom4([4]byte{10, 244, 0, byte(10 + c)})
		var first netip.AddrPort
		for port := range uint16(30) {
			pkt := testPkt{src: netip.AddrPortFrom(client, 20000+port), dst: ap("10.96.0.20:80"), proto: 6, tcpFlags: tcpSYN}
			_, out := fromPod(t, d, pkt.bytes())
			dst := parsePkt(t, out).dst
			if port == 0 {
				first = dst
				seenAcross[dst] = true
			} else if dst != first {
				t.Fatalf("client %s: connection %d went to %s, earlier ones to %s", client, port, dst, first)
			}
		}
	}
	if len(seenAcross) < 2 {
		t.Fatalf("16 clients all stuck to one backend: %v", seenAcross)
	}

	// A backend that leaves the service releases its clients.
	var victim netip.AddrPort
	for b := range seenAcross {
		victim = b
		break
	}
	var rest []model.L4Addr
	for _, b := range s.Backends {
		if netip.AddrPortFrom(b.Addr, b.Port) != victim {
			rest = append(rest, b)
		}
	}
	s.Backends = rest
	mustUpsert(t, d, s)
	for c := range 16 {
		client := netip.AddrFrom4([4]byte{10, 244, 0, byte(10 + c)})
		pkt := testPkt{src: netip.AddrPortFrom(client, 50000), dst: ap("10.96.0.20:80"), proto: 6, tcpFlags: tcpSYN}
		_, out := fromPod(t, d, pkt.bytes())
		if dst := parsePkt(t, out).dst; dst == victim {
			t.Fatalf("client %s sent to removed backend %s", client, victim)
		}
	}
}

func TestTCMaglevSpreadAndConsistency(t *testing.T) {
	cfg := testConfig(t)
	cfg.Sizes.Endpoints = 4096 // a client pod per flow: 2000 bound sources
	d := openTest(t, cfg)
	s := svcOf("10.96.0.30:443", "10.244.1.1:443", "10.244.1.2:443", "10.244.1.3:443", "10.244.1.4:443")
	s.Selection = model.SelectMaglev
	mustUpsert(t, d, s)

	rng := rand.New(rand.NewPCG(1, 2))
	const flows = 2000
	choice := map[netip.AddrPort]netip.AddrPort{}
	perBackend := map[netip.AddrPort]int{}
	for range flows {
		src := netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 244, byte(rng.IntN(256)), byte(rng.IntN(256))}), uint16(1024+rng.IntN(60000)))
		pkt := testPkt{src: src, dst: ap("10.96.0.30:443"), proto: 6, tcpFlags: tcpSYN}
		_, out := fromPod(t, d, pkt.bytes())
		dst := parsePkt(t, out).dst
		choice[src] = dst
		perBackend[dst]++
	}
	t.Logf("maglev spread over %d flows: %v", flows, perBackend)
	if len(perBackend) != 4 {
		t.Fatalf("flows reached %d backends, want 4", len(perBackend))
	}
	for b, n := range perBackend {
		if n < flows/4*7/10 || n > flows/4*13/10 {
			t.Errorf("backend %s got %d of %d flows, outside 25%% +- 30%%", b, n, flows)
		}
	}

	// The choice is a function of the flow, not of state: with conntrack
	// emptied, every flow lands where it did.
	clearCT(t, d)
	for src, want := range choice {
		pkt := testPkt{src: src, dst: ap("10.96.0.30:443"), proto: 6, tcpFlags: tcpSYN}
		_, out := fromPod(t, d, pkt.bytes())
		if got := parsePkt(t, out).dst; got != want {
			t.Fatalf("flow %s went to %s, before to %s", src, got, want)
		}
	}

	// Removing a backend moves (nearly) only its flows.
	s.Backends = s.Backends[1:]
	removed := netip.AddrPortFrom(l4("10.244.1.1:443").Addr, 443)
	mustUpsert(t, d, s)
	clearCT(t, d)
	moved := 0
	for src, before := range choice {
		pkt := testPkt{src: src, dst: ap("10.96.0.30:443"), proto: 6, tcpFlags: tcpSYN}
		_, out := fromPod(t, d, pkt.bytes())
		after := parsePkt(t, out).dst
		if after == removed {
			t.Fatalf("flow %s still sent to removed backend", src)
		}
		if before != removed && after != before {
			moved++
		}
	}
	t.Logf("flows of remaining backends that moved: %d of %d", moved, flows-perBackend[removed])
	if moved > (flows-perBackend[removed])/10 {
		t.Errorf("%d flows of remaining backends moved; Maglev should keep nearly all", moved)
	}
}

func clearCT(t testing.TB, d *Datapath) {
	t.Helper()
	var (
		k    kpathCtKey
		v    kpathCtEntry
		keys []kpathCtKey
	)
	it := d.objs.KpCt.Iterate()
	for it.Next(&k, &v) {
		keys = append(keys, k)
	}
	for _, k := range keys {
		if err := d.objs.KpCt.Delete(k); err != nil {
			t.Fatal(err)
		}
	}
}

func TestTCFragments(t *testing.T) {
	d := openTest(t, testConfig(t))
	mustUpsert(t, d, svcOf("10.96.0.11:53/UDP", "10.244.1.9:5353"))
	client, vip := ap("10.244.0.2:1000"), ap("10.96.0.11:53")

	// One UDP datagram split in two: the first fragment has the UDP header
	// and 16 bytes of payload, the second the remaining 8.
	whole := testPkt{src: client, dst: vip, proto: 17, payload: []byte("0123456789abcdefGHIJKLMN")}.l4()
	first := testPkt{src: client, dst: vip, proto: 17, ipID: 77, moreFrags: true, rawL4: whole[:24]}
	second := testPkt{src: client, dst: vip, proto: 17, ipID: 77, fragOff: 3, rawL4: whole[24:]}

	ret, out1 := fromPod(t, d, first.bytes())
	if ret != tcActOK {
		t.Fatalf("first fragment verdict %d", ret)
	}
	ret, out2 := fromPod(t, d, second.bytes())
	if ret != tcActOK {
		t.Fatalf("second fragment verdict %d", ret)
	}
	f1, f2 := parsePkt(t, out1), parsePkt(t, out2)
	checkIPCsum(t, f1)
	checkIPCsum(t, f2)
	if f1.dst != ap("10.244.1.9:5353") || f2.dst.Addr() != f1.dst.Addr() {
		t.Fatalf("fragments sent to %s and %s, want both to 10.244.1.9", f1.dst, f2.dst.Addr())
	}
	checkL4Csum(t, 17, f1.src.Addr(), f1.dst.Addr(), append(append([]byte{}, f1.l4...), f2.l4...))

	// A later fragment of an unknown datagram is not ours to judge.
	stray := testPkt{src: client, dst: vip, proto: 17, ipID: 78, fragOff: 3, rawL4: whole[24:]}
	in := stray.bytes()
	ret, out := fromPod(t, d, in)
	if ret != tcActOK || string(out[:len(in)]) != string(in) {
		t.Fatalf("stray fragment: verdict %d, modified %v", ret, string(out[:len(in)]) != string(in))
	}

	// A later fragment whose connection state vanished is dropped, counted.
	clearCT(t, d)
	if ret, _ := fromPod(t, d, second.bytes()); ret != tcActShot {
		t.Fatalf("fragment without state: verdict %d, want drop", ret)
	}
	if n := d.counter(t, "fragment without state", "from-pod"); n != 1 {
		t.Fatalf("fragment-without-state drops = %d", n)
	}
}

func TestTCReopenAfterCloseChoosesAgain(t *testing.T) {
	d := openTest(t, testConfig(t))
	mustUpsert(t, d, svcOf("10.96.0.10:80", "10.244.1.5:8080"))
	client := ap("10.244.0.2:40000")
	syn := testPkt{src: client, dst: ap("10.96.0.10:80"), proto: 6, tcpFlags: tcpSYN}
	fromPod(t, d, syn.bytes())
	fin := syn
	fin.tcpFlags = tcpFIN | tcpACK
	fromPod(t, d, fin.bytes())
	ct, _ := d.Conntrack()
	for _, e := range ct {
		if e.State != "closing" || e.ExpiresIn > 10*time.Second {
			t.Fatalf("after FIN: state %s expires in %s, want closing within 10s", e.State, e.ExpiresIn)
		}
	}
	// The backend changes; a new SYN on the same tuple must use the new one.
	mustUpsert(t, d, svcOf("10.96.0.10:80", "10.244.1.6:8080"))
	_, out := fromPod(t, d, syn.bytes())
	if got := parsePkt(t, out).dst; got != ap("10.244.1.6:8080") {
		t.Fatalf("reopened connection went to %s, want the new backend", got)
	}
}

func TestConntrackGC(t *testing.T) {
	d := openTest(t, testConfig(t))
	mustUpsert(t, d, svcOf("10.96.0.10:80", "10.244.1.5:8080"))
	for port := range uint16(3) {
		syn := testPkt{src: netip.AddrPortFrom(netip.MustParseAddr("10.244.0.2"), 40000+port), dst: ap("10.96.0.10:80"), proto: 6, tcpFlags: tcpSYN}
		fromPod(t, d, syn.bytes())
	}
	// Age one connection's two entries into the past.
	ageCT(t, d, 40000)
	deleted, remaining, err := d.ConntrackGC()
	if err != nil {
		t.Fatal(err)
	}
	if deleted != 2 || remaining != 4 {
		t.Fatalf("GC deleted %d, kept %d; want 2 and 4", deleted, remaining)
	}
}

// ageCT moves the expiry of every entry of client port sport into the past.
func ageCT(t *testing.T, d *Datapath, sport uint16) {
	t.Helper()
	now, err := MonotonicNow()
	if err != nil {
		t.Fatal(err)
	}
	var (
		k     kpathCtKey
		v     kpathCtEntry
		stale []kpathCtKey
	)
	it := d.objs.KpCt.Iterate()
	for it.Next(&k, &v) {
		if portFromBPF(k.Sport) == sport {
			stale = append(stale, k)
		}
	}
	for _, k := range stale {
		if err := d.objs.KpCt.Lookup(k, &v); err != nil {
			t.Fatal(err)
		}
		v.Expires = now - 1
		if err := d.objs.KpCt.Put(k, v); err != nil {
			t.Fatal(err)
		}
	}
}

// An established connection whose entries expired is gone, collected or
// not: a new SYN on its tuple chooses again instead of following the dead
// connection's backend.
func TestTCExpiredEntryChoosesAgain(t *testing.T) {
	d := openTest(t, testConfig(t))
	mustUpsert(t, d, svcOf("10.96.0.10:80", "10.244.1.5:8080"))
	syn := testPkt{src: ap("10.244.0.2:40000"), dst: ap("10.96.0.10:80"), proto: 6, tcpFlags: tcpSYN}
	fromPod(t, d, syn.bytes())
	synAck := testPkt{src: ap("10.244.1.5:8080"), dst: ap("10.244.0.2:40000"), proto: 6, tcpFlags: tcpSYN | tcpACK}
	runProg(t, d.objs.KpToPod, synAck.bytes())
	ageCT(t, d, 40000)
	mustUpsert(t, d, svcOf("10.96.0.10:80", "10.244.1.6:8080"))
	_, out := fromPod(t, d, syn.bytes())
	if got := parsePkt(t, out).dst; got != ap("10.244.1.6:8080") {
		t.Fatalf("SYN on an expired connection went to %s, want the service's current backend", got)
	}
}

// A connection reopened between the collector's scan and its deletes (a
// client reusing its port) keeps its entries.
func TestConntrackGCSparesReopened(t *testing.T) {
	d := openTest(t, testConfig(t))
	mustUpsert(t, d, svcOf("10.96.0.10:80", "10.244.1.5:8080"))
	syn := testPkt{src: ap("10.244.0.2:40000"), dst: ap("10.96.0.10:80"), proto: 6, tcpFlags: tcpSYN}
	fromPod(t, d, syn.bytes())
	ageCT(t, d, 40000)
	testHookCTScanned = func() { fromPod(t, d, syn.bytes()) }
	t.Cleanup(func() { testHookCTScanned = nil })
	deleted, remaining, err := d.ConntrackGC()
	if err != nil {
		t.Fatal(err)
	}
	if deleted != 0 || remaining != 2 {
		t.Fatalf("GC deleted %d, kept %d; want the reopened connection's 2 entries kept", deleted, remaining)
	}
	synAck := testPkt{src: ap("10.244.1.5:8080"), dst: ap("10.244.0.2:40000"), proto: 6, tcpFlags: tcpSYN | tcpACK}
	_, out := runProg(t, d.objs.KpToPod, synAck.bytes())
	if got := parsePkt(t, out).src; got != ap("10.96.0.10:80") {
		t.Fatalf("reply of the reopened connection left as %s, want it translated to the frontend", got)
	}
}

func TestConntrackGCAtScale(t *testing.T) {
	cfg := testConfig(t)
	cfg.Sizes.Conntrack = 262144
	d := openTest(t, cfg)
	now, err := MonotonicNow()
	if err != nil {
		t.Fatal(err)
	}
	const n = 100000
	keys, vals := make([]kpathCtKey, n), make([]kpathCtEntry, n)
	for i := range n {
		keys[i] = kpathCtKey{Saddr: uint32(i), Daddr: 1, Sport: uint16(i), Dport: 80, Proto: 6}
		vals[i] = kpathCtEntry{Expires: now + 60}
		if i%2 == 0 {
			vals[i].Expires = now - 1
		}
	}
	if _, err := d.objs.KpCt.BatchUpdate(keys, vals, nil); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	deleted, remaining, err := d.ConntrackGC()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("GC of %d entries (half expired) took %s", n, time.Since(start))
	if deleted != n/2 || remaining != n/2 {
		t.Fatalf("deleted %d, remaining %d; want %d each", deleted, remaining, n/2)
	}
}

// The entries of a gone pod's connections are flushed, whichever end it
// was (client, server, a service's backend); other pods' stay.
func TestConntrackFlush(t *testing.T) {
	d := openTest(t, testConfig(t))
	mustUpsert(t, d, svcOf("10.96.0.10:80", "10.244.1.5:8080"))
	// Two clients through the Service to backend 10.244.1.5.
	for i, src := range []string{"10.244.0.2:40000", "10.244.0.3:40000"} {
		syn := testPkt{src: ap(src), dst: ap("10.96.0.10:80"), proto: 6, tcpFlags: tcpSYN}
		if v, _ := fromPod(t, d, syn.bytes()); v != tcActOK {
			t.Fatalf("client %d's SYN: verdict %d", i, v)
		}
	}
	count := func() map[netip.Addr]int {
		es, err := d.Conntrack()
		if err != nil {
			t.Fatal(err)
		}
		n := map[netip.Addr]int{}
		for _, e := range es {
			n[e.Src.Addr()]++
		}
		return n
	}
	before := count()
	if before[netip.MustParseAddr("10.244.0.2")] == 0 || before[netip.MustParseAddr("10.244.0.3")] == 0 {
		t.Fatalf("no entries to flush: %v", before)
	}
	deleted, err := d.ConntrackFlush(map[netip.Addr]struct{}{netip.MustParseAddr("10.244.0.2"): {}})
	if err != nil {
		t.Fatal(err)
	}
	after := count()
	if after[netip.MustParseAddr("10.244.0.2")] != 0 || deleted != before[netip.MustParseAddr("10.244.0.2")] {
		t.Fatalf("flush of the client deleted %d, left %v", deleted, after)
	}
	if after[netip.MustParseAddr("10.244.0.3")] != before[netip.MustParseAddr("10.244.0.3")] {
		t.Fatalf("flush of one client touched another's entries: %v -> %v", before, after)
	}
	// The backend goes: every entry translated to it goes with it.
	if _, err := d.ConntrackFlush(map[netip.Addr]struct{}{netip.MustParseAddr("10.244.1.5"): {}}); err != nil {
		t.Fatal(err)
	}
	if left := count(); len(left) != 0 {
		t.Fatalf("entries of connections to the gone backend left: %v", left)
	}
}
