package policy

import (
	"fmt"
	"net/netip"
	"slices"

	"k8s.io/apimachinery/pkg/labels"

	"github.com/kpath/kpath/internal/model"
)

// The reference evaluator: NetworkPolicy semantics written straight from
// the networking.k8s.io/v1 API documentation, one small function per field,
// the API's words beside the code. It is the oracle of the compiler, of the
// lab's truth tables and of `kpath policy trace`. It is slow on purpose
// (it walks every policy of a namespace); the datapath never runs it.

// Peer is one end of a connection as policy sees it.
type Peer struct {
	IP netip.Addr
	// Pod is the pod holding IP, nil for anything that is not a pod (a node,
	// a host outside the cluster). A hostNetwork pod is its node: callers
	// pass it as a node, with Pod nil.
	Pod *model.Pod
	// Node names the node when the peer is a node's own address (the host
	// or a hostNetwork pod).
	Node string
}

// String names the peer for traces.
func (p Peer) String() string {
	switch {
	case p.Pod != nil:
		return fmt.Sprintf("pod %s (%s)", p.Pod.Key, p.IP)
	case p.Node != "":
		return fmt.Sprintf("node %s (%s)", p.Node, p.IP)
	}
	return p.IP.String()
}

// Flow is a new connection: from Src to Dst's Port over Proto.
type Flow struct {
	Src, Dst Peer
	Proto    model.Protocol
	Port     uint16
}

// RuleRef names one rule of a policy: its direction and index in the spec.
type RuleRef struct {
	Policy  model.PolicyKey
	Ingress bool
	Index   int
}

// String formats r as "ns/name ingress[0]".
func (r RuleRef) String() string {
	d := "egress"
	if r.Ingress {
		d = "ingress"
	}
	return fmt.Sprintf("%s %s[%d]", r.Policy, d, r.Index)
}

// Direction is the verdict of one direction: the source pod's egress or the
// destination pod's ingress.
type Direction struct {
	// Applies: the end is a pod, so policy can apply to it.
	Applies bool
	// Isolated: some policy selects the pod for this direction.
	Isolated bool
	Allowed  bool
	// Policies select the pod for this direction; AllowedBy are the rules
	// of theirs that allow the flow.
	Policies  []model.PolicyKey
	AllowedBy []RuleRef
	// Reason says in words why, for traces.
	Reason string
}

// Verdict is the evaluator's answer for a flow.
type Verdict struct {
	Allowed         bool
	Egress, Ingress Direction
}

// evaluate decides flow against the cluster state s.
//
// "If any policy selects a pod for a direction, the pod is isolated for that
// direction ... traffic is allowed if it is allowed by at least one rule of
// one of those policies" (policies are additive). A connection must be
// allowed by the source's egress and by the destination's ingress.
func evaluate(s view, f Flow) Verdict {
	v := Verdict{
		Egress:  evalDirection(s, f, false),
		Ingress: evalDirection(s, f, true),
	}
	v.Allowed = v.Egress.Allowed && v.Ingress.Allowed
	return v
}

// evalDirection evaluates the destination's ingress (ingress true) or the
// source's egress.
func evalDirection(s view, f Flow, ingress bool) Direction {
	self, peer := f.Src, f.Dst
	if ingress {
		self, peer = f.Dst, f.Src
	}
	d := Direction{}
	if self.Pod == nil {
		d.Allowed, d.Reason = true, "not a pod: no policy applies"
		return d
	}
	d.Applies = true
	switch {
	case peer.Pod == nil && peer.Node != "" && peer.Node == self.Pod.NodeName:
		// "traffic to and from the node where a Pod is running is always
		// allowed, regardless of the IP address of the Pod or the node"
		// (kubelet's probes come from there).
		d.Allowed, d.Reason = true, "to or from the pod's own node: always allowed"
	case peer.Pod != nil && peer.Pod.Key == self.Pod.Key:
		// "a pod cannot block access to itself"
		d.Allowed, d.Reason = true, "the pod itself: always allowed"
	}
	for _, c := range s.Policies(self.Pod.Key.Namespace) {
		if !policyAppliesTo(c, ingress) || !selectsPod(c, self.Pod) {
			continue
		}
		d.Isolated = true
		d.Policies = append(d.Policies, c.Key)
		rules := c.egress
		if ingress {
			rules = c.ingress
		}
		for i, r := range rules {
			if ruleMatches(s, c, r, peer, self, f, ingress) {
				d.AllowedBy = append(d.AllowedBy, RuleRef{Policy: c.Key, Ingress: ingress, Index: i})
			}
		}
	}
	switch {
	case d.Allowed:
	case !d.Isolated:
		d.Allowed, d.Reason = true, "no policy selects the pod for this direction: not isolated"
	case len(d.AllowedBy) > 0:
		d.Allowed, d.Reason = true, "allowed by "+d.AllowedBy[0].String()
	default:
		if len(d.Policies) == 1 {
			d.Reason = "isolated by " + d.Policies[0].String() + ", whose rules do not match"
		} else {
			d.Reason = fmt.Sprintf("isolated by %d policies, none of whose rules matches", len(d.Policies))
		}
	}
	return d
}

