package agent

import (
	"context"
	"log/slog"
	"net/netip"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// ctFlushDelay gathers the addresses released within it into one walk of
// the connection table: a walk of a full table costs a fraction of a
// CPU-second, and pods are deleted 20 a second under churn. IPAM hands a
// released address out again only after every other free one of the
// node's range, so no new pod gets an address whose entries are still
// waiting for their walk.
const ctFlushDelay = time.Second

// ctFlusher deletes the connection entries of gone pods' addresses
// (Cilium scrubs a deleted endpoint's the same way): a new pod at the same
// address would otherwise inherit the dead one's connections, and a
// flooding pod's half million entries would stay until they expire.
type ctFlusher struct {
	mu      sync.Mutex
	pending map[netip.Addr]struct{}
	wake    chan struct{}
	flush   func(map[netip.Addr]struct{}) (int, error)
	log     *slog.Logger
	flushed prometheus.Counter
}

func newCTFlusher(flush func(map[netip.Addr]struct{}) (int, error), log *slog.Logger, reg prometheus.Registerer) *ctFlusher {
	f := &ctFlusher{pending: map[netip.Addr]struct{}{}, wake: make(chan struct{}, 1), flush: flush, log: log,
		flushed: prometheus.NewCounter(prometheus.CounterOpts{Name: "kpath_conntrack_flushed_total",
			Help: "Connection entries deleted because their pod is gone (its address released on this node, or gone from the ipcache)."})}
	reg.MustRegister(f.flushed)
	return f
}

// add queues a released address.
func (f *ctFlusher) add(a netip.Addr) {
	f.mu.Lock()
	f.pending[a] = struct{}{}
	f.mu.Unlock()
	select {
	case f.wake <- struct{}{}:
	default:
	}
}

// run flushes what is queued, at most once per delay, until ctx ends.
func (f *ctFlusher) run(ctx context.Context, delay time.Duration) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-f.wake:
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(delay):
		}
		f.flushPending()
	}
}

// flushPending flushes every queued address; on failure they stay queued
// for the next wake.
func (f *ctFlusher) flushPending() {
	f.mu.Lock()
	batch := f.pending
	f.pending = map[netip.Addr]struct{}{}
	f.mu.Unlock()
	if len(batch) == 0 {
		return
	}
	n, err := f.flush(batch)
	f.flushed.Add(float64(n))
	if err != nil {
		f.log.Error("flush the connection entries of released pods; retrying", "addresses", len(batch), "error", err)
		f.mu.Lock()
		for a := range batch {
			f.pending[a] = struct{}{}
		}
		f.mu.Unlock()
		select {
		case f.wake <- struct{}{}:
		default:
		}
	}
}
