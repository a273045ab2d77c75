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
	}
	for name, set := range unsupported {
		if set {
			return fmt.Errorf("flow filter %s is not supported by kpath", name)
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
		!anyMatch(ff.NodeName, func(v string) bool { return v == f.GetNodeName() || strings.HasSuffix(v, "/"+f.GetNodeName()) }) ||
		!anyMatch(ff.Protocol, func(v string) bool { return strings.EqualFold(v, protocol(f)) }) ||
		!anyMatch(ff.SourcePort, func(v string) bool { return v == strconv.Itoa(int(port(f, true))) }) ||
		!anyMatch(ff.DestinationPort, func(v string) bool { return v == strconv.Itoa(int(port(f, false))) }) {
		return false
	}
	if len(ff.Verdict) > 0 && !slices.Contains(ff.Verdict, f.GetVerdict()) {
		return false
	}
	if len(ff.DropReasonDesc) > 0 && !slices.Contains(ff.DropReasonDesc, f.GetDropReasonDesc()) {
		return false
	}
	if len(ff.TrafficDirection) > 0 && !slices.Contains(ff.TrafficDirection, f.GetTrafficDirection()) {
		return false
	}
	if len(ff.SourceIdentity) > 0 && !slices.Contains(ff.SourceIdentity, f.GetSource().GetIdentity()) ||
		len(ff.DestinationIdentity) > 0 && !slices.Contains(ff.DestinationIdentity, f.GetDestination().GetIdentity()) {
		return false
	}
	if len(ff.Reply) > 0 && !slices.Contains(ff.Reply, f.GetIsReply().GetValue()) {
		return false
	}
	if len(ff.EventType) > 0 && !slices.ContainsFunc(ff.EventType, func(e *flowpb.EventTypeFilter) bool {
		return e.GetType() == f.GetEventType().GetType() && (!e.GetMatchSubType() || e.GetSubType() == f.GetEventType().GetSubType())
	}) {
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

// podMatch: "ns/name-prefix", "ns/" for a namespace, or a name prefix in
// the default namespace, as Hubble reads --pod.
func podMatch(v string, e *flowpb.Endpoint) bool {
	if e.GetPodName() == "" {
		return false
	}
	ns, prefix, ok := strings.Cut(v, "/")
	if !ok {
		ns, prefix = "default", v
	}
	return e.GetNamespace() == ns && strings.HasPrefix(e.GetPodName(), prefix)
}

// labelMatch: every "key=value" (or "key") of a comma list, with or
// without Hubble's "k8s:" source prefix.
func labelMatch(v string, e *flowpb.Endpoint) bool {
	for _, want := range strings.Split(v, ",") {
		want = strings.TrimPrefix(strings.TrimSpace(want), "k8s:")
		if !slices.ContainsFunc(e.GetLabels(), func(l string) bool {
			l = strings.TrimPrefix(l, "k8s:")
			return l == want || strings.HasPrefix(l, want+"=") && !strings.Contains(want, "=")
		}) {
			return false
		}
	}
	return true
}

func serviceMatch(v string, s *flowpb.Service) bool {
	if s == nil {
		return false
	}
	ns, name, ok := strings.Cut(v, "/")
	if !ok {
		return s.GetName() == v
	}
	return s.GetNamespace() == ns && (name == "" || s.GetName() == name)
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
		(!want.PSH || got.PSH) && (!want.URG || got.URG)
}
