// Package policysync keeps the datapath's policy maps equal to what
// internal/policy computes from the cluster: the ipcache, this node's
// endpoints and the entries of their policy sets. It is the only writer of
// those maps.
//
// Every change is applied so that no packet sees more than the new policy
// allows and no allowed flow is cut: a new set's entries are written
// before an endpoint points at it; within a set, entries are removed
// before new ones are added; the policy revision moves last, which makes
// every established connection be decided again. A set that would not fit
// is not written: its endpoints keep their last good set (a new endpoint
// stays isolated with nothing allowed), and the error is reported on them.
package policysync

import (
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/kpath/kpath/internal/datapath"
	"github.com/kpath/kpath/internal/model"
	"github.com/kpath/kpath/internal/policy"
)

// DenyAllSet is the set of an endpoint whose pod is not known yet: it holds
// no entries, so only the node and the pod itself reach it.
const DenyAllSet uint32 = 0

// Datapath is what the syncer needs of internal/datapath.
type Datapath interface {
	SetIPCache(ip netip.Addr, id uint32) error
	DeleteIPCache(ip netip.Addr) error
	IPCache() (map[netip.Addr]uint32, error)
	SetEndpoint(ip netip.Addr, e datapath.Endpoint) error
	DeleteEndpoint(ip netip.Addr) error
	Endpoints() (map[netip.Addr]datapath.Endpoint, error)
	ApplyPolicy(changes []datapath.PolicyChange) error
	PolicyEntries() (map[uint32]map[policy.Entry]uint32, map[uint32]map[policy.CIDREntry]uint32, error)
	PolicyRevision() (uint32, error)
	BumpPolicyRevision() (uint32, error)
}

// Capacity bounds what the syncer writes: the sizes of the policy maps.
type Capacity struct {
	Entries, CIDRs, Endpoints, IPCache int
}

// set is a policy set as written to the datapath.
type set struct {
	id      uint32
	key     string
	ps      policy.PolicySet
	entries *policy.SetEntries
	users   int
	err     string // why the set's latest entries could not be written
}

// EndpointStatus is a local endpoint as `kpath policy list` shows it.
type EndpointStatus struct {
	IP       netip.Addr      `json:"ip"`
	Pod      model.PodKey    `json:"pod"`
	Known    bool            `json:"known"` // the pod is in the API's view
	Identity policy.Identity `json:"identity"`
	Set      uint32          `json:"set"`
	// Ingress and Egress are the policies selecting the pod.
	Ingress         []model.PolicyKey `json:"ingress,omitempty"`
	Egress          []model.PolicyKey `json:"egress,omitempty"`
	IngressIsolated bool              `json:"ingressIsolated"`
	EgressIsolated  bool              `json:"egressIsolated"`
	Entries         int               `json:"entries"`
	Error           string            `json:"error,omitempty"`
}

type endpoint struct {
	pod    model.PodKey
	set    *set // nil: DenyAllSet
	status EndpointStatus
}

// Syncer applies the store's policy to the datapath for one node.
type Syncer struct {
	store *policy.Store
	dp    Datapath
	node  string
	cap   Capacity
	log   *slog.Logger
	m     *Metrics
	onErr func(model.PodKey, error)
	gone  func(netip.Addr)

	mu        sync.Mutex
	endpoints map[netip.Addr]*endpoint
	sets      map[string]*set
	byID      map[uint32]*set
	nextID    uint32
	ipcache   map[netip.Addr]uint32 // as written
	written   map[netip.Addr]datapath.Endpoint
	orphans   map[uint32]struct{} // sets in the maps that no endpoint uses
	// adopt holds the sets found in the maps at start, by ID, until the
	// first sync matches them to what is desired.
	adopt        map[uint32]*policy.SetEntries
	entries      int
	cidrs        int
	synced       bool
	restored     bool // Restore ran: the endpoints are this node's whole list
	lastRevision uint32
}

// Options configure a Syncer.
type Options struct {
	Node     string
	Capacity Capacity
	Log      *slog.Logger
	Metrics  *Metrics
	// OnError is told when an endpoint's policy could not be applied (the
	// agent records a Kubernetes Event on the pod). Called with the
	// syncer's lock held: it must not call back into the syncer.
	OnError func(pod model.PodKey, err error)
	// AddressGone is told when an address leaves the ipcache (its pod is
	// gone, on this node or another): the agent flushes its connection
	// entries. Called with the syncer's lock held.
	AddressGone func(netip.Addr)
}

