package workload

import (
	"context"
	"errors"
	"net"
	"slices"
	"strings"
	"testing"
	"time"
)

// startEcho runs an echo server on loopback ports chosen by the kernel and
// stops it at the end of the test.
func startEcho(t *testing.T, cfg EchoConfig) *Echo {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	e, err := StartEcho(ctx, cfg)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cancel()
		done := make(chan error, 1)
		go func() { done <- e.Wait() }()
		select {
		case err := <-done:
			if !errors.Is(err, context.Canceled) {
				t.Errorf("echo server stopped with %v, want context.Canceled", err)
			}
		case <-time.After(3 * time.Second):
			t.Error("echo server did not stop")
		}
	})
	return e
}

func ports(t *testing.T, as []net.Addr) []int {
	t.Helper()
	var ps []int
	for _, a := range as {
		switch a := a.(type) {
		case *net.TCPAddr:
			ps = append(ps, a.Port)
		case *net.UDPAddr:
			ps = append(ps, a.Port)
		default:
			t.Fatalf("address %v of type %T", a, a)
		}
	}
	return ps
}

func distinct(ps []int) bool {
	s := slices.Clone(ps)
	slices.Sort(s)
	return len(slices.Compact(s)) == len(ps) && !slices.Contains(ps, 0)
}

func TestEchoAndProbe(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		done <- RunEcho(ctx, EchoConfig{Name: "pod-a", HTTPAddr: addr, UDPAddr: "127.0.0.1:0"}, func() { close(ready) })
	}()
	select {
	case <-ready:
	case err := <-done:
		t.Fatalf("echo server: %v", err)
	}
	r := ProbeHTTP(ctx, "http://"+addr+"/", 20, 2*time.Second)
	if r.Failures != 0 || r.Backends["pod-a"] != 20 || r.P50 <= 0 || r.P99 < r.P50 {
		t.Fatalf("probe result %+v", r)
	}
	cancel()
	select {
	case <-done:
	case <-time.After(3 * time.Second):
		t.Fatal("echo server did not stop")
	}
	r = ProbeHTTP(context.Background(), "http://"+addr+"/", 2, 200*time.Millisecond)
	if r.Failures != 2 {
		t.Fatalf("probe of a stopped server: %+v", r)
	}
}

// Two servers with different names, each on several TCP and UDP ports:
// every probe over every transport gets the name of the server it asked.
func TestEchoManyPortsProbeTCPAndUDP(t *testing.T) {
	servers := map[string]*Echo{}
	for _, name := range []string{"pod-a", "pod-b"} {
		e := startEcho(t, EchoConfig{
			Name:     name,
			HTTPAddr: "127.0.0.1:0", HTTPAddrs: []string{"127.0.0.1:0", "127.0.0.1:0"},
			UDPAddr: "127.0.0.1:0", UDPAddrs: []string{"127.0.0.1:0", "127.0.0.1:0"},
		})
		if len(e.HTTP) != 3 || len(e.UDP) != 3 || !distinct(ports(t, e.HTTP)) || !distinct(ports(t, e.UDP)) {
			t.Fatalf("%s bound HTTP %v, UDP %v; want 3 distinct ports each", name, e.HTTP, e.UDP)
		}
		servers[name] = e
	}
	const n = 7
	for name, e := range servers {
		var targets []string
		for _, a := range e.HTTP {
			targets = append(targets, "http://"+a.String()+"/", "tcp://"+a.String())
		}
		for _, a := range e.UDP {
			targets = append(targets, "udp://"+a.String())
		}
		for _, target := range targets {
			for _, unconnected := range []bool{false, true} {
				if unconnected && !strings.HasPrefix(target, "udp:") {
					continue
				}
				r, err := Probe(context.Background(), target, n, ProbeOptions{Timeout: 2 * time.Second, UDPUnconnected: unconnected})
				if err != nil {
					t.Fatal(err)
				}
				if r.URL != target || r.Requests != n || r.Failures != 0 || r.Backends[name] != n || len(r.Backends) != 1 ||
					r.P50 <= 0 || r.P99 < r.P50 || r.Total <= 0 {
					t.Errorf("probe %s (unconnected %v) of %s: %+v", target, unconnected, name, r)
				}
			}
		}
	}
}

// Each UDP request comes from a new socket: the server sees n source ports.
func TestProbeUDPNewSocketEach(t *testing.T) {
	pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	seen := make(chan string, 100)
	go func() {
		buf := make([]byte, 2048)
		for {
			_, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			seen <- from.String()
			_, _ = pc.WriteTo([]byte("x"), from)
		}
	}()
	for _, unconnected := range []bool{false, true} {
		const n = 5
		r := ProbeUDP(context.Background(), pc.LocalAddr().String(), n, 2*time.Second, unconnected)
		if r.Failures != 0 || r.Backends["x"] != n {
			t.Fatalf("unconnected %v: %+v", unconnected, r)
		}
		from := map[string]bool{}
		for range n {
			from[<-seen] = true
		}
		// The kernel may, rarely, hand a closed socket's port to the next
		// one; one socket for all requests would show a single address.
		if len(from) < n-1 {
			t.Errorf("unconnected %v: %d requests came from %d source addresses %v", unconnected, n, len(from), from)
		}
	}
}

