package hubble

import (
	"context"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	flowpb "github.com/cilium/cilium/api/v1/flow"
	observerpb "github.com/cilium/cilium/api/v1/observer"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/kpath/kpath/internal/flows"
)

func testFlows() (drop, xl flows.Flow) {
	drop = flows.Flow{Time: time.Unix(100, 0), Node: "node-1", Type: "drop", Verdict: flows.Dropped, DropReason: "policy denied",
		Proto: "TCP", TCPFlags: "SYN", Dir: "to-pod",
		Source:      flows.Endpoint{IP: netip.MustParseAddr("10.0.1.2"), Port: 40000, Namespace: "y", Pod: "b", Labels: map[string]string{"app": "web"}, Identity: 300},
		Destination: flows.Endpoint{IP: netip.MustParseAddr("10.0.0.2"), Port: 80, Namespace: "x", Pod: "a"},
		Policy:      &flows.Policy{Ingress: true, Match: "denied", Policies: []string{"x/deny-ingress"}}}
	xl = flows.Flow{Time: time.Unix(200, 0), Node: "node-1", Type: "translation", Verdict: flows.Translated, Proto: "UDP", Dir: "from-pod",
		Source:      flows.Endpoint{IP: netip.MustParseAddr("10.0.1.2"), Port: 40001, Namespace: "y", Pod: "b"},
		Destination: flows.Endpoint{IP: netip.MustParseAddr("10.0.0.9"), Port: 53, Namespace: "kube-system", Pod: "dns-1"},
		Service:     &flows.Service{Namespace: "kube-system", Name: "dns", Frontend: netip.MustParseAddrPort("10.96.0.10:53")}}
	return drop, xl
}

func TestFlowConversion(t *testing.T) {
	drop, xl := testFlows()
	d := Flow(&drop)
	if d.GetVerdict() != flowpb.Verdict_DROPPED || d.GetDropReasonDesc() != flowpb.DropReason_POLICY_DENIED ||
		d.GetEventType().GetType() != eventDrop || d.GetTrafficDirection() != flowpb.TrafficDirection_INGRESS ||
		d.GetIP().GetSource() != "10.0.1.2" || d.GetL4().GetTCP().GetDestinationPort() != 80 || !d.GetL4().GetTCP().GetFlags().GetSYN() ||
		d.GetSource().GetPodName() != "b" || d.GetSource().GetIdentity() != 300 || len(d.GetIngressDeniedBy()) != 1 ||
		d.GetIngressDeniedBy()[0].GetName() != "deny-ingress" || d.GetNodeName() != "node-1" {
		t.Errorf("drop converted to %v", d)
	}
	x := Flow(&xl)
	if x.GetVerdict() != flowpb.Verdict_TRANSLATED || x.GetDestinationService().GetName() != "dns" || x.GetL4().GetUDP().GetDestinationPort() != 53 {
		t.Errorf("translation converted to %v", x)
	}
}

