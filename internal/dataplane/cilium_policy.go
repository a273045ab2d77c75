package dataplane

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"sync"

	"github.com/cilium/ebpf"
)

// Cilium's policy decisions, read from its pinned maps as its programs
// read them (v1.20's layouts, pkg/maps/ipcache and pkg/maps/policymap):
// the peer's identity from the ipcache (an LPM trie), then the local
// endpoint's policy map (an LPM trie per endpoint) for that identity,
// direction, protocol and port.

// ciliumPolicy holds the node's ipcache and, once looked at, each local
// endpoint's policy map, opened read-only through the agent's root.
type ciliumPolicy struct {
	root    string                // /proc/<agent pid>/root
	eps     map[netip.Addr]uint16 // local endpoint address -> endpoint ID
	ipcache *ebpf.Map

	mu       sync.Mutex
	policies map[uint16]*ebpf.Map
}

func (d cilium) OpenPolicy(ctx context.Context, n Node) (PolicyView, error) {
	pid := d.Agent(n).Pid()
	if pid == 0 {
		return nil, fmt.Errorf("no cilium-agent on %s", n.Name)
	}
	out, err := d.dbg(n, "endpoint", "list", "-o", "json").Output()
	if err != nil {
		return nil, fmt.Errorf("cilium-dbg endpoint list on %s: %w", n.Name, err)
	}
	var eps []struct {
		ID     uint16 `json:"id"`
		Status struct {
			Networking struct {
				Addressing []struct {
					IPv4 string `json:"ipv4"`
				} `json:"addressing"`
			} `json:"networking"`
		} `json:"status"`
	}
	if err := json.Unmarshal(out, &eps); err != nil {
		return nil, fmt.Errorf("cilium-dbg endpoint list on %s: %w", n.Name, err)
	}
	p := &ciliumPolicy{root: fmt.Sprintf("/proc/%d/root", pid), eps: map[netip.Addr]uint16{}, policies: map[uint16]*ebpf.Map{}}
	for _, ep := range eps {
		for _, a := range ep.Status.Networking.Addressing {
			if ip, err := netip.ParseAddr(a.IPv4); err == nil {
				p.eps[ip] = ep.ID
			}
		}
	}
	if p.ipcache, err = ebpf.LoadPinnedMap(p.root+ciliumIPCache, &ebpf.LoadPinOptions{ReadOnly: true}); err != nil {
		return nil, fmt.Errorf("cilium's ipcache on %s: %w", n.Name, err)
	}
	return p, nil
}

// ciliumPolicyPrefix is the policy key's full prefix: identity (32 bits),
// direction (8), protocol (8), port (16).
const ciliumPolicyPrefix = 64

// ciliumDenyFlag marks a deny entry (policyFlagDeny, the value's third
// byte).
const ciliumDenyFlag = 1

func (p *ciliumPolicy) AllowedIn(local, peer netip.Addr, port uint16) (bool, error) {
	id, ok := p.eps[local]
	if !ok {
		return false, fmt.Errorf("%s is no endpoint of the node's cilium-agent", local)
	}
	identity, err := p.identity(peer)
	if err != nil {
		return false, err
	}
	m, err := p.policy(id)
	if err != nil {
		return false, err
	}
	// struct policy_key { lpm prefixlen; sec_label; egress; protocol;
	// dport (network order) }, the prefix length in host order.
	key := make([]byte, 12)
	binary.NativeEndian.PutUint32(key[0:], ciliumPolicyPrefix)
	binary.NativeEndian.PutUint32(key[4:], identity)
	key[8], key[9] = 0, 6 // ingress, TCP
	binary.BigEndian.PutUint16(key[10:], port)
	val := make([]byte, m.ValueSize())
	if err := m.Lookup(key, &val); err != nil {
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return false, nil
		}
		return false, fmt.Errorf("cilium policy map of endpoint %d: %w", id, err)
	}
	return val[2]&ciliumDenyFlag == 0, nil
}

// identity is the peer's security identity in the ipcache (world's when
// only the default route matches).
func (p *ciliumPolicy) identity(peer netip.Addr) (uint32, error) {
	// struct ipcache_key { lpm prefixlen; cluster_id; pad1; family
	// (1: IPv4); 16 address bytes }: 32 static bits and the address's.
	key := make([]byte, 24)
	binary.NativeEndian.PutUint32(key[0:], 32+32)
	key[7] = 1
	a := peer.As4()
	copy(key[8:], a[:])
	val := make([]byte, p.ipcache.ValueSize())
	if err := p.ipcache.Lookup(key, &val); err != nil {
		return 0, fmt.Errorf("cilium ipcache lookup of %s: %w", peer, err)
	}
	return binary.NativeEndian.Uint32(val[0:4]), nil
}

// policy is endpoint id's policy map, opened the first time.
func (p *ciliumPolicy) policy(id uint16) (*ebpf.Map, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if m := p.policies[id]; m != nil {
		return m, nil
	}
	m, err := ebpf.LoadPinnedMap(fmt.Sprintf("%s%scilium_policy_v3_%05d", p.root, ciliumGlobals, id), &ebpf.LoadPinOptions{ReadOnly: true})
	if err != nil {
		return nil, fmt.Errorf("cilium policy map of endpoint %d: %w", id, err)
	}
	p.policies[id] = m
	return m, nil
}

func (p *ciliumPolicy) Close() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	errs := []error{p.ipcache.Close()}
	for _, m := range p.policies {
		errs = append(errs, m.Close())
	}
	return errors.Join(errs...)
}
