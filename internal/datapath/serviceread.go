package datapath

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"time"

	"github.com/cilium/ebpf"

	"github.com/kpath/kpath/internal/model"
)

// What the service maps hold, read back: for the agent's API and kpath dp,
// and to rebuild this process's service state over pinned maps at start.

// ServiceInfo is a frontend as the maps hold it.
type ServiceInfo struct {
	ID        uint32            `json:"id"`
	Frontend  model.FrontendKey `json:"-"`
	Name      string            `json:"frontend"`
	External  bool              `json:"external,omitempty"`
	Selection string            `json:"selection"`
	Affinity  time.Duration     `json:"-"`
	// AffinitySeconds is Affinity for JSON readers; 0 when off.
	AffinitySeconds int64         `json:"affinity_seconds,omitempty"`
	Backends        []BackendInfo `json:"backends"`
	// SourceRanges are the sources new connections are admitted from
	// (loadBalancerSourceRanges); none: every source.
	SourceRanges []netip.Prefix `json:"source_ranges,omitempty"`
	// SourceNode: the node's own sockets are admitted too.
	SourceNode bool `json:"source_node,omitempty"`
}

// BackendInfo is one backend slot of a frontend.
type BackendInfo struct {
	ID      uint32       `json:"id"`
	Backend model.L4Addr `json:"-"`
	Name    string       `json:"backend"`
}

// Services reads every frontend and its backends from the maps (not from
// this process's memory), sorted by frontend.
func (d *Datapath) Services() ([]ServiceInfo, error) {
	var (
		k   kpathLbFrontendKey
		v   kpathLbFrontend
		out []ServiceInfo
	)
	it := d.objs.KpLbFrontend.Iterate()
	for it.Next(&k, &v) {
		si, err := d.serviceInfo(frontendFromKey(k), v)
		if err != nil {
			return nil, err
		}
		out = append(out, si)
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("iterate frontends: %w", err)
	}
	slices.SortFunc(out, func(a, b ServiceInfo) int { return compareKeys(a.Frontend, b.Frontend) })
	return out, nil
}

// restoreServices rebuilds the service state from the pinned maps, so IDs
// stay what they were before a restart, and prunes entries nothing owns
// (left by an update or delete that failed half way).
func (d *Datapath) restoreServices() error {
	st := newServiceState(d.cfg.Sizes)
	m := &d.objs

	var (
		bid  uint32
		bv   kpathLbBackend
		byID = map[uint32]model.L4Addr{}
	)
	it := m.KpLbBackend.Iterate()
	for it.Next(&bid, &bv) {
		b := backendFromValue(bv)
		if err := st.beIDs.Reserve(bid); err != nil {
			return fmt.Errorf("backend %s: %w", b, err)
		}
		if old, dup := st.backends[backendKeyOf(b)]; dup {
			// The same backend under two IDs (a failed delete, then a new
			// one): slots naming the stale ID are rewritten, it is pruned.
			byID[old.id] = b
		}
		st.backends[backendKeyOf(b)] = backendState{id: bid}
		byID[bid] = b
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("iterate backends: %w", err)
	}

	var (
		fk kpathLbFrontendKey
		fv kpathLbFrontend
	)
	byFEID := map[uint32]*frontendState{}
	ranges, err := d.sourceRanges()
	if err != nil {
		return err
	}
	it = m.KpLbFrontend.Iterate()
	for it.Next(&fk, &fv) {
		key := frontendFromKey(fk)
		svc := model.Service{Frontend: key.L4Addr, External: key.External}
		if fv.Flags&uint16(kpathLbFlagsLB_F_MAGLEV) != 0 {
			svc.Selection = model.SelectMaglev
		}
		if fv.Flags&uint16(kpathLbFlagsLB_F_AFFINITY) != 0 {
			svc.Affinity = time.Duration(fv.AffinityTimeout) * time.Second
		}
		if fv.Flags&uint16(kpathLbFlagsLB_F_SRC_RANGES) != 0 {
			svc.SourceRanges = ranges[fv.Id]
			svc.SourceNode = fv.Flags&uint16(kpathLbFlagsLB_F_SRC_NODE) != 0
		}
		fe := &frontendState{id: fv.Id, slotHigh: int(fv.Count)}
		for slot := range uint32(fv.Count) {
			var id uint32
			if err := m.KpLbSlot.Lookup(kpathLbSlotKey{Id: fv.Id, Slot: slot}, &id); err != nil {
				fe.dirty = true
				continue
			}
			b, ok := byID[id]
			if !ok || st.backends[backendKeyOf(b)].id != id {
				fe.dirty = true
				continue
			}
			fe.backendIDs = append(fe.backendIDs, id)
			svc.Backends = append(svc.Backends, b)
		}
		if !slices.IsSortedFunc(svc.Backends, compareL4) {
			// Slots an update left half written: the frontend is rewritten
			// whole; its backends are held in canonical order meanwhile.
			fe.dirty = true
			slices.SortFunc(svc.Backends, compareL4)
		}
		fe.svc = svc
		fe.held(func(b model.L4Addr) {
			bs := st.backends[backendKeyOf(b)]
			bs.refs++
			st.backends[backendKeyOf(b)] = bs
		})
		if err := st.feIDs.Reserve(fv.Id); err != nil {
			return fmt.Errorf("frontend %s: %w", key, err)
		}
		if svc.Selection == model.SelectMaglev && len(svc.Backends) > 0 && !d.maglevTablePresent(fv.Id) {
			fe.dirty = true
		}
		st.frontends[key] = fe
		byFEID[fv.Id] = fe
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("iterate frontends: %w", err)
	}
	d.svc = st

	// Prune what no frontend owns.
	var (
		sk    kpathLbSlotKey
		sv    uint32
		slots []kpathLbSlotKey
	)
	it = m.KpLbSlot.Iterate()
	for it.Next(&sk, &sv) {
		if fe := byFEID[sk.Id]; fe == nil || int(sk.Slot) >= fe.slotHigh {
			slots = append(slots, sk)
		}
	}
	for _, k := range slots {
		_ = m.KpLbSlot.Delete(k)
	}
	d.pruneSourceRanges(ranges, byFEID)
	for _, mp := range []*ebpf.Map{m.KpLbRevnat, m.KpLbMaglev} {
		ids, err := keys32(mp)
		if err != nil {
			return err
		}
		var dead []uint32
		for _, id := range ids {
			if byFEID[id] == nil {
				dead = append(dead, id)
			}
		}
		for _, id := range dead {
			_ = mp.Delete(id)
		}
	}
	for id, b := range byID {
		if st.backends[backendKeyOf(b)].id != id {
			_ = m.KpLbBackend.Delete(id)
			st.beIDs.Release(id)
		}
	}
	for k, bs := range st.backends {
		if bs.refs == 0 {
			_ = m.KpLbBackend.Delete(bs.id)
			delete(st.backends, k)
			st.beIDs.Release(bs.id)
		}
	}
	return nil
}

