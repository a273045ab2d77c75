// Package workload holds the small programs kpath runs inside pods of its
// demo and lab: an echo server that answers with its name over HTTP and
// UDP on any number of ports, and a probe that sends requests over HTTP
// (TCP) or UDP and reports which backends answered and how fast.
package workload

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// EchoConfig says where the echo server listens and what it answers.
type EchoConfig struct {
	Name     string // the answer; e.g. the pod's name or address
	HTTPAddr string // e.g. ":8080"; empty: none (besides HTTPAddrs)
	UDPAddr  string // e.g. ":5353"; empty: none (besides UDPAddrs)
	// HTTPAddrs and UDPAddrs are more addresses to serve, e.g. ":80",
	// ":81". The server listens on HTTPAddr and every HTTPAddrs (likewise
	// for UDP); an address given twice is served once, except that every
	// one with port 0 gets a port of its own.
	HTTPAddrs []string
	UDPAddrs  []string
}

// addrs is single (if set) then more, without empty strings or repeats
// (but every address with port 0 asks for a port of its own).
func addrs(single string, more []string) []string {
	var out []string
	for _, a := range append([]string{single}, more...) {
		a = strings.TrimSpace(a)
		if a == "" {
			continue
		}
		if _, port, err := net.SplitHostPort(a); (err == nil && port == "0") || !slices.Contains(out, a) {
			out = append(out, a)
		}
	}
	return out
}

// Echo is a running echo server (see StartEcho).
type Echo struct {
	// HTTP and UDP are the addresses the server is bound to, in the order
	// of the configuration (with ports chosen by the kernel where the
	// configuration said 0).
	HTTP []net.Addr
	UDP  []net.Addr

	wg     sync.WaitGroup
	ctx    context.Context
	cancel context.CancelFunc
	mu     sync.Mutex
	err    error
}

func (e *Echo) fail(err error) {
	e.mu.Lock()
	if e.err == nil {
		e.err = err
	}
	e.mu.Unlock()
	e.cancel()
}

// StartEcho binds every address of cfg and serves in the background until
// ctx ends or a server fails. HTTP answers every request with cfg.Name;
// UDP answers every datagram with a datagram holding cfg.Name. If an
// address cannot be bound, StartEcho closes what it bound and fails.
func StartEcho(ctx context.Context, cfg EchoConfig) (*Echo, error) {
	e := &Echo{}
	e.ctx, e.cancel = context.WithCancel(ctx)
	var closers []io.Closer
	bail := func(err error) (*Echo, error) {
		e.cancel()
		for _, c := range closers {
			_ = c.Close()
		}
		return nil, err
	}
	var lns []net.Listener
	for _, a := range addrs(cfg.HTTPAddr, cfg.HTTPAddrs) {
		ln, err := net.Listen("tcp", a)
		if err != nil {
			return bail(fmt.Errorf("echo http: %w", err))
		}
		closers = append(closers, ln)
		lns = append(lns, ln)
		e.HTTP = append(e.HTTP, ln.Addr())
	}
	var pcs []net.PacketConn
	for _, a := range addrs(cfg.UDPAddr, cfg.UDPAddrs) {
		pc, err := net.ListenPacket("udp", a)
		if err != nil {
			return bail(fmt.Errorf("echo udp: %w", err))
		}
		closers = append(closers, pc)
		pcs = append(pcs, pc)
		e.UDP = append(e.UDP, pc.LocalAddr())
	}
	answer := []byte(cfg.Name)
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == SourcePath {
			_, _ = w.Write(sourceAnswer(cfg.Name, r.RemoteAddr))
			return
		}
		_, _ = w.Write(answer)
	})
	for _, ln := range lns {
		srv := &http.Server{Handler: handler, ReadHeaderTimeout: 5 * time.Second}
		e.wg.Go(func() {
			if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				e.fail(fmt.Errorf("echo http %s: %w", ln.Addr(), err))
			}
		})
		e.wg.Go(func() { <-e.ctx.Done(); _ = srv.Close() })
	}
	for _, pc := range pcs {
		e.wg.Go(func() { <-e.ctx.Done(); _ = pc.Close() })
		e.wg.Go(func() {
			buf := make([]byte, 65536)
			for {
				m, from, err := pc.ReadFrom(buf)
				if err != nil {
					if e.ctx.Err() == nil && !errors.Is(err, net.ErrClosed) {
						e.fail(fmt.Errorf("echo udp %s: %w", pc.LocalAddr(), err))
					}
					return
				}
				if bytes.HasPrefix(buf[:m], []byte(sourceRequest)) {
					_, _ = pc.WriteTo(sourceAnswer(cfg.Name, from.String()), from)
					continue
				}
				_, _ = pc.WriteTo(answer, from)
			}
		})
	}
	return e, nil
}

