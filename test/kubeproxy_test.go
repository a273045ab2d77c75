package test

import (
	"context"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"

	"github.com/kpath/kpath/internal/datapath"
	"github.com/kpath/kpath/internal/k8s"
	"github.com/kpath/kpath/internal/testenv"
	"github.com/kpath/kpath/internal/testutil"
)

// startKubeProxy runs the real kube-proxy in iptables mode in a network
// namespace of its own, as node agentNode.
func startKubeProxy(t *testing.T, env *testenv.Env, binDir string) string {
	t.Helper()
	testutil.RequireTool(t, "iptables", "iptables-save")
	ns := testutil.NewNetns(t, "kpt-"+testutil.UniqueID()+"-kp")
	testutil.Run(t, "ip", "-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", "eth1")
	testutil.Run(t, "ip", "-n", ns, "addr", "add", agentNodeIP+"/24", "dev", "eth0")
	testutil.Run(t, "ip", "-n", ns, "link", "set", "eth0", "up")
	testutil.ForwardIntoNetns(t, ns, strings.TrimPrefix(env.APIServerURL, "https://"))
	logPath := filepath.Join(t.TempDir(), "kube-proxy.log")
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("ip", "netns", "exec", ns, filepath.Join(binDir, "kube-proxy"),
		"--kubeconfig="+env.Kubeconfig, "--hostname-override="+agentNode, "--proxy-mode=iptables",
		"--conntrack-max-per-core=0", "--conntrack-tcp-timeout-established=0", "--conntrack-tcp-timeout-close-wait=0",
		"--metrics-bind-address=127.0.0.1:10249", "--healthz-bind-address=127.0.0.1:10256",
		"--cluster-cidr=10.244.0.0/16", "--v=2")
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
		logf.Close()
		if t.Failed() {
			data, _ := os.ReadFile(logPath)
			lines := strings.Split(string(data), "\n")
			t.Logf("kube-proxy log (tail):\n%s", strings.Join(lines[max(0, len(lines)-40):], "\n"))
		}
	})
	return ns
}

var (
	reDst     = regexp.MustCompile(`-d (\S+)/32`)
	reProto   = regexp.MustCompile(`-p (tcp|udp)`)
	reDport   = regexp.MustCompile(`--dport (\d+)`)
	reJump    = regexp.MustCompile(`-j (\S+)`)
	reDNAT    = regexp.MustCompile(`--to-destination (\S+)`)
	reSeconds = regexp.MustCompile(`--rcheck --seconds (\d+)`)
	reComment = regexp.MustCompile(`--comment "?([^"]*?)"? -`)
	reSrc     = regexp.MustCompile(`-s (\S+)`)
)

