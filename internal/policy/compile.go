package policy

import (
	"cmp"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"

	"k8s.io/apimachinery/pkg/labels"

	"github.com/kpath/kpath/internal/model"
)

// The compiler: the policies selecting a local endpoint become datapath
// entries. Entries are computed once per policy set (the distinct set of
// policies selecting an endpoint, with the endpoint's named ports when an
// ingress rule names ports) and shared by every endpoint in that set.
//
// An entry allows traffic between the endpoint and a peer for a protocol
// and a block of ports: (direction, peer, protocol, port/prefix). The peer
// is a pod identity, or a CIDR group: ipBlocks (and rules without peers,
// which are 0.0.0.0/0) are compiled per set into prefixes, each holding the
// group of rules that apply to the addresses for which it is the longest
// match. The datapath looks up both, by the peer's identity and by its
// address, so an ipBlock matches pod IPs as the API says.

// CIDRGroupBase marks a peer number as a CIDR group of a set, not an identity.
const CIDRGroupBase uint32 = 1 << 31

// Entry is one allow entry of a set.
type Entry struct {
	Ingress bool
	Peer    uint32         // an Identity, or CIDRGroupBase|group
	Proto   model.Protocol // 0: every protocol (and every port)
	Port    uint16
	// PortBits is how many leading bits of Port are fixed (16: one port,
	// 0: every port of Proto). Port ranges become aligned blocks.
	PortBits uint8
}

// CIDREntry is one prefix of a set's address lookup, for a direction.
type CIDREntry struct {
	Ingress bool
	Prefix  netip.Prefix
}

// SetEntries is the compiled form of a policy set.
type SetEntries struct {
	IngressIsolated, EgressIsolated bool
	// Entries maps each allow entry to the rule it came from (index into
	// Rules, plus one).
	Entries map[Entry]uint32
	// CIDRs maps prefixes to their group (0: no rule applies there).
	CIDRs map[CIDREntry]uint32
	Rules []RuleRef
	// NeedsPodIPs: an egress named port on an ipBlock (or on a rule
	// without peers) resolves per pod address, so the entries change when
	// pod addresses do.
	NeedsPodIPs bool
}

// PolicySet is the set of policies selecting an endpoint.
type PolicySet struct {
	// Key identifies the set; endpoints with equal keys share entries.
	Key             string
	Ingress, Egress []model.PolicyKey
	// NamedPorts are the endpoint's, when an ingress rule names a port.
	NamedPorts []model.NamedPort
}

// SetOf returns the policy set of pod p.
func (s *Store) SetOf(p *model.Pod) PolicySet {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.setOfLocked(p)
}

func (s *Store) setOfLocked(p *model.Pod) PolicySet {
	var ps PolicySet
	named := false
	for _, c := range s.Policies(p.Key.Namespace) {
		if !selectsPod(c, p) {
			continue
		}
		if c.PolicyIngress {
			ps.Ingress = append(ps.Ingress, c.Key)
			for _, r := range c.ingress {
				named = named || slices.ContainsFunc(r.ports, func(pp model.PolicyPort) bool { return pp.Name != "" })
			}
		}
		if c.PolicyEgress {
			ps.Egress = append(ps.Egress, c.Key)
		}
	}
	var b strings.Builder
	for _, k := range ps.Ingress {
		b.WriteString("i:" + k.String() + ";")
	}
	for _, k := range ps.Egress {
		b.WriteString("e:" + k.String() + ";")
	}
	if named {
		ps.NamedPorts = p.NamedPorts
		for _, np := range p.NamedPorts {
			fmt.Fprintf(&b, "n:%s/%d=%d;", np.Name, np.Protocol, np.Port)
		}
	}
	ps.Key = b.String()
	return ps
}

