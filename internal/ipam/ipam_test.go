package ipam

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

func TestOverlayAllocateReleasePersist(t *testing.T) {
	dir := t.TempDir()
	o, err := NewOverlay(netip.MustParsePrefix("10.244.1.0/29"), dir)
	if err != nil {
		t.Fatal(err)
	}
	// /29: .0 network, .1 router, .7 broadcast: .2-.6 for pods.
	var got []string
	for i := range 5 {
		a, err := o.Allocate(Owner{ContainerID: fmt.Sprint("c", i), IfName: "eth0"}, nil)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, a.Addr.String())
	}
	if strings.Join(got, " ") != "10.244.1.2 10.244.1.3 10.244.1.4 10.244.1.5 10.244.1.6" {
		t.Fatalf("allocated %v", got)
	}
	again, err := o.Allocate(Owner{ContainerID: "c2", IfName: "eth0"}, nil)
	if err != nil || again.Addr.String() != "10.244.1.4" {
		t.Fatalf("repeated allocation for c2: %v %v, want its own address back", again, err)
	}
	if _, err := o.Allocate(Owner{ContainerID: "c9", IfName: "eth0"}, nil); !errors.Is(err, ErrExhausted) || !strings.Contains(err.Error(), "10.244.1.0/29") {
		t.Fatalf("exhausted range: %v", err)
	}
	if _, ok, err := o.Release(Owner{ContainerID: "c1", IfName: "eth0"}); !ok || err != nil {
		t.Fatalf("release: %v %v", ok, err)
	}
	if _, ok, _ := o.Release(Owner{ContainerID: "c1", IfName: "eth0"}); ok {
		t.Fatal("released twice")
	}

	// A restarted agent sees the same allocations.
	o2, err := NewOverlay(netip.MustParsePrefix("10.244.1.0/29"), dir)
	if err != nil {
		t.Fatal(err)
	}
	if n := len(o2.Allocations()); n != 4 {
		t.Fatalf("after restart: %d allocations, want 4", n)
	}
	a, err := o2.Allocate(Owner{ContainerID: "c10", IfName: "eth0"}, nil)
	if err != nil || a.Addr.String() != "10.244.1.3" {
		t.Fatalf("after restart allocate = %v %v, want the freed 10.244.1.3", a, err)
	}
	if _, err := NewOverlay(netip.MustParsePrefix("10.244.2.0/24"), dir); err == nil {
		t.Fatal("state for another pod CIDR accepted")
	}
	if err := os.WriteFile(filepath.Join(dir, "overlay.json"), []byte("{"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := NewOverlay(netip.MustParsePrefix("10.244.1.0/29"), dir); err == nil || !strings.Contains(err.Error(), "corrupt") {
		t.Fatalf("corrupt state: %v", err)
	}
}

func TestOverlayParallelDistinct(t *testing.T) {
	o, err := NewOverlay(netip.MustParsePrefix("10.244.3.0/24"), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		seen = map[netip.Addr]bool{}
	)
	for i := range 50 {
		wg.Go(func() {
			a, err := o.Allocate(Owner{ContainerID: fmt.Sprint("p", i), IfName: "eth0"}, nil)
			if err != nil {
				t.Error(err)
				return
			}
			mu.Lock()
			defer mu.Unlock()
			if seen[a.Addr] {
				t.Errorf("address %s given twice", a.Addr)
			}
			seen[a.Addr] = true
		})
	}
	wg.Wait()
	if len(seen) != 50 {
		t.Fatalf("%d distinct addresses", len(seen))
	}
}

func TestOverlayRejectsBadPrefix(t *testing.T) {
	for _, p := range []string{"10.244.0.0/31", "fd00::/64", "10.0.0.0/4"} {
		if _, err := NewOverlay(netip.MustParsePrefix(p), t.TempDir()); err == nil {
			t.Errorf("prefix %s accepted", p)
		}
	}
}
