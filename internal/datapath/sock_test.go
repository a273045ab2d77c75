package datapath

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/kpath/kpath/internal/testutil"
)

const helperEnv = "KPATH_TEST_HELPER"

// sockReport is what the socket helper found.
type sockReport struct {
	TCPBackends  map[string]int `json:"tcp_backends"` // backend name -> connections
	TCPPeer      string         `json:"tcp_peer"`     // getpeername() of a service connection
	UDPBackends  map[string]int `json:"udp_backends"`
	UDPFrom      []string       `json:"udp_from"` // source addresses recvfrom() reported
	UDPConnPeer  string         `json:"udp_conn_peer"`
	UDPConnFrom  string         `json:"udp_conn_from"`
	NoBackendErr string         `json:"no_backend_err"`
	DirectPeer   string         `json:"direct_peer"`
	// A dual-stack AF_INET6 socket to the v4-mapped service addresses:
	// the TCP peer and answer, and where UDP replies came from.
	MappedTCPPeer, MappedTCPAnswer   string
	MappedUDPConnFrom, MappedUDPFrom string
	Err                              string `json:"err,omitempty"`
}

// runHelper runs in a fresh network namespace inside the test's cgroup:
// it starts echo servers on loopback addresses and uses service addresses,
// which only the socket hook can make reachable (there is no route to them).
func runHelper(mode string) int {
	if mode == "dial" {
		// Dial the address in $KPATH_TEST_DIAL; report the error or answer.
		var rep sockReport
		c, err := net.DialTimeout("tcp4", os.Getenv("KPATH_TEST_DIAL"), time.Second)
		if err == nil {
			b, _ := io.ReadAll(c)
			c.Close()
			rep.TCPPeer = string(b)
		}
		rep.NoBackendErr = fmt.Sprint(err)
		_ = json.NewEncoder(os.Stdout).Encode(rep)
		return 0
	}
	if mode == "untranslated" {
		// Another namespace's hooks: the service address stays as it is.
		_, err := net.DialTimeout("tcp4", "10.96.0.10:80", time.Second)
		_ = json.NewEncoder(os.Stdout).Encode(sockReport{NoBackendErr: fmt.Sprint(err)})
		return 0
	}
	if mode != "sock" {
		fmt.Fprintln(os.Stderr, "unknown helper mode", mode)
		return 2
	}
	rep := sockReport{TCPBackends: map[string]int{}, UDPBackends: map[string]int{}}
	if err := sockHelper(&rep); err != nil {
		rep.Err = err.Error()
	}
	_ = json.NewEncoder(os.Stdout).Encode(rep)
	return 0
}