// Compile computes the entries of a policy set.
func (s *Store) Compile(ps PolicySet) *SetEntries {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := &SetEntries{
		IngressIsolated: len(ps.Ingress) > 0,
		EgressIsolated:  len(ps.Egress) > 0,
		Entries:         map[Entry]uint32{},
		CIDRs:           map[CIDREntry]uint32{},
	}
	self := &model.Pod{NamedPorts: ps.NamedPorts}
	for _, dir := range []struct {
		ingress bool
		keys    []model.PolicyKey
	}{{true, ps.Ingress}, {false, ps.Egress}} {
		var blocks []blockRule
		for _, k := range dir.keys {
			c := s.policies[k.Namespace][k.Name]
			if c == nil {
				continue // deleted since the set was computed: allows nothing
			}
			rules := c.egress
			if dir.ingress {
				rules = c.ingress
			}
			for i, r := range rules {
				ref := uint32(len(out.Rules) + 1)
				out.Rules = append(out.Rules, RuleRef{Policy: c.Key, Ingress: dir.ingress, Index: i})
				if r.all {
					blocks = append(blocks, blockRule{block: model.IPBlock{CIDR: netip.PrefixFrom(netip.IPv4Unspecified(), 0)}, ports: r.ports, ref: ref})
					continue
				}
				for _, p := range r.peers {
					switch {
					case p.broken:
					case p.block != nil:
						blocks = append(blocks, blockRule{block: *p.block, ports: r.ports, ref: ref})
					default:
						for _, id := range s.matchIdentitiesLocked(c, p) {
							dst := self
							if !dir.ingress {
								dst = &model.Pod{NamedPorts: id.NamedPorts}
							}
							for _, pe := range portEntries(r.ports, dst) {
								pe.Ingress, pe.Peer = dir.ingress, uint32(id.ID)
								addEntry(out.Entries, pe, ref)
							}
						}
					}
				}
			}
		}
		s.compileBlocks(out, dir.ingress, blocks, self)
	}
	return out
}

func addEntry(m map[Entry]uint32, e Entry, ref uint32) {
	if old, ok := m[e]; !ok || ref < old {
		m[e] = ref
	}
}

// SetSelectsAny reports whether a selector peer of a policy of ps selects
// one of ids: only then does a new or vanished identity change the set's
// entries.
func (s *Store) SetSelectsAny(ps PolicySet, ids []IdentityInfo) bool {
	s.mu.RLock()
	defer s.mu.RUnlock()
	for _, keys := range [][]model.PolicyKey{ps.Ingress, ps.Egress} {
		for _, k := range keys {
			c := s.policies[k.Namespace][k.Name]
			if c == nil {
				return true // gone: the set changes anyway
			}
			for _, rules := range [][]compiledRule{c.ingress, c.egress} {
				for _, r := range rules {
					for _, p := range r.peers {
						if p.broken || p.block != nil {
							continue
						}
						for i := range ids {
							if s.peerSelectsLocked(c, p, &ids[i]) {
								return true
							}
						}
					}
				}
			}
		}
	}
	return false
}

// peerSelectsLocked: selector peer p of c selects identity id.
func (s *Store) peerSelectsLocked(c *compiled, p compiledPeer, id *IdentityInfo) bool {
	if p.namespaces == nil {
		return id.Namespace == c.Key.Namespace && p.pods.Matches(labels.Set(id.Labels))
	}
	var nsLabels labels.Set
	if ns := s.namespaces[id.Namespace]; ns != nil {
		nsLabels = ns.Labels
	} else {
		nsLabels = labels.Set{"kubernetes.io/metadata.name": id.Namespace}
	}
	return p.namespaces.Matches(nsLabels) && (p.pods == nil || p.pods.Matches(labels.Set(id.Labels)))
}

// matchIdentitiesLocked lists the identities a selector peer of c selects.
func (s *Store) matchIdentitiesLocked(c *compiled, p compiledPeer) []*IdentityInfo {
	var out []*IdentityInfo
	for _, id := range s.ids.byID {
		if s.peerSelectsLocked(c, p, id) {
			out = append(out, id)
		}
	}
	return out
}