// New reads what the datapath holds (pinned maps survive the agent) and
// returns a syncer that changes nothing until Sync.
func New(store *policy.Store, dp Datapath, o Options) (*Syncer, error) {
	s := &Syncer{
		store: store, dp: dp, node: o.Node, cap: o.Capacity, log: o.Log, m: o.Metrics, onErr: o.OnError, gone: o.AddressGone,
		endpoints: map[netip.Addr]*endpoint{}, sets: map[string]*set{}, byID: map[uint32]*set{},
		orphans: map[uint32]struct{}{}, adopt: map[uint32]*policy.SetEntries{}, nextID: 1,
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	if s.onErr == nil {
		s.onErr = func(model.PodKey, error) {}
	}
	if s.gone == nil {
		s.gone = func(netip.Addr) {}
	}
	var err error
	if s.ipcache, err = dp.IPCache(); err != nil {
		return nil, err
	}
	if s.written, err = dp.Endpoints(); err != nil {
		return nil, err
	}
	entries, cidrs, err := dp.PolicyEntries()
	if err != nil {
		return nil, err
	}
	for id := range entries {
		s.adoptable(id).Entries = entries[id]
	}
	for id := range cidrs {
		s.adoptable(id).CIDRs = cidrs[id]
	}
	for id, e := range s.adopt {
		s.entries += len(e.Entries)
		s.cidrs += len(e.CIDRs)
		s.nextID = max(s.nextID, id+1)
	}
	for _, e := range s.written {
		s.nextID = max(s.nextID, e.Set+1)
	}
	// The maps are as they were left: nothing to re-decide until a change.
	if s.lastRevision, err = dp.PolicyRevision(); err != nil {
		return nil, err
	}
	return s, nil
}

func (s *Syncer) adoptable(id uint32) *policy.SetEntries {
	e := s.adopt[id]
	if e == nil {
		e = &policy.SetEntries{Entries: map[policy.Entry]uint32{}, CIDRs: map[policy.CIDREntry]uint32{}}
		s.adopt[id] = e
	}
	return e
}

// Register puts a pod of this node under policy before its workload runs
// (CNI ADD). The pod's set is written and the endpoint points at it when
// Register returns; a pod the store does not know yet is isolated with
// nothing allowed until it is.
func (s *Syncer) Register(ip netip.Addr, pod model.PodKey) error {
	if !ip.Is4() {
		return fmt.Errorf("endpoint %s of %s: only IPv4 is supported", ip, pod)
	}
	s.store.HintIP(pod, ip)
	s.mu.Lock()
	defer s.mu.Unlock()
	if id := s.store.IdentityOf(ip, s.node); id != policy.IdentityWorld {
		if err := s.setIPCache(ip, id); err != nil {
			return err
		}
	}
	if old, ok := s.endpoints[ip]; ok && old.pod != pod {
		s.log.Warn("endpoint address reused: the old pod's registration is replaced", "ip", ip, "old", old.pod, "new", pod)
	}
	s.endpoints[ip] = &endpoint{pod: pod}
	err := s.syncEndpointLocked(ip)
	if _, berr := s.bumpLocked(); berr != nil && err == nil {
		err = berr
	}
	return err
}

// Unregister takes an endpoint out of policy (CNI DEL).
func (s *Syncer) Unregister(ip netip.Addr) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	ep, ok := s.endpoints[ip]
	if !ok {
		return nil
	}
	delete(s.endpoints, ip)
	if err := s.dp.DeleteEndpoint(ip); err != nil {
		return err
	}
	delete(s.written, ip)
	s.release(ep.set)
	return s.pruneLocked()
}

// Restore registers the endpoints the node already has (from IPAM, at
// start) without writing anything: the next Sync brings them up to date.
// Until Restore has run, endpoints the maps hold and the syncer does not
// know are left as they are (never opened by a sync that knows less).
func (s *Syncer) Restore(eps map[netip.Addr]model.PodKey) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for ip, pod := range eps {
		if _, ok := s.endpoints[ip]; !ok {
			s.endpoints[ip] = &endpoint{pod: pod}
		}
	}
	s.restored = true
}

// Synced reports whether a full sync has completed.
func (s *Syncer) Synced() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.synced
}

