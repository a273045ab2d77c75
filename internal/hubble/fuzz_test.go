package hubble

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"testing"
	"time"

	flowpb "github.com/cilium/cilium/api/v1/flow"
	v1 "github.com/cilium/cilium/pkg/hubble/api/v1"
	hubblefilters "github.com/cilium/cilium/pkg/hubble/filters"
	"google.golang.org/protobuf/proto"

	"github.com/kpath/kpath/internal/flows"
)

// fuzzFlows are flows as kpath makes them: a policy drop, an invalid
// source, a translation, a new connection with its verdict, a reply.
func fuzzFlows() []*flowpb.Flow {
	drop, xl := testFlows()
	forged := drop
	forged.DropReason, forged.Policy, forged.Dir = "invalid source address", nil, "from-pod"
	forged.Source.Identity = 301
	fwd := flows.Flow{Time: time.Unix(300, 0), Node: "node-2", Type: "new", Verdict: flows.Forwarded, Proto: "TCP", TCPFlags: "SYN", Dir: "from-pod",
		Source:      flows.Endpoint{IP: netip.MustParseAddr("10.0.2.7"), Port: 41000, Namespace: "z", Pod: "c", Labels: map[string]string{"pod": "c", "tier": "db"}, Identity: 400},
		Destination: flows.Endpoint{IP: netip.MustParseAddr("192.168.200.11"), Port: 30080, Node: "node-1"},
		Policy:      &flows.Policy{Match: "identity", Rule: "to: pod=c", Policies: []string{"z/allow"}}}
	reply := fwd
	reply.Type, reply.TCPFlags, reply.Policy = "flags", "SYN, ACK", nil
	reply.Source, reply.Destination = fwd.Destination, fwd.Source
	var out []*flowpb.Flow
	for _, f := range []flows.Flow{drop, forged, xl, fwd, reply} {
		out = append(out, Flow(&f))
	}
	return out
}

// ownFilter is a FlowFilter of the fields of fl that mask picks, each set
// to fl's own value, as hubble observe's flags would name them.
func ownFilter(fl *flowpb.Flow, mask uint16) *flowpb.FlowFilter {
	ff := &flowpb.FlowFilter{}
	pod := func(e *flowpb.Endpoint) string { return e.GetNamespace() + "/" + e.GetPodName() }
	bit := func(i int) bool { return mask&(1<<i) != 0 }
	if bit(0) && fl.GetSource().GetPodName() != "" {
		ff.SourcePod = []string{pod(fl.GetSource())}
	}
	if bit(1) && fl.GetDestination().GetPodName() != "" {
		ff.DestinationPod = []string{pod(fl.GetDestination())}
	}
	if bit(2) {
		ff.SourceIp = []string{fl.GetIP().GetSource()}
	}
	if bit(3) {
		ff.DestinationIp = []string{fl.GetIP().GetDestination() + "/32"}
	}
	if bit(4) {
		ff.Verdict = []flowpb.Verdict{fl.GetVerdict()}
	}
	if bit(5) && fl.GetDropReasonDesc() != flowpb.DropReason_DROP_REASON_UNKNOWN {
		ff.DropReasonDesc = []flowpb.DropReason{fl.GetDropReasonDesc()}
	}
	if bit(6) {
		ff.EventType = []*flowpb.EventTypeFilter{{Type: fl.GetEventType().GetType(), MatchSubType: true, SubType: fl.GetEventType().GetSubType()}}
	}
	if bit(7) && len(fl.GetSource().GetLabels()) > 0 {
		ff.SourceLabel = []string{fl.GetSource().GetLabels()[0]}
	}
	if bit(8) {
		ff.NodeName = []string{fl.GetNodeName()}
	}
	if bit(9) && fl.GetTrafficDirection() != flowpb.TrafficDirection_TRAFFIC_DIRECTION_UNKNOWN {
		ff.TrafficDirection = []flowpb.TrafficDirection{fl.GetTrafficDirection()}
	}
	if bit(10) && fl.GetDestinationService() != nil {
		ff.DestinationService = []string{fl.GetDestinationService().GetNamespace() + "/" + fl.GetDestinationService().GetName()}
	}
	if bit(11) && fl.GetL4().GetTCP() != nil {
		ff.DestinationPort = []string{fmt.Sprint(fl.GetL4().GetTCP().GetDestinationPort())}
		ff.Protocol = []string{"tcp"}
	}
	if bit(12) && fl.GetL4().GetUDP() != nil {
		ff.SourcePort = []string{fmt.Sprint(fl.GetL4().GetUDP().GetSourcePort())}
		ff.Protocol = []string{"UDP"}
	}
	if bit(13) {
		ff.SourceIdentity = []uint32{fl.GetSource().GetIdentity()}
	}
	if bit(14) && fl.GetIsReply() != nil {
		ff.Reply = []bool{fl.GetIsReply().GetValue()}
	}
	return ff
}

