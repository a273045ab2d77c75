// Package servicemap computes, as a pure function of Services,
// EndpointSlices and the node, which backends each frontend reaches from
// this node, with kube-proxy's semantics: ClusterIP, NodePort, ExternalIPs
// and LoadBalancer frontends; endpoint conditions (terminating endpoints
// only when no ready one remains); internal and external traffic policy
// Local; loadBalancerSourceRanges; topology-aware routing by the EndpointSlice controller's hints;
// session affinity; headless and foreign-proxy services ignored.
// It imports neither Kubernetes nor eBPF, so it doubles as the reference
// the agent's tests compare the datapath with.
package servicemap

import (
	"fmt"
	"net/netip"
	"slices"

	"github.com/kpath/kpath/internal/model"
)

// Node is the node the map is computed for.
type Node struct {
	Name string
	// Addrs are the node's addresses that NodePort frontends listen on.
	Addrs []netip.Addr
	// Zone is the node's topology.kubernetes.io/zone, for zone hints.
	Zone string
}

// Options tune the computation.
type Options struct {
	// ProxyName: services labelled service.kubernetes.io/service-proxy-name
	// are handled only when the label equals it (empty: only unlabelled ones).
	ProxyName string
}

// Problem is input kpath could not use, to be logged and counted.
type Problem struct {
	Service model.ServiceKey
	Reason  string // a short, stable label for metrics
	Detail  string
}

func (p Problem) String() string { return fmt.Sprintf("%s: %s: %s", p.Service, p.Reason, p.Detail) }

// Problem reasons.
const (
	ReasonUnsupportedProtocol = "unsupported-protocol"
	ReasonInvalidEndpoint     = "invalid-endpoint"
	ReasonFrontendClash       = "frontend-clash"
)

// Kind says which kind of frontend a Frontend is; traffic policies depend on it.
type Kind uint8

// Frontend kinds.
const (
	KindClusterIP Kind = iota
	KindNodePort
	KindExternalIP
	KindLoadBalancer
)

func (k Kind) String() string {
	return [...]string{"ClusterIP", "NodePort", "ExternalIP", "LoadBalancer"}[k]
}

// Entry is one frontend of one service port. Its Backends are what clients
// on this node (pods and host processes) reach: for NodePort, external IP
// and load-balancer frontends that is every usable endpoint of the cluster,
// as kube-proxy short-circuits such local traffic, whatever the external
// traffic policy. External is what traffic arriving from outside the node
// reaches: with externalTrafficPolicy Local only this node's endpoints. It
// is nil for ClusterIP frontends.
type Entry struct {
	Owner model.ServiceKey
	Port  string // the service port's name
	Kind  Kind
	model.Service
	External []model.L4Addr
}

// ForService computes the entries of one service from its slices. Entries
// are sorted by frontend; their backends by address.
func ForService(node Node, spec *model.ServiceSpec, slices []*model.EndpointSlice, opts Options) ([]Entry, []Problem) {
	if spec.Headless || spec.Type == model.ServiceTypeExternalName || spec.ProxyName != opts.ProxyName {
		return nil, nil
	}
	var (
		out      []Entry
		problems []Problem
	)
	for _, s := range slices {
		if s.Invalid > 0 {
			problems = append(problems, Problem{spec.Key, ReasonInvalidEndpoint,
				fmt.Sprintf("EndpointSlice %s/%s: %d endpoints have no valid IPv4 address first", s.Namespace, s.Name, s.Invalid)})
		}
	}
	for _, sp := range spec.Ports {
		if sp.Protocol != model.TCP && sp.Protocol != model.UDP {
			problems = append(problems, Problem{spec.Key, ReasonUnsupportedProtocol,
				fmt.Sprintf("port %q: only TCP and UDP are translated", sp.Name)})
			continue
		}
		eps := endpointsFor(sp, slices)
		clusterEPs := usable(eps, topologyFor(eps, node))
		localEPs := usable(eps, func(e endpoint) bool { return e.node == node.Name })
		internal, external := clusterEPs, clusterEPs
		if spec.InternalLocal {
			internal = localEPs
		}
		if spec.ExternalLocal {
			external = localEPs
		}
		add := func(kind Kind, addr netip.Addr, port uint16) {
			if !addr.Is4() {
				return
			}
			e := Entry{Owner: spec.Key, Port: sp.Name, Kind: kind, Service: model.Service{
				Frontend: model.L4Addr{Addr: addr, Port: port, Proto: sp.Protocol},
				Backends: internal,
				Affinity: spec.AffinityTimeout,
			}}
			if kind != KindClusterIP {
				e.Backends, e.External = clusterEPs, external
			}
			if kind == KindLoadBalancer {
				e.SourceRanges, e.SourceNode = sourceRanges(node, spec)
			}
			out = append(out, e)
		}
		for _, ip := range spec.ClusterIPs {
			add(KindClusterIP, ip, sp.Port)
		}
		if sp.NodePort != 0 && (spec.Type == model.ServiceTypeNodePort || spec.Type == model.ServiceTypeLoadBalancer) {
			for _, ip := range node.Addrs {
				add(KindNodePort, ip, sp.NodePort)
			}
		}
		for _, ip := range spec.ExternalIPs {
			add(KindExternalIP, ip, sp.Port)
		}
		if spec.Type == model.ServiceTypeLoadBalancer {
			for _, ip := range spec.LoadBalancerIPs {
				add(KindLoadBalancer, ip, sp.Port)
			}
		}
	}
	slicesSortEntries(out)
	return out, problems
}

