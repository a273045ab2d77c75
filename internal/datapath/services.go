package datapath

import (
	"cmp"
	"errors"
	"fmt"
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

// backendKey is a backend's address as st.backends keys it: 20 bytes
// with no pointer, where a model.L4Addr is 32 with netip.Addr's zone
// pointer. At 100k backends the map is 2 MB smaller, and the collector has
// nothing in it to scan.
type backendKey struct {
	addr  [16]byte
	port  uint16
	proto model.Protocol
	is4   bool
}

func backendKeyOf(b model.L4Addr) backendKey {
	return backendKey{addr: b.Addr.As16(), port: b.Port, proto: b.Proto, is4: b.Addr.Is4()}
}

type serviceState struct {
	frontends map[model.FrontendKey]*frontendState
	backends  map[backendKey]backendState
	feIDs     *lb.IDAllocator
	beIDs     *lb.IDAllocator
}

func newServiceState(sizes MapSizes) *serviceState {
	return &serviceState{
		frontends: make(map[model.FrontendKey]*frontendState),
		backends:  make(map[backendKey]backendState),
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
	if !slices.IsSortedFunc(svc.Backends, compareL4) {
		svc.Backends = slices.Clone(svc.Backends)
		slices.SortFunc(svc.Backends, compareL4)
	}

	d.mu.Lock()
	defer d.mu.Unlock()
	st := d.svc
	fe := st.frontends[svc.Key()]
	// Unchanged, and written whole: nothing to do (and nothing to check
	// again; a full sync upserts every frontend).
	if fe != nil && !fe.dirty && sameService(fe.svc, svc) {
		return nil
	}
	if err := svc.Validate(); err != nil {
		return fmt.Errorf("invalid service: %w", err)
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
		bs, ok := st.backends[backendKeyOf(b)]
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
		st.backends[backendKeyOf(b)] = bs
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
			gone = append(gone, st.backends[backendKeyOf(b)].id)
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
	bs := st.backends[backendKeyOf(b)]
	if bs.refs--; bs.refs > 0 {
		st.backends[backendKeyOf(b)] = bs
		return
	}
	// A failed delete leaves an entry no slot names; Open's restore prunes it.
	_ = d.objs.KpLbBackend.Delete(bs.id)
	delete(st.backends, backendKeyOf(b))
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
