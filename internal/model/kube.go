package model

import (
	"cmp"
	"net/netip"
	"time"
)

// The compact forms of Kubernetes objects that kpath keeps. The k8s package
// converts API objects into these as they arrive, so the agent never holds
// whole objects: at 100,000 pods that is the difference between tens and
// hundreds of MiB.

// ServiceKey names a Service.
type ServiceKey struct {
	Namespace, Name string
}

// String formats k as namespace/name.
func (k ServiceKey) String() string { return k.Namespace + "/" + k.Name }

// Compare orders keys by namespace, then name.
func (k ServiceKey) Compare(o ServiceKey) int {
	return cmp.Or(cmp.Compare(k.Namespace, o.Namespace), cmp.Compare(k.Name, o.Name))
}

// ServiceType is spec.type of a Service.
type ServiceType uint8

// Service types.
const (
	ServiceTypeClusterIP ServiceType = iota
	ServiceTypeNodePort
	ServiceTypeLoadBalancer
	ServiceTypeExternalName
)

// ServicePort is one entry of spec.ports.
type ServicePort struct {
	Name     string
	Protocol Protocol // 0 for protocols kpath does not translate (SCTP)
	Port     uint16
	NodePort uint16
}

// ServiceSpec is what kpath keeps of a Service.
type ServiceSpec struct {
	Key  ServiceKey
	Type ServiceType
	// ClusterIPs are the IPv4 cluster IPs; empty for headless services.
	ClusterIPs      []netip.Addr
	Headless        bool
	Ports           []ServicePort
	ExternalIPs     []netip.Addr
	LoadBalancerIPs []netip.Addr // status.loadBalancer.ingress IPs, VIP mode only
	// SourceRanges are the IPv4 loadBalancerSourceRanges; none when unset
	// or when one of them is 0.0.0.0/0 (any source).
	SourceRanges []netip.Prefix
	// AffinityTimeout is sessionAffinity ClientIP's timeout; 0 for None.
	AffinityTimeout time.Duration
	// InternalLocal and ExternalLocal are the traffic policies set to Local.
	InternalLocal, ExternalLocal bool
	HealthCheckNodePort          uint16
	// ProxyName is the service.kubernetes.io/service-proxy-name label.
	ProxyName string
}

// EndpointPort is one entry of an EndpointSlice's ports.
type EndpointPort struct {
	Name     string
	Protocol Protocol
	Port     uint16
}

// Endpoint is one endpoint of an EndpointSlice, with its conditions as
// kube-proxy reads them (a missing ready condition counts as ready; a
// missing serving condition counts as ready's value).
type Endpoint struct {
	// Addr is the endpoint's address: the first of its addresses, the one
	// kube-proxy uses (the API calls them fungible, "clients may choose to
	// only use the first element").
	Addr        netip.Addr
	Ready       bool
	Serving     bool
	Terminating bool
	NodeName    string
	// Hints are the endpoint's topology hints; nil when it has none (a
	// pointer: at 100k endpoints most have none).
	Hints *EndpointHints
}

// EndpointHints are an endpoint's topology hints: the zones and nodes the
// EndpointSlice controller wants it used from.
type EndpointHints struct {
	ForZones, ForNodes []string
}

// Zones are the zones the endpoint is meant for (none without hints).
func (e *Endpoint) Zones() []string {
	if e.Hints == nil {
		return nil
	}
	return e.Hints.ForZones
}

// Nodes are the nodes the endpoint is meant for (none without hints).
func (e *Endpoint) Nodes() []string {
	if e.Hints == nil {
		return nil
	}
	return e.Hints.ForNodes
}

// EndpointSlice is what kpath keeps of an IPv4 EndpointSlice.
type EndpointSlice struct {
	Namespace, Name string
	Service         ServiceKey // from the kubernetes.io/service-name label
	Ports           []EndpointPort
	Endpoints       []Endpoint
	// Invalid counts endpoints dropped in conversion (their first address
	// unparseable or not IPv4), so they can be reported.
	Invalid int
}

// Node is what kpath keeps of a Node.
type Node struct {
	Name    string
	Addrs   []netip.Addr // IPv4 InternalIP addresses, then ExternalIP ones: Addrs[0] is the node's IP
	PodCIDR netip.Prefix
	// Zone is the topology.kubernetes.io/zone label ("" without one).
	Zone string
}
