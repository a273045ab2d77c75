package datapath

import (
	"errors"
	"fmt"
	"net/netip"
	"path/filepath"

	"github.com/cilium/ebpf"

	"github.com/kpath/kpath/internal/model"
	"github.com/kpath/kpath/internal/policy"
)

// Typed access to the policy maps: the ipcache (address -> identity), the
// local endpoints (address -> policy set), the policy sets' entries and
// ipBlock prefixes, and the policy revision. internal/policy computes what
// goes in them; the datapath only stores and reads it.

// Endpoint is a local endpoint as the datapath enforces it.
type Endpoint struct {
	Set             uint32 `json:"set"`
	Identity        uint32 `json:"identity"`
	IngressIsolated bool   `json:"ingressIsolated"`
	EgressIsolated  bool   `json:"egressIsolated"`
}

func (e Endpoint) value() kpathEndpoint {
	v := kpathEndpoint{Set: e.Set, Identity: e.Identity}
	if e.IngressIsolated {
		v.Flags |= uint8(kpathEpFlagsEP_F_INGRESS_ISOLATED)
	}
	if e.EgressIsolated {
		v.Flags |= uint8(kpathEpFlagsEP_F_EGRESS_ISOLATED)
	}
	return v
}

func endpointFromValue(v kpathEndpoint) Endpoint {
	return Endpoint{
		Set: v.Set, Identity: v.Identity,
		IngressIsolated: v.Flags&uint8(kpathEpFlagsEP_F_INGRESS_ISOLATED) != 0,
		EgressIsolated:  v.Flags&uint8(kpathEpFlagsEP_F_EGRESS_ISOLATED) != 0,
	}
}

func polDir(ingress bool) uint8 {
	if ingress {
		return uint8(kpathPolDirPOL_INGRESS)
	}
	return uint8(kpathPolDirPOL_EGRESS)
}

// policyKey encodes an entry of set as the trie's key: set, peer and
// direction whole (72 bits), then the protocol, then PortBits of the port.
func policyKey(set uint32, e policy.Entry) kpathPolicyKey {
	k := kpathPolicyKey{Prefixlen: 72, Set: set, Peer: e.Peer, Dir: polDir(e.Ingress)}
	if e.Proto != 0 {
		k.Proto = uint8(e.Proto)
		k.Prefixlen += 8 + uint32(e.PortBits)
		k.Dport = portToBPF(e.Port)
	}
	return k
}

func entryFromKey(k kpathPolicyKey) (uint32, policy.Entry) {
	e := policy.Entry{Ingress: k.Dir == uint8(kpathPolDirPOL_INGRESS), Peer: k.Peer}
	if k.Prefixlen > 72 {
		e.Proto = model.Protocol(k.Proto)
		e.PortBits = uint8(k.Prefixlen - 80)
		e.Port = portFromBPF(k.Dport)
	}
	return k.Set, e
}

func cidrKey(set uint32, c policy.CIDREntry) kpathPolicyCidrKey {
	return kpathPolicyCidrKey{Prefixlen: 64 + uint32(c.Prefix.Bits()), Set: set, Dir: polDir(c.Ingress), Addr: addrToBPF(c.Prefix.Addr())}
}

func cidrFromKey(k kpathPolicyCidrKey) (uint32, policy.CIDREntry) {
	return k.Set, policy.CIDREntry{
		Ingress: k.Dir == uint8(kpathPolDirPOL_INGRESS),
		Prefix:  netip.PrefixFrom(addrFromBPF(k.Addr), int(k.Prefixlen-64)),
	}
}

// SetIPCache maps a cluster address to an identity.
func (d *Datapath) SetIPCache(ip netip.Addr, id uint32) error {
	if !ip.Is4() {
		return fmt.Errorf("ipcache %s: only IPv4 addresses", ip)
	}
	if err := d.objs.KpIpcache.Put(addrToBPF(ip), kpathIpcacheEntry{Identity: id}); err != nil {
		return mapWriteError(kpathMapKpIpcache, "ipcache", err)
	}
	return nil
}

