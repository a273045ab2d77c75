package policy

import (
	"maps"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/kpath/kpath/internal/model"
)

// view is what the evaluator reads; Store implements it under its lock.
type view interface {
	Namespace(name string) *model.Namespace
	Policies(namespace string) []*compiled
}

type podEntry struct {
	pod   *model.Pod
	ident *IdentityInfo // nil for pods without an identity (hostNetwork, terminal)
}

// Store holds the cluster state policy depends on: every pod, namespace,
// NetworkPolicy and node address, and the node-local identities of the pods.
// The informers write it (it implements k8s.PolicySink); the policy
// reconciler and the evaluator read it. It records what changed since the
// reconciler last looked, so a label change touches only what it changes.
type Store struct {
	mu         sync.RWMutex
	pods       map[model.PodKey]*podEntry
	byIP       map[netip.Addr]model.PodKey
	namespaces map[string]*model.Namespace
	policies   map[string]map[string]*compiled
	nodeIPs    map[netip.Addr]string // node address -> node name
	nodeAddrs  map[string][]netip.Addr
	ids        *identities
	// hints are addresses this node gave its own pods (CNI ADD), used
	// until the pod's status reports them, so a new pod has its identity
	// in the ipcache from its first packet.
	hints map[model.PodKey]netip.Addr

	changes Changes
	notify  chan struct{}
}

// Changes is what changed since the last TakeChanges.
type Changes struct {
	// IPs whose ipcache identity may have changed.
	IPs map[netip.Addr]struct{}
	// Pods whose labels, addresses or existence changed.
	Pods map[model.PodKey]struct{}
	// Identities added or removed, and which (copies, as they were).
	Identities        bool
	ChangedIdentities []IdentityInfo
	// Namespace labels changed: which pods any rule selects.
	Selection bool
	// PolicyNamespaces are the namespaces whose NetworkPolicies changed.
	// A policy selects pods of its own namespace only, so such a change
	// touches only the policy sets that hold one of these namespaces'
	// policies and the endpoints in them.
	PolicyNamespaces map[string]struct{}
	// Since is when the first of these changes arrived.
	Since time.Time
}

func (c *Changes) any() bool {
	return len(c.IPs) > 0 || len(c.Pods) > 0 || c.Identities || c.Selection || len(c.PolicyNamespaces) > 0
}

// NewStore returns an empty store.
func NewStore() *Store {
	s := &Store{
		pods:       map[model.PodKey]*podEntry{},
		byIP:       map[netip.Addr]model.PodKey{},
		namespaces: map[string]*model.Namespace{},
		policies:   map[string]map[string]*compiled{},
		nodeIPs:    map[netip.Addr]string{},
		nodeAddrs:  map[string][]netip.Addr{},
		ids:        newIdentities(),
		hints:      map[model.PodKey]netip.Addr{},
		notify:     make(chan struct{}, 1),
	}
	s.resetChanges()
	return s
}

func (s *Store) resetChanges() {
	s.changes = Changes{IPs: map[netip.Addr]struct{}{}, Pods: map[model.PodKey]struct{}{}, PolicyNamespaces: map[string]struct{}{}}
}

func (s *Store) signal() {
	if s.changes.Since.IsZero() {
		s.changes.Since = time.Now()
	}
	select {
	case s.notify <- struct{}{}:
	default:
	}
}

// Changed is signalled (coalesced, never blocking) after every change.
func (s *Store) Changed() <-chan struct{} { return s.notify }

// TakeChanges returns what changed since the last call and forgets it.
func (s *Store) TakeChanges() Changes {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := s.changes
	s.resetChanges()
	return c
}

// hasIdentity: pods that hold their own address. hostNetwork pods are their
// node, terminal pods hold nothing.
func hasIdentity(p *model.Pod) bool {
	return !p.HostNetwork && !p.Terminal
}

// SetPod stores or (p nil) deletes a pod.
func (s *Store) SetPod(k model.PodKey, p *model.Pod) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.setPodLocked(k, p)
}

