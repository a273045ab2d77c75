package agent

import (
	"context"
	"fmt"
	"net/http"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/kpath/kpath/internal/datapath"
	"github.com/kpath/kpath/internal/model"
	"github.com/kpath/kpath/internal/policy"
	"github.com/kpath/kpath/internal/policysync"
)

// The agent's NetworkPolicy part: the store the informers fill, the syncer
// that writes the datapath, and the API behind `kpath policy` and
// `kpath identity`.

// podExtraKey is where an IPAM allocation keeps its pod (namespace/name),
// so that a restarted agent finds the policy of the pods it already has.
const podExtraKey = "pod"

// policyDebounce gathers a burst of changes into one sync.
const policyDebounce = 5 * time.Millisecond

func parsePodKey(s string) (model.PodKey, bool) {
	ns, name, ok := strings.Cut(s, "/")
	return model.PodKey{Namespace: ns, Name: name}, ok && ns != "" && name != ""
}

// restoreEndpoints hands the syncer the pods this node already runs, before
// its first sync, so that their pinned policy is adopted, not dropped.
func (a *Agent) restoreEndpoints(e *endpoints) {
	if a.psync == nil {
		return
	}
	al, err := e.allocator()
	if err != nil {
		a.log.Warn("policy: no IPAM yet, existing endpoints stay as pinned until their pods are registered again", "error", err)
		return
	}
	eps := map[netip.Addr]model.PodKey{}
	for _, al := range al.Allocations() {
		if k, ok := parsePodKey(al.Extra[podExtraKey]); ok {
			eps[al.Addr] = k
		}
	}
	a.psync.Restore(eps)
}

// waitForPod waits (up to 3 s) until the pod is in the store: the watch
// usually has it already (it is bound before the runtime starts it).
func (a *Agent) waitForPod(ctx context.Context, k model.PodKey) {
	if a.psync == nil {
		return
	}
	deadline := time.Now().Add(3 * time.Second)
	for a.store.Pod(k) == nil && time.Now().Before(deadline) && ctx.Err() == nil {
		time.Sleep(20 * time.Millisecond)
	}
}

// registerEndpoint puts a new pod under policy before CNI ADD returns; a
// pod not in the store yet (waitForPod) is isolated with nothing allowed
// until it is.
func (a *Agent) registerEndpoint(ip netip.Addr, k model.PodKey) error {
	if a.psync == nil {
		return nil
	}
	if err := a.psync.Register(ip, k); err != nil {
		return fmt.Errorf("put pod %s under policy: %w", k, err)
	}
	return nil
}

func (a *Agent) unregisterEndpoint(ip netip.Addr) {
	if a.psync == nil || !ip.IsValid() {
		return
	}
	if err := a.psync.Unregister(ip); err != nil {
		a.log.Warn("policy: unregister endpoint", "ip", ip, "error", err)
	}
}