// SourcePath is the HTTP path, and sourceRequest the start of a UDP
// datagram, that the echo server answers with "NAME from IP": the source
// address it saw, which tells masquerading apart from a preserved client.
const (
	SourcePath    = "/source"
	sourceRequest = "source?"
)

func sourceAnswer(name, remote string) []byte {
	host, _, err := net.SplitHostPort(remote)
	if err != nil {
		host = remote
	}
	if a, err := netip.ParseAddr(host); err == nil {
		host = a.Unmap().String()
	}
	return []byte(name + " from " + host)
}

// Wait waits until every server has stopped and returns the first server
// failure, or else the reason ctx ended.
func (e *Echo) Wait() error {
	e.wg.Wait()
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.err != nil {
		return e.err
	}
	return e.ctx.Err()
}

// RunEcho serves until ctx ends (see StartEcho), calling ready once every
// address is bound.
func RunEcho(ctx context.Context, cfg EchoConfig, ready func()) error {
	e, err := StartEcho(ctx, cfg)
	if err != nil {
		return err
	}
	if ready != nil {
		ready()
	}
	return e.Wait()
}

// ProbeResult summarises a probe run.
type ProbeResult struct {
	URL      string         `json:"url"`
	Requests int            `json:"requests"`
	Failures int            `json:"failures"`
	Backends map[string]int `json:"backends"` // answer -> count
	P50      time.Duration  `json:"p50_ns"`
	P99      time.Duration  `json:"p99_ns"`
	Total    time.Duration  `json:"total_ns"`
	LastErr  string         `json:"last_error,omitempty"`
}

// ProbeOptions tune Probe.
type ProbeOptions struct {
	Timeout time.Duration // per request; 0: 3s
	// UDPUnconnected sends udp:// requests with WriteTo from an
	// unconnected socket (as many DNS resolvers do) instead of from a
	// connected one; a reply must then come from the target address.
	UDPUnconnected bool
	// V4Mapped sends from an AF_INET6 socket that is not IPv6-only (as
	// Java's, .NET's and other dual-stack runtimes' are) to the IPv4
	// target written as ::ffff:a.b.c.d.
	V4Mapped bool
	// Source asks the echo server for the address it saw the request
	// come from (answers "NAME from IP").
	Source bool
}

