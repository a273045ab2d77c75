package test

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"strconv"
	"time"

	"golang.org/x/sys/unix"
)

// Helper commands for source validation: a sender of packets with any
// source address (a raw socket, as a pod with CAP_NET_RAW has), and a
// capture of what reaches the helper's namespace, to prove that nothing of
// what the sender forged arrived.

// forgedSport is the source port of every packet forge sends, so captures
// count them apart from other traffic.
const forgedSport = 31337

// forge sends n packets from src to dst (IP:PORT) over proto ("tcp": SYNs;
// "udp": datagrams), built whole and sent through a raw socket, so the
// kernel keeps the source as given. Returns how many the kernel took.
func forge(src netip.Addr, dst netip.AddrPort, proto string, n int) (int, error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_RAW, unix.IPPROTO_RAW)
	if err != nil {
		return 0, fmt.Errorf("raw socket: %w", err)
	}
	defer unix.Close(fd)
	to := &unix.SockaddrInet4{Addr: dst.Addr().As4()}
	sent := 0
	for i := range n {
		pkt, err := forgedPacket(src, dst, proto, uint16(i))
		if err != nil {
			return sent, err
		}
		if err := unix.Sendto(fd, pkt, 0, to); err != nil {
			return sent, fmt.Errorf("send: %w", err)
		}
		sent++
	}
	return sent, nil
}

func csum16(b []byte, sum uint32) uint16 {
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

// forgedPacket is an IPv4 packet with valid checksums: a TCP SYN or a UDP
// datagram saying "forged".
func forgedPacket(src netip.Addr, dst netip.AddrPort, proto string, id uint16) ([]byte, error) {
	var l4 []byte
	var num uint8
	switch proto {
	case "tcp":
		num = unix.IPPROTO_TCP
		l4 = make([]byte, 20)
		binary.BigEndian.PutUint32(l4[4:], 1000+uint32(id)) // sequence
		l4[12] = 5 << 4
		l4[13] = 0x02 // SYN
		binary.BigEndian.PutUint16(l4[14:], 64240)
	case "udp":
		num = unix.IPPROTO_UDP
		l4 = append(make([]byte, 8), "forged"...)
		binary.BigEndian.PutUint16(l4[4:], uint16(len(l4)))
	default:
		return nil, fmt.Errorf("forge: protocol %q, want tcp or udp", proto)
	}
	binary.BigEndian.PutUint16(l4[0:], forgedSport)
	binary.BigEndian.PutUint16(l4[2:], dst.Port())
	s, d := src.As4(), dst.Addr().As4()
	pseudo := append(append(append([]byte{}, s[:]...), d[:]...), 0, num, byte(len(l4)>>8), byte(len(l4)))
	var sum uint32
	for i := 0; i < len(pseudo); i += 2 {
		sum += uint32(binary.BigEndian.Uint16(pseudo[i:]))
	}
	off := 16 // TCP checksum
	if num == unix.IPPROTO_UDP {
		off = 6
	}
	binary.BigEndian.PutUint16(l4[off:], csum16(l4, sum))
	ip := make([]byte, 20)
	ip[0] = 0x45
	binary.BigEndian.PutUint16(ip[2:], uint16(20+len(l4)))
	binary.BigEndian.PutUint16(ip[4:], id)
	ip[8], ip[9] = 64, num
	copy(ip[12:], s[:])
	copy(ip[16:], d[:])
	binary.BigEndian.PutUint16(ip[10:], csum16(ip, 0))
	return append(ip, l4...), nil
}

// capture is an open packet socket of the helper's namespace.
type capture struct{ fd int }

// startCapture opens a packet socket for every IPv4 packet of the
// namespace; packets queue in it until count reads them.
func startCapture() (*capture, error) {
	proto := int(htons(unix.ETH_P_IP))
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_DGRAM, proto)
	if err != nil {
		return nil, fmt.Errorf("packet socket: %w", err)
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, 4<<20); err != nil {
		unix.Close(fd)
		return nil, err
	}
	return &capture{fd: fd}, nil
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// count reads what arrived (not what the namespace sent) until nothing
// more comes for quiet, and closes the socket. The result counts the
// packets from forgedSport to port (TCP: SYNs), by "proto source".
func (c *capture) count(port uint16, quiet time.Duration) (map[string]int, error) {
	defer unix.Close(c.fd)
	tv := unix.NsecToTimeval(quiet.Nanoseconds())
	if err := unix.SetsockoptTimeval(c.fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		return nil, err
	}
	out := map[string]int{}
	buf := make([]byte, 65536)
	for {
		n, from, err := unix.Recvfrom(c.fd, buf, 0)
		if err == unix.EAGAIN || err == unix.EWOULDBLOCK {
			return out, nil
		}
		if err != nil {
			return nil, fmt.Errorf("capture: %w", err)
		}
		if ll, ok := from.(*unix.SockaddrLinklayer); ok && ll.Pkttype == unix.PACKET_OUTGOING {
			continue
		}
		p := buf[:n]
		if len(p) < 20 || p[0]>>4 != 4 {
			continue
		}
		ihl := int(p[0]&0xf) * 4
		if len(p) < ihl+4 || (p[9] != unix.IPPROTO_TCP && p[9] != unix.IPPROTO_UDP) {
			continue
		}
		if binary.BigEndian.Uint16(p[ihl:]) != forgedSport || binary.BigEndian.Uint16(p[ihl+2:]) != port {
			continue
		}
		name := "udp"
		if p[9] == unix.IPPROTO_TCP {
			// SYNs only: the forger's peer may answer the server's SYN-ACKs
			// with resets from the same ports.
			if len(p) < ihl+14 || p[ihl+13]&0x12 != 0x02 {
				continue
			}
			name = "tcp"
		}
		out[name+" "+netip.AddrFrom4([4]byte(p[12:16])).String()]++
	}
}

// forgeCommand runs "forge SRC IP:PORT PROTO N".
func forgeCommand(f []string, res *clientResult) error {
	if len(f) != 5 {
		return fmt.Errorf("usage: forge SRC IP:PORT tcp|udp N")
	}
	src, err := netip.ParseAddr(f[1])
	if err != nil {
		return err
	}
	dst, err := netip.ParseAddrPort(f[2])
	if err != nil {
		return err
	}
	n, err := strconv.Atoi(f[4])
	if err != nil {
		return err
	}
	res.Counts["sent"], err = forge(src, dst, f[3], n)
	return err
}
