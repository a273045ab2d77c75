package bench

import (
	"context"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	dynamicfake "k8s.io/client-go/dynamic/fake"
)

// The identities carry the labels Cilium derives (no pod-template-hash),
// one per namespace and deployment.
func TestCiliumSecurityLabels(t *testing.T) {
	l := newScaleLayout("b", ScaleOptions{Nodes: 10, Pods: 1000, LocalPods: 10})
	m := l.securityLabels(1, 3)
	for k, want := range map[string]string{
		"k8s:app": "app-03", "k8s:tier": benchTiers[3%len(benchTiers)],
		"k8s:io.kubernetes.pod.namespace":                                "scale-001",
		"k8s:io.cilium.k8s.namespace.labels.team":                        "team-1",
		"k8s:io.cilium.k8s.namespace.labels.env":                         "dev",
		"k8s:io.cilium.k8s.namespace.labels.kubernetes.io/metadata.name": "scale-001",
		"k8s:io.cilium.k8s.policy.serviceaccount":                        "default",
		"k8s:io.cilium.k8s.policy.cluster":                               ciliumClusterName,
	} {
		if m[k] != want {
			t.Errorf("%s = %q, want %q", k, m[k], want)
		}
	}
	if _, ok := m["k8s:pod-template-hash"]; ok {
		t.Error("pod-template-hash is in the identity's labels; Cilium's default filter leaves it out")
	}
	seen := map[int64]bool{}
	for ns := range l.namespaces() {
		for dep := range l.deployments() {
			id := l.identityID(ns, dep)
			if seen[id] || id < 256 || id > 65535 {
				t.Fatalf("identity %d (ns %d, dep %d): repeated or outside the cluster-local range", id, ns, dep)
			}
			seen[id] = true
		}
	}
}

// Pods land in slices of at most 100 endpoints of one namespace; a pod
// deleted or relabelled rewrites its slice.
func TestCiliumPeersSlices(t *testing.T) {
	l := newScaleLayout("a", ScaleOptions{Nodes: 10, Pods: 450, LocalPods: 10})
	scheme := runtime.NewScheme()
	dc := dynamicfake.NewSimpleDynamicClientWithCustomListKinds(scheme, map[schema.GroupVersionResource]string{
		ciliumSlicesGVR: "CiliumEndpointSliceList", ciliumEndpointsGVR: "CiliumEndpointList",
		ciliumNodesGVR: "CiliumNodeList", ciliumIdentitiesGVR: "CiliumIdentityList"})
	p := &ciliumPeers{dc: dc, l: l, slices: map[string]*cesState{}}
	ctx := context.Background()
	for i := range l.fake() {
		p.upsert(l.pod(i))
	}
	if err := p.flush(ctx); err != nil {
		t.Fatal(err)
	}
	list, err := dc.Resource(ciliumSlicesGVR).List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	total := 0
	for _, s := range list.Items {
		eps, _, _ := unstructured.NestedSlice(s.Object, "endpoints")
		if len(eps) > cesMaxEndpoints {
			t.Errorf("slice %s holds %d endpoints", s.GetName(), len(eps))
		}
		ns, _, _ := unstructured.NestedString(s.Object, "namespace")
		for _, e := range eps {
			name := e.(map[string]any)["name"].(string)
			if sp := findPod(l, name, ns); sp == nil {
				t.Errorf("slice %s (namespace %s) holds %s, not a pod of its namespace", s.GetName(), ns, name)
			}
		}
		total += len(eps)
	}
	if total != l.fake() || p.pending() != 0 {
		t.Fatalf("%d endpoints in slices, %d pending; want %d, 0", total, p.pending(), l.fake())
	}
	// Relabel pod 0 to deployment 1, delete pod 1.
	sp := l.pod(0)
	sp.dep = 1
	p.upsert(sp)
	p.remove(l.pod(1))
	if p.pending() != 1 {
		t.Fatalf("%d slices pending after two changes to one slice, want 1", p.pending())
	}
	if err := p.flush(ctx); err != nil {
		t.Fatal(err)
	}
	s, err := dc.Resource(ciliumSlicesGVR).Get(ctx, sp.slice, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	eps, _, _ := unstructured.NestedSlice(s.Object, "endpoints")
	var found0 bool
	for _, e := range eps {
		ep := e.(map[string]any)
		switch ep["name"] {
		case l.pod(0).name:
			found0 = true
			if ep["id"] != l.identityID(sp.nsIdx, 1) {
				t.Errorf("relabelled pod's identity %v, want %d", ep["id"], l.identityID(sp.nsIdx, 1))
			}
		case l.pod(1).name:
			t.Error("deleted pod still in its slice")
		}
	}
	if !found0 {
		t.Error("relabelled pod missing from its slice")
	}
}

func findPod(l scaleLayout, name, ns string) *scalePod {
	for i := range l.fake() {
		if sp := l.pod(i); sp.name == name && sp.ns == ns {
			return &sp
		}
	}
	return nil
}
