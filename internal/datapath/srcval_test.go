package datapath

import (
	"encoding/binary"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
)

// arpFrame is an ARP request for IPv4 over Ethernet from sender sip.
func arpFrame(sip, tip netip.Addr) []byte {
	b := []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 2, 0, 0, 0, 0, 1, 0x08, 0x06}
	hdr := make([]byte, 28)
	binary.BigEndian.PutUint16(hdr[0:], 1)      // Ethernet
	binary.BigEndian.PutUint16(hdr[2:], 0x0800) // IPv4
	hdr[4], hdr[5] = 6, 4
	binary.BigEndian.PutUint16(hdr[6:], 1) // request
	copy(hdr[8:14], b[6:12])
	s, t := sip.As4(), tip.As4()
	copy(hdr[14:18], s[:])
	copy(hdr[24:28], t[:])
	// Padded to the Ethernet minimum, as a NIC sends it.
	return append(append(b, hdr...), make([]byte, 18)...)
}

// ipv6Frame is an ICMPv6 router solicitation as a pod sends at link-up.
func ipv6Frame() []byte {
	b := []byte{0x33, 0x33, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0x86, 0xdd}
	ip := make([]byte, 40+8)
	ip[0] = 0x60
	binary.BigEndian.PutUint16(ip[4:], 8)
	ip[6], ip[7] = 58, 255
	src, dst := netip.MustParseAddr("fe80::1").As16(), netip.MustParseAddr("ff02::2").As16()
	copy(ip[8:24], src[:])
	copy(ip[24:40], dst[:])
	ip[40] = 133
	return append(b, ip...)
}

// TestSourceValidation: kp_from_pod passes what a pod sends from an address
// bound to the interface it arrives on, and drops, counts and reports
// everything else before any other stage sees it: another local pod's
// address (bound to another interface), a remote pod's or nobody's
// (bound to none), an address unbound when its pod went, over TCP, UDP and
// ICMP and to a Service frontend alike (no connection is tracked for a
// forged packet). ARP is held to its sender address; other ethertypes are
// dropped as unsupported.
func TestSourceValidation(t *testing.T) {
	d := openTest(t, testConfig(t))
	ev, err := d.OpenEvents()
	if err != nil {
		t.Fatal(err)
	}
	defer ev.Close()
	mustUpsert(t, d, svcOf("10.96.0.10:80/UDP", "10.244.1.5:8080"))
	mustUpsert(t, d, svcOf("10.96.0.10:80", "10.244.1.5:8080"))
	own, neighbour, remote := netip.MustParseAddr("10.244.0.2"), netip.MustParseAddr("10.244.0.3"), netip.MustParseAddr("10.244.1.9")
	bindTest(t, d, own)
	if err := d.BindPod(testIfindex+100, neighbour); err != nil { // another pod's veth
		t.Fatal(err)
	}
	server := ap("10.244.0.4:80")

	for _, c := range []struct {
		name string
		pkt  testPkt
		pass bool
	}{
		{"own/tcp", testPkt{src: netip.AddrPortFrom(own, 40000), dst: server, proto: 6, tcpFlags: tcpSYN}, true},
		{"own/udp", testPkt{src: netip.AddrPortFrom(own, 40000), dst: server, proto: 17, payload: []byte("x")}, true},
		{"own/service", testPkt{src: netip.AddrPortFrom(own, 40001), dst: ap("10.96.0.10:80"), proto: 6, tcpFlags: tcpSYN}, true},
		{"neighbour/tcp", testPkt{src: netip.AddrPortFrom(neighbour, 40000), dst: server, proto: 6, tcpFlags: tcpSYN}, false},
		{"neighbour/udp", testPkt{src: netip.AddrPortFrom(neighbour, 40000), dst: server, proto: 17, payload: []byte("x")}, false},
		{"neighbour/icmp", testPkt{src: netip.AddrPortFrom(neighbour, 0), dst: server, proto: 1, rawL4: []byte{8, 0, 0, 0, 0, 1, 0, 1}}, false},
		{"neighbour/service-udp", testPkt{src: netip.AddrPortFrom(neighbour, 40002), dst: ap("10.96.0.10:80"), proto: 17, payload: []byte("x")}, false},
		{"neighbour/service-tcp", testPkt{src: netip.AddrPortFrom(neighbour, 40003), dst: ap("10.96.0.10:80"), proto: 6, tcpFlags: tcpSYN}, false},
		{"remote/udp", testPkt{src: netip.AddrPortFrom(remote, 40000), dst: server, proto: 17, payload: []byte("x")}, false},
		{"node/tcp", testPkt{src: ap("192.168.200.11:40000"), dst: server, proto: 6, tcpFlags: tcpSYN}, false},
		{"unspecified/udp", testPkt{src: ap("0.0.0.0:68"), dst: ap("255.255.255.255:67"), proto: 17, payload: []byte("x")}, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			before := d.counter(t, ReasonInvalidSource, "from-pod")
			ret, _ := runProg(t, d.objs.KpFromPod, c.pkt.bytes())
			dropped := d.counter(t, ReasonInvalidSource, "from-pod") - before
			if c.pass {
				if ret != tcActOK || dropped != 0 {
					t.Fatalf("verdict %d, %d counted invalid; want it passed", ret, dropped)
				}
				return
			}
			if ret != tcActShot || dropped != 1 {
				t.Fatalf("verdict %d, %d counted invalid; want it dropped as an invalid source", ret, dropped)
			}
			drops := ofType(drain(t, ev), FlowDrop)
			if len(drops) != 1 || drops[0].Reason != ReasonInvalidSource || drops[0].IfIndex != testIfindex ||
				drops[0].Src.Addr() != c.pkt.src.Addr() || drops[0].Dir != "from-pod" {
				t.Fatalf("drop events %+v, want one invalid source naming interface %d", drops, testIfindex)
			}
		})
	}
	cts, err := d.Conntrack()
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range cts {
		if e.Src.Addr() != own {
			t.Errorf("a forged packet left a connection entry: %+v", e)
		}
	}

	t.Run("arp", func(t *testing.T) {
		gw := netip.MustParseAddr("169.254.1.1")
		if ret, _ := runProg(t, d.objs.KpFromPod, arpFrame(own, gw)); ret != tcActOK {
			t.Errorf("ARP from the pod's own address: verdict %d, want passed", ret)
		}
		if ret, _ := runProg(t, d.objs.KpFromPod, arpFrame(netip.IPv4Unspecified(), own)); ret != tcActOK {
			t.Errorf("ARP probe (sender 0.0.0.0): verdict %d, want passed", ret)
		}
		before := d.counter(t, ReasonInvalidSource, "from-pod")
		if ret, _ := runProg(t, d.objs.KpFromPod, arpFrame(neighbour, gw)); ret != tcActShot {
			t.Errorf("ARP claiming the neighbour's address: verdict %d, want dropped", ret)
		}
		if got := d.counter(t, ReasonInvalidSource, "from-pod") - before; got != 1 {
			t.Errorf("%d counted invalid, want 1", got)
		}
		bad := arpFrame(own, gw)
		bad[14+4] = 8 // hardware address length
		if ret, _ := runProg(t, d.objs.KpFromPod, bad); ret != tcActShot {
			t.Errorf("malformed ARP: verdict %d, want dropped", ret)
		}
	})
	t.Run("ipv6", func(t *testing.T) {
		before := d.counter(t, ReasonUnsupportedL3, "from-pod")
		if ret, _ := runProg(t, d.objs.KpFromPod, ipv6Frame()); ret != tcActShot {
			t.Errorf("IPv6 from a pod: verdict %d, want dropped", ret)
		}
		if got := d.counter(t, ReasonUnsupportedL3, "from-pod") - before; got != 1 {
			t.Errorf("%d counted as unsupported L3, want 1", got)
		}
	})
	t.Run("unbound", func(t *testing.T) {
		if err := d.UnbindPod(own); err != nil {
			t.Fatal(err)
		}
		pkt := testPkt{src: netip.AddrPortFrom(own, 40000), dst: server, proto: 17, payload: []byte("x")}
		if ret, _ := runProg(t, d.objs.KpFromPod, pkt.bytes()); ret != tcActShot {
			t.Errorf("a released address: verdict %d, want dropped", ret)
		}
		pods, err := d.LocalPods()
		if err != nil {
			t.Fatal(err)
		}
		if len(pods) != 1 || pods[neighbour] != testIfindex+100 {
			t.Errorf("bindings %v, want only the neighbour's", pods)
		}
	})
	// kp_to_pod has nothing to validate: what reaches a pod may come from
	// anywhere, and its policy decides.
	reply := testPkt{src: ap("10.244.1.9:53"), dst: netip.AddrPortFrom(own, 40000), proto: 17, payload: []byte("x")}
	if ret, _ := runProg(t, d.objs.KpToPod, reply.bytes()); ret != tcActOK {
		t.Errorf("to-pod verdict %d for an unisolated pod, want passed", ret)
	}
}

