package k8s

import (
	"fmt"
	"net/netip"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kpath/kpath/internal/model"
)

func ptr[T any](v T) *T { return &v }

func TestEndpointSliceConversion(t *testing.T) {
	s := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Name: "web-1", Namespace: "ns", Labels: map[string]string{LabelServiceName: "web"}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: ptr("http"), Port: ptr(int32(8080))}, {Name: ptr("nil-port")}},
		Endpoints: []discoveryv1.Endpoint{
			{Addresses: []string{"10.244.0.1"}, Hints: &discoveryv1.EndpointHints{ // no conditions: ready
				ForZones: []discoveryv1.ForZone{{Name: "zone-a"}}, ForNodes: []discoveryv1.ForNode{{Name: "n1"}, {Name: "n2"}}}},
			{Addresses: []string{"10.244.0.2"}, Conditions: discoveryv1.EndpointConditions{Ready: ptr(false), Terminating: ptr(true)}}, // serving follows ready
			{Addresses: []string{"10.244.0.3", "10.244.0.9"}, NodeName: ptr("n1"),
				Conditions: discoveryv1.EndpointConditions{Ready: ptr(false), Serving: ptr(true), Terminating: ptr(true)}},
			// kube-proxy takes the first address or nothing.
			{Addresses: []string{"not-an-ip", "10.244.0.4"}},
			{Addresses: []string{"fd00::1", "10.244.0.5"}},
			{},
		},
	}
	m := EndpointSlice(s)
	if m.Service != (model.ServiceKey{Namespace: "ns", Name: "web"}) {
		t.Fatalf("service %v", m.Service)
	}
	if len(m.Ports) != 1 || m.Ports[0] != (model.EndpointPort{Name: "http", Protocol: model.TCP, Port: 8080}) {
		t.Errorf("ports %+v", m.Ports)
	}
	if m.Invalid != 3 {
		t.Errorf("invalid = %d, want 3 (first a bad string, an IPv6 address, none)", m.Invalid)
	}
	e := m.Endpoints
	if len(e) != 3 || !e[0].Ready || !e[0].Serving || e[1].Serving || !e[2].Serving || !e[2].Terminating || e[2].NodeName != "n1" ||
		e[2].Addr != netip.MustParseAddr("10.244.0.3") {
		t.Errorf("endpoints %+v", e)
	}
	if fmt.Sprint(e[0].Zones(), e[0].Nodes(), e[1].Hints == nil) != "[zone-a] [n1 n2] true" {
		t.Errorf("hints %v %v, %v", e[0].Zones(), e[0].Nodes(), e[1].Hints)
	}
	s.AddressType = discoveryv1.AddressTypeIPv6
	if EndpointSlice(s) != nil {
		t.Error("IPv6 slice converted")
	}
}

func TestServiceConversion(t *testing.T) {
	s := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "ns"},
		Spec: corev1.ServiceSpec{
			Type: corev1.ServiceTypeLoadBalancer, ClusterIPs: []string{"10.96.0.10", "fd00::10"},
			Ports:           []corev1.ServicePort{{Name: "http", Port: 80, NodePort: 30080}, {Name: "s", Port: 9, Protocol: corev1.ProtocolSCTP}},
			SessionAffinity: corev1.ServiceAffinityClientIP, ExternalTrafficPolicy: corev1.ServiceExternalTrafficPolicyLocal,
			HealthCheckNodePort: 32000,
		},
		Status: corev1.ServiceStatus{LoadBalancer: corev1.LoadBalancerStatus{Ingress: []corev1.LoadBalancerIngress{
			{IP: "198.51.100.1"}, {IP: "198.51.100.2", IPMode: ptr(corev1.LoadBalancerIPModeProxy)},
		}}},
	}
	m := ServiceSpec(s)
	if len(m.ClusterIPs) != 1 || m.Headless || m.AffinityTimeout != 3*time.Hour || !m.ExternalLocal || m.HealthCheckNodePort != 32000 {
		t.Errorf("spec %+v", m)
	}
	if len(m.LoadBalancerIPs) != 1 || m.LoadBalancerIPs[0].String() != "198.51.100.1" {
		t.Errorf("load balancer IPs %v, want only the VIP-mode one", m.LoadBalancerIPs)
	}
	if m.Ports[1].Protocol != 0 {
		t.Errorf("SCTP port converted to %v", m.Ports[1].Protocol)
	}
	s.Spec.LoadBalancerSourceRanges = []string{" 10.0.0.1/8", "fd00::/64", "192.0.2.0/24", "10.0.0.0/8"}
	if got := fmt.Sprint(ServiceSpec(s).SourceRanges); got != "[10.0.0.0/8 192.0.2.0/24]" {
		t.Errorf("source ranges %s, want [10.0.0.0/8 192.0.2.0/24] (trimmed, masked, IPv4, once each)", got)
	}
	s.Spec.LoadBalancerSourceRanges = append(s.Spec.LoadBalancerSourceRanges, "0.0.0.0/0")
	if got := ServiceSpec(s).SourceRanges; got != nil {
		t.Errorf("source ranges %v with 0.0.0.0/0 among them, want none (any source)", got)
	}
	s.Spec.ClusterIPs = []string{"None"}
	if !ServiceSpec(s).Headless {
		t.Error("headless not detected")
	}
}

// TestNodeAddressOrder: InternalIPs come first whatever the status order,
// so Addrs[0] is the node IP routes and Hubble peers use; hostnames and
// IPv6 are left out.
func TestNodeAddressOrder(t *testing.T) {
	n := Node(&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n1", Labels: map[string]string{corev1.LabelTopologyZone: "zone-a"}}, Status: corev1.NodeStatus{Addresses: []corev1.NodeAddress{
		{Type: corev1.NodeExternalIP, Address: "203.0.113.1"},
		{Type: corev1.NodeHostName, Address: "n1"},
		{Type: corev1.NodeInternalIP, Address: "fd00::1"},
		{Type: corev1.NodeInternalIP, Address: "10.0.0.1"},
	}}})
	if got := fmt.Sprint(n.Addrs); got != "[10.0.0.1 203.0.113.1]" {
		t.Errorf("addresses %s, want [10.0.0.1 203.0.113.1]", got)
	}
	if n.Zone != "zone-a" {
		t.Errorf("zone %q, want zone-a", n.Zone)
	}
}
