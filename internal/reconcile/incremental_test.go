package reconcile

import (
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/netip"
	"testing"

	"github.com/kpath/kpath/internal/k8s"
	"github.com/kpath/kpath/internal/model"
	"github.com/kpath/kpath/internal/servicemap"
)

// TestIncrementalSyncEqualsMerge drives random service, slice and node
// changes, with cluster IPs, external IPs and node ports drawn from small
// pools so services clash, through incremental syncs, and checks after
// every one that the datapath holds exactly what servicemap.Merge makes of
// all the objects: the incremental path must never differ from the pure
// function.
func TestIncrementalSyncEqualsMerge(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	c := k8s.NewCache()
	dp := &fakeDP{svcs: map[model.FrontendKey]model.Service{}}
	r := New(c, dp, Options{NodeName: "n1", Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
	addr := func(pool string, n int) netip.Addr { return netip.MustParseAddr(fmt.Sprintf(pool, 1+rng.IntN(n))) }
	key := func() model.ServiceKey {
		return model.ServiceKey{Namespace: "ns", Name: fmt.Sprintf("s%d", rng.IntN(12))}
	}
	setNode := func() {
		n := &model.Node{Name: "n1", Addrs: []netip.Addr{addr("192.168.0.%d", 2)}}
		c.SetNode("n1", n)
	}
	setNode()
	for step := range 3000 {
		switch op := rng.IntN(20); {
		case op < 8:
			k := key()
			s := &model.ServiceSpec{Key: k, ClusterIPs: []netip.Addr{addr("10.96.0.%d", 6)},
				Ports: []model.ServicePort{{Name: "http", Protocol: model.TCP, Port: 80}}}
			if rng.IntN(3) == 0 {
				s.Type = model.ServiceTypeNodePort
				s.Ports[0].NodePort = uint16(30000 + rng.IntN(3))
			}
			if rng.IntN(4) == 0 {
				s.ExternalIPs = []netip.Addr{addr("172.16.0.%d", 2)}
			}
			if rng.IntN(5) == 0 {
				s.Ports = append(s.Ports, model.ServicePort{Name: "dns", Protocol: model.UDP, Port: 53})
			}
			c.SetService(k, s)
		case op < 10:
			c.SetService(key(), nil)
		case op < 19:
			k := key()
			sl := &model.EndpointSlice{Namespace: "ns", Name: k.Name + "-1", Service: k,
				Ports: []model.EndpointPort{{Name: "http", Protocol: model.TCP, Port: 8080}, {Name: "dns", Protocol: model.UDP, Port: 53}}}
			for range rng.IntN(4) {
				sl.Endpoints = append(sl.Endpoints, model.Endpoint{Addr: addr("10.244.0.%d", 8),
					Ready: rng.IntN(5) > 0, Serving: true, NodeName: []string{"n1", "n2"}[rng.IntN(2)]})
			}
			if len(sl.Endpoints) == 0 && rng.IntN(2) == 0 {
				sl = nil
			}
			c.SetEndpointSlice(k, k.Name+"-1", sl)
		default:
			setNode()
		}
		if rng.IntN(3) > 0 { // let changes pile up sometimes
			continue
		}
		if err := r.Sync(false); err != nil {
			t.Fatalf("step %d: %v", step, err)
		}
		want := map[model.FrontendKey]model.Service{}
		per := map[model.ServiceKey][]servicemap.Entry{}
		n := c.Node("n1")
		for _, k := range c.ServiceKeys() {
			spec, sl := c.Service(k)
			per[k], _ = servicemap.ForService(servicemap.Node{Name: "n1", Addrs: n.Addrs}, spec, sl, servicemap.Options{})
		}
		merged, _ := servicemap.Merge(per)
		for _, e := range merged {
			want[e.Key()] = e.Service
			if e.Kind != servicemap.KindClusterIP {
				ext := e.Service
				ext.External, ext.Backends = true, e.External
				want[ext.Key()] = ext
			}
		}
		if len(want) != len(dp.svcs) {
			t.Fatalf("step %d: datapath has %d frontends, Merge says %d", step, len(dp.svcs), len(want))
		}
		for k, w := range want {
			if got, ok := dp.svcs[k]; !ok || !got.Equal(w) {
				t.Fatalf("step %d: frontend %s: datapath %+v, Merge %+v", step, k, got, w)
			}
		}
		if got := len(r.Entries()); got != len(merged) {
			t.Fatalf("step %d: Entries lists %d, Merge %d", step, got, len(merged))
		}
	}
}
