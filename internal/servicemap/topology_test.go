package servicemap

import (
	"net/netip"
	"slices"
	"testing"

	"github.com/kpath/kpath/internal/model"
)

// hinted is a ready endpoint on node with the given hints.
func hinted(addr, node string, zones, nodes []string) model.Endpoint {
	e := readyEP(addr, node)
	e.Hints = &model.EndpointHints{ForZones: zones, ForNodes: nodes}
	return e
}

func zs(z ...string) []string { return z }

// TestTopology follows kube-proxy v1.34's TestCategorizeEndpoints cases
// for topology hints (pkg/proxy/topology_test.go), on the cluster-wide
// backends of a ClusterIP and of a NodePort's external scope.
func TestTopology(t *testing.T) {
	zoneA := Node{Name: "n1", Zone: "zone-a", Addrs: node.Addrs}
	for _, tc := range []struct {
		name string
		node Node
		spec func(*model.ServiceSpec)
		eps  []model.Endpoint
		want []string // backends' addresses, cluster-wide
		// local, when set, is what externalTrafficPolicy Local serves
		// (topology never narrows it).
		local []string
	}{
		{name: "no hints: every endpoint", node: zoneA,
			eps:  []model.Endpoint{readyEP("10.1.2.3", "n1"), readyEP("10.1.2.4", "n2")},
			want: []string{"10.1.2.3", "10.1.2.4"}},
		{name: "zone hints: this zone's", node: zoneA,
			eps: []model.Endpoint{hinted("10.1.2.3", "n1", zs("zone-a"), nil), hinted("10.1.2.4", "n2", zs("zone-b"), nil),
				hinted("10.1.2.5", "n3", zs("zone-a", "zone-c"), nil)},
			want: []string{"10.1.2.3", "10.1.2.5"}},
		{name: "zone hints, none for this zone: every endpoint", node: zoneA,
			eps:  []model.Endpoint{hinted("10.1.2.3", "n1", zs("zone-b"), nil), hinted("10.1.2.4", "n2", zs("zone-c"), nil)},
			want: []string{"10.1.2.3", "10.1.2.4"}},
		{name: "zone hints, node without a zone: every endpoint", node: Node{Name: "n1", Addrs: node.Addrs},
			eps:  []model.Endpoint{hinted("10.1.2.3", "n1", zs("zone-a"), nil), hinted("10.1.2.4", "n2", zs("zone-b"), nil)},
			want: []string{"10.1.2.3", "10.1.2.4"}},
		{name: "one ready endpoint without a hint: every endpoint", node: zoneA,
			eps:  []model.Endpoint{hinted("10.1.2.3", "n1", zs("zone-a"), nil), readyEP("10.1.2.4", "n2")},
			want: []string{"10.1.2.3", "10.1.2.4"}},
		{name: "a not-ready endpoint without a hint does not count", node: zoneA,
			eps: []model.Endpoint{hinted("10.1.2.3", "n1", zs("zone-a"), nil), hinted("10.1.2.4", "n2", zs("zone-b"), nil),
				ep("10.1.2.5", "n2", false, false, false)},
			want: []string{"10.1.2.3"}},
		{name: "node hints: this node's", node: zoneA,
			eps: []model.Endpoint{hinted("10.1.2.3", "n1", zs("zone-a"), zs("n1")), hinted("10.1.2.4", "n2", zs("zone-a"), zs("n2")),
				hinted("10.1.2.5", "n3", zs("zone-b"), zs("n3"))},
			want: []string{"10.1.2.3"}},
		{name: "node hints, none for this node: zone hints", node: Node{Name: "n9", Zone: "zone-a", Addrs: node.Addrs},
			eps: []model.Endpoint{hinted("10.1.2.3", "n1", zs("zone-a"), zs("n1")), hinted("10.1.2.4", "n2", zs("zone-a"), zs("n2")),
				hinted("10.1.2.5", "n3", zs("zone-b"), zs("n3"))},
			want: []string{"10.1.2.3", "10.1.2.4"}},
		{name: "node hints missing on one endpoint: zone hints", node: zoneA,
			eps: []model.Endpoint{hinted("10.1.2.3", "n1", zs("zone-a"), zs("n1")), hinted("10.1.2.4", "n2", zs("zone-a"), nil),
				hinted("10.1.2.5", "n3", zs("zone-b"), zs("n3"))},
			want: []string{"10.1.2.3", "10.1.2.4"}},
		{name: "no ready endpoint: the serving terminating ones, whatever their hints", node: zoneA,
			eps: []model.Endpoint{
				{Addr: netip.MustParseAddr("10.1.2.3"), NodeName: "n1", Serving: true, Terminating: true, Hints: &model.EndpointHints{ForZones: zs("zone-b")}},
				{Addr: netip.MustParseAddr("10.1.2.4"), NodeName: "n2", Serving: true, Terminating: true, Hints: &model.EndpointHints{ForZones: zs("zone-a")}}},
			want: []string{"10.1.2.3", "10.1.2.4"}},
		{name: "externalTrafficPolicy Local: this node's, whatever the hints", node: zoneA,
			spec: func(s *model.ServiceSpec) { s.Type, s.ExternalLocal = model.ServiceTypeNodePort, true },
			eps: []model.Endpoint{hinted("10.1.2.3", "n1", zs("zone-b"), nil), hinted("10.1.2.4", "n2", zs("zone-a"), nil),
				hinted("10.1.2.5", "n1", zs("zone-a"), nil)},
			want: []string{"10.1.2.4", "10.1.2.5"}, local: []string{"10.1.2.3", "10.1.2.5"}},
		{name: "internalTrafficPolicy Local: this node's, whatever the hints", node: zoneA,
			spec: func(s *model.ServiceSpec) { s.InternalLocal = true },
			eps:  []model.Endpoint{hinted("10.1.2.3", "n1", zs("zone-b"), nil), hinted("10.1.2.4", "n2", zs("zone-a"), nil)},
			want: []string{"10.1.2.3"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			spec := webSpec()
			if tc.spec != nil {
				tc.spec(spec)
			}
			entries, problems := ForService(tc.node, spec, []*model.EndpointSlice{slice(tc.eps...)}, Options{})
			if len(problems) > 0 {
				t.Fatalf("problems: %v", problems)
			}
			for _, e := range entries {
				want, got := tc.want, addrsOf(e.Backends)
				if e.Kind == KindNodePort && tc.local != nil {
					// Local clients of a NodePort reach every cluster endpoint
					// (kube-proxy's short-circuit), traffic from outside only
					// this node's.
					if ext := addrsOf(e.External); !slices.Equal(ext, tc.local) {
						t.Errorf("%s external: got %v, want %v", e.Frontend, ext, tc.local)
					}
				}
				if !slices.Equal(got, want) {
					t.Errorf("%s %s: got %v, want %v", e.Kind, e.Frontend, got, want)
				}
			}
		})
	}
}

func addrsOf(bs []model.L4Addr) []string {
	var out []string
	for _, b := range bs {
		if a := b.Addr.String(); !slices.Contains(out, a) {
			out = append(out, a)
		}
	}
	slices.Sort(out)
	return out
}