// policyAppliesTo: "policyTypes: List of rule types that the NetworkPolicy
// relates to ... If this field is not specified, it will default based on
// the existence of ingress or egress rules" (defaulted by the converter, as
// the API server does). A policy of type Egress only never isolates ingress.
func policyAppliesTo(c *compiled, ingress bool) bool {
	if ingress {
		return c.PolicyIngress
	}
	return c.PolicyEgress
}

// selectsPod: "podSelector selects the pods to which this NetworkPolicy
// object applies ... An empty podSelector selects all pods in this
// namespace" (only pods of the policy's own namespace).
func selectsPod(c *compiled, p *model.Pod) bool {
	return p.Key.Namespace == c.Key.Namespace && c.pods.Matches(labels.Set(p.Labels))
}

// ruleMatches: "traffic is allowed ... if the traffic matches at least one
// item in the from list [and] at least one item in the ports list".
func ruleMatches(s view, c *compiled, r compiledRule, peer, self Peer, f Flow, ingress bool) bool {
	if !portsMatch(r.ports, f, ingress, self, peer) {
		return false
	}
	// "If this field is empty or missing, this rule matches all sources."
	if r.all {
		return true
	}
	for _, p := range r.peers {
		if peerMatches(s, c, p, peer) {
			return true
		}
	}
	return false
}

// peerMatches: a NetworkPolicyPeer. "Exactly one of its fields must be
// specified", except that podSelector and namespaceSelector may be given
// together.
func peerMatches(s view, c *compiled, p compiledPeer, peer Peer) bool {
	if p.broken {
		return false
	}
	if p.block != nil {
		// "IPBlock defines policy on a particular IPBlock." The API speaks of
		// IPs, not of where they live: a pod's IP in the block matches too.
		return peer.IP.IsValid() && inBlock(p.block, peer.IP)
	}
	if peer.Pod == nil {
		return false // selectors select pods only
	}
	if p.namespaces == nil {
		// "If namespaceSelector is ... not set, [podSelector] selects the
		// Pods matching podSelector in the policy's own namespace."
		return peer.Pod.Key.Namespace == c.Key.Namespace && p.pods.Matches(labels.Set(peer.Pod.Labels))
	}
	ns := s.Namespace(peer.Pod.Key.Namespace)
	var nsLabels labels.Set
	if ns != nil {
		nsLabels = ns.Labels
	} else {
		// A namespace not seen yet: only its name label is known.
		nsLabels = labels.Set{"kubernetes.io/metadata.name": peer.Pod.Key.Namespace}
	}
	if !p.namespaces.Matches(nsLabels) {
		return false
	}
	// "If podSelector is also set, then the NetworkPolicyPeer as a whole
	// selects the Pods matching podSelector in the Namespaces selected by
	// NamespaceSelector. Otherwise it selects all Pods in the Namespaces
	// selected by namespaceSelector."
	return p.pods == nil || p.pods.Matches(labels.Set(peer.Pod.Labels))
}

// portsMatch: "ports is a list of ports which should be made accessible ...
// If this field is empty or missing, this rule matches all ports".
func portsMatch(ports []model.PolicyPort, f Flow, ingress bool, self, peer Peer) bool {
	if len(ports) == 0 {
		return true
	}
	// The port is always the destination's: for ingress the selected pod,
	// for egress the peer.
	dst := self
	if !ingress {
		dst = peer
	}
	return slices.ContainsFunc(ports, func(pp model.PolicyPort) bool { return portMatches(pp, f, dst.Pod) })
}

// portMatches: one NetworkPolicyPort. "protocol ... If not specified, this
// field defaults to TCP" (defaulted by the converter). "port ... can either
// be a numerical or named port on a pod. If this field is not provided, this
// matches all port names and numbers. If present, only traffic on the
// specified protocol AND port will be matched." "endPort indicates that the
// range of ports from port to endPort if set, inclusive, should be allowed".
func portMatches(pp model.PolicyPort, f Flow, dst *model.Pod) bool {
	if pp.Protocol != f.Proto {
		return false
	}
	switch {
	case pp.Name != "":
		// A named port is resolved on the destination pod; it matches
		// nothing that is not a pod, or a pod without that name.
		port, ok := namedPort(dst, pp.Name, pp.Protocol)
		return ok && port == f.Port
	case pp.Port == 0:
		return true
	case pp.EndPort != 0:
		return pp.Port <= f.Port && f.Port <= pp.EndPort
	}
	return pp.Port == f.Port
}

// namedPort resolves name on pod p for protocol proto.
func namedPort(p *model.Pod, name string, proto model.Protocol) (uint16, bool) {
	if p == nil {
		return 0, false
	}
	for _, np := range p.NamedPorts {
		if np.Name == name && np.Protocol == proto {
			return np.Port, true
		}
	}
	return 0, false
}