func TestFilters(t *testing.T) {
	drop, xl := testFlows()
	d, x := Flow(&drop), Flow(&xl)
	for _, c := range []struct {
		name     string
		white    []*flowpb.FlowFilter
		black    []*flowpb.FlowFilter
		drop, xl bool
	}{
		{"none", nil, nil, true, true},
		{"--pod x/a (either end)", []*flowpb.FlowFilter{{SourcePod: []string{"x/a"}}, {DestinationPod: []string{"x/a"}}}, nil, true, false},
		{"--namespace y", []*flowpb.FlowFilter{{SourcePod: []string{"y/"}}, {DestinationPod: []string{"y/"}}}, nil, true, true},
		{"pod name prefix", []*flowpb.FlowFilter{{DestinationPod: []string{"kube-system/dns"}}}, nil, false, true},
		{"--verdict DROPPED", []*flowpb.FlowFilter{{Verdict: []flowpb.Verdict{flowpb.Verdict_DROPPED}}}, nil, true, false},
		{"AND in one filter", []*flowpb.FlowFilter{{Verdict: []flowpb.Verdict{flowpb.Verdict_DROPPED}, Protocol: []string{"udp"}}}, nil, false, false},
		{"--type drop", []*flowpb.FlowFilter{{EventType: []*flowpb.EventTypeFilter{{Type: eventDrop}}}}, nil, true, false},
		{"--port 53", []*flowpb.FlowFilter{{SourcePort: []string{"53"}}, {DestinationPort: []string{"53"}}}, nil, false, true},
		{"--ip CIDR", []*flowpb.FlowFilter{{DestinationIp: []string{"10.0.0.0/30"}}}, nil, true, false},
		{"--label", []*flowpb.FlowFilter{{SourceLabel: []string{"k8s:app=web"}}}, nil, true, false},
		{"--to-service", []*flowpb.FlowFilter{{DestinationService: []string{"kube-system/dns"}}}, nil, false, true},
		{"--tcp-flags SYN", []*flowpb.FlowFilter{{TcpFlags: []*flowpb.TCPFlags{{SYN: true}}}}, nil, true, false},
		{"--identity", []*flowpb.FlowFilter{{SourceIdentity: []uint32{300}}}, nil, true, false},
		{"--not --verdict DROPPED", nil, []*flowpb.FlowFilter{{Verdict: []flowpb.Verdict{flowpb.Verdict_DROPPED}}}, false, true},
		// Disagreements with Hubble's own filters that FuzzFlowFilterAgainstHubble found.
		{"--label with != (absent counts)", []*flowpb.FlowFilter{{SourceLabel: []string{"tier!=db"}}}, nil, true, true},
		{"--label set-based, any source", []*flowpb.FlowFilter{{SourceLabel: []string{"app in (web, api)"}}}, nil, true, false},
		{"--node-name glob", []*flowpb.FlowFilter{{NodeName: []string{"node-*"}}}, nil, true, true},
		{"event type 0 is any type", []*flowpb.FlowFilter{{EventType: []*flowpb.EventTypeFilter{{}}}}, nil, true, true},
		{"drop reason only of drops", []*flowpb.FlowFilter{{DropReasonDesc: []flowpb.DropReason{flowpb.DropReason_DROP_REASON_UNKNOWN}}}, nil, false, false},
		{"port with a leading zero", []*flowpb.FlowFilter{{DestinationPort: []string{"053"}}}, nil, false, true},
		{"service name prefix, any namespace", []*flowpb.FlowFilter{{DestinationService: []string{"/dn"}}}, nil, false, true},
		{"--traffic-direction ingress", []*flowpb.FlowFilter{{TrafficDirection: []flowpb.TrafficDirection{flowpb.TrafficDirection_INGRESS}}}, nil, true, false},
	} {
		if got := selects(c.white, c.black, d); got != c.drop {
			t.Errorf("%s: drop selected %v, want %v", c.name, got, c.drop)
		}
		if got := selects(c.white, c.black, x); got != c.xl {
			t.Errorf("%s: translation selected %v, want %v", c.name, got, c.xl)
		}
	}
	for _, bad := range []*flowpb.FlowFilter{
		{HttpMethod: []string{"GET"}}, {Protocol: []string{"00"}}, {DestinationIp: []string{"00000000"}},
		{DestinationPort: []string{"A0"}}, {DestinationPod: []string{""}}, {SourceLabel: []string{"app in (web"}},
		{NodeName: []string{"a/b/c"}}, {SourceIpXlated: []string{"10.0.0.1"}},
	} {
		if err := supported(bad); err == nil {
			t.Errorf("filter %v accepted (Hubble refuses it, or kpath's flows never carry it)", bad)
		}
	}
}

