package datapath

import (
	"cmp"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/kpath/kpath/internal/lb"
	"github.com/kpath/kpath/internal/model"
)

// frontendState is what this process knows a frontend's maps contain.
type frontendState struct {
	id         uint32
	svc        model.Service // backends in canonical order = slot order
	backendIDs []uint32      // slot i -> backend ID
	// The frontend holds a reference on each backend of svc and of extra:
	// extra (sorted, each once) are those an update that failed half way
	// took or was taking out of svc, which may still sit in a slot. Empty
	// but after a failure: the backends are held once, in svc, which the
	// reconciler holds too.
	extra []model.L4Addr
	// slotHigh is one past the highest slot that may exist in kp_lb_slot.
	slotHigh int
	// dirty: the maps may differ from svc (a failed update); rewrite all.
	dirty bool
}

type backendState struct {
	id   uint32
	refs uint32 // frontends holding it
}

type serviceState struct {
	frontends map[model.FrontendKey]*frontendState
	backends  map[model.L4Addr]backendState
	feIDs     *lb.IDAllocator
	beIDs     *lb.IDAllocator
}

func newServiceState(sizes MapSizes) *serviceState {
	return &serviceState{
		frontends: make(map[model.FrontendKey]*frontendState),
		backends:  make(map[model.L4Addr]backendState),
		feIDs:     lb.NewIDAllocator(sizes.Frontends),
		beIDs:     lb.NewIDAllocator(sizes.Backends),
	}
}

func compareL4(a, b model.L4Addr) int { return a.Compare(b) }

