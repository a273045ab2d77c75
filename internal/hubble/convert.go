// Package hubble serves Hubble's Observer gRPC API over the agent's flow
// ring, with Hubble's own published types (github.com/cilium/cilium
// api/v1/flow and observer), so that the stock hubble CLI and tools built
// on the API read kpath's flows.
package hubble

import (
	"maps"
	"slices"
	"strings"

	flowpb "github.com/cilium/cilium/api/v1/flow"
	"google.golang.org/protobuf/types/known/timestamppb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/kpath/kpath/internal/flows"
)

// Cilium's monitor message types, which Hubble's --type filter names.
const (
	eventDrop          = 1
	eventTrace         = 4
	eventPolicyVerdict = 5
)

// dropReasons maps kpath's drop reasons to Hubble's.
var dropReasons = map[string]flowpb.DropReason{
	"policy denied":                        flowpb.DropReason_POLICY_DENIED,
	"no service backend":                   flowpb.DropReason_SERVICE_BACKEND_NOT_FOUND,
	"malformed packet":                     flowpb.DropReason_INVALID_PACKET_DROPPED,
	"fragment without state":               flowpb.DropReason_FIRST_LOGICAL_DATAGRAM_FRAGMENT_NOT_FOUND,
	"conntrack write failed":               flowpb.DropReason_CT_MAP_INSERTION_FAILED,
	"header rewrite failed":                flowpb.DropReason_ERROR_WRITING_TO_PACKET,
	"invalid source address":               flowpb.DropReason_INVALID_SOURCE_IP,
	"unsupported L3 protocol":              flowpb.DropReason_UNSUPPORTED_L3_PROTOCOL,
	"denied by load-balancer source range": flowpb.DropReason_DENIED_BY_LB_SRC_RANGE_CHECK,
}

func endpoint(e flows.Endpoint) *flowpb.Endpoint {
	out := &flowpb.Endpoint{Identity: e.Identity, Namespace: e.Namespace, PodName: e.Pod}
	for _, k := range slices.Sorted(maps.Keys(e.Labels)) {
		out.Labels = append(out.Labels, "k8s:"+k+"="+e.Labels[k])
	}
	if e.Namespace != "" {
		out.Labels = append(out.Labels, "k8s:io.kubernetes.pod.namespace="+e.Namespace)
	}
	switch {
	case e.Node != "":
		out.Labels = append(out.Labels, "reserved:host")
	case e.Pod == "" && e.IP.IsValid() && !e.IP.IsUnspecified():
		out.Labels = append(out.Labels, "reserved:world")
	}
	return out
}

func policies(names []string) []*flowpb.Policy {
	var out []*flowpb.Policy
	for _, n := range names {
		ns, name, _ := strings.Cut(n, "/")
		out = append(out, &flowpb.Policy{Name: name, Namespace: ns, Kind: "NetworkPolicy"})
	}
	return out
}

// Flow converts a kpath flow into Hubble's.
func Flow(f *flows.Flow) *flowpb.Flow {
	out := &flowpb.Flow{
		Time:        timestamppb.New(f.Time),
		NodeName:    f.Node,
		Type:        flowpb.FlowType_L3_L4,
		Source:      endpoint(f.Source),
		Destination: endpoint(f.Destination),
		IsReply:     wrapperspb.Bool(f.Policy != nil && f.Policy.Match == "reply"),
		Summary:     summary(f),
	}
	if f.Source.IP.IsValid() || f.Destination.IP.IsValid() {
		out.IP = &flowpb.IP{IpVersion: flowpb.IPVersion_IPv4}
		if f.Source.IP.IsValid() && !f.Source.IP.IsUnspecified() {
			out.IP.Source = f.Source.IP.String()
		}
		if f.Destination.IP.IsValid() {
			out.IP.Destination = f.Destination.IP.String()
		}
	}
	sp, dp := uint32(f.Source.Port), uint32(f.Destination.Port)
	switch f.Proto {
	case "TCP":
		tcp := &flowpb.TCP{SourcePort: sp, DestinationPort: dp, Flags: &flowpb.TCPFlags{}}
		for _, fl := range strings.Split(f.TCPFlags, ", ") {
			switch fl {
			case "SYN":
				tcp.Flags.SYN = true
			case "ACK":
				tcp.Flags.ACK = true
			case "FIN":
				tcp.Flags.FIN = true
			case "RST":
				tcp.Flags.RST = true
			}
		}
		out.L4 = &flowpb.Layer4{Protocol: &flowpb.Layer4_TCP{TCP: tcp}}
	case "UDP":
		out.L4 = &flowpb.Layer4{Protocol: &flowpb.Layer4_UDP{UDP: &flowpb.UDP{SourcePort: sp, DestinationPort: dp}}}
	case "SCTP":
		out.L4 = &flowpb.Layer4{Protocol: &flowpb.Layer4_SCTP{SCTP: &flowpb.SCTP{SourcePort: sp, DestinationPort: dp}}}
	case "ICMP":
		out.L4 = &flowpb.Layer4{Protocol: &flowpb.Layer4_ICMPv4{ICMPv4: &flowpb.ICMPv4{}}}
	}
	switch f.Verdict {
	case flows.Dropped:
		out.Verdict = flowpb.Verdict_DROPPED
		out.DropReasonDesc = dropReasons[f.DropReason]
		out.DropReason = uint32(out.DropReasonDesc)
		// Cilium's drop events carry the reason as their subtype, which is
		// what hubble's printer names.
		out.EventType = &flowpb.CiliumEventType{Type: eventDrop, SubType: int32(out.DropReasonDesc)}
	case flows.Translated:
		out.Verdict = flowpb.Verdict_TRANSLATED
		out.EventType = &flowpb.CiliumEventType{Type: eventTrace}
	default:
		out.Verdict = flowpb.Verdict_FORWARDED
		out.EventType = &flowpb.CiliumEventType{Type: eventTrace}
	}
	if f.Type == "new" {
		out.EventType = &flowpb.CiliumEventType{Type: eventPolicyVerdict}
	}
	switch f.Dir {
	case "from-pod":
		out.TraceObservationPoint = flowpb.TraceObservationPoint_FROM_ENDPOINT
	case "to-pod":
		out.TraceObservationPoint = flowpb.TraceObservationPoint_TO_ENDPOINT
	}
	if f.Dir == "socket" {
		out.SockXlatePoint = flowpb.SocketTranslationPoint_SOCK_XLATE_POINT_PRE_DIRECTION_FWD
	}
	if s := f.Service; s != nil && s.Name != "" {
		out.DestinationService = &flowpb.Service{Name: s.Name, Namespace: s.Namespace}
	}
	if p := f.Policy; p != nil {
		out.TrafficDirection = flowpb.TrafficDirection_EGRESS
		if p.Ingress {
			out.TrafficDirection = flowpb.TrafficDirection_INGRESS
		}
		switch p.Match {
		case "identity":
			out.PolicyMatchType = 1 // L3 only (MatchTypeL3Only) or with L4: kpath does not tell them apart
		case "cidr":
			out.PolicyMatchType = 1
		case "not-isolated", "node-or-self":
			out.PolicyMatchType = 4 // all (MatchTypeAll)
		}
		var allowed []*flowpb.Policy
		if p.Rule != "" {
			name, _, _ := strings.Cut(p.Rule, " ")
			allowed = policies([]string{name})
		}
		switch {
		case f.Verdict == flows.Dropped && p.Ingress:
			out.IngressDeniedBy = policies(p.Policies)
		case f.Verdict == flows.Dropped:
			out.EgressDeniedBy = policies(p.Policies)
		case p.Ingress:
			out.IngressAllowedBy = allowed
		default:
			out.EgressAllowedBy = allowed
		}
	}
	return out
}

// summary is the deprecated one-line summary as Cilium words it for L4.
func summary(f *flows.Flow) string {
	switch f.Proto {
	case "TCP":
		return "TCP Flags: " + f.TCPFlags
	case "ICMP":
		return "ICMPv4"
	}
	return f.Proto
}
