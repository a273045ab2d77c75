// Package chaos runs a lab under load while parts of it fail (the agent,
// the API server, etcd, the API server's reachability) and counts what the
// load saw and what the failures left behind: kpath lab chaos.
package chaos

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/kpath/kpath/internal/nsutil"
)

// ProbeConfig is what one client pod's probe does, all at once.
type ProbeConfig struct {
	// ClusterIP and NodePort are host:port of the echo Service through its
	// ClusterIP and through another node's NodePort: a request on a new
	// connection to each every Interval.
	ClusterIP string `json:"clusterIP"`
	NodePort  string `json:"nodePort,omitempty"`
	// Held long-lived connections through the ClusterIP, a request on
	// each every HeldInterval: one that fails is a connection cut.
	Held int `json:"held"`
	// Denied is host:port of a pod whose policy admits only app=allowed:
	// a TCP connection and a UDP datagram every Interval, each answer
	// counted. From a pod the policy denies, any answer is a hole.
	Denied string `json:"denied,omitempty"`
	// Interval between requests of one kind (default 20 ms).
	Interval time.Duration `json:"interval,omitempty"`
}

// Counts are a probe's counts since it started.
type Counts struct {
	Requests       int64 `json:"requests"` // through the ClusterIP, a new connection each
	RequestsFailed int64 `json:"requests_failed"`
	NodePort       int64 `json:"nodeport_requests"`
	NodePortFailed int64 `json:"nodeport_failed"`
	HeldRequests   int64 `json:"held_requests"`
	HeldCut        int64 `json:"held_cut"` // held connections that failed (each then dialled again)
	DeniedTCP      int64 `json:"denied_tcp"`
	DeniedTCPOpen  int64 `json:"denied_tcp_answered"`
	DeniedUDP      int64 `json:"denied_udp"`
	DeniedUDPOpen  int64 `json:"denied_udp_answered"`
}

// Sub is c minus an earlier snapshot b: what happened between them.
func (c Counts) Sub(b Counts) Counts {
	return Counts{c.Requests - b.Requests, c.RequestsFailed - b.RequestsFailed, c.NodePort - b.NodePort, c.NodePortFailed - b.NodePortFailed,
		c.HeldRequests - b.HeldRequests, c.HeldCut - b.HeldCut, c.DeniedTCP - b.DeniedTCP, c.DeniedTCPOpen - b.DeniedTCPOpen,
		c.DeniedUDP - b.DeniedUDP, c.DeniedUDPOpen - b.DeniedUDPOpen}
}

// Add sums two counts.
func (c Counts) Add(b Counts) Counts {
	return Counts{c.Requests + b.Requests, c.RequestsFailed + b.RequestsFailed, c.NodePort + b.NodePort, c.NodePortFailed + b.NodePortFailed,
		c.HeldRequests + b.HeldRequests, c.HeldCut + b.HeldCut, c.DeniedTCP + b.DeniedTCP, c.DeniedTCPOpen + b.DeniedTCPOpen,
		c.DeniedUDP + b.DeniedUDP, c.DeniedUDPOpen + b.DeniedUDPOpen}
}

// counters are Counts updated by the probe's goroutines.
type counters struct {
	requests, requestsFailed, nodePort, nodePortFailed, heldRequests, heldCut,
	deniedTCP, deniedTCPOpen, deniedUDP, deniedUDPOpen atomic.Int64
}

func (c *counters) snapshot() Counts {
	return Counts{c.requests.Load(), c.requestsFailed.Load(), c.nodePort.Load(), c.nodePortFailed.Load(),
		c.heldRequests.Load(), c.heldCut.Load(), c.deniedTCP.Load(), c.deniedTCPOpen.Load(), c.deniedUDP.Load(), c.deniedUDPOpen.Load()}
}