// TestOpenReplacesRebuildableMapsOfAnotherLayout: an upgrade that changes
// the layout of a map whose contents are rebuilt (here the counters, which
// grew with source validation's drop reasons) replaces its pin instead of
// refusing to load; a map holding state (conntrack) of another layout
// still refuses, naming the way out.
func TestOpenReplacesRebuildableMapsOfAnotherLayout(t *testing.T) {
	cfg := testConfig(t)
	d := openTest(t, cfg)
	d.Close()
	pin := filepath.Join(cfg.BPFFS, cfg.PinDir, kpathMapKpMetrics)
	if err := os.Remove(pin); err != nil {
		t.Fatal(err)
	}
	old, err := ebpf.NewMap(&ebpf.MapSpec{Name: kpathMapKpMetrics, Type: ebpf.PerCPUArray, KeySize: 4, ValueSize: 16, MaxEntries: 9 * 5})
	if err != nil {
		t.Fatal(err)
	}
	if err := old.Pin(pin); err != nil {
		t.Fatal(err)
	}
	old.Close()
	d, err = Open(cfg)
	if err != nil {
		t.Fatalf("open over counters of an older layout: %v", err)
	}
	if got := d.objs.KpMetrics.MaxEntries(); got != uint32(kpathKpReasonKP_REASON_MAX)*uint32(kpathKpDirKP_DIR_MAX) {
		t.Errorf("counters map has %d entries, want this version's", got)
	}
	d.Close()

	sizes := cfg
	sizes.Sizes.Conntrack *= 2
	if _, err := Open(sizes); err == nil || !strings.Contains(err.Error(), "kpath dp reset") {
		t.Fatalf("open over conntrack of another size: %v, want a refusal naming kpath dp reset", err)
	}
}
