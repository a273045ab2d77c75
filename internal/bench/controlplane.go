// Package bench holds kpath's benchmark experiments (BENCHMARKS.md). Each
// reports its figures as a table and JSON; timings come with the conditions
// they were measured under.
package bench

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/util/retry"

	"github.com/kpath/kpath/internal/agent"
	"github.com/kpath/kpath/internal/datapath"
	"github.com/kpath/kpath/internal/model"
	"github.com/kpath/kpath/internal/testenv"
)

// ControlPlaneOptions configure the E3 experiment.
type ControlPlaneOptions struct {
	Services int // services loaded (1000)
	Backends int // endpoints per service (60)
	Changes  int // EndpointSlice changes timed
	// Policies loaded (0: no policy part); PolicyChanges timed.
	Policies      int
	PolicyChanges int
	BinDir        string
	Progress      io.Writer
}

// ControlPlaneResult is what E3 measured.
type ControlPlaneResult struct {
	Services       int           `json:"services"`
	Backends       int           `json:"backends_per_service"`
	LoadTime       time.Duration `json:"load_ns"`
	ColdReady      time.Duration `json:"cold_start_to_ready_ns"`
	RestartReady   time.Duration `json:"restart_to_ready_ns"`
	Changes        int           `json:"changes"`
	P50, P90, P99  time.Duration `json:"-"`
	Max            time.Duration `json:"-"`
	P50ms          float64       `json:"change_to_datapath_p50_ms"`
	P99ms          float64       `json:"change_to_datapath_p99_ms"`
	LostOnRestart  int           `json:"frontends_lost_on_restart"`
	FrontendsAfter int           `json:"frontends_in_datapath"`
	// Policy is the NetworkPolicy part (nil without policies).
	Policy *PolicyResult `json:"policy,omitempty"`
}

const benchNS = "kpath-bench"

