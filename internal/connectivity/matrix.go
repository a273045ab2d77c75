// Package connectivity is the connectivity matrix: who reaches which
// Service address, over which socket, and who answers. It runs real
// connections in a lab (kpath lab) and compares a service dataplane's
// matrix with the real kube-proxy's, cell by cell.
package connectivity

import (
	"fmt"
	"slices"
	"strings"
)

// Client kinds.
const (
	PodClient     = "pod"     // a pod's network namespace
	HostClient    = "host"    // the node's own namespace (kubelet, hostNetwork pods)
	OutsideClient = "outside" // the lab's vnet: a host outside the nodes
)

// Client is where a cell's connections start.
type Client struct {
	Name string // e.g. pod@node-1
	Kind string
	Node string // the node it runs on ("" outside)
}

// Socket is how a client connects.
type Socket struct {
	Name        string
	Proto       string // tcp or udp
	V4Mapped    bool   // AF_INET6 dual-stack socket, ::ffff:a.b.c.d
	Unconnected bool   // UDP sendto from an unconnected socket
	// InCluster: client-go's in-cluster configuration (the kubelet's
	// environment, the pod's service account) listing the pod's
	// namespace through the kubernetes Service; pods only.
	InCluster bool
}

// Sockets are every socket kind of the matrix.
var Sockets = []Socket{
	{Name: "tcp", Proto: "tcp"},
	{Name: "tcp v4-mapped", Proto: "tcp", V4Mapped: true},
	{Name: "udp", Proto: "udp"},
	{Name: "udp unconnected", Proto: "udp", Unconnected: true},
	{Name: "udp v4-mapped", Proto: "udp", V4Mapped: true},
	{Name: "udp v4-mapped unconnected", Proto: "udp", V4Mapped: true, Unconnected: true},
	{Name: "in-cluster client-go", Proto: "tcp", InCluster: true},
}

// Address kinds of a target.
const (
	ClusterIP  = "cluster-ip"
	NodePort   = "node-port"
	ExternalIP = "external-ip"
	LBIP       = "lb-ip"
)

// Target is one Service address to reach.
type Target struct {
	Name    string // service/address[@node]
	Service string
	Kind    string
	Node    string // for a NodePort: whose address
	// AnyBackend: several backends may answer, so cells compare whether
	// every request was answered, not by whom.
	AnyBackend bool
	// Sticky: session affinity; every answer must come from one backend.
	Sticky bool
	// TCPOnly targets have no UDP port (the API server).
	TCPOnly bool
	Why     string
}

// Services of the matrix, in namespace Namespace (see Objects).
const (
	Namespace = "conn"
	svcWeb    = "web"       // LoadBalancer, eTP Cluster: backend be-1 on node-1
	svcLocal  = "web-local" // LoadBalancer, eTP and iTP Local: backend be-1
	svcSelf   = "self"      // only client-1: a pod reaching itself
	svcWith   = "with-self" // client-1 and be-1
	svcEmpty  = "empty"     // no backends
	svcSticky = "sticky"    // ClientIP affinity over be-1 and be-2
	// trafficDistribution over be-1 and be-2, one per node and zone (the
	// lab puts node-1 in zone-a, node-2 in zone-b, node-3 in zone-c).
	svcNearNode = "near-node" // PreferSameNode
	svcNearZone = "near-zone" // PreferClose
	// LoadBalancer, loadBalancerSourceRanges: node-1's pod CIDR and
	// address; backend be-1.
	svcGuard = "guarded"
	svcKube  = "kubernetes"
)

