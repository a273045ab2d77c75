package hubble

import (
	"net/netip"
	"testing"
	"time"

	flowpb "github.com/cilium/cilium/api/v1/flow"

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
		{"--traffic-direction ingress", []*flowpb.FlowFilter{{TrafficDirection: []flowpb.TrafficDirection{flowpb.TrafficDirection_INGRESS}}}, nil, true, false},
	} {
		if got := selects(c.white, c.black, d); got != c.drop {
			t.Errorf("%s: drop selected %v, want %v", c.name, got, c.drop)
		}
		if got := selects(c.white, c.black, x); got != c.xl {
			t.Errorf("%s: translation selected %v, want %v", c.name, got, c.xl)
		}
	}
	if err := supported(&flowpb.FlowFilter{HttpMethod: []string{"GET"}}); err == nil {
		t.Error("an L7 filter was accepted")
	}
}