// FuzzFlowFilterAgainstHubble: the Hubble API's request filters, checked
// against Hubble's own filter code (cilium's pkg/hubble/filters, the
// oracle). For any FlowFilter a client may send, on every kind of flow
// kpath makes: a filter kpath serves gives kpath's verdict the oracle's; a
// filter the oracle refuses, kpath refuses. A filter of a flow's own
// fields (as hubble observe's flags name them) selects it, in both: kpath's
// flows carry each field in the form Hubble's filters read. Nothing panics.
func FuzzFlowFilterAgainstHubble(f *testing.F) {
	seeds := []*flowpb.FlowFilter{
		{SourcePod: []string{"y/b"}},
		{DestinationPod: []string{"x/"}, Verdict: []flowpb.Verdict{flowpb.Verdict_DROPPED}},
		{DropReasonDesc: []flowpb.DropReason{flowpb.DropReason_INVALID_SOURCE_IP}},
		{SourceIp: []string{"10.0.0.0/16"}, DestinationPort: []string{"80", "53"}},
		{Protocol: []string{"udp"}, EventType: []*flowpb.EventTypeFilter{{Type: 1}}},
		{TcpFlags: []*flowpb.TCPFlags{{SYN: true}}, Reply: []bool{true}},
		{SourceLabel: []string{"tier=db"}, DestinationService: []string{"kube-system/dns"}},
		{SourceLabel: []string{"k8s:app in (web, api), !tier"}, DestinationLabel: []string{"io.kubernetes.pod.namespace!=x"}},
		{NodeName: []string{"node-*"}, TrafficDirection: []flowpb.TrafficDirection{flowpb.TrafficDirection_INGRESS}},
		{SourceIdentity: []uint32{300}, DestinationIp: []string{"10.0.0.9"}},
	}
	for i, s := range seeds {
		b, err := proto.Marshal(s)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(uint16(i*0x111), b)
	}
	fls := fuzzFlows()
	oracleLog := slog.New(slog.DiscardHandler)
	oracle := func(ff *flowpb.FlowFilter) (hubblefilters.FilterFuncs, error) {
		return hubblefilters.BuildFilterList(context.Background(), []*flowpb.FlowFilter{ff}, hubblefilters.DefaultFilters(oracleLog))
	}
	f.Fuzz(func(t *testing.T, mask uint16, data []byte) {
		for _, fl := range fls {
			own := ownFilter(fl, mask)
			o, err := oracle(own)
			if err != nil {
				t.Fatalf("Hubble refuses the filter %v of flow %v's own fields: %v", own, fl, err)
			}
			if supported(own) != nil || !matches(own, fl) || !o.MatchOne(&v1.Event{Event: fl}) {
				t.Fatalf("filter %v of its own fields does not select flow %v (kpath %v, Hubble %v)", own, fl, matches(own, fl), o.MatchOne(&v1.Event{Event: fl}))
			}
		}
		var ff flowpb.FlowFilter
		if proto.Unmarshal(data, &ff) != nil {
			return
		}
		o, oerr := oracle(&ff)
		kerr := supported(&ff)
		if oerr != nil {
			if kerr == nil {
				t.Fatalf("filter %v: Hubble refuses it (%v), kpath serves it", &ff, oerr)
			}
			return
		}
		if kerr != nil {
			return // a field kpath's flows never carry (L7, workloads, ...)
		}
		for _, fl := range fls {
			if got, want := matches(&ff, fl), o.MatchOne(&v1.Event{Event: fl}); got != want {
				t.Fatalf("filter %v on flow %v: kpath %v, Hubble %v", &ff, fl, got, want)
			}
		}
	})
}