// Probe sends n requests to target, each on a new connection (TCP) or a
// new socket (UDP, so a new flow each), and reports who answered:
//
//	http://HOST[:PORT][/PATH]  an HTTP GET (ProbeHTTP)
//	tcp://HOST:PORT[/PATH]     the same: a TCP connect and an HTTP GET
//	udp://HOST:PORT            a datagram, answered by one (ProbeUDP)
//
// The error is for a target Probe does not understand; failed requests
// are counted in the result.
func Probe(ctx context.Context, target string, n int, opts ProbeOptions) (ProbeResult, error) {
	if opts.Timeout <= 0 {
		opts.Timeout = 3 * time.Second
	}
	u, err := url.Parse(target)
	if err != nil {
		return ProbeResult{}, fmt.Errorf("probe target %q: %w", target, err)
	}
	switch u.Scheme {
	case "http", "tcp":
		if u.Scheme == "tcp" {
			if _, _, err := net.SplitHostPort(u.Host); err != nil {
				return ProbeResult{}, fmt.Errorf("probe target %q: want tcp://HOST:PORT: %w", target, err)
			}
		}
		h := *u
		h.Scheme = "http"
		if h.Path == "" {
			h.Path = "/"
		}
		if opts.Source {
			h.Path = SourcePath
		}
		r := probeHTTP(ctx, h.String(), n, opts)
		r.URL = target
		return r, nil
	case "udp":
		if _, _, err := net.SplitHostPort(u.Host); err != nil {
			return ProbeResult{}, fmt.Errorf("probe target %q: want udp://HOST:PORT: %w", target, err)
		}
		if (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.User != nil {
			return ProbeResult{}, fmt.Errorf("probe target %q: want udp://HOST:PORT", target)
		}
		r := probeUDP(ctx, u.Host, n, opts)
		r.URL = target
		return r, nil
	default:
		return ProbeResult{}, fmt.Errorf("probe target %q: want http://, tcp:// or udp://", target)
	}
}

// ProbeHTTP sends n GET requests to url, each on a new connection.
func ProbeHTTP(ctx context.Context, url string, n int, timeout time.Duration) ProbeResult {
	return probeHTTP(ctx, url, n, ProbeOptions{Timeout: timeout})
}

func probeHTTP(ctx context.Context, url string, n int, opts ProbeOptions) ProbeResult {
	tr := &http.Transport{DisableKeepAlives: true}
	if opts.V4Mapped {
		tr.DialContext = func(_ context.Context, _, addr string) (net.Conn, error) {
			return dialMapped(unix.SOCK_STREAM, addr, opts.Timeout)
		}
	}
	client := &http.Client{Timeout: opts.Timeout, Transport: tr}
	r := ProbeResult{URL: url, Requests: n, Backends: map[string]int{}}
	lat := make([]time.Duration, 0, n)
	start := time.Now()
	for range n {
		t0 := time.Now()
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		resp, err := client.Do(req)
		if err != nil {
			r.Failures++
			r.LastErr = err.Error()
			continue
		}
		body, err := io.ReadAll(bufio.NewReader(io.LimitReader(resp.Body, 1024)))
		resp.Body.Close()
		if err != nil {
			r.Failures++
			r.LastErr = err.Error()
			continue
		}
		lat = append(lat, time.Since(t0))
		r.Backends[string(body)]++
	}
	r.Total = time.Since(start)
	r.percentiles(lat)
	return r
}

// ProbeUDP sends n datagrams to addr (HOST:PORT), each from a new socket
// (a new source port, so a flow of its own), and waits up to timeout for
// each reply: its content is the answering backend. With unconnected, the
// socket stays unconnected and sends with WriteTo, and a reply from any
// address but addr's counts as a failure; otherwise the socket is
// connected to addr (so the kernel drops replies from other addresses,
// and an ICMP port unreachable fails the request at once).
func ProbeUDP(ctx context.Context, addr string, n int, timeout time.Duration, unconnected bool) ProbeResult {
	return probeUDP(ctx, addr, n, ProbeOptions{Timeout: timeout, UDPUnconnected: unconnected})
}

func probeUDP(ctx context.Context, addr string, n int, opts ProbeOptions) ProbeResult {
	r := ProbeResult{URL: "udp://" + addr, Requests: n, Backends: map[string]int{}}
	lat := make([]time.Duration, 0, n)
	start := time.Now()
	ua, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		r.Failures, r.LastErr = n, err.Error()
		r.Total = time.Since(start)
		return r
	}
	network := "udp6"
	if ua.IP.To4() != nil && !opts.V4Mapped {
		network = "udp4"
	}
	prefix := "kpath probe"
	if opts.Source {
		prefix = sourceRequest
	}
	buf := make([]byte, 65536)
	for i := range n {
		t0 := time.Now()
		answer, err := udpRequest(ctx, network, ua, buf, []byte(fmt.Sprintf("%s %d", prefix, i)), opts.Timeout, opts.UDPUnconnected)
		if err != nil {
			r.Failures++
			r.LastErr = err.Error()
			continue
		}
		lat = append(lat, time.Since(t0))
		r.Backends[answer]++
	}
	r.Total = time.Since(start)
	r.percentiles(lat)
	return r
}