// kubeProxyView reads kube-proxy's rules in netns ns and returns, per
// frontend, "affinity|backend,backend" as the kpath side renders it.
func kubeProxyView(t *testing.T, ns string) map[string]string {
	t.Helper()
	nat := testutil.Run(t, "ip", "netns", "exec", ns, "iptables-save", "-t", "nat")
	filter := testutil.Run(t, "ip", "netns", "exec", ns, "iptables-save", "-t", "filter")
	chains := map[string][]string{}
	for _, l := range strings.Split(nat, "\n") {
		if f := strings.Fields(l); len(f) > 1 && f[0] == "-A" {
			chains[f[1]] = append(chains[f[1]], l)
		}
	}
	jump := func(l string) string {
		if m := reJump.FindStringSubmatch(l); m != nil {
			return m[1]
		}
		return ""
	}
	// backends follows a chain down to DNAT targets.
	var backends func(chain string, depth int) ([]string, string)
	backends = func(chain string, depth int) ([]string, string) {
		if depth > 4 {
			return nil, ""
		}
		var out []string
		aff := ""
		for _, l := range chains[chain] {
			if m := reDNAT.FindStringSubmatch(l); m != nil {
				out = append(out, m[1])
			}
			if m := reSeconds.FindStringSubmatch(l); m != nil {
				aff = m[1]
			}
			j := jump(l)
			if strings.HasPrefix(j, "KUBE-SVC-") || strings.HasPrefix(j, "KUBE-SVL-") || strings.HasPrefix(j, "KUBE-SEP-") {
				if strings.Contains(l, "--rcheck") {
					continue // affinity shortcut to a SEP also listed below
				}
				b, a := backends(j, depth+1)
				out = append(out, b...)
				if a != "" {
					aff = a
				}
			}
		}
		return out, aff
	}
	view := map[string]string{}
	add := func(fe string, bs []string, aff string) {
		sort.Strings(bs)
		bs = slices.Compact(bs)
		d := "0s"
		if aff != "" {
			var secs int
			fmt.Sscan(aff, &secs)
			d = (time.Duration(secs) * time.Second).String()
		}
		view[fe] = d + "|" + strings.Join(bs, ",")
	}
	frontend := func(l, addr string) string {
		p := reProto.FindStringSubmatch(l)
		dp := reDport.FindStringSubmatch(l)
		if p == nil || dp == nil {
			return ""
		}
		return fmt.Sprintf("%s:%s/%s", addr, dp[1], strings.ToUpper(p[1]))
	}
	// ext follows a KUBE-EXT chain the way traffic from outside the node
	// does (local false: past the short-circuits for pod sources, -s
	// CLUSTER-CIDR, and node-local ones, --src-type LOCAL, which only
	// externalTrafficPolicy Local has) or the way the node's own pods and
	// processes do (local true: those short-circuits, where there are any).
	ext := func(chain string, local bool) ([]string, string) {
		var short, rest [][]string
		for _, l := range chains[chain] {
			j := jump(l)
			if !strings.HasPrefix(j, "KUBE-SVC-") && !strings.HasPrefix(j, "KUBE-SVL-") {
				continue
			}
			b, a := backends(j, 1)
			if strings.Contains(l, " -s ") || strings.Contains(l, "--src-type LOCAL") {
				short = append(short, append(b, a))
			} else {
				rest = append(rest, append(b, a))
			}
		}
		take := rest
		if local && len(short) > 0 {
			take = short
		}
		var (
			out []string
			aff string
		)
		for _, b := range take {
			out, aff = append(out, b[:len(b)-1]...), b[len(b)-1]
		}
		return out, aff
	}
	frontendRule := func(l, fe string) {
		j := jump(l)
		// A load-balancer IP with loadBalancerSourceRanges goes through
		// its KUBE-FW chain: the sources it admits, then on as without.
		ranges := ""
		if strings.HasPrefix(j, "KUBE-FW-") {
			var srcs []string
			next := ""
			for _, fl := range chains[j] {
				if m := reSrc.FindStringSubmatch(fl); m != nil {
					srcs = append(srcs, m[1])
					next = jump(fl)
				}
			}
			sort.Strings(srcs)
			ranges, j = "|src "+strings.Join(srcs, ","), next
		}
		if !strings.HasPrefix(j, "KUBE-EXT-") {
			bs, aff := backends(j, 0)
			add(fe, protoSuffix(bs, fe), aff)
			view[fe] += ranges
			return
		}
		bs, aff := ext(j, true)
		add(fe, protoSuffix(bs, fe), aff)
		bs, aff = ext(j, false)
		add(fe+" external", protoSuffix(bs, fe), aff)
		view[fe] += ranges
		view[fe+" external"] += ranges
	}
	for _, l := range chains["KUBE-SERVICES"] {
		if d := reDst.FindStringSubmatch(l); d != nil {
			if fe := frontend(l, d[1]); fe != "" {
				frontendRule(l, fe)
			}
		}
	}
	for _, l := range chains["KUBE-NODEPORTS"] {
		if fe := frontend(l, agentNodeIP); fe != "" {
			frontendRule(l, fe)
		}
	}
	// Frontends without (usable) endpoints are rejected or dropped in the
	// filter table.
	for _, l := range strings.Split(filter, "\n") {
		if !strings.HasPrefix(l, "-A KUBE-SERVICES") && !strings.HasPrefix(l, "-A KUBE-EXTERNAL-SERVICES") {
			continue
		}
		j := jump(l)
		if j != "REJECT" && j != "DROP" {
			continue
		}
		addr := agentNodeIP
		if d := reDst.FindStringSubmatch(l); d != nil {
			addr = d[1]
		}
		if fe := frontend(l, addr); fe != "" {
			if strings.Contains(l, "has no local endpoints") {
				add(fe+" external", nil, "")
				continue
			}
			if _, ok := view[fe]; !ok {
				add(fe, nil, "")
				if addr != agentNodeIP && !strings.HasPrefix(addr, "10.96.") || strings.HasPrefix(l, "-A KUBE-EXTERNAL-SERVICES") {
					add(fe+" external", nil, "")
				}
			}
		}
	}
	return view
}

