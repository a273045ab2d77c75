package flows

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"
)

func TestRingWrapsAndFollows(t *testing.T) {
	r := NewRing(4)
	for i := range 6 {
		r.Add(Flow{Type: fmt.Sprint(i)})
	}
	got := r.Snapshot(nil, 0)
	if len(got) != 4 || got[0].Type != "2" || got[3].Type != "5" {
		t.Fatalf("snapshot after wrap: %v", got)
	}
	if last := r.Snapshot(nil, 2); len(last) != 2 || last[0].Type != "4" {
		t.Fatalf("last 2: %v", last)
	}
	if odd := r.Snapshot(func(f *Flow) bool { return f.Type == "3" || f.Type == "5" }, 0); len(odd) != 2 {
		t.Fatalf("filtered: %v", odd)
	}
	if seen, held := r.Stats(); seen != 6 || held != 4 {
		t.Fatalf("stats %d %d", seen, held)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	r = NewRing(16)
	got = nil
	done := make(chan uint64)
	go func() {
		done <- r.Follow(ctx, func(f *Flow) bool { return f.Type != "skip" }, func(f Flow) bool {
			got = append(got, f)
			return len(got) < 3
		})
	}()
	time.Sleep(50 * time.Millisecond)
	for _, s := range []string{"a", "skip", "b", "c", "d"} {
		r.Add(Flow{Type: s})
	}
	<-done
	if len(got) != 3 || got[0].Type != "a" || got[2].Type != "c" {
		t.Fatalf("followed %v, want a b c", got)
	}

	// A follower a whole ring behind is told how many it missed.
	small := NewRing(2)
	ctx2, cancel2 := context.WithCancel(context.Background())
	var n int
	missed := make(chan uint64)
	block := make(chan struct{})
	go func() {
		missed <- small.Follow(ctx2, nil, func(Flow) bool {
			n++
			if n == 1 {
				<-block // stall while the writer laps the ring
			}
			return n < 3
		})
	}()
	time.Sleep(20 * time.Millisecond)
	small.Add(Flow{Type: "1"})
	time.Sleep(20 * time.Millisecond)
	for i := range 5 {
		small.Add(Flow{Type: fmt.Sprint(i + 2)})
	}
	close(block)
	if m := <-missed; m == 0 {
		t.Error("a follower lapped by the writer was told it missed nothing")
	}
	cancel2()
}

func TestFilter(t *testing.T) {
	pod := func(ns, name string, port uint16) Endpoint {
		return Endpoint{IP: netip.MustParseAddr("10.0.0.1"), Port: port, Namespace: ns, Pod: name}
	}
	drop := Flow{Time: time.Unix(100, 0), Type: "drop", Verdict: Dropped, DropReason: "policy denied", Proto: "TCP",
		Source: pod("y", "b", 40000), Destination: pod("x", "a", 80), Policy: &Policy{Ingress: true, Match: "denied"}}
	xl := Flow{Time: time.Unix(200, 0), Type: "translation", Verdict: Translated, Proto: "UDP",
		Source: pod("y", "b", 40001), Destination: Endpoint{IP: netip.MustParseAddr("10.0.0.9"), Port: 53},
		Service: &Service{Namespace: "kube-system", Name: "dns", Frontend: netip.MustParseAddrPort("10.96.0.10:53")}}
	for _, c := range []struct {
		name     string
		f        Filter
		drop, xl bool
	}{
		{"empty", Filter{}, true, true},
		{"pod either end", Filter{Pods: []string{"x/a"}}, true, false},
		{"pod in namespace", Filter{Pods: []string{"a"}, NS: []string{"x"}}, true, false},
		{"from-pod", Filter{FromPods: []string{"y/b"}}, true, true},
		{"to-pod", Filter{ToPods: []string{"y/b"}}, false, false},
		{"namespace", Filter{NS: []string{"x"}}, true, false},
		{"verdict", Filter{Verdicts: []Verdict{Dropped}}, true, false},
		{"type policy-verdict", Filter{Types: []string{"policy-verdict"}}, true, false},
		{"type trace", Filter{Types: []string{"trace"}}, false, true},
		{"protocol", Filter{Protos: []string{"udp"}}, false, true},
		{"port either end", Filter{Ports: []uint16{80}}, true, false},
		{"service port", Filter{Ports: []uint16{53}}, false, true},
		{"service ip", Filter{IPs: []netip.Addr{netip.MustParseAddr("10.96.0.10")}}, false, true},
		{"service", Filter{Services: []string{"kube-system/dns"}}, false, true},
		{"since", Filter{Since: time.Unix(150, 0)}, false, true},
		{"until", Filter{Until: time.Unix(150, 0)}, true, false},
		{"AND", Filter{Verdicts: []Verdict{Dropped}, Protos: []string{"UDP"}}, false, false},
	} {
		if got := c.f.Match(&drop); got != c.drop {
			t.Errorf("%s: drop matched %v, want %v", c.name, got, c.drop)
		}
		if got := c.f.Match(&xl); got != c.xl {
			t.Errorf("%s: translation matched %v, want %v", c.name, got, c.xl)
		}
	}
	if err := (&Filter{Verdicts: []Verdict{"MAYBE"}}).Validate(); err == nil {
		t.Error("a bad verdict validated")
	}
	line := drop.Compact()
	for _, want := range []string{"y/b:40000", "x/a:80", "DROPPED", "policy denied"} {
		if !contains(line, want) {
			t.Errorf("compact line %q lacks %q", line, want)
		}
	}
}

func contains(s, sub string) bool { return strings.Contains(s, sub) }
