package datapath

import (
	"strings"
	"testing"
	"time"

	"github.com/kpath/kpath/internal/model"
)

// slotEntries counts the entries of kp_lb_slot.
func slotEntries(t *testing.T, d *Datapath) int {
	t.Helper()
	var (
		k kpathLbSlotKey
		v uint32
		n int
	)
	it := d.objs.KpLbSlot.Iterate()
	for it.Next(&k, &v) {
		n++
	}
	return n
}

func backendEntries(t *testing.T, d *Datapath) int {
	t.Helper()
	var (
		k uint32
		v kpathLbBackend
		n int
	)
	it := d.objs.KpLbBackend.Iterate()
	for it.Next(&k, &v) {
		n++
	}
	return n
}

func TestServiceGrowShrinkKeepsMapsExact(t *testing.T) {
	d := openTest(t, testConfig(t))
	a := svcOf("10.96.0.1:80", "10.244.0.1:80", "10.244.0.2:80", "10.244.0.3:80")
	b := svcOf("10.96.0.2:80", "10.244.0.3:80", "10.244.0.4:80") // shares .3
	mustUpsert(t, d, a)
	mustUpsert(t, d, b)
	if n := slotEntries(t, d); n != 5 {
		t.Fatalf("slots = %d, want 5", n)
	}
	if n := backendEntries(t, d); n != 4 {
		t.Fatalf("backends = %d, want 4 (one shared)", n)
	}

	a.Backends = a.Backends[:1]
	mustUpsert(t, d, a)
	if n := slotEntries(t, d); n != 3 {
		t.Fatalf("after shrink: slots = %d, want 3", n)
	}
	if n := backendEntries(t, d); n != 3 {
		t.Fatalf("after shrink: backends = %d, want 3 (.2 gone, .3 still used by b)", n)
	}

	if err := d.DeleteService(b.Key()); err != nil {
		t.Fatal(err)
	}
	if err := d.DeleteService(b.Key()); err != nil {
		t.Fatalf("deleting twice: %v", err)
	}
	if n := backendEntries(t, d); n != 1 {
		t.Fatalf("after delete: backends = %d, want 1", n)
	}
	svcs, err := d.Services()
	if err != nil {
		t.Fatal(err)
	}
	if len(svcs) != 1 || svcs[0].Name != "10.96.0.1:80/TCP" || len(svcs[0].Backends) != 1 || svcs[0].Backends[0].Name != "10.244.0.1:80/TCP" {
		t.Fatalf("services = %+v", svcs)
	}
}

func TestServiceStateSurvivesRestart(t *testing.T) {
	cfg := testConfig(t)
	d1 := openTest(t, cfg)
	a := svcOf("10.96.0.1:80", "10.244.0.1:80", "10.244.0.2:80")
	m := svcOf("10.96.0.2:443", "10.244.0.2:443", "10.244.0.5:443")
	m.Selection = model.SelectMaglev
	aff := svcOf("10.96.0.3:53/UDP", "10.244.0.7:53")
	aff.Affinity = 30 * time.Minute
	for _, s := range []model.Service{a, m, aff} {
		mustUpsert(t, d1, s)
	}
	before, err := d1.Services()
	if err != nil {
		t.Fatal(err)
	}
	d1.Close()

	d2, err := Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer d2.Close()
	after, err := d2.Services()
	if err != nil {
		t.Fatal(err)
	}
	if len(before) != len(after) {
		t.Fatalf("services before %d, after %d", len(before), len(after))
	}
	for i := range before {
		b, a := before[i], after[i]
		if b.ID != a.ID || b.Name != a.Name || b.Selection != a.Selection || b.Affinity != a.Affinity || len(b.Backends) != len(a.Backends) {
			t.Fatalf("service %d changed across restart:\n%+v\n%+v", i, b, a)
		}
		for j := range b.Backends {
			if b.Backends[j] != a.Backends[j] {
				t.Fatalf("backend changed: %+v vs %+v", b.Backends[j], a.Backends[j])
			}
		}
	}
	// The restored state matches what the caller would apply again, so
	// re-applying writes nothing.
	for _, s := range []model.Service{a, m, aff} {
		fe := d2.svc.frontends[s.Key()]
		if fe == nil || fe.dirty {
			t.Fatalf("frontend %s not restored cleanly: %+v", s.Frontend, fe)
		}
		mustUpsert(t, d2, s)
	}
	// New IDs do not collide with restored ones.
	mustUpsert(t, d2, svcOf("10.96.0.4:80", "10.244.0.9:80"))
	seen := map[uint32]bool{}
	svcs, _ := d2.Services()
	for _, s := range svcs {
		if seen[s.ID] {
			t.Fatalf("frontend ID %d used twice", s.ID)
		}
		seen[s.ID] = true
	}
}