// Sync applies every change the store recorded since the last Sync; full
// recomputes everything and prunes what the maps hold beyond it.
func (s *Syncer) Sync(full bool) error {
	start := time.Now()
	changes := s.store.TakeChanges()
	s.mu.Lock()
	defer s.mu.Unlock()
	// Only failures are kept: a full sync of 100k addresses would
	// otherwise gather 100k nil errors.
	var errs []error
	fail := func(err error) {
		if err != nil {
			errs = append(errs, err)
		}
	}
	if !s.synced {
		full = true
	}
	// The ipcache: changed addresses, or all of them.
	if full {
		desired := s.store.IPCacheEntries(s.node)
		for ip := range s.ipcache {
			if _, ok := desired[ip]; !ok {
				fail(s.setIPCache(ip, policy.IdentityWorld))
			}
		}
		for ip, id := range desired {
			fail(s.setIPCache(ip, id))
		}
	} else {
		for ip := range changes.IPs {
			fail(s.setIPCache(ip, s.store.IdentityOf(ip, s.node)))
		}
	}
	// A set depends on which policies select what (recompiled on any such
	// change), on the identities its selector peers select (recompiled
	// when one of those comes or goes) and, with egress named ports on
	// ipBlocks, on pod addresses. A relabel onto an existing identity
	// changes none of them: only the ipcache.
	all := full || changes.Selection
	podIPs := len(changes.IPs) > 0
	for _, st := range s.sets {
		if all || podIPs && needsPodIPs(st) || holdsPolicyOf(st.ps, changes.PolicyNamespaces) ||
			changes.Identities && s.store.SetSelectsAny(st.ps, changes.ChangedIdentities) {
			if err := s.recompileLocked(st); err != nil {
				errs = append(errs, err)
			}
		}
	}
	// An endpoint's set changes with its own pod and with the policies of
	// its namespace (the only ones that can select it).
	for ip, ep := range s.endpoints {
		if _, ok := changes.PolicyNamespaces[ep.pod.Namespace]; all || ok || changedPod(changes, ep.pod) {
			fail(s.syncEndpointLocked(ip))
		}
	}
	if full && s.restored {
		// Endpoints in the maps that are not this node's pods any more.
		for ip := range s.written {
			if _, ok := s.endpoints[ip]; !ok {
				if err := s.dp.DeleteEndpoint(ip); err != nil {
					errs = append(errs, err)
					continue
				}
				delete(s.written, ip)
			}
		}
	}
	fail(s.pruneLocked())
	if _, err := s.bumpLocked(); err != nil {
		errs = append(errs, err)
	}
	err := errors.Join(errs...)
	if err == nil {
		s.synced = true
	}
	if !changes.Since.IsZero() {
		s.m.observeEnforced(time.Since(changes.Since))
	}
	s.m.observeSync(time.Since(start), s)
	return err
}

// holdsPolicyOf: the set holds a policy of one of the namespaces.
func holdsPolicyOf(ps policy.PolicySet, namespaces map[string]struct{}) bool {
	if len(namespaces) == 0 {
		return false
	}
	for _, keys := range [][]model.PolicyKey{ps.Ingress, ps.Egress} {
		for _, k := range keys {
			if _, ok := namespaces[k.Namespace]; ok {
				return true
			}
		}
	}
	return false
}

func changedPod(c policy.Changes, k model.PodKey) bool {
	_, ok := c.Pods[k]
	return ok
}

// needsPodIPs: a set with an egress named port on an ipBlock peer (or on a
// rule without peers) has a prefix per pod address where the name
// resolves, so pod addresses changing may change it.
func needsPodIPs(st *set) bool {
	return st.entries.NeedsPodIPs
}

func (s *Syncer) setIPCache(ip netip.Addr, id policy.Identity) error {
	old, ok := s.ipcache[ip]
	if id == policy.IdentityWorld {
		if !ok {
			return nil
		}
		if err := s.dp.DeleteIPCache(ip); err != nil {
			return err
		}
		delete(s.ipcache, ip)
		s.gone(ip)
		s.dirty()
		return nil
	}
	if ok && old == uint32(id) {
		return nil
	}
	if !ok && s.cap.IPCache > 0 && len(s.ipcache) >= s.cap.IPCache {
		return fmt.Errorf("ipcache full (%d addresses): %s stays world (raise mapSizes.ipcache)", s.cap.IPCache, ip)
	}
	if err := s.dp.SetIPCache(ip, uint32(id)); err != nil {
		return err
	}
	s.ipcache[ip] = uint32(id)
	s.dirty()
	return nil
}

// dirty notes that the maps changed, so the revision must move.
func (s *Syncer) dirty() { s.lastRevision = 0 }