// TestServerOverGRPC: a real gRPC client on the unix socket gets the last
// N matching flows, then follows new ones; ServerStatus counts the ring.
func TestServerOverGRPC(t *testing.T) {
	ring := flows.NewRing(8)
	drop, xl := testFlows()
	for range 3 {
		ring.Add(drop)
		ring.Add(xl)
	}
	sock := filepath.Join(t.TempDir(), "hubble.sock")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	s := &Server{Ring: ring, Node: "node-1", Started: time.Now()}
	ln, err := ListenUnix(sock)
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = s.Serve(ctx, ln) }()
	if fi, err := os.Stat(sock); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("hubble socket %v, %v: want mode 0600", fi, err)
	}
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	c := observerpb.NewObserverClient(conn)
	st, err := c.ServerStatus(ctx, &observerpb.ServerStatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if st.GetNumFlows() != 6 || st.GetMaxFlows() != 8 || st.GetSeenFlows() != 6 {
		t.Errorf("server status %v", st)
	}
	stream, err := c.GetFlows(ctx, &observerpb.GetFlowsRequest{Number: 2, Follow: true,
		Whitelist: []*flowpb.FlowFilter{{Verdict: []flowpb.Verdict{flowpb.Verdict_DROPPED}}}})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 2 {
		r, err := stream.Recv()
		if err != nil {
			t.Fatal(err)
		}
		if r.GetFlow().GetVerdict() != flowpb.Verdict_DROPPED || r.GetNodeName() != "node-1" {
			t.Fatalf("flow %d: %v", i, r)
		}
	}
	time.Sleep(50 * time.Millisecond)
	ring.Add(xl) // filtered out
	later := drop
	later.Time = time.Unix(300, 0)
	ring.Add(later)
	r, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if !r.GetFlow().GetTime().AsTime().Equal(later.Time) {
		t.Errorf("followed flow %v, want the new drop", r.GetFlow())
	}
	if _, err := c.GetFlows(ctx, &observerpb.GetFlowsRequest{Whitelist: []*flowpb.FlowFilter{{DnsQuery: []string{"x"}}}}); err == nil {
		s2, _ := c.GetFlows(ctx, &observerpb.GetFlowsRequest{Whitelist: []*flowpb.FlowFilter{{DnsQuery: []string{"x"}}}})
		if _, err := s2.Recv(); status.Code(err) != codes.InvalidArgument {
			t.Errorf("a DNS filter: %v, want InvalidArgument", err)
		}
	}
}

// TestExport: flows kept by the allow and deny lists are written as
// Hubble's JSON lines; the file rotates at its size, keeping MaxBackups.
func TestExport(t *testing.T) {
	drop, xl := testFlows()
	path := filepath.Join(t.TempDir(), "flows", "export.json")
	e, err := NewExporter(ExportOptions{Path: path, MaxSizeMB: 1, MaxBackups: 2,
		Allow: []flows.Filter{{Verdicts: []flows.Verdict{flows.Dropped, flows.Translated}}},
		Deny:  []flows.Filter{{Protos: []string{"UDP"}}}}, "node-1")
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	if err := e.Write(&xl); err != nil { // denied (UDP)
		t.Fatal(err)
	}
	for range 3000 { // ~1.1 KiB each: rotates past 1 MiB
		if err := e.Write(&drop); err != nil {
			t.Fatal(err)
		}
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	first := strings.SplitN(string(b), "\n", 2)[0]
	var r observerpb.GetFlowsResponse
	if err := protojson.Unmarshal([]byte(first), &r); err != nil {
		t.Fatalf("export line %q: %v", first, err)
	}
	if r.GetFlow().GetVerdict() != flowpb.Verdict_DROPPED || r.GetNodeName() != "node-1" {
		t.Errorf("exported %v", &r)
	}
	if strings.Contains(string(b), "UDP") {
		t.Error("a denied (UDP) flow was exported")
	}
	if _, err := os.Stat(path + ".1"); err != nil {
		t.Errorf("no rotated file: %v", err)
	}
	if _, err := os.Stat(path + ".3"); err == nil {
		t.Error("more backups than MaxBackups")
	}
	if err := (ExportOptions{Path: "relative", MaxSizeMB: 1}).Validate(); err == nil {
		t.Error("a relative path validated")
	}
}
