package k8s

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/kpath/kpath/internal/model"
)

// PolicySink receives the model form of the Pods, Namespaces and
// NetworkPolicies the informers deliver; a nil value means the object was
// deleted. Calls come from the informers' goroutines, one per kind: calls
// for one kind are sequential and in order, but calls for different kinds
// may run concurrently, so an implementation must lock what the kinds share.
type PolicySink interface {
	// SetPod stores or (with p nil) deletes a pod.
	SetPod(k model.PodKey, p *model.Pod)
	// SetNamespace stores or (with n nil) deletes a namespace.
	SetNamespace(name string, n *model.Namespace)
	// SetPolicy stores or (with p nil) deletes a network policy.
	SetPolicy(k model.PolicyKey, p *model.NetworkPolicy)
}

// policyProtocol converts a NetworkPolicy or container port protocol; ok is
// false for a protocol kpath does not know.
func policyProtocol(p *corev1.Protocol) (model.Protocol, bool) {
	if p == nil {
		return model.TCP, true
	}
	switch *p {
	case corev1.ProtocolTCP, "":
		return model.TCP, true
	case corev1.ProtocolUDP:
		return model.UDP, true
	case corev1.ProtocolSCTP:
		return model.SCTP, true
	}
	return 0, false
}

// Pod converts a Pod. A pod being deleted (DeletionTimestamp set) is still
// a pod: it keeps its address until it is gone.
func Pod(p *corev1.Pod) *model.Pod {
	ips := make([]string, 0, len(p.Status.PodIPs))
	for _, ip := range p.Status.PodIPs {
		ips = append(ips, ip.IP)
	}
	if len(ips) == 0 && p.Status.PodIP != "" {
		ips = append(ips, p.Status.PodIP)
	}
	out := &model.Pod{
		Key:         model.PodKey{Namespace: p.Namespace, Name: p.Name},
		Labels:      p.Labels,
		IPs:         parseIPv4s(ips),
		NodeName:    p.Spec.NodeName,
		HostNetwork: p.Spec.HostNetwork,
		Terminal:    p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed,
	}
	addPorts := func(c *corev1.Container) {
		for _, cp := range c.Ports {
			if hp, ok := hostPort(cp); ok && !p.Spec.HostNetwork {
				out.HostPorts = append(out.HostPorts, hp)
			}
			proto, ok := policyProtocol(&cp.Protocol)
			if cp.Name == "" || !ok || cp.ContainerPort <= 0 || cp.ContainerPort > 65535 {
				continue
			}
			out.NamedPorts = append(out.NamedPorts, model.NamedPort{Name: cp.Name, Protocol: proto, Port: uint16(cp.ContainerPort)})
		}
	}
	for i := range p.Spec.Containers {
		addPorts(&p.Spec.Containers[i])
	}
	for i := range p.Spec.InitContainers {
		// Sidecars (restartPolicy Always) run beside the app containers and
		// serve their ports; plain init containers have exited by then.
		if c := &p.Spec.InitContainers[i]; c.RestartPolicy != nil && *c.RestartPolicy == corev1.ContainerRestartPolicyAlways {
			addPorts(c)
		}
	}
	slices.SortFunc(out.NamedPorts, func(a, b model.NamedPort) int {
		return cmp.Or(cmp.Compare(a.Name, b.Name), cmp.Compare(a.Protocol, b.Protocol), cmp.Compare(a.Port, b.Port))
	})
	out.NamedPorts = slices.Compact(out.NamedPorts)
	slices.SortFunc(out.HostPorts, func(a, b model.HostPort) int {
		return cmp.Or(cmp.Compare(a.Protocol, b.Protocol), a.HostIP.Compare(b.HostIP), cmp.Compare(a.Port, b.Port))
	})
	out.HostPorts = slices.Compact(out.HostPorts)
	return out
}

// hostPort reads a container port's host port mapping: TCP or UDP (kpath
// translates no SCTP), an IPv4 host IP or none (0.0.0.0 is none).
func hostPort(cp corev1.ContainerPort) (model.HostPort, bool) {
	if cp.HostPort <= 0 || cp.HostPort > 65535 || cp.ContainerPort <= 0 || cp.ContainerPort > 65535 {
		return model.HostPort{}, false
	}
	hp := model.HostPort{Protocol: protocol(cp.Protocol), Port: uint16(cp.HostPort), ContainerPort: uint16(cp.ContainerPort)}
	if hp.Protocol == 0 {
		return hp, false
	}
	if cp.HostIP != "" {
		ip, err := netip.ParseAddr(cp.HostIP)
		if err != nil || !ip.Is4() {
			return hp, false
		}
		if !ip.IsUnspecified() {
			hp.HostIP = ip
		}
	}
	return hp, true
}

