package servicemap

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/kpath/kpath/internal/model"
)

var (
	node = Node{Name: "n1", Addrs: []netip.Addr{netip.MustParseAddr("192.168.0.1"), netip.MustParseAddr("192.168.1.1")}}
	key  = model.ServiceKey{Namespace: "default", Name: "web"}
)

func ips(s ...string) []netip.Addr {
	out := make([]netip.Addr, len(s))
	for i, a := range s {
		out[i] = netip.MustParseAddr(a)
	}
	return out
}

func ep(addr, node string, ready, serving, terminating bool) model.Endpoint {
	return model.Endpoint{Addr: netip.MustParseAddr(addr), NodeName: node, Ready: ready, Serving: serving, Terminating: terminating}
}

func readyEP(addr, node string) model.Endpoint { return ep(addr, node, true, true, false) }

func slice(eps ...model.Endpoint) *model.EndpointSlice {
	return &model.EndpointSlice{
		Namespace: "default", Name: "web-abc", Service: key,
		Ports: []model.EndpointPort{
			{Name: "http", Protocol: model.TCP, Port: 8080},
			{Name: "dns", Protocol: model.UDP, Port: 5353},
		},
		Endpoints: eps,
	}
}

func webSpec() *model.ServiceSpec {
	return &model.ServiceSpec{
		Key: key, Type: model.ServiceTypeClusterIP, ClusterIPs: ips("10.96.0.10"),
		Ports: []model.ServicePort{
			{Name: "http", Protocol: model.TCP, Port: 80, NodePort: 30080},
			{Name: "dns", Protocol: model.UDP, Port: 53},
		},
	}
}

// render gives "frontend kind -> backend,backend" lines for compact asserts.
func render(es []Entry) []string {
	var out []string
	for _, e := range es {
		var bs []string
		for _, b := range e.Backends {
			bs = append(bs, netip.AddrPortFrom(b.Addr, b.Port).String())
		}
		line := e.Frontend.String() + " " + e.Kind.String() + " -> " + strings.Join(bs, ",")
		if e.Kind != KindClusterIP {
			var ext []string
			for _, b := range e.External {
				ext = append(ext, netip.AddrPortFrom(b.Addr, b.Port).String())
			}
			line += " (external: " + strings.Join(ext, ",") + ")"
		}
		out = append(out, line)
	}
	return out
}