// ControlPlane runs E3: a real API server loaded with Services x Backends,
// one real agent; it times EndpointSlice change -> datapath, agent start ->
// ready (cold, and restarted over pinned maps).
func ControlPlane(ctx context.Context, o ControlPlaneOptions) (*ControlPlaneResult, error) {
	say := func(f string, a ...any) { fmt.Fprintf(o.Progress, f+"\n", a...) }
	dir, err := os.MkdirTemp("", "kpath-bench-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	env, err := testenv.Start(ctx, testenv.Options{Dir: dir, BinDir: o.BinDir, Log: say})
	if err != nil {
		return nil, err
	}
	defer env.Stop()
	c := env.Client
	res := &ControlPlaneResult{Services: o.Services, Backends: o.Backends, Changes: o.Changes}

	if err := benchNode(ctx, c); err != nil {
		return nil, err
	}
	say("loading %d services x %d endpoints", o.Services, o.Backends)
	start := time.Now()
	sim := simService{ns: benchNS, prefix: "svc", backends: o.Backends}
	vips, err := sim.load(ctx, c, 0, o.Services, o.Progress)
	if err != nil {
		return nil, err
	}
	res.LoadTime = time.Since(start)
	var local []model.PodKey
	if o.Policies > 0 {
		pr := &PolicyResult{Policies: o.Policies, Namespaces: (o.Policies + 3) / 4, LocalPods: 100, Changes: o.PolicyChanges}
		pr.Pods = pr.Namespaces * len(benchTiers)
		say("loading %d policies in %d namespaces with %d pods (%d on the measured node)", pr.Namespaces*4, pr.Namespaces, pr.Pods, pr.LocalPods)
		start := time.Now()
		if local, err = loadPolicies(ctx, c, pr.Namespaces, pr.LocalPods, "bench-node", o.Progress); err != nil {
			return nil, err
		}
		pr.LoadTime = time.Since(start)
		res.Policy = pr
	}

	cfg := agent.DefaultConfig()
	cfg.Kubeconfig = env.Kubeconfig
	cfg.NodeName = "bench-node"
	cfg.PinDir = fmt.Sprintf("kpath-bench-%d", os.Getpid())
	cfg.SocketHook = false
	// The host-network hook on a cgroup of the bench's own, not the
	// machine's root.
	cgRoot, err := datapath.CgroupV2Root()
	if err != nil {
		return nil, err
	}
	cfg.CgroupRoot = filepath.Join(cgRoot, fmt.Sprintf("kpath-bench-%d", os.Getpid()))
	if err := os.Mkdir(cfg.CgroupRoot, 0o755); err != nil {
		return nil, fmt.Errorf("bench cgroup: %w", err)
	}
	defer os.Remove(cfg.CgroupRoot)
	cfg.MetricsAddr = ""
	cfg.APISocket = filepath.Join(dir, "agent.sock")
	cfg.HubbleSocket = filepath.Join(dir, "hubble.sock")
	defer datapath.Reset(cfg.Datapath())

	a, stop, ready, err := startAgent(ctx, cfg)
	if err != nil {
		return nil, err
	}
	res.ColdReady = ready
	say("agent ready after %s (cold start)", ready.Round(time.Millisecond))

	say("timing %d EndpointSlice changes", o.Changes)
	lat := make([]time.Duration, 0, o.Changes)
	for i := range o.Changes {
		k := i % o.Services
		d, err := timeChange(ctx, c, a.Datapath(), sim, k, vips[k], i/o.Services%2 == 0)
		if err != nil {
			stop()
			return nil, err
		}
		lat = append(lat, d)
	}
	slices.Sort(lat)
	pct := func(p int) time.Duration { return lat[min(len(lat)-1, len(lat)*p/100)] }
	res.P50, res.P90, res.P99, res.Max = pct(50), pct(90), pct(99), lat[len(lat)-1]
	res.P50ms, res.P99ms = float64(res.P50.Microseconds())/1000, float64(res.P99.Microseconds())/1000

	if res.Policy != nil {
		var targets []policyTarget
		for _, k := range local {
			p, err := c.CoreV1().Pods(k.Namespace).Get(ctx, k.Name, metav1.GetOptions{})
			if err != nil {
				stop()
				return nil, err
			}
			ip := netip.MustParseAddr(p.Status.PodIP)
			targets = append(targets, policyTarget{ns: k.Namespace, selector: map[string]string{"tier": k.Name}, ip: ip})
			if err := a.PutUnderPolicy(ctx, ip, k); err != nil {
				stop()
				return nil, err
			}
		}
		say("timing %d NetworkPolicy changes", o.PolicyChanges)
		decide := func(local, peer netip.Addr) (bool, error) {
			d, err := a.Datapath().DecidePolicy(local, peer, true, model.TCP, 9999)
			return d.Allowed, err
		}
		lat, err := timePolicyChanges(ctx, c, decide, targets, o.PolicyChanges, 0)
		if err != nil {
			stop()
			return nil, err
		}
		pr := res.Policy
		pr.P50, pr.P90, pr.P99, pr.Max = percentiles(lat)
		pr.P50ms, pr.P99ms = float64(pr.P50.Microseconds())/1000, float64(pr.P99.Microseconds())/1000
	}

	before, _ := a.Datapath().Frontends()
	stop()
	a, stop, ready, err = startAgent(ctx, cfg)
	if err != nil {
		return nil, err
	}
	defer stop()
	res.RestartReady = ready
	after, _ := a.Datapath().Frontends()
	res.FrontendsAfter = len(after)
	res.LostOnRestart = max(0, len(before)-len(after))
	say("agent ready after %s (restart over pinned maps)", ready.Round(time.Millisecond))
	return res, nil
}

func startAgent(ctx context.Context, cfg agent.Config) (*agent.Agent, func(), time.Duration, error) {
	start := time.Now()
	a, err := agent.New(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		return nil, nil, 0, err
	}
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	stop := func() { cancel(); <-done }
	for !a.Ready() {
		select {
		case err := <-done:
			cancel()
			return nil, nil, 0, fmt.Errorf("agent stopped before ready: %v", err)
		case <-time.After(time.Millisecond):
		}
		if time.Since(start) > 5*time.Minute {
			stop()
			return nil, nil, 0, fmt.Errorf("agent not ready after 5 minutes")
		}
	}
	return a, stop, time.Since(start), nil
}

func benchNode(ctx context.Context, c kubernetes.Interface) error {
	n, err := c.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "bench-node"}}, metav1.CreateOptions{})
	if err != nil {
		return err
	}
	n.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: "192.168.60.1"}}
	if _, err := c.CoreV1().Nodes().UpdateStatus(ctx, n, metav1.UpdateOptions{}); err != nil {
		return err
	}
	_, err = c.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: benchNS}}, metav1.CreateOptions{})
	return err
}

// endpointIP is the address of endpoint j of service k: unique per pair,
// in 10.128.0.0/10, clear of the service range (10.96.0.0/12) and of the
// lab's pod range (10.244.0.0/16).
func endpointIP(k, j int) string {
	n := k*256 + j
	return fmt.Sprintf("10.%d.%d.%d", 128+n>>16, (n>>8)&0xff, n&0xff)
}

// simService names the objects of one simulated service: prefix-k in ns.
type simService struct {
	ns, prefix string
	backends   int
}

func (s simService) name(k int) string { return fmt.Sprintf("%s-%d", s.prefix, k) }