func compareKeys(a, b model.FrontendKey) int {
	if c := compareL4(a.L4Addr, b.L4Addr); c != 0 {
		return c
	}
	return cmp.Compare(boolInt(a.External), boolInt(b.External))
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

func sameService(a, b model.Service) bool { return a.Equal(b) }

// sortedHas reports whether sorted s holds b.
func sortedHas(s []model.L4Addr, b model.L4Addr) bool {
	_, found := slices.BinarySearchFunc(s, b, compareL4)
	return found
}

// holds reports whether the frontend holds a reference on b, counting the
// first n of its extra backends.
func (fe *frontendState) holds(b model.L4Addr, n int) bool {
	return sortedHas(fe.svc.Backends, b) || sortedHas(fe.extra[:n], b)
}

// held calls f once for each backend the frontend holds.
func (fe *frontendState) held(f func(model.L4Addr)) {
	for i, b := range fe.svc.Backends {
		if i == 0 || fe.svc.Backends[i-1] != b {
			f(b)
		}
	}
	for _, b := range fe.extra {
		if !sortedHas(fe.svc.Backends, b) {
			f(b)
		}
	}
}

// sortExtra keeps extra sorted, each backend once.
func (fe *frontendState) sortExtra() {
	slices.SortFunc(fe.extra, compareL4)
	fe.extra = slices.Compact(fe.extra)
}

func (fe *frontendState) value() kpathLbFrontend {
	v := kpathLbFrontend{Id: fe.id, Count: uint16(len(fe.backendIDs))}
	if fe.svc.Selection == model.SelectMaglev {
		v.Flags |= uint16(kpathLbFlagsLB_F_MAGLEV)
	}
	if fe.svc.Affinity > 0 {
		v.Flags |= uint16(kpathLbFlagsLB_F_AFFINITY)
		v.AffinityTimeout = uint32(fe.svc.Affinity / time.Second)
	}
	if len(fe.svc.SourceRanges) > 0 {
		v.Flags |= uint16(kpathLbFlagsLB_F_SRC_RANGES)
		if fe.svc.SourceNode {
			v.Flags |= uint16(kpathLbFlagsLB_F_SRC_NODE)
		}
	}
	return v
}

// UpsertService makes svc's frontend reach exactly svc's backends. The
// maps are written so that a packet never sees a half-written service:
// backends and slots are in place before the frontend's count grows, and
// the count shrinks before slots and backends go away. Applying the same
// service again writes nothing.
//
// Backends already in canonical order (servicemap's) are kept, not copied,
// so they are held once at 100k backends: the caller must not write to
// svc.Backends afterwards.
func (d *Datapath) UpsertService(svc model.Service) error {
	if err := svc.Validate(); err != nil {
		return fmt.Errorf("invalid service: %w", err)
	}
	if !slices.IsSortedFunc(svc.Backends, compareL4) {
		svc.Backends = slices.Clone(svc.Backends)
		slices.SortFunc(svc.Backends, compareL4)
	}

	d.mu.Lock()
	defer d.mu.Unlock()
	st := d.svc
	fe := st.frontends[svc.Key()]
	if fe != nil && !fe.dirty && sameService(fe.svc, svc) {
		return nil
	}
	if fe == nil {
		id, err := st.feIDs.Allocate()
		if err != nil {
			return fmt.Errorf("service %s: no free frontend ID (%w); raise the frontends map size", svc.Key(), err)
		}
		fe = &frontendState{id: id, dirty: true}
		st.frontends[svc.Key()] = fe
	}
	if err := d.writeService(fe, svc); err != nil {
		fe.dirty = true
		return fmt.Errorf("service %s: %w", svc.Key(), err)
	}
	return nil
}

func (d *Datapath) writeService(fe *frontendState, svc model.Service) error {
	st := d.svc
	m := &d.objs

	// Backends first: every ID a slot will name must resolve. One the
	// frontend does not hold yet is held from now on, as an extra until
	// the frontend names it.
	ids := make([]uint32, len(svc.Backends))
	prior := len(fe.extra)
	defer fe.sortExtra()
	for i, b := range svc.Backends {
		bs, ok := st.backends[b]
		if !ok {
			id, err := st.beIDs.Allocate()
			if err != nil {
				return fmt.Errorf("no free backend ID (%w); raise the backends map size", err)
			}
			if err := m.KpLbBackend.Put(id, backendValue(b)); err != nil {
				st.beIDs.Release(id)
				return mapWriteError("kp_lb_backend", "backends", err)
			}
			bs = backendState{id: id}
		}
		if (i == 0 || svc.Backends[i-1] != b) && !fe.holds(b, prior) {
			bs.refs++
			fe.extra = append(fe.extra, b)
		}
		st.backends[b] = bs
		ids[i] = bs.id
	}

	rn := kpathLbRevNat{Addr: addrToBPF(svc.Frontend.Addr), Port: portToBPF(svc.Frontend.Port)}
	if err := m.KpLbRevnat.Put(fe.id, rn); err != nil {
		return mapWriteError("kp_lb_revnat", "frontends", err)
	}

	maglev := svc.Selection == model.SelectMaglev && len(ids) > 0
	if maglev {
		if err := d.writeMaglev(fe.id, svc.Backends, ids); err != nil {
			return err
		}
	}

	for i, id := range ids {
		if !fe.dirty && i < len(fe.backendIDs) && fe.backendIDs[i] == id {
			continue
		}
		if err := m.KpLbSlot.Put(kpathLbSlotKey{Id: fe.id, Slot: uint32(i)}, id); err != nil {
			return mapWriteError("kp_lb_slot", "slots", err)
		}
		fe.slotHigh = max(fe.slotHigh, i+1)
	}

	oldSvc := fe.svc
	if fe.dirty {
		// What the map holds is not known: every range written anew
		// (a put of one that exists is harmless), stale ones pruned at
		// the next restart.
		oldSvc.SourceRanges = nil
	}
	if err := d.writeSourceRangesBefore(fe.id, oldSvc.SourceRanges, svc.SourceRanges); err != nil {
		return err
	}
	// The old backends stay held (as extras) until the count is down.
	for _, b := range oldSvc.Backends {
		if !sortedHas(svc.Backends, b) {
			fe.extra = append(fe.extra, b)
		}
	}
	fe.sortExtra()
	fe.svc, fe.backendIDs = svc, ids
	if err := m.KpLbFrontend.Put(frontendKey(svc.Key()), fe.value()); err != nil {
		return mapWriteError("kp_lb_frontend", "frontends", err)
	}
	fe.dirty = false
	if err := d.deleteSourceRangesAfter(fe.id, oldSvc.SourceRanges, svc.SourceRanges); err != nil {
		return err
	}

	// The count is down: slots past it and backends that left can go.
	for i := len(ids); i < fe.slotHigh; i++ {
		if err := m.KpLbSlot.Delete(kpathLbSlotKey{Id: fe.id, Slot: uint32(i)}); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("delete slot %d: %w", i, err)
		}
	}
	fe.slotHigh = len(ids)
	if !maglev && oldSvc.Selection == model.SelectMaglev {
		if err := m.KpLbMaglev.Delete(fe.id); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("delete maglev table: %w", err)
		}
	}

	var gone []uint32
	for _, b := range fe.extra {
		if !sortedHas(svc.Backends, b) {
			gone = append(gone, st.backends[b].id)
			d.releaseBackend(b)
		}
	}
	fe.extra = nil
	if len(gone) > 0 && svc.Affinity > 0 {
		d.forgetAffinity(fe.id, gone)
	}
	return nil
}

// releaseBackend drops one reference and deletes the backend with the last.
func (d *Datapath) releaseBackend(b model.L4Addr) {
	st := d.svc
	bs := st.backends[b]
	if bs.refs--; bs.refs > 0 {
		st.backends[b] = bs
		return
	}
	// A failed delete leaves an entry no slot names; Open's restore prunes it.
	_ = d.objs.KpLbBackend.Delete(bs.id)
	delete(st.backends, b)
	st.beIDs.Release(bs.id)
}

