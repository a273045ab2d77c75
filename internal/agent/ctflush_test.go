package agent

import (
	"context"
	"errors"
	"log/slog"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// Addresses released close together are flushed in one walk; a failed
// walk keeps them for the next.
func TestCTFlusherBatchesAndRetries(t *testing.T) {
	var (
		mu      sync.Mutex
		batches []int
		fail    = true
	)
	done := make(chan struct{}, 10)
	f := newCTFlusher(func(addrs map[netip.Addr]struct{}) (int, error) {
		mu.Lock()
		defer mu.Unlock()
		defer func() { done <- struct{}{} }()
		batches = append(batches, len(addrs))
		if fail {
			fail = false
			return 1, errors.New("map busy")
		}
		return 3 * len(addrs), nil
	}, slog.New(slog.DiscardHandler), prometheus.NewRegistry())
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go f.run(ctx, 50*time.Millisecond)
	for _, a := range []string{"10.244.0.5", "10.244.0.6", "10.244.0.7"} {
		f.add(netip.MustParseAddr(a))
	}
	for range 2 {
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Fatal("no flush")
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if len(batches) != 2 || batches[0] != 3 || batches[1] != 3 {
		t.Fatalf("flushed batches %v, want the 3 addresses once, then again after the failure", batches)
	}
	var m dto.Metric
	if err := f.flushed.Write(&m); err != nil {
		t.Fatal(err)
	}
	if got := m.GetCounter().GetValue(); got != 1+9 {
		t.Errorf("kpath_conntrack_flushed_total %v, want 10", got)
	}
}