// protoSuffix renders DNAT targets like kpath's backends: "ip:port/PROTO".
func protoSuffix(bs []string, fe string) []string {
	proto := fe[strings.LastIndex(fe, "/"):]
	out := make([]string, len(bs))
	for i, b := range bs {
		out[i] = b + proto
	}
	return out
}

func kpathView(t *testing.T, d *datapath.Datapath) map[string]string {
	t.Helper()
	svcs, err := d.Services()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, s := range svcs {
		var bs []string
		for _, b := range s.Backends {
			bs = append(bs, b.Name)
		}
		sort.Strings(bs)
		out[s.Name] = s.Affinity.String() + "|" + strings.Join(bs, ",")
		if len(s.SourceRanges) > 0 {
			var rs []string
			for _, p := range s.SourceRanges {
				rs = append(rs, p.String())
			}
			sort.Strings(rs)
			out[s.Name] += "|src " + strings.Join(rs, ",")
		}
	}
	return out
}

// createScenario creates Services and EndpointSlices that exercise the
// semantics kube-proxy and kpath must agree on.
func createScenario(t *testing.T, c kubernetes.Interface) {
	t.Helper()
	ctx := context.Background()
	svc := func(name string, mut func(*corev1.Service)) {
		s := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: testNS},
			Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{
				{Name: "http", Port: 80, TargetPort: intstr.FromString("http")},
				{Name: "dns", Port: 53, Protocol: corev1.ProtocolUDP, TargetPort: intstr.FromString("dns")},
			}}}
		if mut != nil {
			mut(s)
		}
		created, err := c.CoreV1().Services(testNS).Create(ctx, s, metav1.CreateOptions{})
		if err != nil {
			t.Fatalf("service %s: %v", name, err)
		}
		if len(s.Status.LoadBalancer.Ingress) > 0 {
			created.Status = s.Status
			if _, err := c.CoreV1().Services(testNS).UpdateStatus(ctx, created, metav1.UpdateOptions{}); err != nil {
				t.Fatal(err)
			}
		}
	}
	slice := func(svcName, name string, eps ...epCond) {
		s := &discoveryv1.EndpointSlice{
			ObjectMeta:  metav1.ObjectMeta{Name: name, Namespace: testNS, Labels: map[string]string{discoveryv1.LabelServiceName: svcName}},
			AddressType: discoveryv1.AddressTypeIPv4,
			Ports: []discoveryv1.EndpointPort{
				{Name: ptr("http"), Protocol: ptr(corev1.ProtocolTCP), Port: ptr(int32(8080))},
				{Name: ptr("dns"), Protocol: ptr(corev1.ProtocolUDP), Port: ptr(int32(5353))},
			},
		}
		for _, e := range eps {
			ep := discoveryv1.Endpoint{Addresses: []string{e.ip}, NodeName: ptr(e.node),
				Conditions: discoveryv1.EndpointConditions{Ready: ptr(e.ready), Serving: ptr(e.serving), Terminating: ptr(e.terminating)}}
			if e.zones != nil || e.nodes != nil {
				ep.Hints = &discoveryv1.EndpointHints{}
				for _, z := range e.zones {
					ep.Hints.ForZones = append(ep.Hints.ForZones, discoveryv1.ForZone{Name: z})
				}
				for _, n := range e.nodes {
					ep.Hints.ForNodes = append(ep.Hints.ForNodes, discoveryv1.ForNode{Name: n})
				}
			}
			s.Endpoints = append(s.Endpoints, ep)
		}
		if _, err := c.DiscoveryV1().EndpointSlices(testNS).Create(ctx, s, metav1.CreateOptions{}); err != nil {
			t.Fatalf("slice %s: %v", name, err)
		}
	}
	local, remote := agentNode, "n2"
	svc("plain", nil)
	slice("plain", "plain-a", ready("10.244.1.2", local), ready("10.244.2.2", remote))
	slice("plain", "plain-b", ready("10.244.2.3", remote), epCond{ip: "10.244.2.4", node: remote})
	svc("terminating", nil)
	slice("terminating", "terminating-a", ready("10.244.2.5", remote), epCond{ip: "10.244.2.6", node: remote, serving: true, terminating: true})
	svc("only-terminating", nil)
	slice("only-terminating", "only-terminating-a", epCond{ip: "10.244.2.7", node: remote, serving: true, terminating: true},
		epCond{ip: "10.244.2.8", node: remote, terminating: true})
	svc("nodeport-local", func(s *corev1.Service) {
		s.Spec.Type = corev1.ServiceTypeNodePort
		s.Spec.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicyLocal
	})
	slice("nodeport-local", "nodeport-local-a", ready("10.244.1.9", local), ready("10.244.2.9", remote))
	svc("nodeport-nolocal", func(s *corev1.Service) {
		s.Spec.Type = corev1.ServiceTypeNodePort
		s.Spec.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicyLocal
	})
	slice("nodeport-nolocal", "nodeport-nolocal-a", ready("10.244.2.10", remote))
	svc("internal-local", func(s *corev1.Service) {
		s.Spec.InternalTrafficPolicy = ptr(corev1.ServiceInternalTrafficPolicyLocal)
	})
	slice("internal-local", "internal-local-a", ready("10.244.1.11", local), ready("10.244.2.11", remote))
	svc("affinity", func(s *corev1.Service) {
		s.Spec.SessionAffinity = corev1.ServiceAffinityClientIP
		s.Spec.SessionAffinityConfig = &corev1.SessionAffinityConfig{ClientIP: &corev1.ClientIPConfig{TimeoutSeconds: ptr(int32(900))}}
		s.Spec.ExternalIPs = []string{"203.0.113.20"}
	})
	slice("affinity", "affinity-a", ready("10.244.2.12", remote), ready("10.244.2.13", remote))
	svc("no-endpoints", nil)
	svc("lb", func(s *corev1.Service) {
		s.Spec.Type = corev1.ServiceTypeLoadBalancer
		s.Status.LoadBalancer.Ingress = []corev1.LoadBalancerIngress{{IP: "198.51.100.30"}}
	})
	slice("lb", "lb-a", ready("10.244.2.14", remote))
	// loadBalancerSourceRanges: one holds the node's address (so the
	// load-balancer IP itself is admitted as a source too), one does not,
	// one admits any source.
	ranged := func(ip string, ranges ...string) func(*corev1.Service) {
		return func(s *corev1.Service) {
			s.Spec.Type = corev1.ServiceTypeLoadBalancer
			s.Spec.LoadBalancerSourceRanges = ranges
			s.Status.LoadBalancer.Ingress = []corev1.LoadBalancerIngress{{IP: ip}}
		}
	}
	svc("lb-ranges-node", ranged("198.51.100.31", "203.0.113.0/24", " 192.168.50.0/24 "))
	slice("lb-ranges-node", "lb-ranges-node-a", ready("10.244.2.31", remote))
	svc("lb-ranges", ranged("198.51.100.32", "203.0.113.0/25", "10.0.0.0/8"))
	slice("lb-ranges", "lb-ranges-a", ready("10.244.2.32", remote))
	svc("lb-ranges-any", ranged("198.51.100.33", "203.0.113.0/24", "0.0.0.0/0"))
	slice("lb-ranges-any", "lb-ranges-any-a", ready("10.244.2.33", remote))
	svc("headless", func(s *corev1.Service) { s.Spec.ClusterIP = corev1.ClusterIPNone })
	slice("headless", "headless-a", ready("10.244.2.15", remote))
	svc("foreign", func(s *corev1.Service) { s.Labels = map[string]string{k8s.LabelServiceProxyName: "other"} })
	slice("foreign", "foreign-a", ready("10.244.2.16", remote))

	// Topology: the agent's node is in zone agentZone (see
	// TestDifferentialAgainstKubeProxy); hints as the EndpointSlice
	// controller writes them for trafficDistribution.
	zone := func(e epCond, zones ...string) epCond { e.zones = zones; return e }
	same := func(e epCond, zone string) epCond { e.zones, e.nodes = []string{zone}, []string{e.node}; return e }
	svc("zone-hints", nil) // PreferClose / PreferSameZone
	slice("zone-hints", "zone-hints-a", zone(ready("10.244.1.20", local), agentZone), zone(ready("10.244.2.20", remote), "zone-b"),
		zone(ready("10.244.2.21", remote), agentZone, "zone-c"), epCond{ip: "10.244.2.22", node: remote})
	svc("zone-hints-elsewhere", nil) // none for this zone: every endpoint
	slice("zone-hints-elsewhere", "zone-hints-elsewhere-a", zone(ready("10.244.2.23", remote), "zone-b"), zone(ready("10.244.2.24", remote), "zone-c"))
	svc("zone-hints-partial", nil) // one endpoint without: every endpoint
	slice("zone-hints-partial", "zone-hints-partial-a", zone(ready("10.244.1.25", local), agentZone), ready("10.244.2.25", remote))
	svc("node-hints", func(s *corev1.Service) { s.Spec.Type = corev1.ServiceTypeNodePort }) // PreferSameNode
	slice("node-hints", "node-hints-a", same(ready("10.244.1.26", local), agentZone), same(ready("10.244.2.26", remote), agentZone),
		same(ready("10.244.2.27", "n3"), "zone-b"))
	svc("node-hints-elsewhere", nil) // none for this node: the zone's
	slice("node-hints-elsewhere", "node-hints-elsewhere-a", same(ready("10.244.2.28", remote), agentZone), same(ready("10.244.2.29", "n3"), "zone-b"))
	svc("zone-hints-local", func(s *corev1.Service) { // eTP Local: topology only for clients of the node
		s.Spec.Type = corev1.ServiceTypeNodePort
		s.Spec.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicyLocal
	})
	slice("zone-hints-local", "zone-hints-local-a", zone(ready("10.244.1.30", local), "zone-b"), zone(ready("10.244.2.30", remote), agentZone))
}

