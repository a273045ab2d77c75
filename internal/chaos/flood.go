package chaos

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/kpath/kpath/internal/nsutil"
)

// FloodConfig is a flood of new connections from one pod: UDP datagrams
// from Sockets source ports to every port of each target in turn (each
// datagram a new flow to track), and TCP connection attempts to closed
// ports (each SYN a new connection, answered by a reset).
type FloodConfig struct {
	Targets []string `json:"targets"` // addresses (pods) to flood
	// Rate is new flows a second, over all sockets (default 40,000: a
	// 30 s flood is more than twice the connection table's 512k entries,
	// and leaves this 2-core lab's CPU to the rest of the load).
	Rate    int `json:"rate,omitempty"`
	Sockets int `json:"sockets,omitempty"` // default 32
}

// FloodCounts are what a flood sent.
type FloodCounts struct {
	UDPSent     int64 `json:"udp_sent"`
	UDPFailed   int64 `json:"udp_failed"`
	TCPAttempts int64 `json:"tcp_attempts"`
}

// floodTCP is the share of the flood that is TCP connection attempts.
const floodTCP = 0.05

// Flood runs cfg from network namespace netns until ctx ends, then
// writes its counts to out as JSON.
func Flood(ctx context.Context, netns string, cfg FloodConfig, out io.Writer) error {
	if len(cfg.Targets) == 0 {
		return fmt.Errorf("flood: no targets")
	}
	targets := make([]netip.Addr, len(cfg.Targets))
	for i, t := range cfg.Targets {
		a, err := netip.ParseAddr(t)
		if err != nil {
			return fmt.Errorf("flood target: %w", err)
		}
		targets[i] = a
	}
	if cfg.Rate <= 0 {
		cfg.Rate = 40000
	}
	if cfg.Sockets <= 0 {
		cfg.Sockets = 32
	}
	socks := make([]*net.UDPConn, 0, cfg.Sockets)
	defer func() {
		for _, s := range socks {
			s.Close()
		}
	}()
	if err := nsutil.Do(netns, func() error {
		for range cfg.Sockets {
			s, err := net.ListenUDP("udp4", nil)
			if err != nil {
				return err
			}
			socks = append(socks, s)
		}
		return nil
	}); err != nil {
		return fmt.Errorf("flood sockets: %w", err)
	}
	var (
		c  FloodCounts
		wg sync.WaitGroup
	)
	// Paced in 10 ms ticks: a burst per socket per tick.
	const pace = 10 * time.Millisecond
	udpPerTick := max(1, int(float64(cfg.Rate)*(1-floodTCP)/float64(cfg.Sockets)/float64(time.Second/pace)))
	payload := []byte("flood")
	for i, s := range socks {
		port, ti := uint16(1024+i*1999), i%len(targets)
		wg.Go(func() {
			tick(ctx, pace, func() {
				for range udpPerTick {
					port = nextFloodPort(port)
					if port == 1024 {
						ti = (ti + 1) % len(targets)
					}
					if _, err := s.WriteToUDPAddrPort(payload, netip.AddrPortFrom(targets[ti], port)); err != nil {
						atomic.AddInt64(&c.UDPFailed, 1)
					} else {
						atomic.AddInt64(&c.UDPSent, 1)
					}
				}
			})
		})
	}
	// TCP: attempts to closed ports, a few at a time.
	dial := nsutil.Dialer(netns)
	tcpEvery := time.Duration(float64(time.Second) / (float64(cfg.Rate) * floodTCP) * 4)
	for w := range 4 {
		port, i := uint16(2048+w*7919), 0
		wg.Go(func() {
			tick(ctx, tcpEvery, func() {
				port = nextFloodPort(port)
				dctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
				if conn, err := dial(dctx, "tcp", netip.AddrPortFrom(targets[i%len(targets)], port).String()); err == nil {
					conn.Close()
				}
				cancel()
				i++
				atomic.AddInt64(&c.TCPAttempts, 1)
			})
		})
	}
	wg.Wait()
	return json.NewEncoder(out).Encode(FloodCounts{atomic.LoadInt64(&c.UDPSent), atomic.LoadInt64(&c.UDPFailed), atomic.LoadInt64(&c.TCPAttempts)})
}

// nextFloodPort steps through the ports from 1024 up, past the echo
// pods' own (80, 81 and 8080 are below or skipped), wrapping to 1024.
func nextFloodPort(p uint16) uint16 {
	p++
	if p == 8080 {
		p++
	}
	if p < 1024 {
		p = 1024
	}
	return p
}