// forgetAffinity deletes session-affinity entries of frontend id that point
// at one of backends (all of them when backends is nil), so no client stays
// stuck to a backend that left the service.
func (d *Datapath) forgetAffinity(id uint32, backends []uint32) {
	var (
		k    kpathLbAffinityKey
		v    kpathLbAffinity
		dead []kpathLbAffinityKey
	)
	it := d.objs.KpLbAffinity.Iterate()
	for it.Next(&k, &v) {
		if k.Id == id && (backends == nil || slices.Contains(backends, v.BackendId)) {
			dead = append(dead, k)
		}
	}
	for _, k := range dead {
		_ = d.objs.KpLbAffinity.Delete(k)
	}
}

// writeMaglev builds the frontend's Maglev table in a new inner map and
// swaps it in with one update of the outer map.
func (d *Datapath) writeMaglev(id uint32, backends []model.L4Addr, ids []uint32) error {
	mbs := make([]lb.MaglevBackend, len(ids))
	for i := range ids {
		mbs[i] = lb.MaglevBackend{ID: ids[i], Key: backends[i].String()}
	}
	m := uint64(d.cfg.MaglevTableSize)
	table, err := lb.MaglevTable(mbs, m)
	if err != nil {
		return fmt.Errorf("maglev table: %w", err)
	}
	inner, err := ebpf.NewMap(&ebpf.MapSpec{
		Name: "kp_maglev_inner", Type: ebpf.Array, KeySize: 4, ValueSize: 4, MaxEntries: uint32(m),
	})
	if err != nil {
		return fmt.Errorf("create maglev table: %w", err)
	}
	defer inner.Close()
	keys := make([]uint32, m)
	for i := range keys {
		keys[i] = uint32(i)
	}
	if _, err := inner.BatchUpdate(keys, table, nil); err != nil {
		if !errors.Is(err, ebpf.ErrNotSupported) {
			return fmt.Errorf("fill maglev table: %w", err)
		}
		for i, v := range table {
			if err := inner.Put(uint32(i), v); err != nil {
				return fmt.Errorf("fill maglev table: %w", err)
			}
		}
	}
	if err := d.objs.KpLbMaglev.Put(id, inner); err != nil {
		return mapWriteError("kp_lb_maglev", "maglev", err)
	}
	return nil
}

// DeleteService removes a frontend. Connections already established through
// the socket hook are unaffected; tc-path connections lose their reverse
// translation. Deleting a frontend that does not exist is not an error.
func (d *Datapath) DeleteService(frontend model.FrontendKey) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	st := d.svc
	fe := st.frontends[frontend]
	if fe == nil {
		return nil
	}
	m := &d.objs
	ignoreMissing := func(err error) error {
		if err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return err
		}
		return nil
	}
	if err := ignoreMissing(m.KpLbFrontend.Delete(frontendKey(frontend))); err != nil {
		return fmt.Errorf("delete frontend %s: %w", frontend, err)
	}
	for i := range fe.slotHigh {
		if err := ignoreMissing(m.KpLbSlot.Delete(kpathLbSlotKey{Id: fe.id, Slot: uint32(i)})); err != nil {
			return fmt.Errorf("delete frontend %s slot %d: %w", frontend, i, err)
		}
	}
	if err := ignoreMissing(m.KpLbMaglev.Delete(fe.id)); err != nil {
		return fmt.Errorf("delete frontend %s maglev table: %w", frontend, err)
	}
	if err := ignoreMissing(m.KpLbRevnat.Delete(fe.id)); err != nil {
		return fmt.Errorf("delete frontend %s reverse translation: %w", frontend, err)
	}
	d.forgetAffinity(fe.id, nil)
	if err := d.deleteSourceRangesAfter(fe.id, fe.svc.SourceRanges, nil); err != nil {
		return fmt.Errorf("delete frontend %s: %w", frontend, err)
	}
	fe.held(d.releaseBackend)
	delete(st.frontends, frontend)
	st.feIDs.Release(fe.id)
	return nil
}

func mapWriteError(mapName, sizeName string, err error) error {
	if errors.Is(err, unix.E2BIG) {
		return fmt.Errorf("map %s is full: raise the %s map size: %w", mapName, sizeName, err)
	}
	return fmt.Errorf("write %s: %w", mapName, err)
}

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
		if old, dup := st.backends[b]; dup {
			// The same backend under two IDs (a failed delete, then a new
			// one): slots naming the stale ID are rewritten, it is pruned.
			byID[old.id] = b
		}
		st.backends[b] = backendState{id: bid}
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
			if !ok || st.backends[b].id != id {
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
			bs := st.backends[b]
			bs.refs++
			st.backends[b] = bs
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
		if st.backends[b].id != id {
			_ = m.KpLbBackend.Delete(id)
			st.beIDs.Release(id)
		}
	}
	for b, bs := range st.backends {
		if bs.refs == 0 {
			_ = m.KpLbBackend.Delete(bs.id)
			delete(st.backends, b)
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
