package test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	types100 "github.com/containernetworking/cni/pkg/types/100"

	"github.com/kpath/kpath/internal/cniapi"
	"github.com/kpath/kpath/internal/cniplugin"
	"github.com/kpath/kpath/internal/datapath"
	"github.com/kpath/kpath/internal/testenv"
	"github.com/kpath/kpath/internal/testutil"
)

// cniLab is a node namespace running a real kpath-agent process, and the
// kpath-cni binary installed for libcni.
type cniLab struct {
	node, socket, binDir, cacheDir string
	pinPath                        string
	cni                            *libcni.CNIConfig
}

// pins lists the pinned tcx links of a host-side interface.
// dp runs `kpath dp ARGS` on the agent's pinned datapath in the node.
func (l *cniLab) dp(t testing.TB, args ...string) string {
	t.Helper()
	out, err := exec.Command("nsenter", append([]string{"--net=/run/netns/" + l.node, filepath.Join(l.binDir, "cli", "kpath"), "dp",
		"--pin-dir", filepath.Base(l.pinPath)}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("kpath dp %v: %v: %s", args, err, out)
	}
	return string(out)
}

func (l *cniLab) pins(hostIf string) []string {
	m, _ := filepath.Glob(filepath.Join(l.pinPath, "links", "tcx_"+hostIf+"_*"))
	return m
}

// buildBinaries builds kpath-agent, kpath-cni (as "kpath", its type) and,
// in the cli subdirectory, the kpath command.
func buildBinaries(t testing.TB) string {
	t.Helper()
	dir := t.TempDir()
	for out, pkg := range map[string]string{"kpath-agent": "../cmd/kpath-agent", "kpath": "../cmd/kpath-cni", "cli/kpath": "../cmd/kpath"} {
		cmd := exec.Command("go", "build", "-o", filepath.Join(dir, out), pkg)
		if b, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("build %s: %v\n%s", pkg, err, b)
		}
	}
	return dir
}

func newCNILab(t testing.TB) *cniLab {
	t.Helper()
	testutil.RequireRoot(t)
	testutil.RequireTool(t, "ip", "nsenter")
	env := testenv.StartForTest(t, testenv.Options{})
	setupCluster(t, env.Client)
	l := &cniLab{binDir: buildBinaries(t), cacheDir: t.TempDir()}
	l.node = testutil.NewNetns(t, "kpt-"+testutil.UniqueID()+"-node")
	testutil.Run(t, "ip", "netns", "exec", l.node, "sysctl", "-qw", "net.ipv4.ip_forward=1")
	testutil.ForwardIntoNetns(t, l.node, strings.TrimPrefix(env.APIServerURL, "https://"))

	l.socket, l.pinPath = startAgentProcess(t, env, l.binDir, l.node, "--pod-cidr=10.244.5.0/24")
	l.cni = libcni.NewCNIConfigWithCacheDir([]string{l.binDir}, l.cacheDir, nil)
	return l
}

// startAgentProcess runs kpath-agent in node's namespace (the API server
// relayed into it) and returns its API socket and pin path.
func startAgentProcess(t testing.TB, env *testenv.Env, binDir, node string, args ...string) (string, string) {
	t.Helper()
	dir := t.TempDir()
	socket := filepath.Join(dir, "agent.sock")
	pin := "kpath-test-cni-" + testutil.UniqueID()
	cmd := exec.Command("nsenter", append([]string{"--net=/run/netns/" + node, filepath.Join(binDir, "kpath-agent"),
		"--kubeconfig=" + env.Kubeconfig, "--node-name=" + agentNode, "--pin-dir=" + pin,
		"--metrics-addr=", "--api-socket=" + socket, "--ipam-dir=" + filepath.Join(dir, "ipam"),
		"--map-size-conntrack=16384", "--map-size-backends=4096", "--map-size-slots=8192", "--map-size-frontends=1024"}, args...)...)
	logPath := filepath.Join(dir, "agent.log")
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		_ = cmd.Wait()
		logf.Close()
		cfg := datapath.DefaultConfig()
		cfg.PinDir = pin
		_ = datapath.Reset(cfg)
		if t.Failed() {
			b, _ := os.ReadFile(logPath)
			t.Logf("agent log:\n%s", b)
		}
	})
	client := cniapi.NewClient(socket)
	waitFor(t, 30*time.Second, "agent CNI API ready", func() bool { return client.Do("GET", "/v1/cni/status", nil, nil) == nil })
	return socket, filepath.Join(datapath.DefaultConfig().BPFFS, pin)
}