func sockHelper(rep *sockReport) error {
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		return err
	}
	if err := netlink.LinkSetUp(lo); err != nil {
		return err
	}
	for _, name := range []string{"127.0.0.1", "127.0.0.2"} {
		ln, err := net.Listen("tcp4", name+":8080")
		if err != nil {
			return err
		}
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				_, _ = c.Write([]byte(name))
				c.Close()
			}
		}()
		pc, err := net.ListenPacket("udp4", name+":5353")
		if err != nil {
			return err
		}
		go func() {
			buf := make([]byte, 64)
			for {
				_, from, err := pc.ReadFrom(buf)
				if err != nil {
					return
				}
				_, _ = pc.WriteTo([]byte(name), from)
			}
		}()
	}

	for range 40 {
		c, err := net.DialTimeout("tcp4", "10.96.0.10:80", 2*time.Second)
		if err != nil {
			return fmt.Errorf("dial service: %w", err)
		}
		rep.TCPPeer = c.RemoteAddr().String()
		// RemoteAddr is what connect() was given; ask the kernel.
		sa, err := unix.Getpeername(fd(c.(syscall.Conn)))
		if err != nil {
			return err
		}
		rep.TCPPeer = sockaddrString(sa)
		b := make([]byte, 16)
		n, _ := c.Read(b)
		rep.TCPBackends[string(b[:n])]++
		c.Close()
	}

	// Unconnected UDP: sendto() the service, recvfrom() shows the service.
	pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		return err
	}
	svc := &net.UDPAddr{IP: net.IPv4(10, 96, 0, 11), Port: 53}
	for range 40 {
		if _, err := pc.WriteTo([]byte("q"), svc); err != nil {
			return fmt.Errorf("sendto service: %w", err)
		}
		_ = pc.SetReadDeadline(time.Now().Add(2 * time.Second))
		b := make([]byte, 16)
		n, from, err := pc.ReadFrom(b)
		if err != nil {
			return fmt.Errorf("recvfrom: %w", err)
		}
		rep.UDPBackends[string(b[:n])]++
		rep.UDPFrom = append(rep.UDPFrom, from.String())
	}
	pc.Close()

	// Connected UDP: connect() then read; getpeername() and the source of
	// replies are the service.
	uc, err := net.DialUDP("udp4", nil, svc)
	if err != nil {
		return fmt.Errorf("connect udp service: %w", err)
	}
	if sa, err := unix.Getpeername(fd(uc)); err == nil {
		rep.UDPConnPeer = sockaddrString(sa)
	}
	if _, err := uc.Write([]byte("q")); err != nil {
		return err
	}
	_ = uc.SetReadDeadline(time.Now().Add(2 * time.Second))
	b := make([]byte, 16)
	_, from, err := uc.ReadFromUDP(b)
	if err != nil {
		return fmt.Errorf("read connected udp: %w", err)
	}
	rep.UDPConnFrom = from.String()
	uc.Close()

	if _, err := net.DialTimeout("tcp4", "10.96.0.12:80", time.Second); err != nil {
		rep.NoBackendErr = err.Error()
		if !errors.Is(err, syscall.ECONNREFUSED) {
			rep.NoBackendErr += " (not ECONNREFUSED)"
		}
	}
	if err := mappedHelper(rep); err != nil {
		return fmt.Errorf("v4-mapped: %w", err)
	}
	c, err := net.DialTimeout("tcp4", "127.0.0.2:8080", time.Second)
	if err != nil {
		return fmt.Errorf("dial backend directly: %w", err)
	}
	sa, _ := unix.Getpeername(fd(c.(syscall.Conn)))
	rep.DirectPeer = sockaddrString(sa)
	c.Close()
	return nil
}

// mappedHelper uses the services from dual-stack AF_INET6 sockets, as
// Java does: TCP connect() and getpeername(), UDP connected and sendto().
func mappedHelper(rep *sockReport) error {
	mapped := func(a [4]byte, port int) *unix.SockaddrInet6 {
		sa := &unix.SockaddrInet6{Port: port}
		copy(sa.Addr[10:], []byte{0xff, 0xff})
		copy(sa.Addr[12:], a[:])
		return sa
	}
	sock := func(typ int) (int, error) {
		fd, err := unix.Socket(unix.AF_INET6, typ|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return -1, err
		}
		tv := unix.NsecToTimeval(int64(2 * time.Second))
		_ = unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
		return fd, unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 0)
	}
	buf := make([]byte, 64)
	tfd, err := sock(unix.SOCK_STREAM)
	if err != nil {
		return err
	}
	defer unix.Close(tfd)
	if err := unix.Connect(tfd, mapped([4]byte{10, 96, 0, 10}, 80)); err != nil {
		return fmt.Errorf("tcp connect: %w", err)
	}
	if sa, err := unix.Getpeername(tfd); err == nil {
		rep.MappedTCPPeer = sockaddrString(sa)
	}
	n, _ := unix.Read(tfd, buf)
	rep.MappedTCPAnswer = string(buf[:max(n, 0)])

	svc := mapped([4]byte{10, 96, 0, 11}, 53)
	ufd, err := sock(unix.SOCK_DGRAM)
	if err != nil {
		return err
	}
	defer unix.Close(ufd)
	if err := unix.Connect(ufd, svc); err != nil {
		return fmt.Errorf("udp connect: %w", err)
	}
	if _, err := unix.Write(ufd, []byte("q")); err != nil {
		return err
	}
	if _, from, err := unix.Recvfrom(ufd, buf, 0); err == nil {
		rep.MappedUDPConnFrom = sockaddrString(from)
	}
	pfd, err := sock(unix.SOCK_DGRAM)
	if err != nil {
		return err
	}
	defer unix.Close(pfd)
	if err := unix.Sendto(pfd, []byte("q"), 0, svc); err != nil {
		return fmt.Errorf("udp sendto: %w", err)
	}
	if _, from, err := unix.Recvfrom(pfd, buf, 0); err == nil {
		rep.MappedUDPFrom = sockaddrString(from)
	}
	return nil
}

