package k8s

import (
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
