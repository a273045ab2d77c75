package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net/http"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"

	"github.com/kpath/kpath/internal/datapath"
	"github.com/kpath/kpath/internal/k8s"
	"github.com/kpath/kpath/internal/model"
	"github.com/kpath/kpath/internal/servicemap"
	"github.com/kpath/kpath/internal/testenv"
	"github.com/kpath/kpath/internal/testutil"
)

const (
	testNode = "n1"
	ns       = "kpath-test"
)

var nodeIP = "192.168.50.1"

// startAgent runs an agent against env until the test ends.
func startAgent(t *testing.T, env *testenv.Env, mutate func(*Config)) *Agent {
	t.Helper()
	cfg := DefaultConfig()
	cfg.Kubeconfig = env.Kubeconfig
	cfg.NodeName = testNode
	cfg.PinDir = "kpath-test-agent-" + testutil.UniqueID()
	cfg.SocketHook = false
	cfg.CgroupRoot = testutil.NewCgroup(t, cgroupRoot(t)) // the host-network hook stays the test's
	cfg.MetricsAddr = ""
	cfg.APISocket = filepath.Join(t.TempDir(), "agent.sock")
	cfg.HubbleSocket = filepath.Join(filepath.Dir(cfg.APISocket), "hubble.sock")
	cfg.HealthCheckBind = "127.0.0.1"
	cfg.MapSizes = datapath.MapSizes{Frontends: 4096, Backends: 8192, Slots: 16384, Maglev: 64,
		Affinity: 1024, Conntrack: 16384, SockRevNat: 1024, Fragments: 256,
		IPCache: 1024, Endpoints: 256, PolicyEntries: 65536, PolicyCIDRs: 4096}
	cfg.MaglevTableSize = 251
	if mutate != nil {
		mutate(&cfg)
	}
	t.Cleanup(func() { _ = datapath.Reset(cfg.Datapath()) })
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	if testing.Verbose() {
		log = slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo}))
	}
	a, err := New(cfg, log)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("agent: %v", err)
		}
	})
	deadline := time.Now().Add(30 * time.Second)
	for !a.Ready() {
		if time.Now().After(deadline) {
			t.Fatal("agent not ready after 30s")
		}
		time.Sleep(20 * time.Millisecond)
	}
	return a
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

func ptr[T any](v T) *T { return &v }

func createNodes(t *testing.T, c kubernetes.Interface) {
	t.Helper()
	ctx := context.Background()
	for name, ip := range map[string]string{testNode: nodeIP, "n2": "192.168.50.2"} {
		n, err := c.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		n.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: ip}}
		if _, err := c.CoreV1().Nodes().UpdateStatus(ctx, n, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := c.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

type epSpec struct {
	ip, node                    string
	ready, serving, terminating bool
}

func readyOn(ip, node string) epSpec { return epSpec{ip, node, true, true, false} }

func endpointSlice(svc, name string, ports []discoveryv1.EndpointPort, eps ...epSpec) *discoveryv1.EndpointSlice {
	s := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Name: name, Namespace: ns, Labels: map[string]string{discoveryv1.LabelServiceName: svc}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       ports,
	}
	for _, e := range eps {
		s.Endpoints = append(s.Endpoints, discoveryv1.Endpoint{
			Addresses: []string{e.ip}, NodeName: ptr(e.node),
			Conditions: discoveryv1.EndpointConditions{Ready: ptr(e.ready), Serving: ptr(e.serving), Terminating: ptr(e.terminating)},
		})
	}
	return s
}

func epPort(name string, proto corev1.Protocol, port int32) discoveryv1.EndpointPort {
	return discoveryv1.EndpointPort{Name: ptr(name), Protocol: ptr(proto), Port: ptr(port)}
}