type blockRule struct {
	block model.IPBlock
	ports []model.PolicyPort
	ref   uint32
}

// compileBlocks partitions the address space of a direction's ipBlocks into
// prefixes. For an address, the rules that apply are those whose CIDR holds
// it and none of whose exceptions do; that is the same for every address
// whose longest matching prefix is the same, because prefixes nest. So each
// prefix (every CIDR and exception, and for egress rules with named ports
// every pod address, where the name resolves) gets the group of rules that
// apply at it.
func (s *Store) compileBlocks(out *SetEntries, ingress bool, blocks []blockRule, self *model.Pod) {
	if len(blocks) == 0 {
		return
	}
	prefixes := map[netip.Prefix]*model.Pod{}
	named := false
	for _, b := range blocks {
		prefixes[b.block.CIDR.Masked()] = nil
		for _, e := range b.block.Except {
			prefixes[e.Masked()] = nil
		}
		named = named || slices.ContainsFunc(b.ports, func(pp model.PolicyPort) bool { return pp.Name != "" })
	}
	if named && !ingress {
		out.NeedsPodIPs = true
		// An egress named port resolves on the destination pod: give every
		// pod that declares a named port its own prefix.
		for ip, k := range s.byIP {
			if p := s.pods[k].pod; len(p.NamedPorts) > 0 {
				prefixes[netip.PrefixFrom(ip, 32)] = p
			}
		}
	}
	// Blocks by CIDR, so each prefix looks only at the blocks of the (at
	// most 33) prefixes that contain it: 10,000 ipBlocks stay cheap.
	byCIDR := map[netip.Prefix][]blockRule{}
	for _, b := range blocks {
		c := b.block.CIDR.Masked()
		byCIDR[c] = append(byCIDR[c], b)
	}
	groups := map[string]uint32{}
	var groupEntries []map[Entry]uint32
	for _, q := range slices.SortedFunc(maps.Keys(prefixes), model.ComparePrefix) {
		dst := self
		if !ingress {
			dst = prefixes[q] // nil unless q is a pod's own prefix
		}
		entries := map[Entry]uint32{}
		for bits := q.Bits(); bits >= 0; bits-- {
			anc, _ := q.Addr().Prefix(bits)
			for _, b := range byCIDR[anc] {
				if !coversPrefix(b.block, q) {
					continue
				}
				for _, pe := range portEntries(b.ports, dst) {
					pe.Ingress = ingress
					addEntry(entries, pe, b.ref)
				}
			}
		}
		g := uint32(0)
		if len(entries) > 0 {
			sig := entriesSignature(entries)
			var ok bool
			if g, ok = groups[sig]; !ok {
				groupEntries = append(groupEntries, entries)
				g = uint32(len(groupEntries))
				groups[sig] = g
			}
		}
		out.CIDRs[CIDREntry{Ingress: ingress, Prefix: q}] = g
	}
	for i, entries := range groupEntries {
		for e, ref := range entries {
			e.Peer = CIDRGroupBase | uint32(i+1)
			addEntry(out.Entries, e, ref)
		}
	}
}

// coversPrefix: every address of q is in b's CIDR and in none of b's
// exceptions (exceptions inside q are prefixes of their own).
func coversPrefix(b model.IPBlock, q netip.Prefix) bool {
	if !(b.CIDR.Bits() <= q.Bits() && b.CIDR.Contains(q.Addr())) {
		return false
	}
	for _, e := range b.Except {
		if e.Bits() <= q.Bits() && e.Contains(q.Addr()) {
			return false
		}
	}
	return true
}

