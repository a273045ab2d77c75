package test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"

	"github.com/kpath/kpath/internal/agent"
	"github.com/kpath/kpath/internal/cli"
	"github.com/kpath/kpath/internal/datapath"
	"github.com/kpath/kpath/internal/testenv"
	"github.com/kpath/kpath/internal/testutil"
)

const (
	agentNode   = "n1"
	agentNodeIP = "192.168.50.1"
	testNS      = "kpath-test"
)

func ptr[T any](v T) *T { return &v }

// runningAgent is an in-process kpath-agent that a test can stop and start.
type runningAgent struct {
	*agent.Agent
	stop func()
}

func agentConfig(t *testing.T, env *testenv.Env) agent.Config {
	cfg := agent.DefaultConfig()
	cfg.Kubeconfig = env.Kubeconfig
	cfg.NodeName = agentNode
	cfg.PinDir = "kpath-test-agent-" + testutil.UniqueID()
	cfg.SocketHook = false
	cfg.CgroupRoot = testutil.NewCgroup(t, cgroupRoot(t)) // the host-network hook stays the test's
	cfg.APISocket = filepath.Join(t.TempDir(), "agent.sock")
	cfg.HubbleSocket = filepath.Join(filepath.Dir(cfg.APISocket), "hubble.sock")
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cfg.MetricsAddr = l.Addr().String()
	l.Close()
	cfg.MapSizes = datapath.MapSizes{Frontends: 4096, Backends: 8192, Slots: 16384, Maglev: 64,
		Affinity: 1024, Conntrack: 16384, SockRevNat: 1024, Fragments: 256,
		IPCache: 1024, Endpoints: 256, PolicyEntries: 65536, PolicyCIDRs: 4096}
	cfg.MaglevTableSize = 251
	t.Cleanup(func() { _ = datapath.Reset(cfg.Datapath()) })
	return cfg
}

func runAgent(t *testing.T, cfg agent.Config, waitReady bool) *runningAgent {
	t.Helper()
	var w io.Writer = io.Discard
	if testing.Verbose() {
		w = logWriter{t}
	}
	a, err := agent.New(cfg, slog.New(slog.NewTextHandler(w, nil)))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	stopped := false
	ra := &runningAgent{Agent: a, stop: func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		if err := <-done; err != nil {
			t.Errorf("agent: %v", err)
		}
	}}
	t.Cleanup(ra.stop)
	if waitReady {
		waitFor(t, 30*time.Second, "agent ready", a.Ready)
	}
	return ra
}

func waitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func setupCluster(t testing.TB, c kubernetes.Interface) {
	t.Helper()
	ctx := context.Background()
	n, err := c.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: agentNode}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	n.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: agentNodeIP}}
	if _, err := c.CoreV1().Nodes().UpdateStatus(ctx, n, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: testNS}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

func backendSlice(name string, ips ...string) *discoveryv1.EndpointSlice {
	s := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Name: name + "-1", Namespace: testNS, Labels: map[string]string{discoveryv1.LabelServiceName: name}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports: []discoveryv1.EndpointPort{
			{Name: ptr("http"), Protocol: ptr(corev1.ProtocolTCP), Port: ptr(int32(httpPort))},
			{Name: ptr("line"), Protocol: ptr(corev1.ProtocolTCP), Port: ptr(int32(linePort))},
		},
	}
	for _, ip := range ips {
		s.Endpoints = append(s.Endpoints, discoveryv1.Endpoint{Addresses: []string{ip}, NodeName: ptr(agentNode),
			Conditions: discoveryv1.EndpointConditions{Ready: ptr(true)}})
	}
	return s
}

// frontendBackends returns the backends of a frontend in the datapath.
func frontendBackends(d *datapath.Datapath, fe string) ([]string, bool) {
	svcs, err := d.Services()
	if err != nil {
		return nil, false
	}
	for _, s := range svcs {
		if s.Name == fe {
			var out []string
			for _, b := range s.Backends {
				out = append(out, b.Name)
			}
			return out, true
		}
	}
	return nil, false
}