// udpRequest sends one datagram from a new socket and reads the reply.
func udpRequest(ctx context.Context, network string, to *net.UDPAddr, buf, msg []byte, timeout time.Duration, unconnected bool) (string, error) {
	if err := ctx.Err(); err != nil {
		return "", err
	}
	var (
		sock *net.UDPConn
		err  error
	)
	switch {
	case network == "udp6" && to.IP.To4() != nil:
		sock, err = dualStackUDP(ctx, to, unconnected)
	case unconnected:
		sock, err = net.ListenUDP(network, nil)
	default:
		sock, err = net.DialUDP(network, nil, to)
	}
	if err != nil {
		return "", err
	}
	defer sock.Close()
	deadline := time.Now().Add(timeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	_ = sock.SetDeadline(deadline)
	// A cancelled ctx ends the wait at once.
	defer context.AfterFunc(ctx, func() { _ = sock.SetDeadline(time.Now()) })()
	if !unconnected {
		if _, err := sock.Write(msg); err != nil {
			return "", err
		}
		m, err := sock.Read(buf)
		if err != nil {
			return "", err
		}
		return string(buf[:m]), nil
	}
	if _, err := sock.WriteToUDP(msg, to); err != nil {
		return "", err
	}
	m, from, err := sock.ReadFromUDP(buf)
	if err != nil {
		return "", err
	}
	if got, want := unmapped(from.AddrPort()), unmapped(to.AddrPort()); got != want {
		return "", fmt.Errorf("reply %q from %s, not from %s", buf[:m], got, want)
	}
	return string(buf[:m]), nil
}

// dualStackUDP is a dual-stack UDP socket for an IPv4 target: connected
// to it as ::ffff:a.b.c.d, or unconnected (Go writes IPv4 destinations of
// an AF_INET6 socket in their v4-mapped form).
func dualStackUDP(ctx context.Context, to *net.UDPAddr, unconnected bool) (*net.UDPConn, error) {
	if unconnected {
		pc, err := (&net.ListenConfig{Control: dualStack}).ListenPacket(ctx, "udp6", "[::]:0")
		if err != nil {
			return nil, err
		}
		return pc.(*net.UDPConn), nil
	}
	c, err := dialMapped(unix.SOCK_DGRAM, to.String(), 0)
	if err != nil {
		return nil, err
	}
	return c.(*net.UDPConn), nil
}

// dualStack clears IPV6_V6ONLY, which Go sets on every "udp6" socket.
func dualStack(_, _ string, rc syscall.RawConn) error {
	var serr error
	if err := rc.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 0)
	}); err != nil {
		return err
	}
	return serr
}

// dialMapped connects a dual-stack AF_INET6 socket of type typ to the
// IPv4 HOST:PORT addr written as ::ffff:a.b.c.d. Go's own dialer cannot:
// it treats v4-mapped addresses as IPv4 and refuses them for "tcp6".
func dialMapped(typ int, addr string, timeout time.Duration) (net.Conn, error) {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil || !ap.Addr().Is4() {
		return nil, fmt.Errorf("v4-mapped dial of %q: want an IPv4 address and port", addr)
	}
	fd, err := unix.Socket(unix.AF_INET6, typ|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("socket: %w", err)
	}
	f := os.NewFile(uintptr(fd), "v4-mapped")
	defer f.Close() // FileConn holds its own descriptor
	if err := unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 0); err != nil {
		return nil, fmt.Errorf("IPV6_V6ONLY: %w", err)
	}
	if timeout > 0 { // a blocking connect() gives up after SO_SNDTIMEO
		tv := unix.NsecToTimeval(timeout.Nanoseconds())
		if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_SNDTIMEO, &tv); err != nil {
			return nil, fmt.Errorf("SO_SNDTIMEO: %w", err)
		}
	}
	sa := &unix.SockaddrInet6{Port: int(ap.Port()), Addr: netip.AddrFrom16(ap.Addr().As16()).As16()}
	if err := unix.Connect(fd, sa); err != nil {
		return nil, &net.OpError{Op: "dial", Net: "v4-mapped", Addr: net.TCPAddrFromAddrPort(ap), Err: os.NewSyscallError("connect", err)}
	}
	return net.FileConn(f)
}

func unmapped(ap netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

func (r *ProbeResult) percentiles(lat []time.Duration) {
	if len(lat) > 0 {
		slices.Sort(lat)
		r.P50 = lat[len(lat)/2]
		r.P99 = lat[min(len(lat)-1, len(lat)*99/100)]
	}
}