// Targets are every Service address of the matrix.
func Targets(nodes []string) []Target {
	var out []Target
	for _, svc := range []string{svcWeb, svcLocal} {
		why := "eTP Cluster"
		if svc == svcLocal {
			why = "eTP/iTP Local, the backend on node-1"
		}
		out = append(out, Target{Name: svc + "/" + ClusterIP, Service: svc, Kind: ClusterIP, Why: why})
		for _, n := range nodes {
			out = append(out, Target{Name: svc + "/" + NodePort + "@" + n, Service: svc, Kind: NodePort, Node: n, Why: why})
		}
		out = append(out,
			Target{Name: svc + "/" + ExternalIP, Service: svc, Kind: ExternalIP, Why: why},
			Target{Name: svc + "/" + LBIP, Service: svc, Kind: LBIP, Why: why})
	}
	return append(out,
		Target{Name: svcSelf + "/" + ClusterIP, Service: svcSelf, Kind: ClusterIP, Why: "hairpin: client-1 is the only backend"},
		Target{Name: svcWith + "/" + ClusterIP, Service: svcWith, Kind: ClusterIP, AnyBackend: true, Why: "client-1 is one of two backends"},
		Target{Name: svcEmpty + "/" + ClusterIP, Service: svcEmpty, Kind: ClusterIP, Why: "no backends: refused"},
		Target{Name: svcEmpty + "/" + NodePort + "@" + nodes[0], Service: svcEmpty, Kind: NodePort, Node: nodes[0], Why: "no backends: refused"},
		Target{Name: svcSticky + "/" + ClusterIP, Service: svcSticky, Kind: ClusterIP, AnyBackend: true, Sticky: true, Why: "sessionAffinity ClientIP"},
		Target{Name: svcGuard + "/" + LBIP, Service: svcGuard, Kind: LBIP,
			Why: "loadBalancerSourceRanges: node-1's pods and node-1 only"},
		Target{Name: svcNearNode + "/" + ClusterIP, Service: svcNearNode, Kind: ClusterIP, Why: "trafficDistribution PreferSameNode: the client's node's backend"},
		Target{Name: svcNearZone + "/" + ClusterIP, Service: svcNearZone, Kind: ClusterIP, Why: "trafficDistribution PreferClose: the client's zone's backend"},
		Target{Name: "default/" + svcKube, Service: svcKube, Kind: ClusterIP, TCPOnly: true, Why: "the API server, as in-cluster clients reach it"},
	)
}

// Clients are every client of the matrix for the lab's nodes.
func Clients(nodes []string) []Client {
	var out []Client
	for _, n := range nodes {
		out = append(out, Client{Name: "pod@" + n, Kind: PodClient, Node: n})
	}
	for _, n := range nodes {
		out = append(out, Client{Name: "host@" + n, Kind: HostClient, Node: n})
	}
	return append(out, Client{Name: "outside", Kind: OutsideClient})
}

// LabCells are the cells of a lab's first two nodes (kpath lab names
// them node-1 and node-2).
func LabCells() []Cell { return Cells([]string{"node-1", "node-2"}) }

// Cell is one client, socket and target.
type Cell struct {
	Client Client
	Socket Socket
	Target Target
}

// Key names a cell.
func (c Cell) Key() string { return c.Client.Name + " | " + c.Socket.Name + " | " + c.Target.Name }

// Cells are every cell of the matrix: each client, each socket, each
// target that has the socket's protocol.
func Cells(nodes []string) []Cell {
	var out []Cell
	for _, cl := range Clients(nodes) {
		for _, tg := range Targets(nodes) {
			for _, so := range Sockets {
				if tg.TCPOnly && so.Proto != "tcp" || so.InCluster && (tg.Service != svcKube || cl.Kind != PodClient) {
					continue
				}
				out = append(out, Cell{Client: cl, Socket: so, Target: tg})
			}
		}
	}
	return out
}

// Outcomes of a cell, from best to worst.
const (
	Answered    = "answered"
	Refused     = "refused"     // ECONNREFUSED: kube-proxy's REJECT
	Denied      = "denied"      // EPERM from the socket layer
	Unreachable = "unreachable" // no route
	Partial     = "partial"     // some requests answered
	NoAnswer    = "no answer"   // timed out
	Failed      = "error"
)

// rank orders outcomes for "at least as good as": an answer beats any
// refusal, an immediate refusal beats silence.
func rank(outcome string) int {
	switch outcome {
	case Answered:
		return 4
	case Partial:
		return 3
	case Refused, Denied, Unreachable:
		return 2
	}
	return 1
}

// cellRank is rank, except that a UDP refusal counts as no answer: it is
// an ICMP error, which the kernel rate-limits per destination (kube-proxy's
// REJECT goes through that limit), so it comes or not from run to run.
func cellRank(c Cell, outcome string) int {
	if c.Socket.Proto == "udp" && outcome == Refused {
		return rank(NoAnswer)
	}
	return rank(outcome)
}

// Result is what a cell's connections got.
type Result struct {
	Key     string         `json:"key"`
	Outcome string         `json:"outcome"`
	Answers map[string]int `json:"answers,omitempty"`
	Err     string         `json:"error,omitempty"`
}