// waitNodeAddresses waits (briefly) until this node's addresses are in the
// store, so the first sync already lets the node reach its pods.
func (a *Agent) waitNodeAddresses(ctx context.Context) {
	deadline := time.Now().Add(2 * time.Second)
	addr := firstLocalAddr()
	for time.Now().Before(deadline) && ctx.Err() == nil {
		if a.store.IdentityOf(addr, a.cfg.NodeName) == policy.IdentityHost {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func firstLocalAddr() netip.Addr {
	if l := localAddrs(); len(l) > 0 {
		return l[0]
	}
	return netip.Addr{}
}

// policyLoop applies changes as they come (after a short debounce) and
// recomputes everything every resync period.
func (a *Agent) policyLoop(ctx context.Context) {
	t := time.NewTicker(a.cfg.ResyncPeriod.Duration)
	defer t.Stop()
	for {
		full := false
		select {
		case <-ctx.Done():
			return
		case <-a.store.Changed():
			time.Sleep(policyDebounce)
		case <-t.C:
			full = true
		}
		if err := a.psync.Sync(full); err != nil {
			a.log.Error("policy sync", "error", err)
		}
	}
}

// nodeAddresses feeds the nodes' addresses to the policy store (the
// ipcache's host and remote-node identities). This node's own are every
// address of its network namespace, since traffic from the node to a pod
// may come from any of them.
func (a *Agent) nodeAddresses(ctx context.Context) {
	var lastGen uint64
	known := map[string]bool{}
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for first := true; ; first = false {
		nodes, gen := a.cache.Nodes()
		if first || gen != lastGen {
			seen := map[string]bool{}
			for _, n := range nodes {
				addrs := slices.Clone(n.Addrs)
				if n.Name == a.cfg.NodeName {
					addrs = append(addrs, localAddrs()...)
				}
				slices.SortFunc(addrs, netip.Addr.Compare)
				a.store.SetNode(n.Name, slices.Compact(addrs))
				seen[n.Name] = true
			}
			for name := range known {
				if !seen[name] {
					a.store.SetNode(name, nil)
				}
			}
			known, lastGen = seen, gen
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func localAddrs() []netip.Addr {
	list, err := netlink.AddrList(nil, netlink.FAMILY_V4)
	if err != nil {
		return nil
	}
	var out []netip.Addr
	for _, a := range list {
		if ip, ok := netip.AddrFromSlice(a.IP.To4()); ok && !ip.IsLoopback() {
			out = append(out, ip)
		}
	}
	return out
}

// IdentityEntry is one identity as GET /v1/identities returns it.
type IdentityEntry struct {
	ID        uint32            `json:"id"`
	Namespace string            `json:"namespace,omitempty"`
	Labels    map[string]string `json:"labels,omitempty"`
	Pods      int               `json:"pods,omitempty"`
	Reserved  string            `json:"reserved,omitempty"`
}

// Identities lists the reserved identities and every pod identity.
func (a *Agent) Identities() []IdentityEntry {
	out := []IdentityEntry{
		{ID: uint32(policy.IdentityHost), Reserved: "host"},
		{ID: uint32(policy.IdentityWorld), Reserved: "world"},
		{ID: uint32(policy.IdentityRemoteNode), Reserved: "remote-node"},
	}
	for _, id := range a.store.Identities() {
		out = append(out, IdentityEntry{ID: uint32(id.ID), Namespace: id.Namespace, Labels: id.Labels, Pods: id.Pods})
	}
	return out
}

// TraceDirection is one direction of a trace as the datapath decides it.
type TraceDirection struct {
	datapath.PolicyDecision
	// RuleName names the set's rule that allowed ("ns/name ingress[0]").
	RuleName string `json:"ruleName,omitempty"`
}

// Trace is the answer of GET /v1/policy/trace.
type Trace struct {
	From      string         `json:"from"`
	To        string         `json:"to"`
	Proto     string         `json:"proto"`
	Port      uint16         `json:"port"`
	Evaluator policy.Verdict `json:"evaluator"`
	// Egress and Ingress are the datapath's view, for the ends that are
	// endpoints of this node (nil: not decided here).
	Egress  *TraceDirection `json:"datapathEgress,omitempty"`
	Ingress *TraceDirection `json:"datapathIngress,omitempty"`
	// Disagreement is set when the datapath's maps and the evaluator differ.
	Disagreement string `json:"disagreement,omitempty"`
}

// resolvePeer takes NS/POD or an IPv4 address.
func (a *Agent) resolvePeer(s string) (netip.Addr, error) {
	if ip, err := netip.ParseAddr(s); err == nil {
		if !ip.Is4() {
			return netip.Addr{}, fmt.Errorf("%s: only IPv4 addresses", s)
		}
		return ip, nil
	}
	k, ok := parsePodKey(s)
	if !ok {
		return netip.Addr{}, fmt.Errorf("%q: want NAMESPACE/POD or an IPv4 address", s)
	}
	p := a.store.Pod(k)
	if p == nil {
		return netip.Addr{}, fmt.Errorf("pod %s not found", k)
	}
	if p.HostNetwork || len(p.IPs) == 0 {
		return netip.Addr{}, fmt.Errorf("pod %s has no address of its own (hostNetwork or not running): pass an IP", k)
	}
	return p.IPs[0], nil
}

// ParsePortProto parses "80/TCP", "53/udp", "80" (TCP) or "icmp".
func ParsePortProto(s string) (model.Protocol, uint16, error) {
	if strings.EqualFold(s, "icmp") {
		return 1, 0, nil
	}
	port, proto, found := strings.Cut(s, "/")
	p := model.TCP
	if found {
		switch strings.ToUpper(proto) {
		case "TCP":
		case "UDP":
			p = model.UDP
		case "SCTP":
			p = model.SCTP
		default:
			return 0, 0, fmt.Errorf("protocol %q: want TCP, UDP or SCTP", proto)
		}
	}
	n, err := strconv.ParseUint(port, 10, 16)
	if err != nil || n == 0 {
		return 0, 0, fmt.Errorf("port %q: want 1-65535", port)
	}
	return p, uint16(n), nil
}

// PolicyTrace decides a flow with the evaluator and from the datapath's maps.
func (a *Agent) PolicyTrace(from, to, port string) (Trace, error) {
	src, err := a.resolvePeer(from)
	if err != nil {
		return Trace{}, fmt.Errorf("--from: %w", err)
	}
	dst, err := a.resolvePeer(to)
	if err != nil {
		return Trace{}, fmt.Errorf("--to: %w", err)
	}
	proto, p, err := ParsePortProto(port)
	if err != nil {
		return Trace{}, fmt.Errorf("--port: %w", err)
	}
	v := a.store.EvaluateIPs(src, dst, proto, p)
	t := Trace{From: a.store.Peer(src).String(), To: a.store.Peer(dst).String(), Proto: proto.String(), Port: p, Evaluator: v}
	if proto == 1 {
		t.Proto = "ICMP"
	}
	local := map[netip.Addr]bool{}
	for _, e := range a.psync.Endpoints() {
		local[e.IP] = true
	}
	decide := func(self, peer netip.Addr, ingress bool, want policy.Direction) (*TraceDirection, error) {
		if !local[self] {
			return nil, nil
		}
		d, err := a.dp.DecidePolicy(self, peer, ingress, proto, p)
		if err != nil {
			return nil, err
		}
		td := &TraceDirection{PolicyDecision: d}
		if rules := a.psync.SetRules(d.Set); d.Rule > 0 && int(d.Rule) <= len(rules) {
			td.RuleName = rules[d.Rule-1].String()
		}
		if d.Allowed != want.Allowed {
			dir := "egress"
			if ingress {
				dir = "ingress"
			}
			t.Disagreement += fmt.Sprintf("%s: datapath %s, evaluator %s; ", dir, verdictWord(d.Allowed), verdictWord(want.Allowed))
		}
		return td, nil
	}
	if t.Egress, err = decide(src, dst, false, v.Egress); err != nil {
		return t, err
	}
	if t.Ingress, err = decide(dst, src, true, v.Ingress); err != nil {
		return t, err
	}
	t.Disagreement = strings.TrimSuffix(t.Disagreement, "; ")
	return t, nil
}

func verdictWord(allowed bool) string {
	if allowed {
		return "allows"
	}
	return "denies"
}

func (a *Agent) registerPolicyAPI(mux *http.ServeMux) {
	if a.psync == nil {
		return
	}
	mux.HandleFunc("GET /v1/policy/endpoints", func(w http.ResponseWriter, _ *http.Request) { writeJSON(w, a.psync.Endpoints()) })
	mux.HandleFunc("GET /v1/identities", func(w http.ResponseWriter, _ *http.Request) { writeJSON(w, a.Identities()) })
	mux.HandleFunc("GET /v1/policy/trace", func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		t, err := a.PolicyTrace(q.Get("from"), q.Get("to"), q.Get("port"))
		if err != nil {
			apiError(w, http.StatusBadRequest, err)
			return
		}
		writeJSON(w, t)
	})
}

// policyStats feed GET /v1/status.
func (a *Agent) policyStats() *policysync.Stats {
	if a.psync == nil {
		return nil
	}
	st := a.psync.Stats()
	return &st
}

// PutUnderPolicy registers a pod of this node as CNI ADD does, without an
// interface: for benchmarks that measure enforcement on API objects alone.
func (a *Agent) PutUnderPolicy(ctx context.Context, ip netip.Addr, pod model.PodKey) error {
	if a.psync == nil {
		return fmt.Errorf("network policy enforcement is off")
	}
	a.waitForPod(ctx, pod)
	return a.registerEndpoint(ip, pod)
}
