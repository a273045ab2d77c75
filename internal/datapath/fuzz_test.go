package datapath

import (
	"encoding/binary"
	"errors"
	"net/netip"
	"testing"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/kpath/kpath/internal/model"
	"github.com/kpath/kpath/internal/policy"
)

// FuzzFromPod: any frame a pod sends, through kp_from_pod (BPF_PROG_TEST_RUN).
// The pod (10.0.1.2) is isolated for egress, its policy admitting TCP to
// port 80 of 10.0.2.5 alone, and nothing is tracked before each frame. The
// verdict is pass, drop or redirect; a frame that passes is ARP, or IPv4
// from the pod's own address to itself or to what its policy admits: not
// one other frame, however malformed, fragmented or forged. Every
// connection entry left is the pod's own. (Frames the kernel refuses to run
// a program on are skipped.)
func FuzzFromPod(f *testing.F) {
	client, peer := netip.MustParseAddr("10.0.1.2"), netip.MustParseAddr("10.0.2.5")
	for _, p := range []testPkt{
		{src: netip.AddrPortFrom(client, 40000), dst: netip.AddrPortFrom(peer, 80), proto: 6, tcpFlags: tcpSYN},
		{src: netip.AddrPortFrom(client, 40000), dst: netip.AddrPortFrom(peer, 81), proto: 6, tcpFlags: tcpSYN},
		{src: netip.AddrPortFrom(client, 40000), dst: netip.AddrPortFrom(peer, 80), proto: 17, payload: []byte("x")},
		{src: ap("10.0.1.3:40000"), dst: netip.AddrPortFrom(peer, 80), proto: 6, tcpFlags: tcpSYN},
		{src: netip.AddrPortFrom(client, 40000), dst: netip.AddrPortFrom(peer, 80), proto: 6, ipID: 7, moreFrags: true, tcpFlags: tcpSYN},
		{src: netip.AddrPortFrom(client, 40000), dst: netip.AddrPortFrom(peer, 80), proto: 6, ipID: 7, fragOff: 3, rawL4: []byte("later"), skipL4Header: true},
		{src: netip.AddrPortFrom(client, 0), dst: netip.AddrPortFrom(peer, 0), proto: 1, rawL4: []byte{8, 0, 0, 0, 0, 1, 0, 1}},
		{src: netip.AddrPortFrom(client, 40000), dst: netip.AddrPortFrom(peer, 80), proto: 6, tcpFlags: tcpSYN, ipOptions: []byte{1, 1, 1, 0}},
	} {
		f.Add(p.bytes())
	}
	f.Add(arpFrame(client, netip.MustParseAddr("169.254.1.1")))
	f.Add(ipv6Frame())
	d := openTest(f, testConfig(f))
	if err := d.SetIPCache(peer, 300); err != nil {
		f.Fatal(err)
	}
	if err := d.ApplyPolicy([]PolicyChange{{Set: 4, Add: map[policy.Entry]uint32{{Peer: 300, Proto: model.TCP, Port: 80, PortBits: 16}: 1}}}); err != nil {
		f.Fatal(err)
	}
	if err := d.SetEndpoint(client, Endpoint{Set: 4, Identity: 301, EgressIsolated: true}); err != nil {
		f.Fatal(err)
	}
	bindTest(f, d, client)
	f.Fuzz(func(t *testing.T, frame []byte) {
		if len(frame) < 14 || len(frame) > 1600 {
			return // BPF_PROG_TEST_RUN wants an Ethernet header; no more than a frame
		}
		clearCT(t, d)
		clearFrags(t, d)
		ret, err := d.objs.KpFromPod.Run(&ebpf.RunOptions{Data: frame, DataOut: make([]byte, len(frame)+256)})
		if errors.Is(err, unix.EINVAL) {
			return // a frame the kernel will not run a program on
		}
		if err != nil {
			t.Fatal(err)
		}
		if ret != tcActOK && ret != tcActShot && ret != tcActRedirect {
			t.Fatalf("verdict %d", ret)
		}
		if ret == tcActOK && !admitted(frame, client, peer) {
			t.Fatalf("frame % x passed", frame)
		}
		cts, err := d.Conntrack()
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range cts {
			if e.Src.Addr() != client {
				t.Fatalf("frame % x left a connection entry of another source: %+v", frame, e)
			}
		}
	})
}

// clearFrags forgets the first fragments recorded (a later fragment of one
// passes with it).
func clearFrags(t *testing.T, d *Datapath) {
	t.Helper()
	var (
		k    kpathFragKey
		v    kpathFragPorts
		keys []kpathFragKey
	)
	it := d.objs.KpFrag.Iterate()
	for it.Next(&k, &v) {
		keys = append(keys, k)
	}
	for _, k := range keys {
		if err := d.objs.KpFrag.Delete(k); err != nil {
			t.Fatal(err)
		}
	}
}

// admitted: what the pod of FuzzFromPod may send.
func admitted(frame []byte, client, peer netip.Addr) bool {
	switch binary.BigEndian.Uint16(frame[12:14]) {
	case 0x0806:
		return true // ARP (its sender checked by the program)
	case 0x0800:
	default:
		return false
	}
	ip := frame[14:]
	if len(ip) < 20 || ip[0]>>4 != 4 {
		return false
	}
	src, dst := netip.AddrFrom4([4]byte(ip[12:16])), netip.AddrFrom4([4]byte(ip[16:20]))
	if src != client {
		return false
	}
	if dst == client {
		return true // a pod cannot block access to itself
	}
	ihl := int(ip[0]&0xf) * 4
	frag := binary.BigEndian.Uint16(ip[6:8])
	if dst != peer || ip[9] != 6 || frag&0x1fff != 0 || len(ip) < ihl+4 {
		return false
	}
	return binary.BigEndian.Uint16(ip[ihl+2:ihl+4]) == 80
}
