package model

import (
	"cmp"
	"maps"
	"net/netip"
	"slices"
	"strings"
)

// The compact forms of Pods, Namespaces and NetworkPolicies that policy
// enforcement needs. They mirror networking.k8s.io/v1 field by field where
// the API's distinctions matter (a missing selector versus an empty one),
// and drop everything else.

// SCTP is the third protocol NetworkPolicy ports can name. kpath does not
// translate SCTP services, but it enforces policy on SCTP ports.
const SCTP Protocol = 132

// PodKey names a Pod.
type PodKey struct {
	Namespace, Name string
}

// String formats k as namespace/name.
func (k PodKey) String() string { return k.Namespace + "/" + k.Name }

// Compare orders keys by namespace, then name.
func (k PodKey) Compare(o PodKey) int {
	return cmp.Or(cmp.Compare(k.Namespace, o.Namespace), cmp.Compare(k.Name, o.Name))
}

// NamedPort is a container port with a name, which NetworkPolicy ports may
// refer to by that name.
type NamedPort struct {
	Name     string
	Protocol Protocol
	Port     uint16
}

// Pod is what kpath keeps of a Pod.
type Pod struct {
	Key    PodKey
	Labels map[string]string
	// IPs are status.podIPs, IPv4 only. Empty until the runtime reports them.
	IPs        []netip.Addr
	NamedPorts []NamedPort // sorted by name, then protocol
	NodeName   string
	// HostNetwork pods share their node's addresses and count as the node.
	HostNetwork bool
	// Terminal: phase Succeeded or Failed; such a pod holds no address.
	Terminal bool
	// HostPorts are its containers' hostPort mappings (nil for nearly
	// every pod).
	HostPorts []HostPort
}

// HostPort is a container port published on the node's addresses
// (containers[].ports[].hostPort), sorted by protocol, host IP and port.
type HostPort struct {
	Protocol Protocol
	// HostIP limits it to one node address; invalid: every address of
	// the node and 127.0.0.1, as the CNI portmap plugin has it.
	HostIP        netip.Addr
	Port          uint16
	ContainerPort uint16
}

// Namespace is what kpath keeps of a Namespace.
type Namespace struct {
	Name   string
	Labels map[string]string
}

// SelectorOperator is a LabelSelectorRequirement's operator.
type SelectorOperator string

// The operators of a label selector requirement.
const (
	SelectorIn           SelectorOperator = "In"
	SelectorNotIn        SelectorOperator = "NotIn"
	SelectorExists       SelectorOperator = "Exists"
	SelectorDoesNotExist SelectorOperator = "DoesNotExist"
)

// SelectorRequirement is one entry of matchExpressions.
type SelectorRequirement struct {
	Key      string
	Operator SelectorOperator
	Values   []string
}

// LabelSelector is metav1.LabelSelector. A nil *LabelSelector is a missing
// selector, which is not the same as an empty one ({} selects everything).
type LabelSelector struct {
	MatchLabels      map[string]string
	MatchExpressions []SelectorRequirement
}

// String formats s in the API's selector syntax ("" for the empty selector).
func (s *LabelSelector) String() string {
	if s == nil {
		return "<none>"
	}
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(s.MatchLabels)) {
		parts = append(parts, k+"="+s.MatchLabels[k])
	}
	for _, r := range s.MatchExpressions {
		switch r.Operator {
		case SelectorExists:
			parts = append(parts, r.Key)
		case SelectorDoesNotExist:
			parts = append(parts, "!"+r.Key)
		default:
			parts = append(parts, r.Key+" "+strings.ToLower(string(r.Operator))+" ("+strings.Join(r.Values, ",")+")")
		}
	}
	return strings.Join(parts, ",")
}

// PolicyKey names a NetworkPolicy.
type PolicyKey struct {
	Namespace, Name string
}

// String formats k as namespace/name.
func (k PolicyKey) String() string { return k.Namespace + "/" + k.Name }

// Compare orders keys by namespace, then name.
func (k PolicyKey) Compare(o PolicyKey) int {
	return cmp.Or(cmp.Compare(k.Namespace, o.Namespace), cmp.Compare(k.Name, o.Name))
}

// IPBlock is a NetworkPolicyPeer's ipBlock.
type IPBlock struct {
	CIDR   netip.Prefix
	Except []netip.Prefix
}

// PolicyPeer is a NetworkPolicyPeer: either IPBlock, or one or both of
// the selectors. With only PodSelector it selects pods of the policy's
// namespace; with only NamespaceSelector every pod of the selected
// namespaces; with both, the selected pods of the selected namespaces.
type PolicyPeer struct {
	PodSelector       *LabelSelector
	NamespaceSelector *LabelSelector
	IPBlock           *IPBlock
}

// PolicyPort is a NetworkPolicyPort. Port 0 with Name empty is every port
// of Protocol. Name is a named port, resolved against the destination pod.
// EndPort, when set, makes Port..EndPort a range.
type PolicyPort struct {
	Protocol Protocol
	Port     uint16
	Name     string
	EndPort  uint16
}

// PolicyRule is an ingress or egress rule. Peers empty: every peer (the API
// treats a missing and an empty list alike). Ports empty: every port.
type PolicyRule struct {
	Peers []PolicyPeer
	Ports []PolicyPort
}

// NetworkPolicy is what kpath keeps of a NetworkPolicy, with policyTypes
// already defaulted as the API server does (Ingress always, Egress when
// there are egress rules).
type NetworkPolicy struct {
	Key         PolicyKey
	PodSelector LabelSelector
	Ingress     []PolicyRule
	Egress      []PolicyRule
	// PolicyIngress and PolicyEgress are policyTypes: the directions in which
	// the selected pods are isolated by this policy.
	PolicyIngress, PolicyEgress bool
	// Invalid explains what of the policy kpath could not convert faithfully
	// (a selector it cannot parse, an IPv6 block). The converter fails
	// closed: a bad peer or port is dropped (with its rule when nothing of
	// it is left), never widened; a bad podSelector selects every pod of the
	// namespace and allows nothing. The rest of the policy applies as is.
	Invalid string
}