// agentZone is the topology.kubernetes.io/zone of the agent's node in the
// differential test.
const agentZone = "zone-a"

type epCond struct {
	ip, node                    string
	ready, serving, terminating bool
	zones, nodes                []string // topology hints
}

func ready(ip, node string) epCond { return epCond{ip: ip, node: node, ready: true, serving: true} }

// TestDifferentialAgainstKubeProxy runs the real kube-proxy (iptables mode)
// and kpath against the same API server and compares, frontend by
// frontend, which backends each can reach.
func TestDifferentialAgainstKubeProxy(t *testing.T) {
	testutil.RequireRoot(t)
	binDir, err := testenv.BinDir()
	if err != nil {
		testutil.SkipOrFail(t, err.Error())
	}
	if _, err := os.Stat(filepath.Join(binDir, "kube-proxy")); err != nil {
		testutil.SkipOrFail(t, "kube-proxy not built: run make k8s-bins")
	}
	env := testenv.StartForTest(t, testenv.Options{BinDir: binDir})
	c := env.Client
	setupCluster(t, c)
	node, err := c.CoreV1().Nodes().Get(context.Background(), agentNode, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	node.Labels = map[string]string{corev1.LabelTopologyZone: agentZone}
	if _, err := c.CoreV1().Nodes().Update(context.Background(), node, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	createScenario(t, c)
	kp := startKubeProxy(t, env, binDir)
	a := runAgent(t, agentConfig(t, env), true)

	var want, got map[string]string
	deadline := time.Now().Add(60 * time.Second)
	for {
		want, got = kubeProxyView(t, kp), kpathView(t, a.Datapath())
		// kube-proxy programs the default/kubernetes service too; it has no
		// endpoints here (the test API server does not publish them).
		if maps.Equal(want, got) || time.Now().After(deadline) {
			break
		}
		time.Sleep(500 * time.Millisecond)
	}
	keys := slices.Sorted(maps.Keys(want))
	for k := range got {
		if _, ok := want[k]; !ok {
			keys = append(keys, k)
		}
	}
	for _, fe := range keys {
		if want[fe] != got[fe] {
			t.Errorf("%-24s kube-proxy %-45q kpath %q", fe, want[fe], got[fe])
		} else {
			t.Logf("%-24s both %q", fe, got[fe])
		}
	}
	if len(want) < 15 {
		t.Errorf("kube-proxy view has only %d frontends; the rule reader missed some", len(want))
	}
}
