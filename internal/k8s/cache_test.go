package k8s

import (
	"fmt"
	"net/netip"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kpath/kpath/internal/model"
	"github.com/kpath/kpath/internal/servicemap"
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

// TestPodHostPorts: a pod's host ports come and go as Services of the
// cache; an unchanged pod marks nothing.
func TestPodHostPorts(t *testing.T) {
	c := NewCache()
	pk := model.PodKey{Namespace: "ns", Name: "web"}
	pod := Pod(&corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "web"},
		Spec: corev1.PodSpec{NodeName: "n1", Containers: []corev1.Container{{Ports: []corev1.ContainerPort{
			{ContainerPort: 8080, HostPort: 54323, HostIP: "0.0.0.0"},
			{ContainerPort: 53, HostPort: 53, Protocol: corev1.ProtocolUDP, HostIP: "192.168.0.1"},
			{ContainerPort: 9, HostPort: 9, Protocol: corev1.ProtocolSCTP},
			{ContainerPort: 80},
		}}}},
		Status: corev1.PodStatus{PodIP: "10.244.0.7"}})
	if got := fmt.Sprint(pod.HostPorts); got != "[{TCP invalid IP 54323 8080} {UDP 192.168.0.1 53 53}]" {
		t.Fatalf("host ports %s", got)
	}
	c.SetPodHostPorts(pk, servicemap.HostPorts(pod))
	dirty, _ := c.TakeDirty()
	if len(dirty) != 2 || len(c.ServiceKeys()) != 2 {
		t.Fatalf("dirty %v, services %v: want the two host ports", dirty, c.ServiceKeys())
	}
	c.SetPodHostPorts(pk, servicemap.HostPorts(pod))
	if dirty, _ := c.TakeDirty(); len(dirty) != 0 {
		t.Errorf("the same host ports again marked %v", dirty)
	}
	pod.HostPorts = pod.HostPorts[:1]
	c.SetPodHostPorts(pk, servicemap.HostPorts(pod))
	if dirty, _ := c.TakeDirty(); len(dirty) != 1 || len(c.ServiceKeys()) != 1 {
		t.Errorf("one host port gone: dirty %v, services %v", dirty, c.ServiceKeys())
	}
	c.SetPodHostPorts(pk, nil)
	if len(c.ServiceKeys()) != 0 || len(c.hostPorts) != 0 {
		t.Errorf("pod gone: services %v left", c.ServiceKeys())
	}
}