func (l *cniLab) conf(t testing.TB, plugin string) *libcni.NetworkConfigList {
	t.Helper()
	list, err := libcni.ConfListFromBytes([]byte(`{"cniVersion":"1.1.0","name":"kpath","plugins":[` + plugin + `]}`))
	if err != nil {
		t.Fatal(err)
	}
	return list
}

func (l *cniLab) good(t testing.TB) *libcni.NetworkConfigList {
	return l.conf(t, fmt.Sprintf(`{"type":"kpath","agentSocket":%q}`, l.socket))
}

// inNode runs fn (which execs the plugin) from the node's namespace, where
// the plugin creates the host sides of the veths.
func (l *cniLab) inNode(t testing.TB, fn func() error) error {
	t.Helper()
	var err error
	if nerr := testutil.InNetns(l.node, func() error { err = fn(); return nil }); nerr != nil {
		t.Fatal(nerr)
	}
	return err
}

func (l *cniLab) add(t testing.TB, list *libcni.NetworkConfigList, rt *libcni.RuntimeConf) (*types100.Result, error) {
	var res types.Result
	err := l.inNode(t, func() error {
		var err error
		res, err = l.cni.AddNetworkList(context.Background(), list, rt)
		return err
	})
	if err != nil {
		return nil, err
	}
	r, err := types100.NewResultFromResult(res)
	if err != nil {
		t.Fatal(err)
	}
	return r, nil
}

func (l *cniLab) pod(t testing.TB, name string) *libcni.RuntimeConf {
	ns := testutil.NewNetns(t, "kpt-"+testutil.UniqueID()+"-"+name)
	return &libcni.RuntimeConf{ContainerID: "ctr-" + ns, NetNS: "/run/netns/" + ns, IfName: "eth0"}
}

func cniCode(err error) uint {
	var e *types.Error
	if errors.As(err, &e) {
		return e.Code
	}
	return 0
}