// DeleteIPCache forgets an address (it becomes world). Deleting an absent
// address is not an error.
func (d *Datapath) DeleteIPCache(ip netip.Addr) error {
	if err := d.objs.KpIpcache.Delete(addrToBPF(ip)); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("delete ipcache %s: %w", ip, err)
	}
	return nil
}

// IPCache reads the whole ipcache.
func (d *Datapath) IPCache() (map[netip.Addr]uint32, error) {
	out := map[netip.Addr]uint32{}
	var (
		k uint32
		v kpathIpcacheEntry
	)
	it := d.objs.KpIpcache.Iterate()
	for it.Next(&k, &v) {
		out[addrFromBPF(k)] = v.Identity
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("read ipcache: %w", err)
	}
	return out, nil
}

// SetEndpoint puts a local endpoint under the policy of its set. Writing
// the set's entries first and the endpoint last is what makes a change
// atomic for the endpoint's packets.
func (d *Datapath) SetEndpoint(ip netip.Addr, e Endpoint) error {
	if !ip.Is4() {
		return fmt.Errorf("endpoint %s: only IPv4 addresses", ip)
	}
	if err := d.objs.KpEndpoint.Put(addrToBPF(ip), e.value()); err != nil {
		return mapWriteError(kpathMapKpEndpoint, "endpoints", err)
	}
	return nil
}

// DeleteEndpoint takes an address out of policy enforcement.
func (d *Datapath) DeleteEndpoint(ip netip.Addr) error {
	if err := d.objs.KpEndpoint.Delete(addrToBPF(ip)); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("delete endpoint %s: %w", ip, err)
	}
	return nil
}

// Endpoints reads every local endpoint.
func (d *Datapath) Endpoints() (map[netip.Addr]Endpoint, error) {
	out := map[netip.Addr]Endpoint{}
	var (
		k uint32
		v kpathEndpoint
	)
	it := d.objs.KpEndpoint.Iterate()
	for it.Next(&k, &v) {
		out[addrFromBPF(k)] = endpointFromValue(v)
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("read endpoints: %w", err)
	}
	return out, nil
}

// PolicyChange is a change to one set's entries.
type PolicyChange struct {
	Set       uint32
	Add       map[policy.Entry]uint32 // entry -> rule (new or changed)
	Delete    []policy.Entry
	AddCIDR   map[policy.CIDREntry]uint32 // prefix -> group
	DelCIDR   []policy.CIDREntry
	DeleteAll bool // remove every entry of Set (Add and AddCIDR must be empty)
}

// ApplyPolicy writes changes. Within each set it removes before it adds,
// so a packet in between sees a subset of the new entries, never more than
// the new policy allows; the caller bumps the revision afterwards so that
// cached verdicts are decided again. On error the entries written so far
// stay; the caller's accounting of capacity keeps that from happening for
// lack of room.
func (d *Datapath) ApplyPolicy(changes []PolicyChange) error {
	for _, c := range changes {
		if c.DeleteAll {
			if err := d.deleteSet(c.Set); err != nil {
				return err
			}
			continue
		}
		for _, e := range c.Delete {
			if err := d.objs.KpPolicy.Delete(policyKey(c.Set, e)); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
				return fmt.Errorf("delete policy entry of set %d: %w", c.Set, err)
			}
		}
		for _, e := range c.DelCIDR {
			if err := d.objs.KpPolicyCidr.Delete(cidrKey(c.Set, e)); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
				return fmt.Errorf("delete policy prefix of set %d: %w", c.Set, err)
			}
		}
		for e, rule := range c.Add {
			if err := d.objs.KpPolicy.Put(policyKey(c.Set, e), kpathPolicyEntry{Rule: rule}); err != nil {
				return mapWriteError(kpathMapKpPolicy, "policy-entries", err)
			}
		}
		for e, g := range c.AddCIDR {
			if err := d.objs.KpPolicyCidr.Put(cidrKey(c.Set, e), kpathPolicyCidr{Group: g}); err != nil {
				return mapWriteError(kpathMapKpPolicyCidr, "policy-cidrs", err)
			}
		}
	}
	return nil
}