// Summary is a cell's result in a few words: the outcome, and who
// answered (from which source address they saw).
func (r Result) Summary() string {
	if len(r.Answers) == 0 {
		return r.Outcome
	}
	names := make([]string, 0, len(r.Answers))
	for a := range r.Answers {
		names = append(names, a)
	}
	slices.Sort(names)
	if r.Outcome == Answered {
		return strings.Join(names, ", ")
	}
	return r.Outcome + ": " + strings.Join(names, ", ")
}

// Compare tells whether got (from the dataplane mode) serves the cell at
// least as want (the reference) does: "" when it does, else why not.
// better says that it does more than the reference, or the same with a
// difference Known explains.
func Compare(mode string, c Cell, got, want Result) (worse string, better bool) {
	gr, wr := cellRank(c, got.Outcome), cellRank(c, want.Outcome)
	if gr < wr {
		return fmt.Sprintf("%s, kube-proxy: %s", got.Summary(), want.Summary()), false
	}
	if gr > wr {
		return "", true
	}
	if got.Outcome != Answered {
		return "", false
	}
	if c.Target.Sticky && len(got.Answers) != 1 {
		return fmt.Sprintf("session affinity broken: %s", got.Summary()), false
	}
	if c.Target.AnyBackend || got.Summary() == want.Summary() {
		return "", false
	}
	if be := nearBackend(c); be != "" {
		// Topology is what counts here, and kube-proxy does not always
		// keep to it (see TopologyBroken): answered by the client's
		// node's backend alone is right, whoever else kube-proxy used.
		if slices.Equal(backends(got), []string{be}) {
			return "", true
		}
		return fmt.Sprintf("topology not kept: %s, want %s only", got.Summary(), be), false
	}
	if slices.Equal(backends(got), backends(want)) && Known(mode, c) != "" {
		return "", true
	}
	return fmt.Sprintf("%s, kube-proxy: %s", got.Summary(), want.Summary()), false
}

// backends are the names that answered, without the source they saw.
func backends(r Result) []string {
	var out []string
	for a := range r.Answers {
		name, _, _ := strings.Cut(a, " from ")
		if !slices.Contains(out, name) {
			out = append(out, name)
		}
	}
	slices.Sort(out)
	return out
}

// Known explains where kpath's answer comes from the same backend as
// kube-proxy's but the backend sees another source address, on purpose
// ("" where no difference is expected). docs/connectivity.md lists them.
func Known(mode string, c Cell) string {
	switch {
	case (c.Target.Service == svcWeb || c.Target.Service == svcGuard) && c.Target.Kind != ClusterIP:
		return "kube-proxy masquerades every connection to a NodePort, external or load-balancer IP of an " +
			"externalTrafficPolicy Cluster Service; kpath only when the backend is on another node (its " +
			"reply must come back through this node), so a local backend sees the real client, as with Cilium"
	case c.Target.Service == svcSelf && c.Client.Kind == PodClient && mode == "kpath":
		return "with the socket hook a pod's connection to its own Service never leaves the pod: connect() " +
			"goes straight to its own address, so it sees itself as the client (kube-proxy, per packet, " +
			"masquerades it to the node's address, as kpath does per packet)"
	}
	return ""
}

// nearBackend is the backend a cell of a trafficDistribution Service must
// reach: its client's node's (be-1 on node-1, be-2 on node-2); "" for
// other cells and for clients outside the nodes.
func nearBackend(c Cell) string {
	if c.Target.Service != svcNearNode && c.Target.Service != svcNearZone {
		return ""
	}
	switch n := strings.TrimPrefix(c.Client.Node, "node-"); n {
	case "1", "2":
		return "be-" + n
	}
	return ""
}

// TopologyBroken lists the cells of the trafficDistribution Services that a
// dataplane's results r serve from a backend of another node than the
// client's (be-1 is on node-1, be-2 on node-2). kpath must keep to the
// hints in every cell. kube-proxy, the reference, is checked too, and
// where it does not keep to them the cause is the lab's (zones or hints
// missing) or kube-proxy's own (its DNAT lives in conntrack entries, which
// a new connection on a reused tuple can inherit from before the hints):
// the tests report it without failing on it.
func TopologyBroken(cells []Cell, r map[string]Result) []string {
	var out []string
	for _, c := range cells {
		be := nearBackend(c)
		if be == "" {
			continue
		}
		if got := r[c.Key()]; got.Outcome != Answered || !slices.Equal(backends(got), []string{be}) {
			out = append(out, fmt.Sprintf("%s: %s, want %s only", c.Key(), got.Summary(), be))
		}
	}
	return out
}