// expected computes, from the objects as the API server holds them, what
// the datapath must contain: frontend -> "affinity|backend,backend".
func expected(t *testing.T, c kubernetes.Interface) map[string]string {
	t.Helper()
	ctx := context.Background()
	// The Services kube-proxy serves: its selector, as the API server
	// applies it.
	svcs, err := c.CoreV1().Services("").List(ctx, metav1.ListOptions{LabelSelector: "!" + k8s.LabelServiceProxyName + ",!" + k8s.LabelHeadless})
	if err != nil {
		t.Fatal(err)
	}
	sls, err := c.DiscoveryV1().EndpointSlices("").List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	node, err := c.CoreV1().Nodes().Get(ctx, testNode, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	bySvc := map[model.ServiceKey][]*model.EndpointSlice{}
	for i := range sls.Items {
		if m := k8s.EndpointSlice(&sls.Items[i]); m != nil {
			bySvc[m.Service] = append(bySvc[m.Service], m)
		}
	}
	per := map[model.ServiceKey][]servicemap.Entry{}
	for i := range svcs.Items {
		spec := k8s.ServiceSpec(&svcs.Items[i])
		per[spec.Key], _ = servicemap.ForService(servicemap.Node{Name: testNode, Addrs: k8s.Node(node).Addrs}, spec, bySvc[spec.Key], servicemap.Options{})
	}
	merged, _ := servicemap.Merge(per)
	out := map[string]string{}
	for _, e := range merged {
		out[e.Frontend.String()] = render(e.Affinity, e.Backends)
		if e.Kind != servicemap.KindClusterIP {
			out[e.Frontend.String()+" external"] = render(e.Affinity, e.External)
		}
	}
	return out
}

func render(aff time.Duration, bs []model.L4Addr) string {
	names := make([]string, len(bs))
	for i, b := range bs {
		names[i] = b.String()
	}
	slices.Sort(names)
	return fmt.Sprintf("%s|%s", aff, strings.Join(names, ","))
}

// actual reads the datapath's maps.
func actual(t *testing.T, d *datapath.Datapath) map[string]string {
	t.Helper()
	svcs, err := d.Services()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, s := range svcs {
		bs := make([]model.L4Addr, len(s.Backends))
		for i, b := range s.Backends {
			bs[i] = b.Backend
		}
		out[s.Name] = render(s.Affinity, bs)
	}
	return out
}

// converge waits until the datapath matches the API objects.
func converge(t *testing.T, c kubernetes.Interface, d *datapath.Datapath) map[string]string {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		want, got := expected(t, c), actual(t, d)
		if maps.Equal(want, got) {
			return got
		}
		if time.Now().After(deadline) {
			t.Fatalf("datapath did not converge\nwant %v\ngot  %v", want, got)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestAgentProgramsServicesFromAPI(t *testing.T) {
	testutil.RequireRoot(t)
	env := testenv.StartForTest(t, testenv.Options{})
	c := env.Client
	ctx := context.Background()
	createNodes(t, c)
	a := startAgent(t, env, nil)
	d := a.Datapath()

	webPorts := []discoveryv1.EndpointPort{epPort("http", corev1.ProtocolTCP, 8080), epPort("dns", corev1.ProtocolUDP, 5353)}
	mk := func(s *corev1.Service) *corev1.Service {
		s.Namespace = ns
		out, err := c.CoreV1().Services(ns).Create(ctx, s, metav1.CreateOptions{})
		if err != nil {
			t.Fatalf("create service %s: %v", s.Name, err)
		}
		return out
	}
	web := mk(&corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "web"}, Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{
		{Name: "http", Port: 80, TargetPort: intstr.FromString("http")},
		{Name: "dns", Port: 53, Protocol: corev1.ProtocolUDP, TargetPort: intstr.FromString("dns")},
	}}})
	// A LoadBalancer without ingress IPs yet: ClusterIP and NodePort frontends,
	// and a health check node port (externalTrafficPolicy Local).
	np := mk(&corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "np"}, Spec: corev1.ServiceSpec{
		Type: corev1.ServiceTypeLoadBalancer, ExternalTrafficPolicy: corev1.ServiceExternalTrafficPolicyLocal,
		Ports: []corev1.ServicePort{{Name: "http", Port: 8080}}}})
	mk(&corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "sticky"}, Spec: corev1.ServiceSpec{
		SessionAffinity:       corev1.ServiceAffinityClientIP,
		SessionAffinityConfig: &corev1.SessionAffinityConfig{ClientIP: &corev1.ClientIPConfig{TimeoutSeconds: ptr(int32(600))}},
		ExternalIPs:           []string{"203.0.113.10"},
		Ports:                 []corev1.ServicePort{{Name: "http", Port: 80}}}})
	empty := mk(&corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "empty"}, Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{{Port: 81}}}})
	mk(&corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "headless"}, Spec: corev1.ServiceSpec{ClusterIP: "None", Ports: []corev1.ServicePort{{Port: 80}}}})
	mk(&corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "foreign", Labels: map[string]string{k8s.LabelServiceProxyName: "other"}},
		Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{{Port: 80}}}})
	// A ClusterIP Service labelled headless: every proxy leaves it alone
	// (kube-proxy's selector; the upstream e2e test "should implement
	// service.kubernetes.io/headless").
	mk(&corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "labelled-headless", Labels: map[string]string{k8s.LabelHeadless: ""}},
		Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{{Port: 80}}}})

	for _, s := range []*discoveryv1.EndpointSlice{
		endpointSlice("web", "web-1", webPorts, readyOn("10.244.1.2", testNode), readyOn("10.244.2.2", "n2"),
			epSpec{"10.244.2.3", "n2", false, true, true}),
		endpointSlice("np", "np-1", []discoveryv1.EndpointPort{epPort("http", corev1.ProtocolTCP, 8080)},
			readyOn("10.244.1.7", testNode), readyOn("10.244.2.7", "n2")),
		endpointSlice("sticky", "sticky-1", []discoveryv1.EndpointPort{epPort("http", corev1.ProtocolTCP, 80)}, readyOn("10.244.2.9", "n2")),
		endpointSlice("headless", "headless-1", []discoveryv1.EndpointPort{epPort("", corev1.ProtocolTCP, 80)}, readyOn("10.244.2.10", "n2")),
		endpointSlice("foreign", "foreign-1", []discoveryv1.EndpointPort{epPort("", corev1.ProtocolTCP, 80)}, readyOn("10.244.2.11", "n2")),
		endpointSlice("labelled-headless", "labelled-headless-1", []discoveryv1.EndpointPort{epPort("", corev1.ProtocolTCP, 80)}, readyOn("10.244.2.12", "n2")),
	} {
		if _, err := c.DiscoveryV1().EndpointSlices(ns).Create(ctx, s, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}

	got := converge(t, c, d)
	// Beyond agreeing with the reference, the semantics, spelled out:
	npPort := np.Spec.Ports[0].NodePort
	for fe, want := range map[string]string{
		web.Spec.ClusterIP + ":80/TCP":  "0s|10.244.1.2:8080/TCP,10.244.2.2:8080/TCP", // named target port; terminating left out
		web.Spec.ClusterIP + ":53/UDP":  "0s|10.244.1.2:5353/UDP,10.244.2.2:5353/UDP",
		np.Spec.ClusterIP + ":8080/TCP": "0s|10.244.1.7:8080/TCP,10.244.2.7:8080/TCP",
		// externalTrafficPolicy Local limits traffic from outside; clients on
		// this node reach every endpoint, as with kube-proxy.
		fmt.Sprintf("%s:%d/TCP", nodeIP, npPort):          "0s|10.244.1.7:8080/TCP,10.244.2.7:8080/TCP",
		fmt.Sprintf("%s:%d/TCP external", nodeIP, npPort): "0s|10.244.1.7:8080/TCP", // traffic from outside: local endpoints only
		"203.0.113.10:80/TCP":                             "10m0s|10.244.2.9:80/TCP",
		empty.Spec.ClusterIP + ":81/TCP":                  "0s|",
	} {
		if got[fe] != want {
			t.Errorf("%s: got %q, want %q", fe, got[fe], want)
		}
	}
	// web x2, np x2, sticky x2 (cluster IP + external IP), empty, and
	// default/kubernetes (no endpoints here: the test API server runs with
	// the endpoint reconciler off).
	// NodePort and external IP frontends have an external-scope twin.
	if len(got) != 10 {
		t.Errorf("datapath has %d frontends, want 10 (headless, labelled headless and foreign ignored): %v", len(got), got)
	}

	// The health check node port of the externalTrafficPolicy=Local service
	// reports this node's endpoints, as kube-proxy's does.
	hc := fmt.Sprintf("http://127.0.0.1:%d/", np.Spec.HealthCheckNodePort)
	checkHC := func(wantCode, wantLocal int) {
		t.Helper()
		var (
			code int
			body hcResponse
		)
		deadline := time.Now().Add(5 * time.Second)
		for time.Now().Before(deadline) {
			resp, err := http.Get(hc)
			if err == nil {
				code = resp.StatusCode
				_ = json.NewDecoder(resp.Body).Decode(&body)
				resp.Body.Close()
				if code == wantCode && body.LocalEndpoints == wantLocal {
					return
				}
			}
			time.Sleep(50 * time.Millisecond)
		}
		t.Errorf("health check %s: %d %+v, want %d with %d local endpoints", hc, code, body, wantCode, wantLocal)
	}
	checkHC(200, 1)
	npSlice, _ := c.DiscoveryV1().EndpointSlices(ns).Get(ctx, "np-1", metav1.GetOptions{})
	npSlice.Endpoints = npSlice.Endpoints[1:] // drop the one on this node
	if _, err := c.DiscoveryV1().EndpointSlices(ns).Update(ctx, npSlice, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	checkHC(503, 0)

	// Updates: the ready endpoint on n2 goes away; only the terminating one
	// is left there, and ready ones elsewhere still win.
	sl, _ := c.DiscoveryV1().EndpointSlices(ns).Get(ctx, "web-1", metav1.GetOptions{})
	sl.Endpoints = slices.DeleteFunc(sl.Endpoints, func(e discoveryv1.Endpoint) bool { return e.Addresses[0] == "10.244.2.2" })
	if _, err := c.DiscoveryV1().EndpointSlices(ns).Update(ctx, sl, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	got = converge(t, c, d)
	if want := "0s|10.244.1.2:8080/TCP"; got[web.Spec.ClusterIP+":80/TCP"] != want {
		t.Errorf("after update: %q, want %q", got[web.Spec.ClusterIP+":80/TCP"], want)
	}
	// No ready endpoint at all: the terminating, still serving one takes over.
	sl, _ = c.DiscoveryV1().EndpointSlices(ns).Get(ctx, "web-1", metav1.GetOptions{})
	sl.Endpoints = slices.DeleteFunc(sl.Endpoints, func(e discoveryv1.Endpoint) bool { return e.Addresses[0] == "10.244.1.2" })
	if _, err := c.DiscoveryV1().EndpointSlices(ns).Update(ctx, sl, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	got = converge(t, c, d)
	if want := "0s|10.244.2.3:8080/TCP"; got[web.Spec.ClusterIP+":80/TCP"] != want {
		t.Errorf("only terminating left: %q, want %q", got[web.Spec.ClusterIP+":80/TCP"], want)
	}

	// Deleting services removes their frontends.
	for _, name := range []string{"web", "np"} {
		if err := c.CoreV1().Services(ns).Delete(ctx, name, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	got = converge(t, c, d)
	if len(got) != 5 {
		t.Errorf("after deletes: %v", got)
	}
	st := a.Status()
	if !st.Ready || st.Reconciler.LastError != "" {
		t.Errorf("status %+v", st)
	}
}

func cgroupRoot(t *testing.T) string {
	t.Helper()
	root, err := datapath.CgroupV2Root()
	if err != nil {
		t.Fatal(err)
	}
	return root
}
