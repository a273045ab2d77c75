package k8s

import (
	"net/netip"
	"testing"

	"github.com/kpath/kpath/internal/model"
)

func TestHealthCheckedServicesFollowsTrafficPolicy(t *testing.T) {
	c := NewCache()
	k := model.ServiceKey{Namespace: "ns", Name: "lb"}
	c.SetService(k, &model.ServiceSpec{Key: k, ExternalLocal: true, HealthCheckNodePort: 32000})
	c.SetService(model.ServiceKey{Namespace: "ns", Name: "plain"}, &model.ServiceSpec{})
	if got := c.HealthCheckedServices(); len(got) != 1 || got[0] != k {
		t.Fatalf("health-checked %v, want [%s]", got, k)
	}
	c.SetService(k, &model.ServiceSpec{Key: k}) // policy back to Cluster
	if got := c.HealthCheckedServices(); len(got) != 0 {
		t.Fatalf("health-checked %v after the policy changed, want none", got)
	}
	c.SetService(k, &model.ServiceSpec{Key: k, ExternalLocal: true, HealthCheckNodePort: 32000})
	c.SetService(k, nil)
	if got := c.HealthCheckedServices(); len(got) != 0 {
		t.Fatalf("health-checked %v after delete, want none", got)
	}
}

// TestNodeChangesThatRecomputeServices: a node's addresses (NodePort
// frontends) and zone (topology hints) recompute every service; its other
// fields do not.
func TestNodeChangesThatRecomputeServices(t *testing.T) {
	c := NewCache()
	n := &model.Node{Name: "n1", Zone: "zone-a"}
	c.SetNode("n1", n)
	if _, all := c.TakeDirty(); all.IsZero() {
		t.Fatal("a new node did not recompute services")
	}
	for _, tc := range []struct {
		name string
		node model.Node
		all  bool
	}{
		{"same", *n, false},
		{"zone", model.Node{Name: "n1", Zone: "zone-b"}, true},
		{"pod CIDR only", model.Node{Name: "n1", Zone: "zone-b", PodCIDR: netip.MustParsePrefix("10.244.1.0/24")}, false},
	} {
		c.SetNode("n1", &tc.node)
		if _, all := c.TakeDirty(); all.IsZero() == tc.all {
			t.Errorf("%s: every service recomputed = %v, want %v", tc.name, !all.IsZero(), tc.all)
		}
	}
}