// HintIP records the address this node gave pod k, which stands in for
// the pod's status until that reports its addresses.
func (s *Store) HintIP(k model.PodKey, ip netip.Addr) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.hints[k] = ip
	if e := s.pods[k]; e != nil && len(e.pod.IPs) == 0 {
		s.setPodLocked(k, e.pod)
	}
}

func (s *Store) setPodLocked(k model.PodKey, p *model.Pod) {
	if p == nil {
		delete(s.hints, k)
	} else if ip, ok := s.hints[k]; ok {
		if len(p.IPs) == 0 {
			cp := *p
			cp.IPs = []netip.Addr{ip}
			p = &cp
		} else {
			delete(s.hints, k) // the status has it now
		}
	}
	old := s.pods[k]
	if old != nil {
		for _, ip := range old.pod.IPs {
			if s.byIP[ip] == k {
				delete(s.byIP, ip)
				s.changes.IPs[ip] = struct{}{}
			}
		}
		if old.ident != nil && s.ids.release(old.ident) {
			s.changes.Identities = true
			s.changes.ChangedIdentities = append(s.changes.ChangedIdentities, *old.ident)
		}
		delete(s.pods, k)
	}
	s.changes.Pods[k] = struct{}{}
	defer s.signal()
	if p == nil {
		return
	}
	e := &podEntry{pod: p}
	if hasIdentity(p) {
		info, added, err := s.ids.acquire(p)
		if err == nil {
			e.ident = info
			if !added {
				// The pods of an identity share its labels and named
				// ports (read-only everywhere): 100k pods of 10k
				// identities hold 10k label sets, not 100k.
				cp := *p
				cp.Labels, cp.NamedPorts = info.Labels, info.NamedPorts
				e.pod = &cp
			}
			if added {
				s.changes.Identities = true
				s.changes.ChangedIdentities = append(s.changes.ChangedIdentities, *info)
			}
		}
		// Without an identity the pod's IPs stay out of the ipcache: its
		// traffic is "world", which no selector allows.
		for _, ip := range p.IPs {
			s.byIP[ip] = k
			s.changes.IPs[ip] = struct{}{}
		}
	}
	s.pods[k] = e
}

// SetNamespace stores or (n nil) deletes a namespace.
func (s *Store) SetNamespace(name string, n *model.Namespace) {
	s.mu.Lock()
	defer s.mu.Unlock()
	old := s.namespaces[name]
	if n == nil {
		delete(s.namespaces, name)
	} else {
		s.namespaces[name] = n
	}
	if old == nil || n == nil || !maps.Equal(old.Labels, n.Labels) {
		s.changes.Selection = true
		s.signal()
	}
}

// SetPolicy stores or (p nil) deletes a NetworkPolicy.
func (s *Store) SetPolicy(k model.PolicyKey, p *model.NetworkPolicy) {
	s.mu.Lock()
	defer s.mu.Unlock()
	m := s.policies[k.Namespace]
	if p == nil {
		delete(m, k.Name)
		if len(m) == 0 {
			delete(s.policies, k.Namespace)
		}
	} else {
		if m == nil {
			m = map[string]*compiled{}
			s.policies[k.Namespace] = m
		}
		if p.Key != k {
			cp := *p
			cp.Key = k
			p = &cp
		}
		m[k.Name] = compilePolicy(p)
	}
	s.changes.PolicyNamespaces[k.Namespace] = struct{}{}
	s.signal()
}

// SetNode stores or (addrs nil) deletes a node's addresses.
func (s *Store) SetNode(name string, addrs []netip.Addr) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if slices.Equal(s.nodeAddrs[name], addrs) && (addrs != nil) == (s.nodeAddrs[name] != nil) {
		return
	}
	for _, a := range s.nodeAddrs[name] {
		if s.nodeIPs[a] == name {
			delete(s.nodeIPs, a)
			s.changes.IPs[a] = struct{}{}
		}
	}
	delete(s.nodeAddrs, name)
	if addrs != nil {
		s.nodeAddrs[name] = addrs
		for _, a := range addrs {
			s.nodeIPs[a] = name
			s.changes.IPs[a] = struct{}{}
		}
	}
	s.signal()
}

