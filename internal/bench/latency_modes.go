package bench

import (
	"context"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
)

// E1's kpath variants beyond the lab's service modes: the same lab and
// dataplane, with NetworkPolicy in place or with flow events off.

// PolicyMode is E1's kpath mode with NetworkPolicy in place: every pod of
// the namespace isolated both ways, the client allowed to the echo pod and
// the echo pod to be reached by the client (what the BENCHMARKS.md target
// "E1 with a policy allowing the client" compares with kpath alone).
const PolicyMode = "kpath-policy"

// NoFlowsMode is kpath with flow events off (they are on by default), for
// the cost of flows on E1's totals.
const NoFlowsMode = "kpath-noflows"

// labServices is the lab's service dataplane for an E1 mode.
func labServices(mode string) string {
	if mode == PolicyMode || mode == NoFlowsMode {
		return "kpath"
	}
	return mode
}

// agentArgs are the mode's extra kpath-agent flags.
func agentArgs(mode string) []string {
	if mode == NoFlowsMode {
		return []string{"--flows=false"}
	}
	return nil
}

// latencyPolicies isolates E1's namespace and allows the client <-> echo
// connections on 8080/TCP in both directions' policies.
func latencyPolicies(ctx context.Context, c kubernetes.Interface) error {
	tcp := corev1.ProtocolTCP
	port := intstr.FromInt32(8080)
	ports := []networkingv1.NetworkPolicyPort{{Protocol: &tcp, Port: &port}}
	role := func(r string) *metav1.LabelSelector {
		return &metav1.LabelSelector{MatchLabels: map[string]string{"role": r}}
	}
	for _, p := range []*networkingv1.NetworkPolicy{
		{ObjectMeta: metav1.ObjectMeta{Name: "e1-isolate"}, Spec: networkingv1.NetworkPolicySpec{
			PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress, networkingv1.PolicyTypeEgress}}},
		{ObjectMeta: metav1.ObjectMeta{Name: "e1-echo-from-client"}, Spec: networkingv1.NetworkPolicySpec{PodSelector: *role("e1-echo"),
			Ingress: []networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{{PodSelector: role("e1-client")}}, Ports: ports}}}},
		{ObjectMeta: metav1.ObjectMeta{Name: "e1-client-to-echo"}, Spec: networkingv1.NetworkPolicySpec{PodSelector: *role("e1-client"),
			PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeEgress},
			Egress:      []networkingv1.NetworkPolicyEgressRule{{To: []networkingv1.NetworkPolicyPeer{{PodSelector: role("e1-echo")}}, Ports: ports}}}},
	} {
		if _, err := c.NetworkingV1().NetworkPolicies(benchNamespace).Create(ctx, p, metav1.CreateOptions{}); err != nil {
			return fmt.Errorf("e1 policy %s: %w", p.Name, err)
		}
	}
	return nil
}