func (s *Syncer) bumpLocked() (uint32, error) {
	if s.lastRevision != 0 {
		return s.lastRevision, nil
	}
	rev, err := s.dp.BumpPolicyRevision()
	if err != nil {
		return 0, err
	}
	s.lastRevision = rev
	return rev, nil
}

// syncEndpointLocked points one endpoint at its desired set, writing the
// set first if it is new.
func (s *Syncer) syncEndpointLocked(ip netip.Addr) error {
	ep := s.endpoints[ip]
	pod := s.store.Pod(ep.pod)
	st := EndpointStatus{IP: ip, Pod: ep.pod, Known: pod != nil}
	want := datapath.Endpoint{Set: DenyAllSet, IngressIsolated: true, EgressIsolated: true}
	var next *set
	var err error
	if pod != nil {
		ps := s.store.SetOf(pod)
		st.Identity = s.store.IdentityOf(ip, s.node)
		st.Ingress, st.Egress = ps.Ingress, ps.Egress
		next, err = s.acquire(ps)
		switch {
		case err == nil:
			want = datapath.Endpoint{Set: next.id, IngressIsolated: next.entries.IngressIsolated, EgressIsolated: next.entries.EgressIsolated}
			st.Entries = len(next.entries.Entries)
			st.Error = next.err
		case ep.set != nil:
			// Keep the last good set: never fail open, never empty.
			st.Error = err.Error()
			ep.status = st
			ep.status.Set = ep.set.id
			s.m.endpointError()
			s.onErr(ep.pod, err)
			s.log.Error("policy set not applied; the endpoint keeps its last good policy", "pod", ep.pod, "error", err)
			return fmt.Errorf("endpoint %s: %w", ep.pod, err)
		default:
			st.Error = err.Error()
			s.m.endpointError()
			s.onErr(ep.pod, err)
			s.log.Error("policy set not applied; the endpoint allows nothing until it can be", "pod", ep.pod, "error", err)
		}
	}
	want.Identity = uint32(st.Identity)
	st.Set, st.IngressIsolated, st.EgressIsolated = want.Set, want.IngressIsolated, want.EgressIsolated
	if cur, ok := s.written[ip]; !ok || cur != want {
		if werr := s.dp.SetEndpoint(ip, want); werr != nil {
			s.release(next)
			return fmt.Errorf("endpoint %s: %w", ep.pod, werr)
		}
		s.written[ip] = want
		s.dirty()
	}
	s.release(ep.set)
	ep.set = next
	ep.status = st
	if err != nil {
		return fmt.Errorf("endpoint %s: %w", ep.pod, err)
	}
	return nil
}

// Endpoints lists the local endpoints with their policy, by address.
func (s *Syncer) Endpoints() []EndpointStatus {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]EndpointStatus, 0, len(s.endpoints))
	for _, ip := range slices.SortedFunc(maps.Keys(s.endpoints), netip.Addr.Compare) {
		ep := s.endpoints[ip]
		st := ep.status
		// The set's entries move with identities without the endpoint
		// being revisited: read them now.
		if ep.set != nil && st.Set == ep.set.id {
			st.Entries = len(ep.set.entries.Entries)
			if ep.set.err != "" {
				st.Error = ep.set.err
			}
		}
		out = append(out, st)
	}
	return out
}

// SetPolicies returns the policies of set id for a direction (the ones
// that isolate its endpoints there), to name them on a denial.
func (s *Syncer) SetPolicies(id uint32, ingress bool) []model.PolicyKey {
	s.mu.Lock()
	defer s.mu.Unlock()
	if st := s.byID[id]; st != nil {
		if ingress {
			return st.ps.Ingress
		}
		return st.ps.Egress
	}
	return nil
}

// SetRules returns the rules of set id, to name the rule an entry allowed.
func (s *Syncer) SetRules(id uint32) []policy.RuleRef {
	s.mu.Lock()
	defer s.mu.Unlock()
	if st := s.byID[id]; st != nil {
		return st.entries.Rules
	}
	return nil
}

// Stats are the syncer's totals.
type Stats struct {
	Endpoints, Sets, Entries, CIDRs, IPCache int
}

// Stats reports what the syncer has written.
func (s *Syncer) Stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.statsLocked()
}

func (s *Syncer) statsLocked() Stats {
	return Stats{Endpoints: len(s.endpoints), Sets: len(s.sets), Entries: s.entries, CIDRs: s.cidrs, IPCache: len(s.ipcache)}
}