func TestRestorePrunesOrphans(t *testing.T) {
	cfg := testConfig(t)
	d1 := openTest(t, cfg)
	mustUpsert(t, d1, svcOf("10.96.0.1:80", "10.244.0.1:80"))
	// Leftovers of an update that died half way.
	if err := d1.objs.KpLbSlot.Put(kpathLbSlotKey{Id: 999, Slot: 0}, uint32(1)); err != nil {
		t.Fatal(err)
	}
	if err := d1.objs.KpLbBackend.Put(uint32(777), backendValue(l4("10.244.9.9:80"))); err != nil {
		t.Fatal(err)
	}
	if err := d1.objs.KpLbRevnat.Put(uint32(999), kpathLbRevNat{}); err != nil {
		t.Fatal(err)
	}
	d1.Close()
	d2, err := Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer d2.Close()
	if n := slotEntries(t, d2); n != 1 {
		t.Errorf("slots after restore = %d, want 1", n)
	}
	if n := backendEntries(t, d2); n != 1 {
		t.Errorf("backends after restore = %d, want 1", n)
	}
	var rn kpathLbRevNat
	if err := d2.objs.KpLbRevnat.Lookup(uint32(999), &rn); err == nil {
		t.Error("orphan reverse-translation entry survived restore")
	}
}

// Maps an update left half written (slots out of canonical order, a
// backend under a second, stale ID) are restored into a state whose
// references add up: applying the service again makes the maps exact, and
// deleting it leaves no backend behind.
func TestRestoreHalfWrittenUpdate(t *testing.T) {
	cfg := testConfig(t)
	d1 := openTest(t, cfg)
	svc := svcOf("10.96.0.1:80", "10.244.0.1:80", "10.244.0.2:80")
	mustUpsert(t, d1, svc)
	mustUpsert(t, d1, svcOf("10.96.0.2:80", "10.244.0.2:80")) // shares .2
	fe := d1.svc.frontends[svc.Key()]
	two := d1.svc.backends[backendKeyOf(l4("10.244.0.2:80"))].id
	const stale = 900 // .1 again, as a failed delete and a new write leave it
	if err := d1.objs.KpLbBackend.Put(uint32(stale), backendValue(l4("10.244.0.1:80"))); err != nil {
		t.Fatal(err)
	}
	for slot, id := range []uint32{two, stale} {
		if err := d1.objs.KpLbSlot.Put(kpathLbSlotKey{Id: fe.id, Slot: uint32(slot)}, id); err != nil {
			t.Fatal(err)
		}
	}
	d1.Close()
	d2, err := Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer d2.Close()
	if fe := d2.svc.frontends[svc.Key()]; fe == nil || !fe.dirty {
		t.Fatalf("half-written frontend restored as clean: %+v", fe)
	}
	mustUpsert(t, d2, svc)
	svcs, err := d2.Services()
	if err != nil {
		t.Fatal(err)
	}
	if len(svcs) != 2 || len(svcs[0].Backends) != 2 || svcs[0].Backends[0].Backend != l4("10.244.0.1:80") ||
		svcs[0].Backends[1].Backend != l4("10.244.0.2:80") {
		t.Fatalf("after applying again: %+v", svcs)
	}
	if n := backendEntries(t, d2); n != 2 {
		t.Errorf("backends = %d, want 2 (the stale ID pruned)", n)
	}
	if err := d2.DeleteService(svc.Key()); err != nil {
		t.Fatal(err)
	}
	if n := backendEntries(t, d2); n != 1 {
		t.Errorf("after the delete: backends = %d, want 1 (the shared one)", n)
	}
	if err := d2.DeleteService(svcOf("10.96.0.2:80").Key()); err != nil {
		t.Fatal(err)
	}
	if n, s := backendEntries(t, d2), slotEntries(t, d2); n != 0 || s != 0 || len(d2.svc.backends) != 0 {
		t.Errorf("after deleting both: %d backends, %d slots, %d held", n, s, len(d2.svc.backends))
	}
}

func TestServiceErrors(t *testing.T) {
	cfg := testConfig(t)
	cfg.Sizes.Backends = 16
	d := openTest(t, cfg)
	good := svcOf("10.96.0.1:80", "10.244.0.1:80")
	mustUpsert(t, d, good)

	big := model.Service{Frontend: l4("10.96.0.2:80")}
	for i := range 20 {
		big.Backends = append(big.Backends, model.L4Addr{Addr: l4("10.244.1.1:80").Addr.Next(), Port: uint16(1000 + i), Proto: model.TCP})
	}
	err := d.UpsertService(big)
	if err == nil || !strings.Contains(err.Error(), "raise the backends map size") {
		t.Fatalf("oversized service: %v", err)
	}
	// The failed service did not disturb the good one, and a smaller
	// version of it applies.
	big.Backends = big.Backends[:5]
	mustUpsert(t, d, big)
	svcs, _ := d.Services()
	if len(svcs) != 2 || len(svcs[0].Backends) != 1 || len(svcs[1].Backends) != 5 {
		t.Fatalf("services after recovery: %+v", svcs)
	}
	if n := backendEntries(t, d); n != 6 {
		t.Fatalf("backends = %d, want 6 (the failed update's extras released)", n)
	}

	for _, bad := range []model.Service{
		{Frontend: model.L4Addr{Addr: l4("10.96.0.1:80").Addr, Port: 0, Proto: model.TCP}},
		{Frontend: l4("10.96.0.1:80"), Backends: []model.L4Addr{l4("10.244.0.1:80"), l4("10.244.0.1:80")}},
		{Frontend: l4("10.96.0.1:80"), Backends: []model.L4Addr{{Addr: l4("10.244.0.1:80").Addr, Port: 80, Proto: model.UDP}}},
		{Frontend: l4("10.96.0.1:80"), Affinity: 100 * time.Hour},
	} {
		if err := d.UpsertService(bad); err == nil {
			t.Errorf("invalid service %+v accepted", bad)
		}
	}
}
