// Package k8s watches the Kubernetes API with client-go reflectors and
// turns what it sees into kpath's model types as it arrives, keeping no API
// object, because an agent on every node of a 100,000-pod cluster must
// stay small.
package k8s

import (
	"net/netip"
	"strings"
	"time"
	"unique"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"

	"github.com/kpath/kpath/internal/model"
)

// Labels kpath reads.
const (
	LabelServiceName      = discoveryv1.LabelServiceName // kubernetes.io/service-name
	LabelServiceProxyName = "service.kubernetes.io/service-proxy-name"
	LabelHeadless         = corev1.IsHeadlessService // service.kubernetes.io/headless
)

func protocol(p corev1.Protocol) model.Protocol {
	switch p {
	case corev1.ProtocolTCP, "":
		return model.TCP
	case corev1.ProtocolUDP:
		return model.UDP
	}
	return 0
}

func parseIPv4s(ss []string) []netip.Addr {
	var out []netip.Addr
	for _, s := range ss {
		if a, err := netip.ParseAddr(s); err == nil && a.Is4() {
			out = append(out, a)
		}
	}
	return out
}

// ServiceSpec converts a Service.
func ServiceSpec(s *corev1.Service) *model.ServiceSpec {
	out := &model.ServiceSpec{
		Key:                 model.ServiceKey{Namespace: s.Namespace, Name: s.Name},
		ExternalIPs:         parseIPv4s(s.Spec.ExternalIPs),
		InternalLocal:       s.Spec.InternalTrafficPolicy != nil && *s.Spec.InternalTrafficPolicy == corev1.ServiceInternalTrafficPolicyLocal,
		ExternalLocal:       s.Spec.ExternalTrafficPolicy == corev1.ServiceExternalTrafficPolicyLocal,
		HealthCheckNodePort: uint16(s.Spec.HealthCheckNodePort),
		ProxyName:           s.Labels[LabelServiceProxyName],
	}
	switch s.Spec.Type {
	case corev1.ServiceTypeNodePort:
		out.Type = model.ServiceTypeNodePort
	case corev1.ServiceTypeLoadBalancer:
		out.Type = model.ServiceTypeLoadBalancer
	case corev1.ServiceTypeExternalName:
		out.Type = model.ServiceTypeExternalName
	}
	ips := s.Spec.ClusterIPs
	if len(ips) == 0 && s.Spec.ClusterIP != "" {
		ips = []string{s.Spec.ClusterIP}
	}
	if len(ips) == 0 || ips[0] == corev1.ClusterIPNone {
		out.Headless = true
	} else {
		out.ClusterIPs = parseIPv4s(ips)
	}
	for _, p := range s.Spec.Ports {
		out.Ports = append(out.Ports, model.ServicePort{
			Name: p.Name, Protocol: protocol(p.Protocol), Port: uint16(p.Port), NodePort: uint16(p.NodePort),
		})
	}
	for _, ing := range s.Status.LoadBalancer.Ingress {
		// Proxy mode: the load balancer delivers to the node, not to the
		// VIP, so the VIP must not be short-circuited here.
		if ing.IPMode != nil && *ing.IPMode == corev1.LoadBalancerIPModeProxy {
			continue
		}
		out.LoadBalancerIPs = append(out.LoadBalancerIPs, parseIPv4s([]string{ing.IP})...)
	}
	out.SourceRanges = sourceRanges(s.Spec.LoadBalancerSourceRanges)
	if s.Spec.SessionAffinity == corev1.ServiceAffinityClientIP {
		timeout := int32(corev1.DefaultClientIPServiceAffinitySeconds)
		if c := s.Spec.SessionAffinityConfig; c != nil && c.ClientIP != nil && c.ClientIP.TimeoutSeconds != nil {
			timeout = *c.ClientIP.TimeoutSeconds
		}
		out.AffinityTimeout = time.Duration(timeout) * time.Second
	}
	return out
}