// Namespace converts a Namespace.
func Namespace(n *corev1.Namespace) *model.Namespace {
	return &model.Namespace{Name: n.Name, Labels: n.Labels}
}

// problems collects what made a NetworkPolicy unfaithful to convert.
type problems []string

func (p *problems) add(field, format string, args ...any) {
	*p = append(*p, field+": "+fmt.Sprintf(format, args...))
}

// NetworkPolicy converts a NetworkPolicy. What kpath cannot convert
// faithfully fails closed and is explained in Invalid: a bad peer is
// dropped (and its rule with it when no peer is left), a bad port drops its
// rule, and a bad podSelector selects every pod of the namespace and drops
// every rule. Nothing is ever widened: a rule loses peers or disappears, it
// never becomes "every peer" or "every port". IPv6 ipBlocks match nothing
// kpath sees and are dropped the same way.
func NetworkPolicy(np *networkingv1.NetworkPolicy) *model.NetworkPolicy {
	out := &model.NetworkPolicy{Key: model.PolicyKey{Namespace: np.Namespace, Name: np.Name}}
	var probs problems
	out.PolicyIngress, out.PolicyEgress = policyTypes(&np.Spec, &probs)

	if sel, err := labelSelector(&np.Spec.PodSelector); err != nil {
		// Isolate every pod the policy might have meant, and allow nothing.
		probs.add("spec.podSelector", "%v: selecting every pod of the namespace and dropping every rule", err)
		out.PodSelector = model.LabelSelector{}
	} else {
		out.PodSelector = *sel
		for i, r := range np.Spec.Ingress {
			if rule, ok := policyRule(fmt.Sprintf("spec.ingress[%d]", i), "from", r.From, r.Ports, &probs); ok {
				out.Ingress = append(out.Ingress, rule)
			}
		}
		for i, r := range np.Spec.Egress {
			if rule, ok := policyRule(fmt.Sprintf("spec.egress[%d]", i), "to", r.To, r.Ports, &probs); ok {
				out.Egress = append(out.Egress, rule)
			}
		}
	}
	out.Invalid = strings.Join(probs, "; ")
	return out
}

// policyTypes returns the directions a policy isolates, defaulted as the
// API server does when policyTypes is empty: Ingress always, Egress when
// there are egress rules. An unknown type isolates both directions.
func policyTypes(spec *networkingv1.NetworkPolicySpec, probs *problems) (ingress, egress bool) {
	if len(spec.PolicyTypes) == 0 {
		return true, len(spec.Egress) > 0
	}
	for i, t := range spec.PolicyTypes {
		switch t {
		case networkingv1.PolicyTypeIngress:
			ingress = true
		case networkingv1.PolicyTypeEgress:
			egress = true
		default:
			probs.add(fmt.Sprintf("spec.policyTypes[%d]", i), "unknown policy type %q: isolating both directions", t)
			return true, true
		}
	}
	return ingress, egress
}

// policyRule converts one ingress or egress rule; ok is false when the rule
// must be dropped (a bad port, or peers none of which kpath can match).
func policyRule(field, peersField string, peers []networkingv1.NetworkPolicyPeer, ports []networkingv1.NetworkPolicyPort, probs *problems) (rule model.PolicyRule, ok bool) {
	for i := range ports {
		pp, err := policyPort(&ports[i])
		if err != nil {
			probs.add(fmt.Sprintf("%s.ports[%d]", field, i), "%v: rule dropped", err)
			return model.PolicyRule{}, false
		}
		rule.Ports = append(rule.Ports, pp)
	}
	for i := range peers {
		f := fmt.Sprintf("%s.%s[%d]", field, peersField, i)
		peer, keep, err := policyPeer(&peers[i])
		if err != nil {
			probs.add(f, "%v: peer dropped", err)
		}
		if keep {
			rule.Peers = append(rule.Peers, peer)
		}
	}
	if len(peers) > 0 && len(rule.Peers) == 0 {
		// An empty list would allow every peer: the opposite of what the
		// rule says.
		probs.add(field+"."+peersField, "no peer kpath can match (IPv6 only, or invalid): rule dropped")
		return model.PolicyRule{}, false
	}
	return rule, true
}