// maglevTablePresent reports whether frontend id has a table of the
// configured size.
func (d *Datapath) maglevTablePresent(id uint32) bool {
	var innerID ebpf.MapID
	if err := d.objs.KpLbMaglev.Lookup(id, &innerID); err != nil {
		return false
	}
	inner, err := ebpf.NewMapFromID(innerID)
	if err != nil {
		return false
	}
	defer inner.Close()
	return inner.MaxEntries() == d.cfg.MaglevTableSize
}

// keys32 lists the keys of a map keyed by uint32, whatever its values.
func keys32(m *ebpf.Map) ([]uint32, error) {
	var (
		out  []uint32
		prev any
		next uint32
	)
	for {
		err := m.NextKey(prev, &next)
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return out, nil
		}
		if err != nil {
			return nil, fmt.Errorf("list keys of %s: %w", m, err)
		}
		out = append(out, next)
		prev = next
	}
}

// Frontends lists the frontends in the frontend map.
func (d *Datapath) Frontends() ([]model.FrontendKey, error) {
	var (
		k   kpathLbFrontendKey
		v   kpathLbFrontend
		out []model.FrontendKey
	)
	it := d.objs.KpLbFrontend.Iterate()
	for it.Next(&k, &v) {
		out = append(out, frontendFromKey(k))
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("iterate frontends: %w", err)
	}
	return out, nil
}

// Service reads one frontend and its backends from the maps.
func (d *Datapath) Service(frontend model.FrontendKey) (ServiceInfo, bool, error) {
	var v kpathLbFrontend
	if err := d.objs.KpLbFrontend.Lookup(frontendKey(frontend), &v); err != nil {
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return ServiceInfo{}, false, nil
		}
		return ServiceInfo{}, false, fmt.Errorf("look up frontend %s: %w", frontend, err)
	}
	si, err := d.serviceInfo(frontend, v)
	return si, true, err
}

// serviceInfo reads the backends of frontend fe, whose map value is v.
func (d *Datapath) serviceInfo(fe model.FrontendKey, v kpathLbFrontend) (ServiceInfo, error) {
	si := ServiceInfo{ID: v.Id, Frontend: fe, Name: fe.String(), External: fe.External, Selection: model.SelectRandom.String(), Backends: []BackendInfo{}}
	if v.Flags&uint16(kpathLbFlagsLB_F_MAGLEV) != 0 {
		si.Selection = model.SelectMaglev.String()
	}
	if v.Flags&uint16(kpathLbFlagsLB_F_AFFINITY) != 0 {
		si.Affinity = time.Duration(v.AffinityTimeout) * time.Second
		si.AffinitySeconds = int64(v.AffinityTimeout)
	}
	if v.Flags&uint16(kpathLbFlagsLB_F_SRC_RANGES) != 0 {
		si.SourceNode = v.Flags&uint16(kpathLbFlagsLB_F_SRC_NODE) != 0
		var (
			k  kpathLbSrcRangeKey
			rv uint8
		)
		it := d.objs.KpLbSrcRange.Iterate()
		for it.Next(&k, &rv) {
			if id, p := srcRangeFromKey(k); id == v.Id {
				si.SourceRanges = append(si.SourceRanges, p)
			}
		}
		if err := it.Err(); err != nil {
			return si, fmt.Errorf("frontend %s source ranges: %w", fe, err)
		}
		si.SourceRanges = model.CanonicalPrefixes(si.SourceRanges)
	}
	for slot := range uint32(v.Count) {
		var id uint32
		if err := d.objs.KpLbSlot.Lookup(kpathLbSlotKey{Id: v.Id, Slot: slot}, &id); err != nil {
			return si, fmt.Errorf("frontend %s slot %d: %w", fe, slot, err)
		}
		var bv kpathLbBackend
		if err := d.objs.KpLbBackend.Lookup(id, &bv); err != nil {
			return si, fmt.Errorf("frontend %s backend %d: %w", fe, id, err)
		}
		b := backendFromValue(bv)
		si.Backends = append(si.Backends, BackendInfo{ID: id, Backend: b, Name: b.String()})
	}
	return si, nil
}