func fd(c syscall.Conn) int {
	rc, _ := c.SyscallConn()
	var out int
	_ = rc.Control(func(f uintptr) { out = int(f) })
	return out
}

func sockaddrString(sa unix.Sockaddr) string {
	if in, ok := sa.(*unix.SockaddrInet4); ok {
		return fmt.Sprintf("%d.%d.%d.%d:%d", in.Addr[0], in.Addr[1], in.Addr[2], in.Addr[3], in.Port)
	}
	if in, ok := sa.(*unix.SockaddrInet6); ok {
		return netip.AddrPortFrom(netip.AddrFrom16(in.Addr), uint16(in.Port)).String()
	}
	return fmt.Sprint(sa)
}

// testCgroup creates a cgroup v2 directory that is removed after the test.
func testCgroup(t *testing.T) (string, *os.File) {
	t.Helper()
	root, err := CgroupV2Root()
	if err != nil {
		testutil.SkipOrFail(t, err.Error())
	}
	dir, err := os.MkdirTemp(root, "kpath-test-")
	if err != nil {
		t.Fatalf("create cgroup: %v", err)
	}
	f, err := os.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		f.Close()
		// The helper has exited, so the cgroup is empty and can go.
		for range 50 {
			if err := os.Remove(dir); err == nil || errors.Is(err, os.ErrNotExist) {
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
		t.Errorf("cgroup %s not removed", dir)
	})
	return dir, f
}

// runInCgroup runs the test binary as a helper in cgroup fd and a new,
// empty network namespace, and decodes its JSON report into out.
func runInCgroup(t *testing.T, cg *os.File, mode string, out any, env ...string) {
	t.Helper()
	runInCgroupNetns(t, cg, true, mode, out, env...)
}

// runInCgroupNetns is runInCgroup, in the test's own network namespace
// unless newNetns.
func runInCgroupNetns(t *testing.T, cg *os.File, newNetns bool, mode string, out any, env ...string) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(append(os.Environ(), helperEnv+"="+mode), env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: int(cg.Fd())}
	if newNetns {
		cmd.SysProcAttr.Cloneflags = unix.CLONE_NEWNET
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("helper: %v\n%s", err, stderr.String())
	}
	if err := json.Unmarshal(stdout.Bytes(), out); err != nil {
		t.Fatalf("helper output %q: %v (stderr %s)", stdout.String(), err, stderr.String())
	}
}