// A closed UDP port: every request fails, none later than its timeout.
func TestProbeUDPClosedPort(t *testing.T) {
	pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := pc.LocalAddr().String()
	pc.Close()
	const (
		n       = 3
		timeout = 300 * time.Millisecond
	)
	for _, unconnected := range []bool{false, true} {
		t0 := time.Now()
		r, err := Probe(context.Background(), "udp://"+addr, n, ProbeOptions{Timeout: timeout, UDPUnconnected: unconnected})
		took := time.Since(t0)
		if err != nil {
			t.Fatal(err)
		}
		if r.Failures != n || len(r.Backends) != 0 || r.LastErr == "" {
			t.Errorf("unconnected %v: probe of a closed port %+v", unconnected, r)
		}
		if took > n*timeout+time.Second {
			t.Errorf("unconnected %v: %d requests with timeout %s took %s", unconnected, n, timeout, took)
		}
		t.Logf("unconnected %v: %d failures in %s, last: %s", unconnected, r.Failures, took, r.LastErr)
	}
}

// A reply from another address than the one asked: the unconnected probe
// counts it a failure, and the connected socket never sees it.
func TestProbeUDPReplyFromElsewhere(t *testing.T) {
	asked, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer asked.Close()
	other, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	go func() {
		buf := make([]byte, 2048)
		for {
			_, from, err := asked.ReadFrom(buf)
			if err != nil {
				return
			}
			_, _ = other.WriteTo([]byte("impostor"), from)
		}
	}()
	for _, unconnected := range []bool{false, true} {
		r := ProbeUDP(context.Background(), asked.LocalAddr().String(), 2, 300*time.Millisecond, unconnected)
		if r.Failures != 2 || r.Backends["impostor"] != 0 {
			t.Errorf("unconnected %v: %+v", unconnected, r)
		}
		if unconnected && !strings.Contains(r.LastErr, other.LocalAddr().String()) {
			t.Errorf("unconnected: last error %q does not name the replying address %s", r.LastErr, other.LocalAddr())
		}
	}
}

// A context cancelled mid-wait ends a UDP wait at once.
func TestProbeUDPCancel(t *testing.T) {
	pc, err := net.ListenPacket("udp4", "127.0.0.1:0") // reads nothing, answers nothing
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	ctx, cancel := context.WithCancel(context.Background()) // no deadline
	defer cancel()
	time.AfterFunc(200*time.Millisecond, cancel)
	t0 := time.Now()
	r := ProbeUDP(ctx, pc.LocalAddr().String(), 3, 10*time.Second, false)
	if took := time.Since(t0); took > 2*time.Second || r.Failures != 3 {
		t.Errorf("probe with a context cancelled after 200ms took %s: %+v", took, r)
	}
}

func TestProbeTargets(t *testing.T) {
	for _, target := range []string{"ftp://127.0.0.1:21", "udp://127.0.0.1", "tcp://127.0.0.1", "udp://127.0.0.1:53/path", "127.0.0.1:80"} {
		if r, err := Probe(context.Background(), target, 1, ProbeOptions{Timeout: 100 * time.Millisecond}); err == nil {
			t.Errorf("Probe(%q) = %+v, want an error", target, r)
		}
	}
}

func TestEchoAddrs(t *testing.T) {
	got := addrs(":8080", []string{":80", " :8080", "", ":81", ":80", ":0", ":0"})
	want := []string{":8080", ":80", ":81", ":0", ":0"}
	if !slices.Equal(got, want) {
		t.Errorf("addrs = %q, want %q", got, want)
	}
	// A port in use fails the start, and frees what was bound.
	e := startEcho(t, EchoConfig{Name: "x", HTTPAddr: "127.0.0.1:0"})
	busy := e.HTTP[0].String()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if _, err := StartEcho(ctx, EchoConfig{Name: "y", UDPAddr: "127.0.0.1:0", HTTPAddrs: []string{"127.0.0.1:0", busy}}); err == nil {
		t.Fatalf("StartEcho on the busy %s succeeded", busy)
	}
}

// TestProbeV4MappedAndSource: every transport from a dual-stack AF_INET6
// socket to an IPv4 server, asking for the source it saw: the server
// sees the IPv4 client, as it would from an AF_INET socket.
func TestProbeV4MappedAndSource(t *testing.T) {
	e := startEcho(t, EchoConfig{Name: "pod-a", HTTPAddr: "127.0.0.1:0", UDPAddr: "127.0.0.1:0"})
	targets := []string{"tcp://" + e.HTTP[0].String(), "udp://" + e.UDP[0].String()}
	for _, target := range targets {
		for _, unconnected := range []bool{false, true} {
			for _, v4mapped := range []bool{false, true} {
				r, err := Probe(context.Background(), target, 2, ProbeOptions{Timeout: 2 * time.Second, V4Mapped: v4mapped, Source: true, UDPUnconnected: unconnected})
				if err != nil {
					t.Fatal(err)
				}
				if r.Failures != 0 || r.Backends["pod-a from 127.0.0.1"] != 2 {
					t.Errorf("%s v4-mapped %v unconnected %v: %+v", target, v4mapped, unconnected, r)
				}
			}
		}
	}
}