// Probe runs cfg from network namespace netns (a pod's, "" for this
// process's) until ctx ends, writing its counts to out as a JSON line
// every report interval and once more at the end.
func Probe(ctx context.Context, netns string, cfg ProbeConfig, out io.Writer, report time.Duration) error {
	if cfg.ClusterIP == "" {
		return fmt.Errorf("probe: no ClusterIP to send to")
	}
	if cfg.Interval <= 0 {
		cfg.Interval = 20 * time.Millisecond
	}
	dial := nsutil.Dialer(netns)
	var c counters
	var wg sync.WaitGroup
	every := func(d time.Duration, f func()) { wg.Go(func() { tick(ctx, d, f) }) }
	fresh := &http.Client{Timeout: time.Second, Transport: &http.Transport{DialContext: dial, DisableKeepAlives: true}}
	get := func(addr string) bool {
		resp, err := fresh.Get("http://" + addr + "/")
		if err != nil {
			return false
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	}
	every(cfg.Interval, func() {
		ok := get(cfg.ClusterIP)
		if !ok && ctx.Err() == nil {
			c.requestsFailed.Add(1)
		}
		c.requests.Add(1)
	})
	if cfg.NodePort != "" {
		every(cfg.Interval, func() {
			ok := get(cfg.NodePort)
			if !ok && ctx.Err() == nil {
				c.nodePortFailed.Add(1)
			}
			c.nodePort.Add(1)
		})
	}
	for range cfg.Held {
		wg.Add(1)
		go func() {
			defer wg.Done()
			held(ctx, dial, cfg.ClusterIP, 100*time.Millisecond, &c)
		}()
	}
	if cfg.Denied != "" {
		// Each attempt is counted with its outcome, once it has one, so
		// that a snapshot never holds an answer without its attempt.
		every(cfg.Interval, func() {
			dctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
			defer cancel()
			if conn, err := dial(dctx, "tcp", cfg.Denied); err == nil {
				c.deniedTCPOpen.Add(1)
				conn.Close()
			}
			c.deniedTCP.Add(1)
		})
		every(cfg.Interval, func() {
			if udpAnswered(ctx, dial, cfg.Denied) {
				c.deniedUDPOpen.Add(1)
			}
			c.deniedUDP.Add(1)
		})
	}
	enc := json.NewEncoder(out)
	t := time.NewTicker(report)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			wg.Wait()
			return enc.Encode(c.snapshot())
		case <-t.C:
			if err := enc.Encode(c.snapshot()); err != nil {
				return err
			}
		}
	}
}

// tick runs f every d until ctx ends.
func tick(ctx context.Context, d time.Duration, f func()) {
	t := time.NewTicker(d)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			f()
		}
	}
}

type dialFunc func(ctx context.Context, network, addr string) (net.Conn, error)

// held keeps one connection to addr and sends a request on it every d
// (HTTP/1.1 keep-alive, written by hand so that no client library retries
// on a new connection behind its back): a request that fails is the
// connection cut; it is dialled again.
func held(ctx context.Context, dial dialFunc, addr string, d time.Duration, c *counters) {
	var (
		conn net.Conn
		br   *bufio.Reader
	)
	defer func() {
		if conn != nil {
			conn.Close()
		}
	}()
	req := "GET / HTTP/1.1\r\nHost: " + addr + "\r\n\r\n"
	t := time.NewTicker(d)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if conn == nil {
			dctx, cancel := context.WithTimeout(ctx, time.Second)
			cn, err := dial(dctx, "tcp", addr)
			cancel()
			if err != nil {
				continue // not established: not a cut (the new-connection requests count it)
			}
			conn, br = cn, bufio.NewReader(cn)
		}
		c.heldRequests.Add(1)
		_ = conn.SetDeadline(time.Now().Add(2 * time.Second))
		ok := false
		if _, err := io.WriteString(conn, req); err == nil {
			if resp, err := http.ReadResponse(br, nil); err == nil {
				_, err = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				ok = err == nil && resp.StatusCode == http.StatusOK && !resp.Close
			}
		}
		if !ok {
			if ctx.Err() == nil {
				c.heldCut.Add(1)
			}
			conn.Close()
			conn = nil
		}
	}
}

// udpAnswered sends a datagram to addr and reports whether anything
// came back within 300 ms.
func udpAnswered(ctx context.Context, dial dialFunc, addr string) bool {
	conn, err := dial(ctx, "udp", addr)
	if err != nil {
		return false
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(300 * time.Millisecond))
	if _, err := conn.Write([]byte("chaos")); err != nil {
		return false
	}
	buf := make([]byte, 512)
	n, err := conn.Read(buf)
	return err == nil && n > 0
}