// Namespace returns a namespace (nil: unknown). Callers hold the lock.
func (s *Store) Namespace(name string) *model.Namespace { return s.namespaces[name] }

// Policies returns a namespace's policies in name order. Callers hold the lock.
func (s *Store) Policies(namespace string) []*compiled {
	m := s.policies[namespace]
	out := make([]*compiled, 0, len(m))
	for _, k := range slices.Sorted(maps.Keys(m)) {
		out = append(out, m[k])
	}
	return out
}

// peerLocked resolves an address to what policy sees there.
func (s *Store) peerLocked(ip netip.Addr) Peer {
	if k, ok := s.byIP[ip]; ok {
		return Peer{IP: ip, Pod: s.pods[k].pod}
	}
	if n, ok := s.nodeIPs[ip]; ok {
		return Peer{IP: ip, Node: n}
	}
	return Peer{IP: ip}
}

// Peer resolves an address to a pod, a node or neither.
func (s *Store) Peer(ip netip.Addr) Peer {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.peerLocked(ip)
}

// Pod returns a pod, or nil.
func (s *Store) Pod(k model.PodKey) *model.Pod {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if e := s.pods[k]; e != nil {
		return e.pod
	}
	return nil
}

// Evaluate decides a flow with the reference evaluator.
func (s *Store) Evaluate(f Flow) Verdict {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return evaluate(s, f)
}

// EvaluateIPs resolves both addresses, then evaluates.
func (s *Store) EvaluateIPs(src, dst netip.Addr, proto model.Protocol, port uint16) Verdict {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return evaluate(s, Flow{Src: s.peerLocked(src), Dst: s.peerLocked(dst), Proto: proto, Port: port})
}

// Identities lists every identity in use, by number.
func (s *Store) Identities() []IdentityInfo {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := make([]IdentityInfo, 0, len(s.ids.byID))
	for _, id := range slices.Sorted(maps.Keys(s.ids.byID)) {
		out = append(out, *s.ids.byID[id])
	}
	return out
}

// IdentityCount is how many pod identities are in use.
func (s *Store) IdentityCount() int {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return len(s.ids.byID)
}

// Counts reports pods, namespaces, policies and identities held.
func (s *Store) Counts() (pods, namespaces, policies, identities int) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	for _, m := range s.policies {
		policies += len(m)
	}
	return len(s.pods), len(s.namespaces), policies, len(s.ids.byID)
}

// IdentityOf is the identity the datapath's ipcache gives ip on node
// localNode: a pod's identity, host for localNode's own addresses,
// remote-node for other nodes', world for anything else.
func (s *Store) IdentityOf(ip netip.Addr, localNode string) Identity {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.identityOfLocked(ip, localNode)
}

func (s *Store) identityOfLocked(ip netip.Addr, localNode string) Identity {
	if k, ok := s.byIP[ip]; ok {
		if e := s.pods[k]; e.ident != nil {
			return e.ident.ID
		}
		return IdentityWorld
	}
	if n, ok := s.nodeIPs[ip]; ok {
		if n == localNode {
			return IdentityHost
		}
		return IdentityRemoteNode
	}
	return IdentityWorld
}

// IPCacheEntries is the whole ipcache as node localNode must hold it:
// every pod address with an identity and every node address. Addresses
// that are world are left out (a miss is world).
func (s *Store) IPCacheEntries(localNode string) map[netip.Addr]Identity {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := make(map[netip.Addr]Identity, len(s.byIP)+len(s.nodeIPs))
	for ip := range s.byIP {
		if id := s.identityOfLocked(ip, localNode); id != IdentityWorld {
			out[ip] = id
		}
	}
	for ip := range s.nodeIPs {
		out[ip] = s.identityOfLocked(ip, localNode)
	}
	return out
}

// Describe resolves an address and its ipcache identity under one lock
// (the flow path asks both for every event).
func (s *Store) Describe(ip netip.Addr, localNode string) (Peer, Identity) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.peerLocked(ip), s.identityOfLocked(ip, localNode)
}