func TestSocketHookTranslatesAndHidesBackends(t *testing.T) {
	d := openTest(t, testConfig(t))
	dir, cg := testCgroup(t)
	if err := d.AttachCgroup(dir); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := d.DetachCgroup(dir); err != nil {
			t.Errorf("detach: %v", err)
		}
	})
	// Attaching twice is a no-op.
	if err := d.AttachCgroup(dir); err != nil {
		t.Fatalf("second attach: %v", err)
	}
	links, _ := filepath.Glob(filepath.Join(d.PinPath(), "links", "cgroup_*"))
	if len(links) != len(cgroupHooks) {
		t.Fatalf("pinned cgroup links = %d, want %d", len(links), len(cgroupHooks))
	}

	mustUpsert(t, d, svcOf("10.96.0.10:80", "127.0.0.1:8080", "127.0.0.2:8080"))
	udp := svcOf("10.96.0.11:53/UDP", "127.0.0.1:5353", "127.0.0.2:5353")
	mustUpsert(t, d, udp)
	mustUpsert(t, d, svcOf("10.96.0.12:80"))

	var rep sockReport
	runInCgroup(t, cg, "sock", &rep)
	if rep.Err != "" {
		t.Fatalf("helper: %s", rep.Err)
	}
	t.Logf("socket hook: TCP per backend %v, UDP per backend %v", rep.TCPBackends, rep.UDPBackends)
	for _, m := range []map[string]int{rep.TCPBackends, rep.UDPBackends} {
		if len(m) != 2 || m["127.0.0.1"] == 0 || m["127.0.0.2"] == 0 {
			t.Errorf("requests not spread over both backends: %v", m)
		}
	}
	if rep.TCPPeer != "10.96.0.10:80" {
		t.Errorf("getpeername on a service connection = %s, want 10.96.0.10:80", rep.TCPPeer)
	}
	for _, from := range rep.UDPFrom {
		if from != "10.96.0.11:53" {
			t.Fatalf("recvfrom reported %s, want the service 10.96.0.11:53", from)
		}
	}
	if rep.UDPConnPeer != "10.96.0.11:53" || rep.UDPConnFrom != "10.96.0.11:53" {
		t.Errorf("connected UDP: peer %s, reply from %s; want the service", rep.UDPConnPeer, rep.UDPConnFrom)
	}
	if rep.NoBackendErr == "" || !bytes.Contains([]byte(rep.NoBackendErr), []byte("connection refused")) {
		t.Errorf("connect to a service without backends: %q, want ECONNREFUSED (as kube-proxy's REJECT)", rep.NoBackendErr)
	}
	if rep.MappedTCPPeer != "[::ffff:10.96.0.10]:80" || (rep.MappedTCPAnswer != "127.0.0.1" && rep.MappedTCPAnswer != "127.0.0.2") {
		t.Errorf("v4-mapped TCP: peer %s, answer %q; want the service and a backend", rep.MappedTCPPeer, rep.MappedTCPAnswer)
	}
	if rep.MappedUDPConnFrom != "[::ffff:10.96.0.11]:53" || rep.MappedUDPFrom != "[::ffff:10.96.0.11]:53" {
		t.Errorf("v4-mapped UDP: connected reply from %s, unconnected from %s; want the service", rep.MappedUDPConnFrom, rep.MappedUDPFrom)
	}
	if rep.DirectPeer != "127.0.0.2:8080" {
		t.Errorf("direct connection peer = %s", rep.DirectPeer)
	}
	if n := d.counter(t, "no service backend", "socket"); n != 1 {
		t.Errorf("socket no-backend counter = %d, want 1", n)
	}
	if n := d.counter(t, "service translated", "socket"); n < 81 {
		t.Errorf("socket translations = %d, want >= 81", n)
	}
}

// TestSocketHookHostNamespaceOnly: with HostNetnsCookie the hooks leave
// every other namespace's sockets alone (pods are translated per packet).
func TestSocketHookHostNamespaceOnly(t *testing.T) {
	cfg := testConfig(t)
	cookie, err := NetnsCookie()
	if err != nil {
		testutil.SkipOrFail(t, err.Error())
		return
	}
	cfg.HostNetnsCookie = cookie
	d := openTest(t, cfg)
	dir, cg := testCgroup(t)
	if err := d.AttachCgroup(dir); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = d.DetachCgroup(dir) })
	mustUpsert(t, d, svcOf("10.96.0.10:80", "127.0.0.1:8080"))
	var rep sockReport
	runInCgroup(t, cg, "untranslated", &rep)
	if !strings.Contains(rep.NoBackendErr, "network is unreachable") {
		t.Errorf("a pod namespace's connect to the service: %q, want it untranslated (network is unreachable)", rep.NoBackendErr)
	}
	if n := d.counter(t, "service translated", "socket"); n != 0 {
		t.Errorf("%d socket translations outside the host namespace", n)
	}
}