func TestCNIPlugin(t *testing.T) {
	l := newCNILab(t)
	ctx := context.Background()
	list := l.good(t)

	p1, p2 := l.pod(t, "p1"), l.pod(t, "p2")
	r1, err := l.add(t, list, p1)
	if err != nil {
		t.Fatalf("ADD: %v", err)
	}
	r2, err := l.add(t, list, p2)
	if err != nil {
		t.Fatalf("ADD: %v", err)
	}
	ip1, ip2 := r1.IPs[0].Address.IP.String(), r2.IPs[0].Address.IP.String()
	if ip1 == ip2 || !strings.HasPrefix(ip1, "10.244.5.") {
		t.Fatalf("addresses %s and %s", ip1, ip2)
	}
	if want := cniplugin.HostIfName(p1.ContainerID, "eth0"); r1.Interfaces[0].Name != want {
		t.Errorf("host interface %s, want %s", r1.Interfaces[0].Name, want)
	}

	t.Run("addresses bound to their interfaces", func(t *testing.T) {
		out := l.dp(t, "pods")
		for ip, r := range map[string]*types100.Result{ip1: r1, ip2: r2} {
			if !regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(ip) + `\s+\d+\s+` + r.Interfaces[0].Name + `$`).MatchString(out) {
				t.Errorf("%s not bound to %s:\n%s", ip, r.Interfaces[0].Name, out)
			}
		}
	})

	t.Run("traffic between pods", func(t *testing.T) {
		startHelper(t, strings.TrimPrefix(p2.NetNS, "/run/netns/"), "backend", "p2", nil)
		client := startHelper(t, strings.TrimPrefix(p1.NetNS, "/run/netns/"), "client", "p1", nil)
		if got := client.do(t, fmt.Sprintf("lines %s:%d 3", ip2, linePort)).Counts; got["p2"] != 3 {
			t.Fatalf("p1 -> p2: %v", got)
		}
	})

	t.Run("CHECK", func(t *testing.T) {
		if err := l.inNode(t, func() error { return l.cni.CheckNetworkList(ctx, list, p1) }); err != nil {
			t.Fatalf("CHECK: %v", err)
		}
		// CHECK notices programs that are no longer attached: removing
		// the pinned tcx links detaches them.
		pins := l.pins(r1.Interfaces[0].Name)
		if len(pins) != 2 {
			t.Fatalf("pinned links of %s: %v, want ingress and egress", r1.Interfaces[0].Name, pins)
		}
		for _, p := range pins {
			if err := os.Remove(p); err != nil {
				t.Fatal(err)
			}
		}
		err := l.inNode(t, func() error { return l.cni.CheckNetworkList(ctx, list, p1) })
		if err == nil || !strings.Contains(err.Error(), "not attached") {
			t.Fatalf("CHECK with detached programs: %v", err)
		}
	})

	t.Run("ADD twice keeps the address", func(t *testing.T) {
		again, err := l.add(t, list, p1)
		if err != nil {
			t.Fatal(err)
		}
		if got := again.IPs[0].Address.IP.String(); got != ip1 {
			t.Fatalf("second ADD gave %s, first %s", got, ip1)
		}
	})

	t.Run("DEL twice and after the namespace is gone", func(t *testing.T) {
		for range 2 {
			if err := l.inNode(t, func() error { return l.cni.DelNetworkList(ctx, list, p1) }); err != nil {
				t.Fatalf("DEL: %v", err)
			}
		}
		var st cniapi.CheckResponse
		if err := cniapi.NewClient(l.socket).Do("POST", "/v1/cni/check", cniapi.CheckRequest{ContainerID: p1.ContainerID, IfName: "eth0"}, &st); err != nil {
			t.Fatal(err)
		}
		if st.Addr.IsValid() {
			t.Fatalf("address %s still allocated after DEL", st.Addr)
		}
		if pins := l.pins(r1.Interfaces[0].Name); len(pins) != 0 {
			t.Fatalf("programs still attached after DEL: %v", pins)
		}
		if out := l.dp(t, "pods"); strings.Contains(out, ip1+" ") {
			t.Fatalf("address %s still bound after DEL:\n%s", ip1, out)
		}
		p3 := l.pod(t, "p3")
		if _, err := l.add(t, list, p3); err != nil {
			t.Fatal(err)
		}
		testutil.Run(t, "ip", "netns", "del", strings.TrimPrefix(p3.NetNS, "/run/netns/"))
		_ = exec.Command("ip", "netns", "add", strings.TrimPrefix(p3.NetNS, "/run/netns/")).Run() // for the cleanup
		if err := l.inNode(t, func() error { return l.cni.DelNetworkList(ctx, list, p3) }); err != nil {
			t.Fatalf("DEL without its namespace: %v", err)
		}
	})

	t.Run("GC releases what is not valid", func(t *testing.T) {
		p4 := l.pod(t, "p4")
		if _, err := l.add(t, list, p4); err != nil {
			t.Fatal(err)
		}
		err := l.inNode(t, func() error {
			return l.cni.GCNetworkList(ctx, list, &libcni.GCArgs{ValidAttachments: []types.GCAttachment{{ContainerID: p2.ContainerID, IfName: "eth0"}}})
		})
		if err != nil {
			t.Fatalf("GC: %v", err)
		}
		for _, p := range []*libcni.RuntimeConf{p2, p4} {
			var st cniapi.CheckResponse
			_ = cniapi.NewClient(l.socket).Do("POST", "/v1/cni/check", cniapi.CheckRequest{ContainerID: p.ContainerID, IfName: "eth0"}, &st)
			if want := p == p2; st.Addr.IsValid() != want {
				t.Errorf("%s: allocated %v after GC, want %v", p.ContainerID, st.Addr.IsValid(), want)
			}
		}
	})

	t.Run("STATUS", func(t *testing.T) {
		if err := l.cni.GetStatusNetworkList(ctx, list); err != nil {
			t.Fatalf("STATUS: %v", err)
		}
		down := l.conf(t, `{"type":"kpath","agentSocket":"/nonexistent/agent.sock"}`)
		if err := l.cni.GetStatusNetworkList(ctx, down); cniCode(err) != types.ErrPluginNotAvailable {
			t.Fatalf("STATUS without agent: %v (code %d), want %d", err, cniCode(err), types.ErrPluginNotAvailable)
		}
	})

	t.Run("bad configurations", func(t *testing.T) {
		p := l.pod(t, "bad")
		for conf, code := range map[string]uint{
			`{"type":"kpath","agentSocket":"relative.sock"}`:  types.ErrInvalidNetworkConfig,
			`{"type":"kpath","mtu":100}`:                      types.ErrInvalidNetworkConfig,
			`{"type":"kpath","mtu":"big"}`:                    types.ErrDecodingFailure,
			`{"type":"kpath","agentSocket":"/nonexistent/s"}`: types.ErrTryAgainLater,
		} {
			_, err := l.add(t, l.conf(t, conf), p)
			if cniCode(err) != code {
				t.Errorf("ADD with %s: %v (code %d), want code %d", conf, err, cniCode(err), code)
			}
		}
	})

	t.Run("50 parallel ADDs", func(t *testing.T) {
		pods := make([]*libcni.RuntimeConf, 50)
		for i := range pods {
			pods[i] = l.pod(t, fmt.Sprint("q", i))
		}
		var (
			wg   sync.WaitGroup
			mu   sync.Mutex
			seen = map[string]bool{}
			durs []time.Duration
		)
		for _, p := range pods {
			wg.Go(func() {
				start := time.Now()
				r, err := l.add(t, list, p)
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				defer mu.Unlock()
				durs = append(durs, time.Since(start))
				ip := r.IPs[0].Address.IP.String()
				if seen[ip] {
					t.Errorf("address %s given twice", ip)
				}
				seen[ip] = true
			})
		}
		wg.Wait()
		if len(seen) != 50 {
			t.Fatalf("%d distinct addresses from 50 ADDs", len(seen))
		}
		for _, p := range pods {
			if err := l.inNode(t, func() error { return l.cni.DelNetworkList(ctx, list, p) }); err != nil {
				t.Error(err)
			}
		}
		slices.Sort(durs)
		t.Logf("50 parallel ADDs: p50 %s, max %s", durs[len(durs)/2], durs[len(durs)-1])
	})
}

// BenchmarkCNIAdd reports CNI ADD latency (veth, address, routes, neighbour
// entries, program attach, through libcni and the agent) for pods added one
// after another: p50 and p99 over b.N pods (run with -benchtime 200x for
// BENCHMARKS.md E4). Namespace creation is not timed.
func BenchmarkCNIAdd(b *testing.B) {
	l := newCNILab(b)
	list := l.good(b)
	pods := make([]*libcni.RuntimeConf, b.N)
	for i := range pods {
		pods[i] = l.pod(b, fmt.Sprint("b", i))
	}
	durs := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for _, p := range pods {
		start := time.Now()
		if _, err := l.add(b, list, p); err != nil {
			b.Fatal(err)
		}
		durs = append(durs, time.Since(start))
	}
	b.StopTimer()
	slices.Sort(durs)
	b.ReportMetric(float64(durs[len(durs)/2].Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(durs[min(len(durs)-1, len(durs)*99/100)].Microseconds())/1000, "p99-ms")
	for _, p := range pods {
		_ = l.inNode(b, func() error { return l.cni.DelNetworkList(context.Background(), list, p) })
	}
}