// sourceRanges reads loadBalancerSourceRanges as kube-proxy does: spaces
// around an entry are tolerated (API validation lets them through), only
// IPv4 prefixes count, and a zero-length one admits every source, as no
// ranges do. Entries that do not parse cannot pass validation; they are
// skipped.
func sourceRanges(ss []string) []netip.Prefix {
	var out []netip.Prefix
	for _, s := range ss {
		p, err := netip.ParsePrefix(strings.TrimSpace(s))
		if err != nil || !p.Addr().Is4() {
			continue
		}
		if p.Bits() == 0 {
			return nil
		}
		out = append(out, p)
	}
	return model.CanonicalPrefixes(out)
}

// EndpointSlice converts an IPv4 EndpointSlice; nil for other address
// types or slices without a service label.
func EndpointSlice(s *discoveryv1.EndpointSlice) *model.EndpointSlice {
	svc := s.Labels[LabelServiceName]
	if s.AddressType != discoveryv1.AddressTypeIPv4 || svc == "" {
		return nil
	}
	out := &model.EndpointSlice{
		Namespace: s.Namespace, Name: s.Name,
		Service: model.ServiceKey{Namespace: s.Namespace, Name: svc},
	}
	for _, p := range s.Ports {
		if p.Port == nil {
			continue
		}
		pr := corev1.ProtocolTCP
		if p.Protocol != nil {
			pr = *p.Protocol
		}
		name := ""
		if p.Name != nil {
			name = *p.Name
		}
		out.Ports = append(out.Ports, model.EndpointPort{Name: name, Protocol: protocol(pr), Port: uint16(*p.Port)})
	}
	out.Endpoints = make([]model.Endpoint, 0, len(s.Endpoints))
	for _, e := range s.Endpoints {
		// kube-proxy takes an endpoint's first address and no other.
		var ip netip.Addr
		if len(e.Addresses) > 0 {
			ip, _ = netip.ParseAddr(e.Addresses[0])
		}
		if !ip.Is4() {
			out.Invalid++
			continue
		}
		ep := model.Endpoint{
			Addr: ip,
			// kube-proxy: a missing ready condition means ready; a missing
			// serving condition means whatever ready says.
			Ready:       e.Conditions.Ready == nil || *e.Conditions.Ready,
			Terminating: e.Conditions.Terminating != nil && *e.Conditions.Terminating,
		}
		ep.Serving = ep.Ready
		if e.Conditions.Serving != nil {
			ep.Serving = *e.Conditions.Serving
		}
		if e.NodeName != nil {
			// A node's name is in every endpoint on it: one copy.
			ep.NodeName = unique.Make(*e.NodeName).Value()
		}
		if h := e.Hints; h != nil {
			hints := &model.EndpointHints{}
			for _, z := range h.ForZones {
				hints.ForZones = append(hints.ForZones, unique.Make(z.Name).Value())
			}
			for _, n := range h.ForNodes {
				hints.ForNodes = append(hints.ForNodes, unique.Make(n.Name).Value())
			}
			if hints.ForZones != nil || hints.ForNodes != nil {
				ep.Hints = hints
			}
		}
		out.Endpoints = append(out.Endpoints, ep)
	}
	return out
}

// Node converts a Node.
func Node(n *corev1.Node) *model.Node {
	out := &model.Node{Name: n.Name, Zone: n.Labels[corev1.LabelTopologyZone]}
	for _, t := range []corev1.NodeAddressType{corev1.NodeInternalIP, corev1.NodeExternalIP} {
		for _, a := range n.Status.Addresses {
			if a.Type == t {
				out.Addrs = append(out.Addrs, parseIPv4s([]string{a.Address})...)
			}
		}
	}
	if p, err := netip.ParsePrefix(n.Spec.PodCIDR); err == nil {
		out.PodCIDR = p
	}
	return out
}
