package workload

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"
)

// The disruption client measures what an upgrade or a fault does to
// traffic, as Cilium's connection-disruption test does across its
// upgrades: long-lived connections opened once and used all along (a
// request every interval on each, over HTTP keep-alive), and a stream of
// requests each on a new connection. A long-lived connection that fails
// once is cut and is never reopened: what counts is whether the
// connection made before the fault survives it. It keeps its first
// backend too: a connection through a Service that changes backend midway
// was broken by the dataplane even if it still answers.

// DisruptionConfig says what the client keeps up.
type DisruptionConfig struct {
	// Hold are host:port targets; Conns connections are held to each.
	Hold  []string
	Conns int
	// Stream are URLs requested, each time on a new connection.
	Stream []string
	// Interval between requests on each connection and of each stream.
	Interval time.Duration
	// Timeout of each request.
	Timeout time.Duration
}

// HeldConn is one long-lived connection's record.
type HeldConn struct {
	Target   string `json:"target"`
	Backend  string `json:"backend"`
	Requests int    `json:"requests"`
	// Cut is when the connection failed ("" while it is up).
	Cut   string `json:"cut,omitempty"`
	Error string `json:"error,omitempty"`
}

// StreamStats is one request stream's record.
type StreamStats struct {
	URL       string `json:"url"`
	Requests  int    `json:"requests"`
	Failures  int    `json:"failures"`
	LastError string `json:"last_error,omitempty"`
}

// DisruptionStatus is what the client has counted so far.
type DisruptionStatus struct {
	// Established is how many held connections have answered once.
	Established int            `json:"established"`
	Cut         int            `json:"cut"`
	Held        []*HeldConn    `json:"held"`
	Streams     []*StreamStats `json:"streams"`
}

// Disruption is a running disruption client.
type Disruption struct {
	mu  sync.Mutex
	st  DisruptionStatus
	cfg DisruptionConfig
}

// StartDisruption starts the connections and streams of cfg; they run
// until ctx ends.
func StartDisruption(ctx context.Context, cfg DisruptionConfig) (*Disruption, error) {
	if cfg.Interval <= 0 {
		cfg.Interval = 100 * time.Millisecond
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 2 * time.Second
	}
	if cfg.Conns <= 0 {
		cfg.Conns = 1
	}
	d := &Disruption{cfg: cfg}
	for _, t := range cfg.Hold {
		if _, _, err := net.SplitHostPort(t); err != nil {
			return nil, fmt.Errorf("hold %q: want host:port: %w", t, err)
		}
		for range cfg.Conns {
			h := &HeldConn{Target: t}
			d.st.Held = append(d.st.Held, h)
			go d.hold(ctx, h)
		}
	}
	for _, u := range cfg.Stream {
		if _, err := url.Parse(u); err != nil || !strings.HasPrefix(u, "http://") {
			return nil, fmt.Errorf("stream %q: want an http:// URL", u)
		}
		s := &StreamStats{URL: u}
		d.st.Streams = append(d.st.Streams, s)
		go d.stream(ctx, s)
	}
	return d, nil
}

// Status returns a copy of the counts.
func (d *Disruption) Status() DisruptionStatus {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := DisruptionStatus{Established: d.st.Established, Cut: d.st.Cut}
	for _, h := range d.st.Held {
		c := *h
		out.Held = append(out.Held, &c)
	}
	for _, s := range d.st.Streams {
		c := *s
		out.Streams = append(out.Streams, &c)
	}
	return out
}

// ServeHTTP answers GET with the status as JSON.
func (d *Disruption) ServeHTTP(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(d.Status())
}

// hold keeps one connection: dialled until it first answers (the target
// may not be up yet), then used until it fails once.
func (d *Disruption) hold(ctx context.Context, h *HeldConn) {
	conn, r, backend := d.establish(ctx, h.Target)
	if conn == nil {
		return
	}
	defer conn.Close()
	d.mu.Lock()
	h.Backend, h.Requests = backend, 1
	d.st.Established++
	d.mu.Unlock()
	t := time.NewTicker(d.cfg.Interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		got, err := keepAliveGet(conn, r, h.Target, d.cfg.Timeout)
		if err == nil && got != backend {
			err = fmt.Errorf("answered by %s, was %s", got, backend)
		}
		if ctx.Err() != nil {
			return // cut short by the end of the run, not by the network
		}
		d.mu.Lock()
		if err != nil {
			h.Cut, h.Error = time.Now().UTC().Format(time.RFC3339Nano), err.Error()
			d.st.Cut++
			d.mu.Unlock()
			return
		}
		h.Requests++
		d.mu.Unlock()
	}
}

// establish dials target until a connection answers a request.
func (d *Disruption) establish(ctx context.Context, target string) (net.Conn, *bufio.Reader, string) {
	for {
		if c, err := net.DialTimeout("tcp", target, d.cfg.Timeout); err == nil {
			r := bufio.NewReader(c)
			if backend, err := keepAliveGet(c, r, target, d.cfg.Timeout); err == nil {
				return c, r, backend
			}
			c.Close()
		}
		select {
		case <-ctx.Done():
			return nil, nil, ""
		case <-time.After(d.cfg.Interval):
		}
	}
}

// keepAliveGet sends one HTTP/1.1 GET on conn and reads the answer (the
// echo server's name), leaving the connection open.
func keepAliveGet(conn net.Conn, r *bufio.Reader, host string, timeout time.Duration) (string, error) {
	_ = conn.SetDeadline(time.Now().Add(timeout))
	if _, err := fmt.Fprintf(conn, "GET / HTTP/1.1\r\nHost: %s\r\n\r\n", host); err != nil {
		return "", err
	}
	resp, err := http.ReadResponse(r, nil)
	if err != nil {
		return "", err
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("status %s", resp.Status)
	}
	if resp.Close {
		return "", errors.New("the server closed the connection")
	}
	return string(body), nil
}

// stream requests its URL every interval, each on a new connection.
func (d *Disruption) stream(ctx context.Context, s *StreamStats) {
	client := &http.Client{Timeout: d.cfg.Timeout, Transport: &http.Transport{DisableKeepAlives: true}}
	t := time.NewTicker(d.cfg.Interval)
	defer t.Stop()
	for {
		resp, err := client.Get(s.URL)
		if err == nil {
			_, err = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if err == nil && resp.StatusCode != http.StatusOK {
				err = fmt.Errorf("status %s", resp.Status)
			}
		}
		if ctx.Err() != nil {
			return // a request cut short by the end of the run is no failure
		}
		d.mu.Lock()
		s.Requests++
		if err != nil {
			s.Failures++
			s.LastError = err.Error()
		}
		d.mu.Unlock()
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