// policyPort converts a NetworkPolicyPort, or says why it cannot.
func policyPort(pp *networkingv1.NetworkPolicyPort) (model.PolicyPort, error) {
	proto, ok := policyProtocol(pp.Protocol)
	if !ok {
		return model.PolicyPort{}, fmt.Errorf("protocol: unknown protocol %q", *pp.Protocol)
	}
	out := model.PolicyPort{Protocol: proto}
	switch {
	case pp.Port == nil:
		if pp.EndPort != nil {
			return model.PolicyPort{}, fmt.Errorf("endPort: %d without a port", *pp.EndPort)
		}
	case pp.Port.Type == intstr.Int:
		if pp.Port.IntVal <= 0 || pp.Port.IntVal > 65535 {
			return model.PolicyPort{}, fmt.Errorf("port: %d out of range", pp.Port.IntVal)
		}
		out.Port = uint16(pp.Port.IntVal)
		if pp.EndPort != nil {
			if *pp.EndPort < pp.Port.IntVal || *pp.EndPort > 65535 {
				return model.PolicyPort{}, fmt.Errorf("endPort: %d out of range for port %d", *pp.EndPort, pp.Port.IntVal)
			}
			out.EndPort = uint16(*pp.EndPort)
		}
	case pp.Port.Type == intstr.String:
		if pp.Port.StrVal == "" {
			// Port 0 with no name would be every port.
			return model.PolicyPort{}, fmt.Errorf("port: empty port name")
		}
		if pp.EndPort != nil {
			return model.PolicyPort{}, fmt.Errorf("endPort: %d with named port %q", *pp.EndPort, pp.Port.StrVal)
		}
		out.Name = pp.Port.StrVal
	default:
		return model.PolicyPort{}, fmt.Errorf("port: unknown int-or-string type %d", pp.Port.Type)
	}
	return out, nil
}

// policyPeer converts a NetworkPolicyPeer. ok is false when the peer must be
// dropped: with err nil, an IPv6 ipBlock (which matches nothing kpath
// sees); with err set, a peer kpath cannot convert.
func policyPeer(p *networkingv1.NetworkPolicyPeer) (peer model.PolicyPeer, ok bool, err error) {
	if p.IPBlock != nil {
		if p.PodSelector != nil || p.NamespaceSelector != nil {
			return peer, false, fmt.Errorf("ipBlock together with a selector")
		}
		cidr, err := netip.ParsePrefix(p.IPBlock.CIDR)
		if err != nil {
			return peer, false, fmt.Errorf("ipBlock.cidr: %w", err)
		}
		if !cidr.Addr().Is4() {
			return peer, false, nil
		}
		b := &model.IPBlock{CIDR: cidr.Masked()}
		for i, s := range p.IPBlock.Except {
			e, err := netip.ParsePrefix(s)
			if err != nil {
				// Dropping an exception would widen the block.
				return peer, false, fmt.Errorf("ipBlock.except[%d]: %w", i, err)
			}
			if e.Addr().Is4() { // an IPv6 exception excepts nothing from an IPv4 block
				b.Except = append(b.Except, e.Masked())
			}
		}
		peer.IPBlock = b
		return peer, true, nil
	}
	if p.PodSelector == nil && p.NamespaceSelector == nil {
		return peer, false, fmt.Errorf("neither a selector nor an ipBlock")
	}
	if p.PodSelector != nil {
		if peer.PodSelector, err = labelSelector(p.PodSelector); err != nil {
			return model.PolicyPeer{}, false, fmt.Errorf("podSelector: %w", err)
		}
	}
	if p.NamespaceSelector != nil {
		if peer.NamespaceSelector, err = labelSelector(p.NamespaceSelector); err != nil {
			return model.PolicyPeer{}, false, fmt.Errorf("namespaceSelector: %w", err)
		}
	}
	return peer, true, nil
}

// labelSelector converts a selector the API server would accept; nil for
// nil. Validity is what metav1.LabelSelectorAsSelector says.
func labelSelector(s *metav1.LabelSelector) (*model.LabelSelector, error) {
	if s == nil {
		return nil, nil
	}
	if _, err := metav1.LabelSelectorAsSelector(s); err != nil {
		return nil, fmt.Errorf("invalid selector: %w", err)
	}
	out := &model.LabelSelector{MatchLabels: s.MatchLabels}
	for _, r := range s.MatchExpressions {
		out.MatchExpressions = append(out.MatchExpressions, model.SelectorRequirement{
			Key: r.Key, Operator: model.SelectorOperator(r.Operator), Values: r.Values,
		})
	}
	return out, nil
}