func TestForService(t *testing.T) {
	for _, tc := range []struct {
		name   string
		spec   func(*model.ServiceSpec)
		slices []*model.EndpointSlice
		want   []string
	}{
		{
			name:   "cluster IP with named target ports",
			slices: []*model.EndpointSlice{slice(readyEP("10.244.1.2", "n2"), readyEP("10.244.0.5", "n1"))},
			want: []string{
				"10.96.0.10:53/UDP ClusterIP -> 10.244.0.5:5353,10.244.1.2:5353",
				"10.96.0.10:80/TCP ClusterIP -> 10.244.0.5:8080,10.244.1.2:8080",
			},
		},
		{
			name: "no endpoints: frontends without backends",
			want: []string{"10.96.0.10:53/UDP ClusterIP -> ", "10.96.0.10:80/TCP ClusterIP -> "},
		},
		{
			name:   "terminating endpoints only when no ready one remains",
			slices: []*model.EndpointSlice{slice(readyEP("10.244.1.2", "n2"), ep("10.244.1.3", "n2", false, true, true))},
			spec:   func(s *model.ServiceSpec) { s.Ports = s.Ports[:1] },
			want:   []string{"10.96.0.10:80/TCP ClusterIP -> 10.244.1.2:8080"},
		},
		{
			name: "serving terminating endpoints used when none is ready; not-serving ones never",
			slices: []*model.EndpointSlice{slice(ep("10.244.1.3", "n2", false, true, true),
				ep("10.244.1.4", "n2", false, false, true), ep("10.244.1.5", "n2", false, false, false))},
			spec: func(s *model.ServiceSpec) { s.Ports = s.Ports[:1] },
			want: []string{"10.96.0.10:80/TCP ClusterIP -> 10.244.1.3:8080"},
		},
		{
			// A Service publishing not-ready addresses: the controller marks
			// a terminating, unready pod's endpoint ready (found by the
			// upstream e2e test "should create endpoints for unready pods").
			name:   "ready terminating endpoints are ready",
			slices: []*model.EndpointSlice{slice(readyEP("10.244.1.2", "n2"), ep("10.244.1.3", "n2", true, false, true))},
			spec:   func(s *model.ServiceSpec) { s.Ports = s.Ports[:1] },
			want:   []string{"10.96.0.10:80/TCP ClusterIP -> 10.244.1.2:8080,10.244.1.3:8080"},
		},
		{
			// Local clients of a NodePort reach every endpoint (kube-proxy
			// short-circuits them); traffic from outside only local ones.
			name: "NodePort on every node address, external policy Local",
			spec: func(s *model.ServiceSpec) {
				s.Type = model.ServiceTypeNodePort
				s.ExternalLocal = true
				s.Ports = s.Ports[:1]
			},
			slices: []*model.EndpointSlice{slice(readyEP("10.244.1.2", "n2"), readyEP("10.244.0.5", "n1"))},
			want: []string{
				"10.96.0.10:80/TCP ClusterIP -> 10.244.0.5:8080,10.244.1.2:8080",
				"192.168.0.1:30080/TCP NodePort -> 10.244.0.5:8080,10.244.1.2:8080 (external: 10.244.0.5:8080)",
				"192.168.1.1:30080/TCP NodePort -> 10.244.0.5:8080,10.244.1.2:8080 (external: 10.244.0.5:8080)",
			},
		},
		{
			name:   "internal policy Local with no local endpoint: ClusterIP drops",
			spec:   func(s *model.ServiceSpec) { s.InternalLocal = true; s.Ports = s.Ports[:1] },
			slices: []*model.EndpointSlice{slice(readyEP("10.244.1.2", "n2"))},
			want:   []string{"10.96.0.10:80/TCP ClusterIP -> "},
		},
		{
			name: "local policy falls back to local terminating endpoints",
			spec: func(s *model.ServiceSpec) { s.InternalLocal = true; s.Ports = s.Ports[:1] },
			slices: []*model.EndpointSlice{slice(readyEP("10.244.1.2", "n2"),
				ep("10.244.0.7", "n1", false, true, true))},
			want: []string{"10.96.0.10:80/TCP ClusterIP -> 10.244.0.7:8080"},
		},
		{
			name: "external IPs and load balancer IPs",
			spec: func(s *model.ServiceSpec) {
				s.Type = model.ServiceTypeLoadBalancer
				s.ExternalIPs = ips("203.0.113.7")
				s.LoadBalancerIPs = ips("198.51.100.9")
				s.Ports = s.Ports[1:]
			},
			slices: []*model.EndpointSlice{slice(readyEP("10.244.1.2", "n2"))},
			want: []string{
				"10.96.0.10:53/UDP ClusterIP -> 10.244.1.2:5353",
				"198.51.100.9:53/UDP LoadBalancer -> 10.244.1.2:5353 (external: 10.244.1.2:5353)",
				"203.0.113.7:53/UDP ExternalIP -> 10.244.1.2:5353 (external: 10.244.1.2:5353)",
			},
		},
		{
			name:   "load balancer IPs need type LoadBalancer",
			spec:   func(s *model.ServiceSpec) { s.LoadBalancerIPs = ips("198.51.100.9"); s.Ports = s.Ports[1:] },
			slices: []*model.EndpointSlice{slice(readyEP("10.244.1.2", "n2"))},
			want:   []string{"10.96.0.10:53/UDP ClusterIP -> 10.244.1.2:5353"},
		},
		{
			name: "headless services are ignored",
			spec: func(s *model.ServiceSpec) { s.Headless = true; s.ClusterIPs = nil },
		},
		{
			name: "services of another proxy are ignored",
			spec: func(s *model.ServiceSpec) { s.ProxyName = "someone-else" },
		},
		{
			name:   "the same address twice (a slice being replaced) counts once",
			spec:   func(s *model.ServiceSpec) { s.Ports = s.Ports[:1] },
			slices: []*model.EndpointSlice{slice(readyEP("10.244.1.2", "n2")), slice(readyEP("10.244.1.2", "n2"))},
			want:   []string{"10.96.0.10:80/TCP ClusterIP -> 10.244.1.2:8080"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := webSpec()
			if tc.spec != nil {
				tc.spec(s)
			}
			got, problems := ForService(node, s, tc.slices, Options{})
			if len(problems) > 0 {
				t.Errorf("problems: %v", problems)
			}
			if r := render(got); !slices.Equal(r, tc.want) {
				t.Errorf("got\n  %s\nwant\n  %s", strings.Join(r, "\n  "), strings.Join(tc.want, "\n  "))
			}
		})
	}
}

func TestAffinityAndProblems(t *testing.T) {
	s := webSpec()
	s.AffinityTimeout = 3 * time.Hour
	s.Ports = append(s.Ports, model.ServicePort{Name: "sctp", Port: 9})
	sl := slice(readyEP("10.244.1.2", "n2"))
	sl.Invalid = 2
	got, problems := ForService(node, s, []*model.EndpointSlice{sl}, Options{})
	for _, e := range got {
		if e.Affinity != 3*time.Hour {
			t.Errorf("%s affinity %s", e.Frontend, e.Affinity)
		}
	}
	var reasons []string
	for _, p := range problems {
		reasons = append(reasons, p.Reason)
	}
	slices.Sort(reasons)
	if !slices.Equal(reasons, []string{ReasonInvalidEndpoint, ReasonUnsupportedProtocol}) {
		t.Errorf("problems = %v", problems)
	}
}