func entriesSignature(m map[Entry]uint32) string {
	keys := slices.SortedFunc(maps.Keys(m), func(a, b Entry) int {
		return cmp.Or(cmp.Compare(a.Proto, b.Proto), cmp.Compare(a.Port, b.Port), cmp.Compare(a.PortBits, b.PortBits))
	})
	var b strings.Builder
	for _, k := range keys {
		fmt.Fprintf(&b, "%d/%d/%d=%d;", k.Proto, k.Port, k.PortBits, m[k])
	}
	return b.String()
}

// portEntries turns a rule's ports into (protocol, port block) entries,
// resolving named ports on dst (nil: not a pod, names match nothing).
func portEntries(ports []model.PolicyPort, dst *model.Pod) []Entry {
	if len(ports) == 0 {
		return []Entry{{}} // every protocol, every port
	}
	var out []Entry
	for _, pp := range ports {
		switch {
		case pp.Name != "":
			if port, ok := namedPort(dst, pp.Name, pp.Protocol); ok {
				out = append(out, Entry{Proto: pp.Protocol, Port: port, PortBits: 16})
			}
		case pp.Port == 0:
			out = append(out, Entry{Proto: pp.Protocol})
		case pp.EndPort != 0 && pp.EndPort > pp.Port:
			for _, blk := range portBlocks(pp.Port, pp.EndPort) {
				out = append(out, Entry{Proto: pp.Protocol, Port: blk.port, PortBits: blk.bits})
			}
		case pp.EndPort != 0 && pp.EndPort < pp.Port:
			// The API rejects endPort < port; allow nothing rather than guess.
		default:
			out = append(out, Entry{Proto: pp.Protocol, Port: pp.Port, PortBits: 16})
		}
	}
	return out
}

type portBlock struct {
	port uint16
	bits uint8
}

// portBlocks covers lo..hi with the fewest aligned power-of-two blocks (at
// most 30 for any range), as a CIDR range is covered by prefixes.
func portBlocks(lo, hi uint16) []portBlock {
	var out []portBlock
	for l := uint32(lo); l <= uint32(hi); {
		size := uint32(1)
		bits := uint8(16)
		for bits > 0 {
			next := size << 1
			if l%next != 0 || l+next-1 > uint32(hi) {
				break
			}
			size, bits = next, bits-1
		}
		out = append(out, portBlock{port: uint16(l), bits: bits})
		l += size
	}
	return out
}

// Allows answers as the datapath does from a set's entries: for a peer
// with identity id at address addr, a protocol and a destination port.
// It returns whether an entry allows the flow and the rule it came from.
func (e *SetEntries) Allows(ingress bool, id Identity, addr netip.Addr, proto model.Protocol, port uint16) (bool, uint32) {
	if ingress && !e.IngressIsolated || !ingress && !e.EgressIsolated {
		return true, 0
	}
	if ref, ok := e.lookup(Entry{Ingress: ingress, Peer: uint32(id)}, proto, port); ok {
		return true, ref
	}
	best, bestBits := uint32(0), -1
	for k, g := range e.CIDRs {
		if k.Ingress == ingress && k.Prefix.Contains(addr) && k.Prefix.Bits() > bestBits {
			best, bestBits = g, k.Prefix.Bits()
		}
	}
	if best == 0 {
		return false, 0
	}
	ref, ok := e.lookup(Entry{Ingress: ingress, Peer: CIDRGroupBase | best}, proto, port)
	return ok, ref
}

// lookup is the longest-prefix match over (proto, port) for one peer.
func (e *SetEntries) lookup(k Entry, proto model.Protocol, port uint16) (uint32, bool) {
	for bits := 16; bits >= 0; bits-- {
		k.Proto, k.PortBits = proto, uint8(bits)
		k.Port = port &^ uint16(uint32(0xffff)>>bits)
		if bits == 0 {
			k.Port = 0
		}
		if ref, ok := e.Entries[k]; ok {
			return ref, true
		}
	}
	if ref, ok := e.Entries[Entry{Ingress: k.Ingress, Peer: k.Peer}]; ok {
		return ref, true
	}
	return 0, false
}