// sourceRanges are the sources a load-balancer IP of spec admits, as
// kube-proxy's firewall chain has them: the loadBalancerSourceRanges and,
// when one of them holds the node's address, the load-balancer IPs
// themselves (a VIP-style load balancer's address is often local to the
// node, so the node's own requests to it come from it) and the node's own
// sockets.
func sourceRanges(node Node, spec *model.ServiceSpec) ([]netip.Prefix, bool) {
	if len(spec.SourceRanges) == 0 {
		return nil, false
	}
	out := slices.Clone(spec.SourceRanges)
	fromNode := len(node.Addrs) > 0 && slices.ContainsFunc(out, func(p netip.Prefix) bool { return p.Contains(node.Addrs[0]) })
	if fromNode {
		for _, ip := range spec.LoadBalancerIPs {
			if ip.Is4() {
				out = append(out, netip.PrefixFrom(ip, 32))
			}
		}
	}
	return model.CanonicalPrefixes(out), fromNode
}

// endpoint is one endpoint address for one service port.
type endpoint struct {
	addr                        model.L4Addr
	ready, serving, terminating bool
	node                        string
	forZones, forNodes          []string // the hints (shared with the model)
}

// endpointsFor resolves a service port against the slices: the slice port
// with the same name and protocol gives the target port (this is how named
// target ports reach the datapath).
func endpointsFor(sp model.ServicePort, slices []*model.EndpointSlice) []endpoint {
	var out []endpoint
	for _, s := range slices {
		var port uint16
		for _, p := range s.Ports {
			if p.Name == sp.Name && p.Protocol == sp.Protocol {
				port = p.Port
			}
		}
		if port == 0 {
			continue
		}
		for _, e := range s.Endpoints {
			out = append(out, endpoint{
				addr:  model.L4Addr{Addr: e.Addr, Port: port, Proto: sp.Protocol},
				ready: e.Ready, serving: e.Serving, terminating: e.Terminating, node: e.NodeName,
				forZones: e.Zones(), forNodes: e.Nodes(),
			})
		}
	}
	return out
}

// usable picks the endpoints traffic may go to, as kube-proxy does: the
// ready ones that pass in (the slice's word: the EndpointSlice controller
// marks a terminating pod's endpoint ready only for a Service that
// publishes not-ready addresses, which then gets it like any other); if
// there are none, the serving terminating ones that pass in
// (so connections drain onto pods that are shutting down gracefully rather
// than fail). Topology narrows only the ready ones: it is in force only
// where a ready endpoint is meant for this node, and there is no topology
// to keep among endpoints that are all going away.
func usable(eps []endpoint, in func(endpoint) bool) []model.L4Addr {
	var ready, terminating []model.L4Addr
	seen := map[model.L4Addr]bool{}
	for _, e := range eps {
		if seen[e.addr] {
			continue // the same address in two slices (a slice being replaced)
		}
		switch {
		case e.ready && in(e):
			ready = append(ready, e.addr)
			seen[e.addr] = true
		case e.ready:
		case e.serving && e.terminating && in(e):
			terminating = append(terminating, e.addr)
		}
	}
	out := ready
	if len(out) == 0 {
		out = terminating
	}
	slices.SortFunc(out, compareL4)
	out = slices.CompactFunc(out, func(a, b model.L4Addr) bool { return a == b })
	if cap(out)-len(out) > len(out)/8 {
		// Held as long as the service is unchanged (by the reconciler and
		// the datapath alike): not with append's room to grow.
		out = slices.Clone(out)
	}
	return out
}

func compareL4(a, b model.L4Addr) int { return a.Compare(b) }

func slicesSortEntries(es []Entry) {
	slices.SortFunc(es, func(a, b Entry) int { return compareL4(a.Frontend, b.Frontend) })
}

// Merge combines the entries of all services into one list of frontends.
// Two services claiming the same frontend is a clash: the service whose key
// sorts first keeps it (a stable choice, not the older one, which the map
// does not know), and the other gets a problem.
func Merge(perService map[model.ServiceKey][]Entry) ([]Entry, []Problem) {
	keys := make([]model.ServiceKey, 0, len(perService))
	for k := range perService {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, model.ServiceKey.Compare)
	owner := map[model.L4Addr]model.ServiceKey{}
	var (
		out      []Entry
		problems []Problem
	)
	for _, k := range keys {
		for _, e := range perService[k] {
			if o, taken := owner[e.Frontend]; taken {
				problems = append(problems, Problem{k, ReasonFrontendClash,
					fmt.Sprintf("%s frontend %s is already used by service %s; ignored", e.Kind, e.Frontend, o)})
				continue
			}
			owner[e.Frontend] = k
			out = append(out, e)
		}
	}
	slicesSortEntries(out)
	return out, problems
}

// LocalEndpoints counts the distinct addresses of this node's ready
// endpoints of a service, as kube-proxy's health check node port reports
// them for externalTrafficPolicy Local. Serving terminating endpoints do
// not count, even while traffic still drains onto them for want of ready
// ones: a load balancer must stop sending new traffic to a node whose
// endpoints are all going away (the upstream e2e test "should fail health
// check node port if there are only terminating endpoints").
func LocalEndpoints(nodeName string, spec *model.ServiceSpec, slices []*model.EndpointSlice) int {
	addrs := map[netip.Addr]bool{}
	for _, sp := range spec.Ports {
		for _, e := range endpointsFor(sp, slices) {
			if e.node == nodeName && e.ready {
				addrs[e.addr.Addr] = true
			}
		}
	}
	return len(addrs)
}
