package datapath

import (
	"encoding/binary"
	"net/netip"
	"testing"
)

// A crafted packet: Ethernet + IPv4 (+ options) + TCP or UDP, with valid
// checksums computed here, independently of the BPF code under test.
type testPkt struct {
	src, dst     netip.AddrPort
	proto        uint8
	tcpFlags     uint8
	payload      []byte
	ipOptions    []byte // multiple of 4 bytes
	ipID         uint16
	fragOff      uint16 // in 8-byte units
	moreFrags    bool
	noUDPCsum    bool
	rawL4        []byte // when set, used as the IP payload instead of building L4
	skipL4Header bool   // later fragment: the IP payload is rawL4 only
}

const (
	tcpSYN = 0x02
	tcpACK = 0x10
	tcpFIN = 0x01
	tcpRST = 0x04
)

func checksum(b []byte, sum uint32) uint16 {
	for i := 0; i+1 < len(b); i += 2 {
		sum += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	if len(b)%2 == 1 {
		sum += uint32(b[len(b)-1]) << 8
	}
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	return ^uint16(sum)
}

func pseudoSum(src, dst netip.Addr, proto uint8, l4len int) uint32 {
	s, d := src.As4(), dst.As4()
	var sum uint32
	sum += uint32(binary.BigEndian.Uint16(s[0:])) + uint32(binary.BigEndian.Uint16(s[2:]))
	sum += uint32(binary.BigEndian.Uint16(d[0:])) + uint32(binary.BigEndian.Uint16(d[2:]))
	sum += uint32(proto) + uint32(l4len)
	return sum
}

// l4 builds the TCP or UDP segment with its checksum.
func (p testPkt) l4() []byte {
	var h []byte
	if p.proto == 6 {
		h = make([]byte, 20)
		binary.BigEndian.PutUint32(h[4:], 1000) // seq
		h[12] = 5 << 4
		h[13] = p.tcpFlags
		binary.BigEndian.PutUint16(h[14:], 65535)
	} else {
		h = make([]byte, 8)
		binary.BigEndian.PutUint16(h[4:], uint16(8+len(p.payload)))
	}
	binary.BigEndian.PutUint16(h[0:], p.src.Port())
	binary.BigEndian.PutUint16(h[2:], p.dst.Port())
	seg := append(h, p.payload...)
	csumOff := 16
	if p.proto == 17 {
		csumOff = 6
		if p.noUDPCsum {
			return seg
		}
	}
	c := checksum(seg, pseudoSum(p.src.Addr(), p.dst.Addr(), p.proto, len(seg)))
	if p.proto == 17 && c == 0 {
		c = 0xffff
	}
	binary.BigEndian.PutUint16(seg[csumOff:], c)
	return seg
}

func (p testPkt) bytes() []byte {
	var l4 []byte
	switch {
	case p.rawL4 != nil:
		l4 = p.rawL4
	default:
		l4 = p.l4()
	}
	ihl := 5 + len(p.ipOptions)/4
	ip := make([]byte, ihl*4)
	ip[0] = 0x40 | byte(ihl)
	binary.BigEndian.PutUint16(ip[2:], uint16(len(ip)+len(l4)))
	binary.BigEndian.PutUint16(ip[4:], p.ipID)
	frag := p.fragOff
	if p.moreFrags {
		frag |= 0x2000
	}
	binary.BigEndian.PutUint16(ip[6:], frag)
	ip[8] = 64
	ip[9] = p.proto
	s, d := p.src.Addr().As4(), p.dst.Addr().As4()
	copy(ip[12:], s[:])
	copy(ip[16:], d[:])
	copy(ip[20:], p.ipOptions)
	binary.BigEndian.PutUint16(ip[10:], checksum(ip, 0))

	eth := []byte{2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0x08, 0x00}
	return append(append(eth, ip...), l4...)
}

// parsedPkt is what the test reads back from a program's output.
type parsedPkt struct {
	src, dst  netip.AddrPort
	proto     uint8
	ipHdr     []byte
	l4        []byte // the IP payload
	fragOff   uint16
	moreFrags bool
}

func parsePkt(t testing.TB, b []byte) parsedPkt {
	t.Helper()
	if len(b) < 14+20 {
		t.Fatalf("packet too short: %d bytes", len(b))
	}
	ip := b[14:]
	ihl := int(ip[0]&0x0f) * 4
	total := int(binary.BigEndian.Uint16(ip[2:]))
	if total > len(ip) {
		t.Fatalf("IPv4 total length %d > %d bytes present", total, len(ip))
	}
	p := parsedPkt{proto: ip[9], ipHdr: ip[:ihl], l4: ip[ihl:total]}
	frag := binary.BigEndian.Uint16(ip[6:])
	p.fragOff, p.moreFrags = frag&0x1fff, frag&0x2000 != 0
	src := netip.AddrFrom4([4]byte(ip[12:16]))
	dst := netip.AddrFrom4([4]byte(ip[16:20]))
	var sport, dport uint16
	if p.fragOff == 0 && len(p.l4) >= 4 {
		sport, dport = binary.BigEndian.Uint16(p.l4[0:]), binary.BigEndian.Uint16(p.l4[2:])
	}
	p.src, p.dst = netip.AddrPortFrom(src, sport), netip.AddrPortFrom(dst, dport)
	return p
}

// checkIPCsum asserts the IPv4 header checksum is valid.
func checkIPCsum(t testing.TB, p parsedPkt) {
	t.Helper()
	if c := checksum(p.ipHdr, 0); c != 0 {
		t.Errorf("IPv4 header checksum invalid (residue %#04x)", c)
	}
}

// checkL4Csum asserts the TCP/UDP checksum over segment (a whole datagram's
// L4 bytes, reassembled when fragmented) with the given addresses.
func checkL4Csum(t testing.TB, proto uint8, src, dst netip.Addr, seg []byte) {
	t.Helper()
	if proto == 17 && binary.BigEndian.Uint16(seg[6:]) == 0 {
		return // UDP without checksum
	}
	if c := checksum(seg, pseudoSum(src, dst, proto, len(seg))); c != 0 {
		t.Errorf("%d checksum invalid (residue %#04x)", proto, c)
	}
}

func checkCsums(t testing.TB, p parsedPkt) {
	t.Helper()
	checkIPCsum(t, p)
	checkL4Csum(t, p.proto, p.src.Addr(), p.dst.Addr(), p.l4)
}

func TestPacketBuilderChecksums(t *testing.T) {
	for _, p := range []testPkt{
		{src: ap("10.0.0.1:1"), dst: ap("10.0.0.2:2"), proto: 6, tcpFlags: tcpSYN},
		{src: ap("10.0.0.1:1"), dst: ap("10.0.0.2:2"), proto: 17, payload: []byte("odd")},
		{src: ap("10.0.0.1:1"), dst: ap("10.0.0.2:2"), proto: 17, ipOptions: []byte{1, 1, 1, 0}},
	} {
		checkCsums(t, parsePkt(t, p.bytes()))
	}
	// The checker must notice a broken checksum.
	b := testPkt{src: ap("10.0.0.1:1"), dst: ap("10.0.0.2:2"), proto: 6}.bytes()
	b[14+20+4] ^= 1
	p := parsePkt(t, b)
	if checksum(p.l4, pseudoSum(p.src.Addr(), p.dst.Addr(), 6, len(p.l4))) == 0 {
		t.Fatal("checksum residue of a corrupted segment is 0")
	}
}

func ap(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }
