package hubble

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	flowpb "github.com/cilium/cilium/api/v1/flow"
	observerpb "github.com/cilium/cilium/api/v1/observer"
	peerpb "github.com/cilium/cilium/api/v1/peer"
	relaypb "github.com/cilium/cilium/api/v1/relay"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/kpath/kpath/internal/flows"
)

// Version is what ServerStatus reports.
const Version = "kpath (Hubble Observer API)"

// Server is the Observer service over one node's flow ring.
type Server struct {
	observerpb.UnimplementedObserverServer
	Ring    *flows.Ring
	Node    string
	Started time.Time
	// Peers, when set, is served beside the Observer (Hubble's Peer
	// service, which hubble-relay follows).
	Peers *Peers
}

// ListenUnix opens the unix socket at path, root only (flows name every
// pod of the node), replacing a stale one.
func ListenUnix(path string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("hubble socket directory: %w", err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("remove stale hubble socket: %w", err)
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("hubble socket %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("hubble socket %s: %w", path, err)
	}
	return ln, nil
}

// Serve serves the Observer, the Peer service (when set) and gRPC health
// on every listener until ctx ends or one of them fails.
func (s *Server) Serve(ctx context.Context, lns ...net.Listener) error {
	g := grpc.NewServer()
	observerpb.RegisterObserverServer(g, s)
	if s.Peers != nil {
		peerpb.RegisterPeerServer(g, s.Peers)
	}
	hs := health.NewServer()
	healthpb.RegisterHealthServer(g, hs)
	errs := make(chan error, len(lns))
	for _, ln := range lns {
		go func() { errs <- g.Serve(ln) }()
	}
	var err error
	select {
	case <-ctx.Done():
	case err = <-errs:
	}
	g.Stop()
	return err
}

// ServerStatus reports the ring's fill.
func (s *Server) ServerStatus(context.Context, *observerpb.ServerStatusRequest) (*observerpb.ServerStatusResponse, error) {
	seen, held := s.Ring.Stats()
	return &observerpb.ServerStatusResponse{
		NumFlows: uint64(held), MaxFlows: uint64(s.Ring.Capacity()), SeenFlows: seen,
		UptimeNs: uint64(time.Since(s.Started)), Version: Version,
		NumConnectedNodes: wrapperspb.UInt32(1), NumUnavailableNodes: wrapperspb.UInt32(0),
	}, nil
}

// GetNodes lists this node, the only one an agent knows flows of.
func (s *Server) GetNodes(context.Context, *observerpb.GetNodesRequest) (*observerpb.GetNodesResponse, error) {
	seen, held := s.Ring.Stats()
	return &observerpb.GetNodesResponse{Nodes: []*observerpb.Node{{
		Name: s.Node, Version: Version, State: relaypb.NodeState_NODE_CONNECTED,
		UptimeNs: uint64(time.Since(s.Started)), NumFlows: uint64(held), MaxFlows: uint64(s.Ring.Capacity()), SeenFlows: seen,
	}}}, nil
}

// GetFlows sends the held flows that the request selects (the last or
// first Number), then with Follow new ones as they come.
func (s *Server) GetFlows(req *observerpb.GetFlowsRequest, stream grpc.ServerStreamingServer[observerpb.GetFlowsResponse]) error {
	for _, f := range append(slices.Clone(req.GetWhitelist()), req.GetBlacklist()...) {
		if err := supported(f); err != nil {
			return status.Error(codes.InvalidArgument, err.Error())
		}
	}
	var since, until time.Time
	if req.GetSince() != nil {
		since = req.GetSince().AsTime()
	}
	if req.GetUntil() != nil {
		until = req.GetUntil().AsTime()
	}
	inTime := func(f *flows.Flow) bool {
		return (since.IsZero() || !f.Time.Before(since)) && (until.IsZero() || !f.Time.After(until))
	}
	// Each flow is converted once: the filters read Hubble's form, which
	// is also what is sent.
	selected := func(f *flows.Flow) *observerpb.GetFlowsResponse {
		pb := Flow(f)
		if !selects(req.GetWhitelist(), req.GetBlacklist(), pb) {
			return nil
		}
		return &observerpb.GetFlowsResponse{ResponseTypes: &observerpb.GetFlowsResponse_Flow{Flow: pb}, NodeName: s.Node, Time: timestamppb.New(f.Time)}
	}
	var held []*observerpb.GetFlowsResponse
	for _, f := range s.Ring.Snapshot(inTime, 0) {
		if r := selected(&f); r != nil {
			held = append(held, r)
		}
	}
	if n := int(req.GetNumber()); n > 0 && len(held) > n {
		if req.GetFirst() {
			held = held[:n]
		} else {
			held = held[len(held)-n:]
		}
	}
	for _, r := range held {
		if err := stream.Send(r); err != nil {
			return err
		}
	}
	if !req.GetFollow() {
		return nil
	}
	var err error
	s.Ring.Follow(stream.Context(), inTime, func(f flows.Flow) bool {
		if r := selected(&f); r != nil {
			err = stream.Send(r)
		}
		return err == nil
	})
	return err
}

// selects: some whitelist filter matches (or there is none) and no
// blacklist filter does, as Hubble defines them.
func selects(white, black []*flowpb.FlowFilter, f *flowpb.Flow) bool {
	if len(white) > 0 && !slices.ContainsFunc(white, func(ff *flowpb.FlowFilter) bool { return matches(ff, f) }) {
		return false
	}
	return !slices.ContainsFunc(black, func(ff *flowpb.FlowFilter) bool { return matches(ff, f) })
}

// supported names the first filter field kpath cannot evaluate (L7, DNS,
// workloads...), so a client is told instead of given wrong results.
func supported(f *flowpb.FlowFilter) error {
	unsupported := map[string]bool{
		"source_fqdn": len(f.SourceFqdn) > 0, "destination_fqdn": len(f.DestinationFqdn) > 0,
		"http_status_code": len(f.HttpStatusCode) > 0, "http_method": len(f.HttpMethod) > 0,
		"http_path": len(f.HttpPath) > 0, "http_url": len(f.HttpUrl) > 0, "http_header": len(f.HttpHeader) > 0,
		"dns_query": len(f.DnsQuery) > 0, "source_workload": len(f.SourceWorkload) > 0,
		"destination_workload": len(f.DestinationWorkload) > 0, "trace_id": len(f.TraceId) > 0,
		"uuid": len(f.Uuid) > 0, "interface": len(f.Interface) > 0, "node_labels": len(f.NodeLabels) > 0,
		"source_ip_xlated": len(f.SourceIpXlated) > 0, "source_cluster_name": len(f.SourceClusterName) > 0,
		"destination_cluster_name": len(f.DestinationClusterName) > 0, "ip_trace_id": len(f.IpTraceId) > 0,
		"encrypted": len(f.Encrypted) > 0, "experimental": f.Experimental != nil,
	}
	for name, set := range unsupported {
		if set {
			return fmt.Errorf("flow filter %s is not supported by kpath", name)
		}
	}
	for _, ip := range append(slices.Clone(f.SourceIp), f.DestinationIp...) {
		if _, err := parseIPFilter(ip); err != nil {
			return err
		}
	}
	for _, names := range [][]string{f.SourcePod, f.DestinationPod, f.SourceService, f.DestinationService} {
		if slices.Contains(names, "") {
			return errors.New("flow filter pod or service: a name must not be empty")
		}
	}
	for _, p := range append(slices.Clone(f.SourcePort), f.DestinationPort...) {
		if _, err := strconv.ParseUint(p, 10, 16); err != nil {
			return fmt.Errorf("flow filter port %q: %w", p, err)
		}
	}
	for _, p := range f.Protocol {
		if !slices.Contains(protocols, strings.ToLower(p)) {
			return fmt.Errorf("flow filter protocol %q: want one of %s", p, strings.Join(protocols, ", "))
		}
	}
	if len(f.NodeName) > 0 {
		if _, err := compileNodeNames(f.NodeName); err != nil {
			return fmt.Errorf("flow filter node_name: %w", err)
		}
	}
	for _, sel := range append(slices.Clone(f.SourceLabel), f.DestinationLabel...) {
		if _, err := labelSelector(sel); err != nil {
			return fmt.Errorf("flow filter label %q: %w", sel, err)
		}
	}
	return nil
}

// matches evaluates one FlowFilter: every field set must match; a field's
// values are alternatives.
func matches(ff *flowpb.FlowFilter, f *flowpb.Flow) bool {
	ip := f.GetIP()
	if !anyMatch(ff.SourceIp, func(v string) bool { return ipMatch(v, ip.GetSource()) }) ||
		!anyMatch(ff.DestinationIp, func(v string) bool { return ipMatch(v, ip.GetDestination()) }) ||
		!anyMatch(ff.SourcePod, func(v string) bool { return podMatch(v, f.GetSource()) }) ||
		!anyMatch(ff.DestinationPod, func(v string) bool { return podMatch(v, f.GetDestination()) }) ||
		!anyMatch(ff.SourceLabel, func(v string) bool { return labelMatch(v, f.GetSource()) }) ||
		!anyMatch(ff.DestinationLabel, func(v string) bool { return labelMatch(v, f.GetDestination()) }) ||
		!anyMatch(ff.SourceService, func(v string) bool { return serviceMatch(v, f.GetSourceService()) }) ||
		!anyMatch(ff.DestinationService, func(v string) bool { return serviceMatch(v, f.GetDestinationService()) }) ||
		(len(ff.NodeName) > 0 && !nodeNameMatch(ff.NodeName, f.GetNodeName())) ||
		!anyMatch(ff.Protocol, func(v string) bool { return protocolMatch(v, f) }) ||
		!anyMatch(ff.SourcePort, func(v string) bool { return portMatch(v, f, true) }) ||
		!anyMatch(ff.DestinationPort, func(v string) bool { return portMatch(v, f, false) }) {
		return false
	}
	if len(ff.Verdict) > 0 && !slices.Contains(ff.Verdict, f.GetVerdict()) {
		return false
	}
	if len(ff.DropReasonDesc) > 0 && (f.GetVerdict() != flowpb.Verdict_DROPPED || !slices.Contains(ff.DropReasonDesc, f.GetDropReasonDesc())) {
		return false
	}
	if len(ff.TrafficDirection) > 0 && !slices.Contains(ff.TrafficDirection, f.GetTrafficDirection()) {
		return false
	}
	if len(ff.SourceIdentity) > 0 && !slices.Contains(ff.SourceIdentity, f.GetSource().GetIdentity()) ||
		len(ff.DestinationIdentity) > 0 && !slices.Contains(ff.DestinationIdentity, f.GetDestination().GetIdentity()) {
		return false
	}
	if len(ff.IpVersion) > 0 && !slices.Contains(ff.IpVersion, f.GetIP().GetIpVersion()) {
		return false
	}
	// A flow whose direction is unknown is no reply when dropped (Hubble
	// keeps that for its older clients) and matches neither otherwise.
	if len(ff.Reply) > 0 && (f.GetIsReply() == nil && f.GetVerdict() != flowpb.Verdict_DROPPED || !slices.Contains(ff.Reply, f.GetIsReply().GetValue())) {
		return false
	}
	// An event type filter of type 0 matches any type (of a flow that has
	// one), as Hubble's does.
	if len(ff.EventType) > 0 && (f.GetEventType() == nil || !slices.ContainsFunc(ff.EventType, func(e *flowpb.EventTypeFilter) bool {
		return (e.GetType() == 0 || e.GetType() == f.GetEventType().GetType()) && (!e.GetMatchSubType() || e.GetSubType() == f.GetEventType().GetSubType())
	})) {
		return false
	}
	if len(ff.TcpFlags) > 0 && !slices.ContainsFunc(ff.TcpFlags, func(t *flowpb.TCPFlags) bool { return flagsMatch(t, f.GetL4().GetTCP().GetFlags()) }) {
		return false
	}
	return true
}

func anyMatch(vals []string, fn func(string) bool) bool {
	return len(vals) == 0 || slices.ContainsFunc(vals, fn)
}

// ipMatch: an address or a CIDR.
// parseIPFilter reads an address or, with a '/', a prefix, as Hubble does.
func parseIPFilter(v string) (netip.Prefix, error) {
	if strings.Contains(v, "/") {
		p, err := netip.ParsePrefix(v)
		if err != nil {
			return p, fmt.Errorf("flow filter IP prefix %q: %w", v, err)
		}
		return p, nil
	}
	a, err := netip.ParseAddr(v)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("flow filter IP address %q: %w", v, err)
	}
	return netip.PrefixFrom(a, a.BitLen()), nil
}

// ipMatch: the same address as written, or an address in the prefix.
func ipMatch(v, ip string) bool {
	if ip == "" {
		return false
	}
	if p, err := netip.ParsePrefix(v); err == nil {
		a, err := netip.ParseAddr(ip)
		return err == nil && p.Contains(a)
	}
	return v == ip
}

// namespacedMatch: v is "NS/NAME-PREFIX", "NS/" for a namespace, "/NAME-
// PREFIX" for any namespace, or a name prefix in the default namespace;
// parts past a second slash are ignored, as Hubble reads pod and service
// filters.
func namespacedMatch(v, eventNs, eventName string) bool {
	if eventNs == "" && eventName == "" {
		return false
	}
	parts := strings.Split(v, "/")
	ns, prefix := parts[0], ""
	switch {
	case len(parts) > 1:
		prefix = parts[1]
	case ns != "":
		ns, prefix = "default", ns
	}
	return (prefix == "" || strings.HasPrefix(eventName, prefix)) && (ns == "" || ns == eventNs)
}

func podMatch(v string, e *flowpb.Endpoint) bool {
	return namespacedMatch(v, e.GetNamespace(), e.GetPodName())
}

func serviceMatch(v string, s *flowpb.Service) bool {
	return namespacedMatch(v, s.GetNamespace(), s.GetName())
}

// protocols are the FlowFilter protocols Hubble knows; dns and http (L7)
// match nothing of kpath's.
var protocols = []string{"icmp", "icmpv4", "icmpv6", "tcp", "udp", "sctp", "vrrp", "igmp", "dns", "http"}

// protocolMatch: icmp is ICMP of either IP version, as Hubble has it.
func protocolMatch(v string, f *flowpb.Flow) bool {
	l4 := f.GetL4()
	switch strings.ToLower(v) {
	case "icmp":
		return l4.GetICMPv4() != nil || l4.GetICMPv6() != nil
	case "icmpv4":
		return l4.GetICMPv4() != nil
	case "icmpv6":
		return l4.GetICMPv6() != nil
	case "vrrp":
		return l4.GetVRRP() != nil
	case "igmp":
		return l4.GetIGMP() != nil
	}
	return strings.EqualFold(v, protocol(f))
}

func protocol(f *flowpb.Flow) string {
	switch {
	case f.GetL4().GetTCP() != nil:
		return "tcp"
	case f.GetL4().GetUDP() != nil:
		return "udp"
	case f.GetL4().GetSCTP() != nil:
		return "sctp"
	case f.GetL4().GetICMPv4() != nil:
		return "icmp"
	}
	return ""
}

// portMatch: the flow has ports (TCP, UDP, SCTP) and the one asked for is
// v, a decimal number.
func portMatch(v string, f *flowpb.Flow, src bool) bool {
	want, err := strconv.ParseUint(v, 10, 16)
	l4 := f.GetL4()
	return err == nil && (l4.GetTCP() != nil || l4.GetUDP() != nil || l4.GetSCTP() != nil) && uint64(port(f, src)) == want
}

func port(f *flowpb.Flow, src bool) uint32 {
	l4 := f.GetL4()
	switch {
	case l4.GetTCP() != nil:
		if src {
			return l4.GetTCP().GetSourcePort()
		}
		return l4.GetTCP().GetDestinationPort()
	case l4.GetUDP() != nil:
		if src {
			return l4.GetUDP().GetSourcePort()
		}
		return l4.GetUDP().GetDestinationPort()
	case l4.GetSCTP() != nil:
		if src {
			return l4.GetSCTP().GetSourcePort()
		}
		return l4.GetSCTP().GetDestinationPort()
	}
	return 0
}

// flagsMatch: every flag set in want is set in got.
func flagsMatch(want, got *flowpb.TCPFlags) bool {
	if got == nil {
		return false
	}
	return (!want.SYN || got.SYN) && (!want.ACK || got.ACK) && (!want.FIN || got.FIN) && (!want.RST || got.RST) &&
		(!want.PSH || got.PSH) && (!want.URG || got.URG) && (!want.ECE || got.ECE) && (!want.CWR || got.CWR) && (!want.NS || got.NS)
}
