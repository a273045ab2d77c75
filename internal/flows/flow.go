// Package flows keeps the node's recent flows: datapath events enriched
// with what the agent knows (pods, services, policies), in a ring of fixed
// capacity that readers query and follow. It imports neither Kubernetes
// nor eBPF: the agent decodes events and fills the Enricher.
package flows

import (
	"net/netip"
	"time"
)

// Verdict is what happened to the flow, in Hubble's words.
type Verdict string

// Verdicts.
const (
	Forwarded  Verdict = "FORWARDED"
	Dropped    Verdict = "DROPPED"
	Translated Verdict = "TRANSLATED"
)

// Endpoint is one end of a flow as the agent knows it.
type Endpoint struct {
	IP        netip.Addr        `json:"ip"`
	Port      uint16            `json:"port,omitempty"`
	Namespace string            `json:"namespace,omitempty"`
	Pod       string            `json:"pod,omitempty"`
	Labels    map[string]string `json:"labels,omitempty"`
	Identity  uint32            `json:"identity,omitempty"`
	Node      string            `json:"node,omitempty"` // for a node's own address
}

// Name is namespace/pod, the node, or the IP.
func (e Endpoint) Name() string {
	switch {
	case e.Pod != "":
		return e.Namespace + "/" + e.Pod
	case e.Node != "":
		return "node " + e.Node
	case e.IP.IsValid():
		return e.IP.String()
	}
	return "(socket)"
}

// Service is the Service a flow was translated for.
type Service struct {
	Namespace string         `json:"namespace,omitempty"`
	Name      string         `json:"name,omitempty"`
	Frontend  netip.AddrPort `json:"frontend"`
}

// Policy is the policy verdict a flow carries.
type Policy struct {
	Ingress bool   `json:"ingress"`
	Match   string `json:"match"`          // identity, cidr, node-or-self, not-isolated, denied, reply
	Rule    string `json:"rule,omitempty"` // the rule that allowed: "ns/name ingress[0]"
	// Policies are those isolating the endpoint in this direction (for a
	// denial: none of their rules allowed).
	Policies []string `json:"policies,omitempty"`
}

// Flow is one flow record.
type Flow struct {
	Time       time.Time `json:"time"`
	Node       string    `json:"node"`
	Type       string    `json:"type"` // new, flags, drop, translation
	Verdict    Verdict   `json:"verdict"`
	DropReason string    `json:"drop_reason,omitempty"`
	// Dir is where the datapath saw it: from-pod, to-pod, socket, host-in, host-out.
	Dir         string   `json:"dir"`
	Proto       string   `json:"proto"`
	TCPFlags    string   `json:"tcp_flags,omitempty"`
	Source      Endpoint `json:"source"`
	Destination Endpoint `json:"destination"`
	Service     *Service `json:"service,omitempty"`
	Policy      *Policy  `json:"policy,omitempty"`
	// Cookie is the socket cookie of a translation at connect().
	Cookie uint64 `json:"socket_cookie,omitempty"`
	// Counts of an ended connection (type end): packets and bytes from
	// source to destination and back, and how long it lived.
	PacketsToDst uint64        `json:"packets_to_destination,omitempty"`
	PacketsToSrc uint64        `json:"packets_to_source,omitempty"`
	BytesToDst   uint64        `json:"bytes_to_destination,omitempty"`
	BytesToSrc   uint64        `json:"bytes_to_source,omitempty"`
	Duration     time.Duration `json:"duration_ns,omitempty"`
}
