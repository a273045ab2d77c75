// Package workload holds the small programs kpath runs inside pods of its
// demo and lab: an echo server that answers with its name over HTTP, UDP
// and TCP, and a probe that sends requests and reports which backends
// answered and how fast.
package workload

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"sync"
	"time"
)

// EchoConfig says where the echo server listens and what it answers.
type EchoConfig struct {
	Name     string // the answer; e.g. the pod's name or address
	HTTPAddr string // e.g. ":8080"; empty: no HTTP
	UDPAddr  string // e.g. ":5353"; empty: no UDP
}

// RunEcho serves until ctx ends. HTTP answers every request with Name;
// UDP answers every datagram with Name.
func RunEcho(ctx context.Context, cfg EchoConfig, ready func()) error {
	var wg sync.WaitGroup
	errc := make(chan error, 2)
	if cfg.HTTPAddr != "" {
		ln, err := net.Listen("tcp", cfg.HTTPAddr)
		if err != nil {
			return fmt.Errorf("echo http: %w", err)
		}
		srv := &http.Server{
			Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
				_, _ = io.WriteString(w, cfg.Name)
			}),
			ReadHeaderTimeout: 5 * time.Second,
		}
		wg.Go(func() {
			if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				errc <- err
			}
		})
		go func() { <-ctx.Done(); _ = srv.Close() }()
	}
	if cfg.UDPAddr != "" {
		pc, err := net.ListenPacket("udp", cfg.UDPAddr)
		if err != nil {
			return fmt.Errorf("echo udp: %w", err)
		}
		go func() { <-ctx.Done(); _ = pc.Close() }()
		wg.Go(func() {
			buf := make([]byte, 65536)
			for {
				_, from, err := pc.ReadFrom(buf)
				if err != nil {
					return
				}
				_, _ = pc.WriteTo([]byte(cfg.Name), from)
			}
		})
	}
	if ready != nil {
		ready()
	}
	wg.Wait()
	select {
	case err := <-errc:
		return err
	default:
		return ctx.Err()
	}
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

// ProbeHTTP sends n GET requests to url, each on a new connection.
func ProbeHTTP(ctx context.Context, url string, n int, timeout time.Duration) ProbeResult {
	client := &http.Client{Timeout: timeout, Transport: &http.Transport{DisableKeepAlives: true}}
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
	if len(lat) > 0 {
		slices.Sort(lat)
		r.P50 = lat[len(lat)/2]
		r.P99 = lat[min(len(lat)-1, len(lat)*99/100)]
	}
	return r
}