func TestMergeClash(t *testing.T) {
	a := webSpec()
	a.ExternalIPs = ips("203.0.113.7")
	b := webSpec()
	b.Key = model.ServiceKey{Namespace: "default", Name: "other"}
	b.ClusterIPs = ips("10.96.0.11")
	b.ExternalIPs = ips("203.0.113.7")
	ea, _ := ForService(node, a, nil, Options{})
	eb, _ := ForService(node, b, nil, Options{})
	merged, problems := Merge(map[model.ServiceKey][]Entry{a.Key: ea, b.Key: eb})
	if len(problems) != 2 {
		t.Fatalf("problems = %v, want 2 (both ports of the external IP)", problems)
	}
	for _, p := range problems {
		if p.Service != a.Key || p.Reason != ReasonFrontendClash {
			t.Errorf("problem %v: want the later key default/web to lose", p)
		}
	}
	if len(merged) != len(ea)+len(eb)-2 {
		t.Errorf("merged %d entries", len(merged))
	}
}

// TestLocalEndpoints: the health check node port counts this node's ready
// endpoints, each address once; a node whose endpoints are all terminating
// (traffic still drains onto the serving ones) reports none, as kube-proxy
// does, so load balancers stop sending it new traffic.
func TestLocalEndpoints(t *testing.T) {
	spec := webSpec()
	for _, c := range []struct {
		name string
		eps  []model.Endpoint
		want int
	}{
		{"ready ones on this node, each address once", []model.Endpoint{readyEP("10.0.0.1", "n1"), readyEP("10.0.0.2", "n1"), readyEP("10.0.1.1", "n2")}, 2},
		{"only serving terminating ones", []model.Endpoint{ep("10.0.0.1", "n1", false, true, true), readyEP("10.0.1.1", "n2")}, 0},
		{"ready beside terminating", []model.Endpoint{ep("10.0.0.1", "n1", false, true, true), readyEP("10.0.0.2", "n1")}, 1},
		{"not ready", []model.Endpoint{ep("10.0.0.1", "n1", false, false, false)}, 0},
		// publishNotReadyAddresses: the controller keeps it ready.
		{"ready while terminating", []model.Endpoint{ep("10.0.0.1", "n1", true, false, true)}, 1},
	} {
		if got := LocalEndpoints("n1", spec, []*model.EndpointSlice{slice(c.eps...)}); got != c.want {
			t.Errorf("%s: %d local endpoints, want %d", c.name, got, c.want)
		}
	}
}

// TestSourceRanges: loadBalancerSourceRanges restrict the load-balancer
// IPs only (not the ClusterIP, NodePort or external IPs), both scopes; a
// range holding the node's address admits the node and the load-balancer
// IPs themselves as sources, as kube-proxy's firewall chain does.
func TestSourceRanges(t *testing.T) {
	for _, tc := range []struct {
		name   string
		ranges []netip.Prefix
		want   string
		node   bool
	}{
		{"without the node", []netip.Prefix{netip.MustParsePrefix("203.0.113.0/24")}, "[203.0.113.0/24]", false},
		{"with the node", []netip.Prefix{netip.MustParsePrefix("203.0.113.0/24"), netip.MustParsePrefix("192.168.0.0/24")},
			"[192.168.0.0/24 198.51.100.1/32 198.51.100.2/32 203.0.113.0/24]", true},
		{"none", nil, "[]", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			spec := webSpec()
			spec.Type = model.ServiceTypeLoadBalancer
			spec.ExternalIPs = ips("203.0.113.50")
			spec.LoadBalancerIPs = ips("198.51.100.1", "198.51.100.2")
			spec.SourceRanges = model.CanonicalPrefixes(tc.ranges)
			entries, _ := ForService(node, spec, []*model.EndpointSlice{slice(readyEP("10.1.2.3", "n1"))}, Options{})
			for _, e := range entries {
				got, gotNode := "[]", e.SourceNode
				if len(e.SourceRanges) > 0 {
					got = fmt.Sprint(e.SourceRanges)
				}
				if e.Kind != KindLoadBalancer {
					if got != "[]" || gotNode {
						t.Errorf("%s %s restricted to %s", e.Kind, e.Frontend, got)
					}
					continue
				}
				if got != tc.want || gotNode != tc.node {
					t.Errorf("%s: ranges %s (node %v), want %s (node %v)", e.Frontend, got, gotNode, tc.want, tc.node)
				}
				if err := e.Service.Validate(); err != nil {
					t.Errorf("%s: %v", e.Frontend, err)
				}
			}
		})
	}
}
