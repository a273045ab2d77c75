package agent

import (
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kpath/kpath/internal/datapath"
	"github.com/kpath/kpath/internal/flows"
	"github.com/kpath/kpath/internal/model"
)

// TestEndedFlows: a translated connection's two entries make one end flow
// with the Service and the counts of both; a plain connection's entry its
// own; entries nothing counted none.
func TestEndedFlows(t *testing.T) {
	a := &Agent{cfg: Config{NodeName: "n1"}}
	fe := netip.MustParseAddrPort("10.96.0.10:80")
	s := &flowSource{a: a, ring: flows.NewRing(16), m: newFlowMetrics(prometheus.NewRegistry()),
		services: map[model.L4Addr]model.ServiceKey{{Addr: fe.Addr(), Port: fe.Port(), Proto: model.TCP}: {Namespace: "x", Name: "web"}},
		loaded:   time.Now()}
	client, backend := netip.MustParseAddrPort("10.0.1.2:41001"), netip.MustParseAddrPort("10.0.2.5:8080")
	s.ended([]datapath.CTEnd{
		{Src: client, Dst: fe, Proto: model.TCP, Service: true, Backend: backend, PacketsFwd: 5, BytesFwd: 500},
		{Src: client, Dst: backend, Proto: model.TCP, PacketsFwd: 1, BytesFwd: 60, PacketsRev: 4, BytesRev: 4000, Age: 3 * time.Second},
		{Src: netip.MustParseAddrPort("10.0.1.2:41000"), Dst: netip.MustParseAddrPort("10.0.3.3:80"), Proto: model.UDP, PacketsFwd: 2, BytesFwd: 20},
		{Src: netip.MustParseAddrPort("10.0.1.9:1"), Dst: netip.MustParseAddrPort("10.0.3.3:2"), Proto: model.TCP},
	}, time.Now())
	got := s.ring.Snapshot(nil, 0)
	if len(got) != 2 {
		t.Fatalf("%d end flows, want 2: %+v", len(got), got)
	}
	x := got[0]
	if x.Type != "end" || x.Service == nil || x.Service.Name != "web" || x.PacketsToDst != 6 || x.BytesToDst != 560 ||
		x.PacketsToSrc != 4 || x.Destination.IP != backend.Addr() || x.Duration != 3*time.Second {
		t.Errorf("translated connection's end %+v", x)
	}
	if p := got[1]; p.Service != nil || p.PacketsToDst != 2 || p.Proto != "UDP" {
		t.Errorf("plain connection's end %+v", p)
	}
}

// TestPeerList: every node with an address, at its first one and the
// agent's Hubble port; nodes without an address are left out.
func TestPeerList(t *testing.T) {
	nodes := []*model.Node{
		{Name: "n1", Addrs: []netip.Addr{netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("203.0.113.1")}},
		{Name: "n2"},
	}
	if got := fmt.Sprint(peerList(nodes, "4244")); got != "[{n1 10.0.0.1:4244 }]" {
		t.Errorf("with a port: %s", got)
	}
	if got := fmt.Sprint(peerList(nodes, "")); got != "[{n1 10.0.0.1 }]" {
		t.Errorf("without a port: %s", got)
	}
}