func (d *Datapath) deleteSet(set uint32) error {
	entries, cidrs, err := d.PolicyEntries()
	if err != nil {
		return err
	}
	for e := range entries[set] {
		if err := d.objs.KpPolicy.Delete(policyKey(set, e)); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("delete policy entry of set %d: %w", set, err)
		}
	}
	for c := range cidrs[set] {
		if err := d.objs.KpPolicyCidr.Delete(cidrKey(set, c)); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("delete policy prefix of set %d: %w", set, err)
		}
	}
	return nil
}

// PolicyEntries reads every set's entries and prefixes.
func (d *Datapath) PolicyEntries() (map[uint32]map[policy.Entry]uint32, map[uint32]map[policy.CIDREntry]uint32, error) {
	entries := map[uint32]map[policy.Entry]uint32{}
	var (
		k kpathPolicyKey
		v kpathPolicyEntry
	)
	it := d.objs.KpPolicy.Iterate()
	for it.Next(&k, &v) {
		set, e := entryFromKey(k)
		if entries[set] == nil {
			entries[set] = map[policy.Entry]uint32{}
		}
		entries[set][e] = v.Rule
	}
	if err := it.Err(); err != nil {
		return nil, nil, fmt.Errorf("read policy entries: %w", err)
	}
	cidrs := map[uint32]map[policy.CIDREntry]uint32{}
	var (
		ck kpathPolicyCidrKey
		cv kpathPolicyCidr
	)
	cit := d.objs.KpPolicyCidr.Iterate()
	for cit.Next(&ck, &cv) {
		set, c := cidrFromKey(ck)
		if cidrs[set] == nil {
			cidrs[set] = map[policy.CIDREntry]uint32{}
		}
		cidrs[set][c] = cv.Group
	}
	if err := cit.Err(); err != nil {
		return nil, nil, fmt.Errorf("read policy prefixes: %w", err)
	}
	return entries, cidrs, nil
}

// PolicyRevision reads the revision cached verdicts are compared with.
func (d *Datapath) PolicyRevision() (uint32, error) {
	var st kpathPolicyState
	if err := d.objs.KpPolicyState.Lookup(uint32(0), &st); err != nil {
		return 0, fmt.Errorf("read policy revision: %w", err)
	}
	return st.Revision, nil
}

// BumpPolicyRevision moves the revision on (skipping 0, which means "never
// decided"), so every connection's next packet is decided again.
func (d *Datapath) BumpPolicyRevision() (uint32, error) {
	rev, err := d.PolicyRevision()
	if err != nil {
		return 0, err
	}
	rev++
	if rev == 0 {
		rev = 1
	}
	if err := d.objs.KpPolicyState.Put(uint32(0), kpathPolicyState{Revision: rev}); err != nil {
		return 0, fmt.Errorf("write policy revision: %w", err)
	}
	return rev, nil
}

// PolicyDecision is what the datapath's maps say about one flow direction.
type PolicyDecision struct {
	Endpoint bool   `json:"endpoint"` // the local end is an endpoint
	Isolated bool   `json:"isolated"`
	Allowed  bool   `json:"allowed"`
	Set      uint32 `json:"set,omitempty"`
	Identity uint32 `json:"peerIdentity"` // the peer's, from the ipcache
	// Rule is the set's rule that allowed (index + 1; 0: none or not isolated).
	Rule uint32 `json:"rule,omitempty"`
	// ByCIDR: the allowing entry was found through the peer's address.
	ByCIDR bool   `json:"byCIDR,omitempty"`
	Reason string `json:"reason"`
}

// DecidePolicy answers from the maps as the programs do for a new
// connection: local is the endpoint's address, peer the other end's,
// ingress the direction, for the destination port (0 for portless
// protocols). The kernel does the longest-prefix matches.
func (d *Datapath) DecidePolicy(local, peer netip.Addr, ingress bool, proto model.Protocol, port uint16) (PolicyDecision, error) {
	return policyMaps{d.objs.KpEndpoint, d.objs.KpIpcache, d.objs.KpPolicy, d.objs.KpPolicyCidr}.decide(local, peer, ingress, proto, port)
}

// policyMaps are the maps a policy decision reads.
type policyMaps struct{ endpoint, ipcache, policy, cidr *ebpf.Map }

