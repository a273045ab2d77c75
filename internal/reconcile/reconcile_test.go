package reconcile

import (
	"errors"
	"io"
	"log/slog"
	"net/netip"
	"testing"
	"time"

	"github.com/kpath/kpath/internal/k8s"
	"github.com/kpath/kpath/internal/model"
)

// fakeDP is an in-memory datapath that can be told to fail.
type fakeDP struct {
	svcs    map[model.FrontendKey]model.Service
	failFor map[model.L4Addr]int // remaining failures per frontend
	upserts int
}

func (f *fakeDP) UpsertService(s model.Service) error {
	if f.failFor[s.Frontend] > 0 {
		f.failFor[s.Frontend]--
		return errors.New("map full")
	}
	if old, ok := f.svcs[s.Key()]; ok && old.Equal(s) {
		return nil // as the datapath: an unchanged frontend is not written
	}
	f.upserts++
	f.svcs[s.Key()] = s
	return nil
}

func (f *fakeDP) DeleteService(k model.FrontendKey) error {
	delete(f.svcs, k)
	return nil
}

func (f *fakeDP) Frontends() ([]model.FrontendKey, error) {
	var out []model.FrontendKey
	for k := range f.svcs {
		out = append(out, k)
	}
	return out, nil
}

func spec(name, ip string) *model.ServiceSpec {
	return &model.ServiceSpec{
		Key:        model.ServiceKey{Namespace: "ns", Name: name},
		ClusterIPs: []netip.Addr{netip.MustParseAddr(ip)},
		Ports:      []model.ServicePort{{Name: "http", Protocol: model.TCP, Port: 80}},
	}
}

func TestRetriesBoundedThenRecovers(t *testing.T) {
	c := k8s.NewCache()
	fe := model.L4Addr{Addr: netip.MustParseAddr("10.96.0.2"), Port: 80, Proto: model.TCP}
	dp := &fakeDP{svcs: map[model.FrontendKey]model.Service{}, failFor: map[model.L4Addr]int{fe: 100}}
	r := New(c, dp, Options{NodeName: "n1", MaxRetries: 2, Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
	for _, s := range []*model.ServiceSpec{spec("good", "10.96.0.1"), spec("bad", "10.96.0.2")} {
		c.SetService(s.Key, s)
	}
	if err := r.Sync(false); err == nil {
		t.Fatal("sync with a failing frontend returned no error")
	}
	if len(dp.svcs) != 1 {
		t.Fatalf("the good service was not applied: %v", dp.svcs)
	}
	if st := r.Status(); st.Retrying != 1 || st.LastError == "" {
		t.Fatalf("status %+v, want one service retrying", st)
	}
	// Each due retry recomputes the service; after MaxRetries it stops.
	for range 5 {
		r.mu.Lock()
		for k := range r.retryAt {
			r.retryAt[k] = r.retryAt[k].Add(-24 * time.Hour)
		}
		r.mu.Unlock()
		r.requeueDue()
		_ = r.Sync(false)
	}
	if st := r.Status(); st.Retrying != 0 {
		t.Fatalf("still retrying after the bound: %+v", st)
	}
	// The next full resync tries again; the datapath has recovered.
	dp.failFor[fe] = 0
	if err := r.Sync(true); err != nil {
		t.Fatal(err)
	}
	if len(dp.svcs) != 2 {
		t.Fatalf("after recovery: %v", dp.svcs)
	}
}

func TestFullResyncPrunesOrphansAndSkipsUnchanged(t *testing.T) {
	c := k8s.NewCache()
	orphan := model.FrontendKey{L4Addr: model.L4Addr{Addr: netip.MustParseAddr("10.96.9.9"), Port: 80, Proto: model.TCP}}
	dp := &fakeDP{svcs: map[model.FrontendKey]model.Service{orphan: {}}, failFor: map[model.L4Addr]int{}}
	r := New(c, dp, Options{NodeName: "n1", Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
	s := spec("web", "10.96.0.1")
	c.SetService(s.Key, s)
	if err := r.Sync(true); err != nil {
		t.Fatal(err)
	}
	if _, ok := dp.svcs[orphan]; ok {
		t.Fatal("orphan frontend survived a full resync")
	}
	n := dp.upserts
	if err := r.Sync(true); err != nil {
		t.Fatal(err)
	}
	if dp.upserts != n {
		t.Fatalf("an unchanged service was written again (%d -> %d upserts)", n, dp.upserts)
	}
	c.SetService(s.Key, nil)
	if err := r.Sync(false); err != nil {
		t.Fatal(err)
	}
	if len(dp.svcs) != 0 {
		t.Fatalf("deleted service left %v", dp.svcs)
	}
}

func TestOffKeepsTheDatapathFreeOfFrontends(t *testing.T) {
	c := k8s.NewCache()
	left := model.FrontendKey{L4Addr: model.L4Addr{Addr: netip.MustParseAddr("10.96.0.1"), Port: 80, Proto: model.TCP}}
	dp := &fakeDP{svcs: map[model.FrontendKey]model.Service{left: {Frontend: left.L4Addr}}, failFor: map[model.L4Addr]int{}}
	r := New(c, dp, Options{NodeName: "n1", Off: true, Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
	s := spec("web", "10.96.0.1")
	c.SetService(s.Key, s)
	if err := r.Sync(true); err != nil {
		t.Fatal(err)
	}
	if len(dp.svcs) != 0 || dp.upserts != 0 {
		t.Fatalf("with services off the datapath holds %v after %d writes", dp.svcs, dp.upserts)
	}
}