// slice is service k's EndpointSlice: backends ready endpoints on a
// simulated remote node, port "http" 8080.
func (s simService) slice(k int) *discoveryv1.EndpointSlice {
	port, proto, pname := int32(8080), corev1.ProtocolTCP, "http"
	es := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Name: s.name(k) + "-1", Namespace: s.ns, Labels: map[string]string{
			discoveryv1.LabelServiceName: s.name(k), discoveryv1.LabelManagedBy: "kpath-bench"}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: &pname, Protocol: &proto, Port: &port}},
	}
	ready, node := true, "remote-node"
	for j := range s.backends {
		es.Endpoints = append(es.Endpoints, discoveryv1.Endpoint{Addresses: []string{endpointIP(k, j)}, NodeName: &node,
			Conditions: discoveryv1.EndpointConditions{Ready: &ready}})
	}
	return es
}

// load creates services from..to-1 (no selector) and their slices with 16
// parallel workers, drawing a progress bar on progress; it returns the
// cluster IPs, indexed k-from.
func (s simService) load(ctx context.Context, c kubernetes.Interface, from, to int, progress io.Writer) ([]netip.Addr, error) {
	vips := make([]netip.Addr, to-from)
	jobs := make(chan int)
	bar := newProgress(progress, "services", to-from)
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		firstErr error
	)
	for range 16 {
		wg.Go(func() {
			for k := range jobs {
				var svc *corev1.Service
				err := retry.OnError(apiBackoff, transientAPIError, func() (err error) {
					svc, err = c.CoreV1().Services(s.ns).Create(ctx, &corev1.Service{
						ObjectMeta: metav1.ObjectMeta{Name: s.name(k), Namespace: s.ns},
						Spec:       corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromString("http")}}},
					}, metav1.CreateOptions{})
					if apierrors.IsAlreadyExists(err) { // an earlier try timed out but was written
						svc, err = c.CoreV1().Services(s.ns).Get(ctx, s.name(k), metav1.GetOptions{})
					}
					return err
				})
				if err == nil {
					vips[k-from] = netip.MustParseAddr(svc.Spec.ClusterIP)
					err = retry.OnError(apiBackoff, transientAPIError, func() error {
						_, err := c.DiscoveryV1().EndpointSlices(s.ns).Create(ctx, s.slice(k), metav1.CreateOptions{})
						if apierrors.IsAlreadyExists(err) {
							return nil
						}
						return err
					})
				}
				if err != nil {
					mu.Lock()
					if firstErr == nil {
						firstErr = fmt.Errorf("create %s/%s: %w", s.ns, s.name(k), err)
					}
					mu.Unlock()
				}
				bar.Add(1)
			}
		})
	}
	for k := from; k < to; k++ {
		if ctx.Err() != nil {
			break
		}
		jobs <- k
	}
	close(jobs)
	wg.Wait()
	bar.Done()
	if firstErr == nil {
		firstErr = ctx.Err()
	}
	return vips, firstErr
}

// apiBackoff retries a create the API server could not complete (about 30 s
// in all): under load at 10k services, one lab's etcd timed out a request
// and the whole mode was lost with it.
var apiBackoff = wait.Backoff{Steps: 6, Duration: time.Second, Factor: 2}

// transientAPIError is an error the API server may not give again: a
// timeout (its own, or etcd's, which it reports as an internal error),
// throttling or unavailability.
func transientAPIError(err error) bool {
	return apierrors.IsServerTimeout(err) || apierrors.IsTimeout(err) || apierrors.IsTooManyRequests(err) ||
		apierrors.IsInternalError(err) || apierrors.IsServiceUnavailable(err)
}

// timeChange removes (or restores) service k's last endpoint and returns
// the time from the API call to the datapath holding the new backend set.
func timeChange(ctx context.Context, c kubernetes.Interface, d *datapath.Datapath, sim simService, k int, vip netip.Addr, remove bool) (time.Duration, error) {
	want := sim.backends
	s := sim.slice(k)
	if remove {
		s.Endpoints = s.Endpoints[:sim.backends-1]
		want--
	}
	cur, err := c.DiscoveryV1().EndpointSlices(benchNS).Get(ctx, s.Name, metav1.GetOptions{})
	if err != nil {
		return 0, err
	}
	s.ResourceVersion = cur.ResourceVersion
	fe := model.FrontendKey{L4Addr: model.L4Addr{Addr: vip, Port: 80, Proto: model.TCP}}
	start := time.Now()
	if _, err := c.DiscoveryV1().EndpointSlices(benchNS).Update(ctx, s, metav1.UpdateOptions{}); err != nil {
		return 0, err
	}
	for {
		si, ok, err := d.Service(fe)
		if err == nil && ok && len(si.Backends) == want {
			return time.Since(start), nil
		}
		if time.Since(start) > 30*time.Second {
			return 0, fmt.Errorf("change to service %d not in the datapath after 30s", k)
		}
		time.Sleep(200 * time.Microsecond)
	}
}