// PolicyView reads the policy maps another process pinned (a running
// agent's), without loading or changing anything: for tools and
// benchmarks that watch enforcement from outside the agent.
type PolicyView struct{ m policyMaps }

// OpenPolicyView opens the policy maps pinned under bpffs/pinDir,
// read-only.
func OpenPolicyView(bpffs, pinDir string) (*PolicyView, error) {
	dir := filepath.Join(bpffs, pinDir)
	ro := &ebpf.LoadPinOptions{ReadOnly: true}
	var maps [4]*ebpf.Map
	for i, name := range []string{kpathMapKpEndpoint, kpathMapKpIpcache, kpathMapKpPolicy, kpathMapKpPolicyCidr} {
		m, err := ebpf.LoadPinnedMap(filepath.Join(dir, name), ro)
		if err != nil {
			for _, o := range maps[:i] {
				o.Close()
			}
			return nil, fmt.Errorf("open pinned policy map %s (is an agent running with pin directory %s?): %w", name, dir, err)
		}
		maps[i] = m
	}
	return &PolicyView{policyMaps{maps[0], maps[1], maps[2], maps[3]}}, nil
}

// Decide is Datapath.DecidePolicy over the pinned maps.
func (v *PolicyView) Decide(local, peer netip.Addr, ingress bool, proto model.Protocol, port uint16) (PolicyDecision, error) {
	return v.m.decide(local, peer, ingress, proto, port)
}

// Close releases the view's map handles.
func (v *PolicyView) Close() error {
	return errors.Join(v.m.endpoint.Close(), v.m.ipcache.Close(), v.m.policy.Close(), v.m.cidr.Close())
}

func (m policyMaps) decide(local, peer netip.Addr, ingress bool, proto model.Protocol, port uint16) (PolicyDecision, error) {
	var out PolicyDecision
	var ev kpathEndpoint
	if err := m.endpoint.Lookup(addrToBPF(local), &ev); err != nil {
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			out.Allowed, out.Reason = true, "not a local endpoint: no policy enforced here"
			return out, nil
		}
		return out, fmt.Errorf("read endpoint %s: %w", local, err)
	}
	ep := endpointFromValue(ev)
	out.Endpoint, out.Set = true, ep.Set
	out.Identity = uint32(policy.IdentityWorld)
	var ic kpathIpcacheEntry
	if err := m.ipcache.Lookup(addrToBPF(peer), &ic); err == nil {
		out.Identity = ic.Identity
	}
	out.Isolated = ingress && ep.IngressIsolated || !ingress && ep.EgressIsolated
	switch {
	case !out.Isolated:
		out.Allowed, out.Reason = true, "endpoint not isolated for this direction"
		return out, nil
	case local == peer:
		out.Allowed, out.Reason = true, "the pod itself: always allowed"
		return out, nil
	case out.Identity == uint32(policy.IdentityHost):
		out.Allowed, out.Reason = true, "to or from this node: always allowed"
		return out, nil
	}
	k := kpathPolicyKey{Prefixlen: 96, Set: ep.Set, Peer: out.Identity, Dir: polDir(ingress), Proto: uint8(proto), Dport: portToBPF(port)}
	var v kpathPolicyEntry
	if err := m.policy.Lookup(k, &v); err == nil {
		out.Allowed, out.Rule, out.Reason = true, v.Rule, "allowed by an entry for the peer's identity"
		return out, nil
	}
	var c kpathPolicyCidr
	ck := kpathPolicyCidrKey{Prefixlen: 96, Set: ep.Set, Dir: polDir(ingress), Addr: addrToBPF(peer)}
	if err := m.cidr.Lookup(ck, &c); err == nil && c.Group != 0 {
		k.Peer = policy.CIDRGroupBase | c.Group
		if err := m.policy.Lookup(k, &v); err == nil {
			out.Allowed, out.Rule, out.ByCIDR, out.Reason = true, v.Rule, true, "allowed by an entry for the peer's address (ipBlock or all peers)"
			return out, nil
		}
	}
	out.Reason = "no entry of the endpoint's policy set matches: denied"
	return out, nil
}
