package reconcile

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"runtime"
	"runtime/pprof"
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kpath/kpath/internal/datapath"
	"github.com/kpath/kpath/internal/k8s"
	"github.com/kpath/kpath/internal/model"
	"github.com/kpath/kpath/internal/testutil"
)

// BenchmarkServiceMemory is E1's largest point held by the agent's service
// path: 10,000 ClusterIP Services of 10 endpoints each (100,000 backends),
// in the cache, the reconciler and a real datapath's maps. It reports the
// live Go heap they hold, per backend and in all (the datapath's map memory
// is the kernel's, not counted). With KPATH_HEAP_PROFILE=FILE it writes
// the heap profile there.
//
//	sudo go test ./internal/reconcile -run - -bench ServiceMemory -benchtime 1x
func BenchmarkServiceMemory(b *testing.B) {
	testutil.RequireRoot(b)
	const services, perService = 10_000, 10
	buf := make([]byte, 4)
	_, _ = rand.Read(buf)
	cfg := datapath.DefaultConfig()
	cfg.PinDir = "kpath-bench-" + hex.EncodeToString(buf)
	cfg.Sizes.Frontends, cfg.Sizes.Backends, cfg.Sizes.Slots = 2*services, 2*services*perService, 2*services*perService
	for range b.N {
		func() {
			dp, err := datapath.Open(cfg)
			if err != nil {
				_ = datapath.Reset(cfg)
				b.Fatalf("open datapath: %v", err)
			}
			defer func() {
				dp.Close()
				_ = datapath.Reset(cfg)
			}()
			before := liveHeap()
			c := k8s.NewCache()
			r := New(c, dp, Options{NodeName: "node-1", Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
			for i := range services {
				k := model.ServiceKey{Namespace: fmt.Sprintf("ns-%d", i/100), Name: fmt.Sprintf("svc-%d", i)}
				c.SetService(k, &model.ServiceSpec{Key: k, Type: model.ServiceTypeClusterIP,
					ClusterIPs: []netip.Addr{netip.AddrFrom4([4]byte{10, 96, byte(i >> 8), byte(i)})},
					Ports:      []model.ServicePort{{Name: "http", Protocol: model.TCP, Port: 80}}})
				// Converted from the API's object, as the agent holds it.
				api := &discoveryv1.EndpointSlice{ObjectMeta: metav1.ObjectMeta{Namespace: k.Namespace, Name: k.Name + "-abcde",
					Labels: map[string]string{discoveryv1.LabelServiceName: k.Name}},
					AddressType: discoveryv1.AddressTypeIPv4,
					Ports:       []discoveryv1.EndpointPort{{Name: ptr("http"), Protocol: ptr(corev1.ProtocolTCP), Port: ptr(int32(8080))}}}
				for j := range perService {
					n := i*perService + j
					api.Endpoints = append(api.Endpoints, discoveryv1.Endpoint{
						Addresses:  []string{netip.AddrFrom4([4]byte{10, byte(100 + n>>16), byte(n >> 8), byte(n)}).String()},
						Conditions: discoveryv1.EndpointConditions{Ready: ptr(true), Serving: ptr(true), Terminating: ptr(false)},
						NodeName:   ptr(fmt.Sprintf("node-%d", 2+n%1000))})
				}
				s := k8s.EndpointSlice(api)
				c.SetEndpointSlice(k, s.Name, s)
			}
			if err := r.Sync(true); err != nil {
				b.Fatalf("sync: %v", err)
			}
			held := liveHeap() - before
			if st := r.Status(); st.Frontends != services {
				b.Fatalf("%d frontends applied, want %d", st.Frontends, services)
			}
			b.ReportMetric(float64(held)/(1<<20), "MiB")
			b.ReportMetric(float64(held)/(services*perService), "B/backend")
			if f := os.Getenv("KPATH_HEAP_PROFILE"); f != "" {
				out, err := os.Create(f)
				if err != nil {
					b.Fatal(err)
				}
				_ = pprof.Lookup("heap").WriteTo(out, 0)
				_ = out.Close()
			}
			runtime.KeepAlive(r)
			runtime.KeepAlive(c)
		}()
	}
}

func ptr[T any](v T) *T { return &v }

func liveHeap() uint64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}