func runCLI(t *testing.T, args ...string) string {
	t.Helper()
	root := cli.NewRoot()
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&out)
	root.SetArgs(args)
	if err := root.Execute(); err != nil {
		t.Fatalf("kpath %s: %v\n%s", strings.Join(args, " "), err, out.String())
	}
	return out.String()
}

func TestAgentEndToEnd(t *testing.T) {
	testutil.RequireRoot(t)
	env := testenv.StartForTest(t, testenv.Options{})
	c := env.Client
	ctx := context.Background()
	setupCluster(t, c)
	l := newTopology(t, nil)
	cfg := agentConfig(t, env)
	a := runAgent(t, cfg, true)
	l.attach(t, a.Datapath())
	top := t // agents started in subtests must outlive them

	svc, err := c.CoreV1().Services(testNS).Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: testNS},
		Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeNodePort, Ports: []corev1.ServicePort{
			{Name: "http", Port: 80, TargetPort: intstr.FromString("http")},
			{Name: "line", Port: 9000, TargetPort: intstr.FromString("line")},
		}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.DiscoveryV1().EndpointSlices(testNS).Create(ctx, backendSlice("web", l.be1, l.be2), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	vip := svc.Spec.ClusterIP
	nodePort := svc.Spec.Ports[0].NodePort
	waitFor(t, 10*time.Second, "service in the datapath", func() bool {
		bs, _ := frontendBackends(a.Datapath(), fmt.Sprintf("%s:%d/TCP", agentNodeIP, nodePort))
		return len(bs) == 2
	})

	t.Run("traffic to ClusterIP and NodePort", func(t *testing.T) {
		for _, target := range []string{vip + ":80", fmt.Sprintf("%s:%d", agentNodeIP, nodePort)} {
			counts := l.client.do(t, "http "+target+" 60").Counts
			t.Logf("%s: %v", target, counts)
			if counts[l.be1] == 0 || counts[l.be2] == 0 {
				t.Errorf("%s: not spread over both backends: %v", target, counts)
			}
		}
	})

	t.Run("CLI, health and metrics", func(t *testing.T) {
		var st agent.Status
		if err := json.Unmarshal([]byte(runCLI(t, "--socket", cfg.APISocket, "status", "-o", "json")), &st); err != nil {
			t.Fatal(err)
		}
		if !st.Ready || st.Node != agentNode || st.Services < 2 {
			t.Errorf("status = %+v", st)
		}
		if out := runCLI(t, "--socket", cfg.APISocket, "service", "list"); !strings.Contains(out, "kpath-test/web") || !strings.Contains(out, "NodePort") {
			t.Errorf("service list:\n%s", out)
		}
		var lb []datapath.ServiceInfo
		if err := json.Unmarshal([]byte(runCLI(t, "--socket", cfg.APISocket, "bpf", "lb", "list", "-o", "json")), &lb); err != nil || len(lb) < 4 {
			t.Errorf("bpf lb list: %v %+v", err, lb)
		}
		var ct []datapath.CTEntry
		if err := json.Unmarshal([]byte(runCLI(t, "--socket", cfg.APISocket, "bpf", "ct", "list", "-o", "json")), &ct); err != nil || len(ct) == 0 {
			t.Errorf("bpf ct list: %v, %d entries", err, len(ct))
		}
		for path, want := range map[string]string{
			"/healthz": "ok", "/readyz": "ok",
			"/metrics": "kpath_service_event_to_datapath_seconds_count",
		} {
			resp, err := http.Get("http://" + cfg.MetricsAddr + path)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 || !strings.Contains(string(body), want) {
				t.Errorf("%s: %s %q", path, resp.Status, want)
			}
		}
		resp, _ := http.Get("http://" + cfg.MetricsAddr + "/metrics")
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		for _, m := range []string{`kpath_map_fill_ratio{map="kp_ct"}`, `kpath_datapath_packets_total{dir="from-pod",reason="service translated",verdict="forward"}`, "kpath_reconcile_pending_changes"} {
			if !strings.Contains(string(body), m) {
				t.Errorf("metrics lack %s", m)
			}
		}
	})

	t.Run("host port", func(t *testing.T) {
		// A pod's hostPort is served on the node's addresses (and
		// 127.0.0.1) as a Service whose only backend is the pod.
		// (This API server runs no service account controller.)
		if _, err := c.CoreV1().ServiceAccounts(testNS).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "default"}},
			metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			t.Fatal(err)
		}
		pod, err := c.CoreV1().Pods(testNS).Create(ctx, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "hostport", Namespace: testNS},
			Spec: corev1.PodSpec{NodeName: agentNode, Containers: []corev1.Container{{Name: "c", Image: "none",
				Ports: []corev1.ContainerPort{{ContainerPort: httpPort, HostPort: 54323}}}}}}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		pod.Status.PodIP, pod.Status.PodIPs = l.be1, []corev1.PodIP{{IP: l.be1}}
		if _, err := c.CoreV1().Pods(testNS).UpdateStatus(ctx, pod, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		fe := fmt.Sprintf("%s:54323", agentNodeIP)
		waitFor(t, 10*time.Second, "the host port in the datapath", func() bool {
			bs, _ := frontendBackends(a.Datapath(), fe+"/TCP")
			lo, _ := frontendBackends(a.Datapath(), "127.0.0.1:54323/TCP")
			return len(bs) == 1 && len(lo) == 1
		})
		if counts := l.client.do(t, "http "+fe+" 10").Counts; counts[l.be1] != 10 {
			t.Errorf("through the host port: %v, want every request answered by the pod", counts)
		}
		if err := c.CoreV1().Pods(testNS).Delete(ctx, pod.Name, metav1.DeleteOptions{GracePeriodSeconds: ptr(int64(0))}); err != nil {
			t.Fatal(err)
		}
		waitFor(t, 10*time.Second, "the host port gone with its pod", func() bool {
			_, ok := frontendBackends(a.Datapath(), fe+"/TCP")
			return !ok
		})
	})

	t.Run("agent restart keeps connections and services", func(t *testing.T) {
		first := l.client.do(t, "hold "+vip+":9000").Answer
		a.stop()
		// Between agents the pinned datapath keeps serving.
		if n := len(l.client.do(t, "lines "+vip+":9000 10").Counts); n == 0 {
			t.Fatal("no answers while the agent was down")
		}
		a = runAgent(top, cfg, true)
		if got := l.client.do(t, "held").Answer; got != first {
			t.Errorf("established connection answered by %q after restart, want %q", got, first)
		}
		if counts := l.client.do(t, "lines "+vip+":9000 20").Counts; counts[l.be1]+counts[l.be2] != 20 {
			t.Errorf("after restart: %v", counts)
		}
	})

	t.Run("API server outage", func(t *testing.T) {
		env.StopAPIServer()
		if counts := l.client.do(t, "lines "+vip+":9000 10").Counts; counts[l.be1]+counts[l.be2] != 10 {
			t.Errorf("during the outage: %v", counts)
		}
		if err := env.RestartAPIServer(ctx); err != nil {
			t.Fatal(err)
		}
		// A change right after the outage reaches the datapath.
		s := backendSlice("web", l.be1)
		old, err := c.DiscoveryV1().EndpointSlices(testNS).Get(ctx, s.Name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		s.ResourceVersion = old.ResourceVersion
		if _, err := c.DiscoveryV1().EndpointSlices(testNS).Update(ctx, s, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		waitFor(t, 30*time.Second, "the change made after the outage", func() bool {
			bs, _ := frontendBackends(a.Datapath(), vip+":9000/TCP")
			return len(bs) == 1
		})
		if counts := l.client.do(t, "lines "+vip+":9000 10").Counts; counts[l.be1] != 10 {
			t.Errorf("after the change: %v", counts)
		}
	})
}

func TestAgentBadInput(t *testing.T) {
	testutil.RequireRoot(t)
	env := testenv.StartForTest(t, testenv.Options{})
	c := env.Client
	ctx := context.Background()
	setupCluster(t, c)

	t.Run("unreachable API server at start", func(t *testing.T) {
		bad := agentConfig(t, env)
		kc := filepath.Join(t.TempDir(), "kubeconfig")
		data := fmt.Sprintf("apiVersion: v1\nkind: Config\nclusters: [{name: x, cluster: {server: 'https://127.0.0.1:1', insecure-skip-tls-verify: true}}]\n" +
			"users: [{name: x, user: {token: t}}]\ncontexts: [{name: x, context: {cluster: x, user: x}}]\ncurrent-context: x\n")
		if err := writeFile(kc, data); err != nil {
			t.Fatal(err)
		}
		bad.Kubeconfig = kc
		a := runAgent(t, bad, false)
		time.Sleep(time.Second)
		if a.Ready() {
			t.Fatal("ready without an API server")
		}
		resp, err := http.Get("http://" + bad.MetricsAddr + "/readyz")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusServiceUnavailable {
			t.Errorf("/readyz = %s, want 503", resp.Status)
		}
		a.stop()
	})

	t.Run("invalid configuration fails before attaching", func(t *testing.T) {
		bad := agentConfig(t, env)
		bad.MaglevTableSize = 1000
		bad.APISocket = "relative.sock"
		_, err := agent.New(bad, slog.Default())
		if err == nil || !strings.Contains(err.Error(), "not prime") || !strings.Contains(err.Error(), "apiSocket") {
			t.Fatalf("New with two mistakes: %v (want both named)", err)
		}
	})

	t.Run("port clash and invalid endpoints", func(t *testing.T) {
		cfg := agentConfig(t, env)
		a := runAgent(t, cfg, true)
		for _, name := range []string{"a", "b"} {
			_, err := c.CoreV1().Services(testNS).Create(ctx, &corev1.Service{
				ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: testNS},
				Spec:       corev1.ServiceSpec{ExternalIPs: []string{"203.0.113.5"}, Ports: []corev1.ServicePort{{Name: "http", Port: 80}}},
			}, metav1.CreateOptions{})
			if err != nil {
				t.Fatal(err)
			}
		}
		// The API server validates EndpointSlice addresses; an invalid one
		// never reaches kpath (the converter's own handling is unit-tested).
		s := backendSlice("a", "10.244.0.300")
		if _, err := c.DiscoveryV1().EndpointSlices(testNS).Create(ctx, s, metav1.CreateOptions{}); err == nil {
			t.Log("API server accepted an invalid endpoint address; kpath drops it with a counted reason")
		}
		waitFor(t, 10*time.Second, "external IP frontend", func() bool {
			_, ok := frontendBackends(a.Datapath(), "203.0.113.5:80/TCP")
			return ok
		})
		resp, err := http.Get("http://" + cfg.MetricsAddr + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if !strings.Contains(string(body), `kpath_service_input_problems_total{reason="frontend-clash"}`) {
			t.Errorf("no frontend-clash problem counted")
		}
		if st := a.Status(); !st.Ready || st.Reconciler.LastError != "" {
			t.Errorf("a clash disturbed the agent: %+v", st)
		}
	})
}

func writeFile(path, data string) error {
	return os.WriteFile(path, []byte(data), 0o600)
}

type logWriter struct{ t *testing.T }

func (w logWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

func cgroupRoot(t *testing.T) string {
	t.Helper()
	root, err := datapath.CgroupV2Root()
	if err != nil {
		t.Fatal(err)
	}
	return root
}
