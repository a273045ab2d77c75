package bench

import (
	"context"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"

	"github.com/kpath/kpath/internal/dataplane"
	"github.com/kpath/kpath/internal/lab"
)

// E2 (BENCHMARKS.md): the agent's cost at 1,000 nodes and 100,000 pods,
// against the lab's real control plane. The lab has one real node, the
// measured one, with a real kpath-agent (production defaults) and its
// share of the pods run for real through the CNI plugin; the other nodes
// and pods are API objects with their status written.

// ScaleOptions configure kpath bench scale.
type ScaleOptions struct {
	// Scenarios to run, each in a lab of its own: a (pods only), b (a and
	// NetworkPolicies), c (services of 60 pods each and policies).
	Scenarios []string
	// Dataplanes measured on each scenario, each in a lab of its own:
	// kpath, cilium (the real cilium-agent, with the objects the other
	// nodes' agents and Cilium's operator would write: scale_cilium.go).
	Dataplanes []string
	// Nodes counts the measured node; Pods counts its LocalPods. (c) has
	// 60% of Pods (60k of 100k), as BENCHMARKS.md's plan.
	Nodes, Pods, LocalPods int
	// StartPods are written before the ramp is measured (the ramp goes
	// from them to the scenario's pods).
	StartPods int
	// Policies for scenarios b (4 per namespace) and c (8 per namespace).
	Policies int
	Steady   time.Duration
	// ChangesPerSec in the steady state.
	ChangesPerSec int
	// PolicyChanges are timed during (b)'s and (c)'s steady state, spread
	// over it (policy change -> enforced).
	PolicyChanges  int
	BinDir, K8sBin string
	CiliumBin      string `json:"-"`
	// LabName is the scenarios' lab's (default scale): a run sweeps a lab
	// of that name still up, so runs side by side need names of their own.
	LabName  string    `json:"-"`
	Progress io.Writer `json:"-"`
	// Out receives scale.json, scale-<scenario>.csv, scale.svg and the
	// agent's heap profiles at the end of each phase,
	// heap-<scenario>-<phase>.pb.gz.
	Out string
}

// DefaultScaleOptions are BENCHMARKS.md's E2; Quick the --quick run.
func DefaultScaleOptions() ScaleOptions {
	return ScaleOptions{Scenarios: []string{"a", "b", "c"}, Dataplanes: []string{"kpath"}, Nodes: 1000, Pods: 100000, LocalPods: 100, StartPods: 20000,
		Policies: 2000, Steady: 2 * time.Minute, ChangesPerSec: 50, PolicyChanges: 100}
}

// Quick shrinks o to the --quick size: 100 nodes, 10k pods, 200 policies.
func (o ScaleOptions) Quick() ScaleOptions {
	o.Nodes, o.Pods, o.LocalPods, o.StartPods, o.Policies = 100, 10000, 100, 2000, 200
	return o
}

// ScaleScenario is one scenario's samples and what they add up to.
type ScaleScenario struct {
	Name string `json:"scenario"`
	// Dataplane is the measured node's: kpath ("" in runs before the
	// cilium column) or cilium.
	Dataplane string `json:"dataplane,omitempty"`
	Pods      int    `json:"pods"`
	Nodes     int    `json:"nodes"`
	Policy    int    `json:"policies"`
	Services  int    `json:"services"`
	Backends  int    `json:"backends"`
	Changes   int    `json:"steady_changes"`
	// Steady and Ramp sum up the phases' samples.
	Steady ScaleSummary  `json:"steady"`
	Ramp   ScaleSummary  `json:"ramp"`
	Setup  time.Duration `json:"setup_ns"`
	// Events is the steady state's work by event kind.
	Events *ScaleEvents `json:"events,omitempty"`
	// PolicyChange: policy change -> enforced, timed after the steady
	// state with its churn going on ((b) and (c)); PolicyPhase sums up
	// that phase.
	PolicyChange *Percentiles  `json:"policy_change_to_enforced,omitempty"`
	PolicyPhase  *ScaleSummary `json:"policy_phase,omitempty"`
	// PolicyPhaseChanges are the pod changes made during that phase.
	PolicyPhaseChanges int `json:"policy_phase_pod_changes,omitempty"`
	// Restart: the agent restarted, then started cold, at full size.
	Restart *ScaleRestart `json:"restart,omitempty"`
	Samples []ScaleSample `json:"samples"`
}

// Percentiles of a latency, in milliseconds.
type Percentiles struct {
	N   int     `json:"n"`
	P50 float64 `json:"p50_ms"`
	P90 float64 `json:"p90_ms"`
	P99 float64 `json:"p99_ms"`
	Max float64 `json:"max_ms"`
}

func percentilesOf(lat []time.Duration) *Percentiles {
	if len(lat) == 0 {
		return nil
	}
	p50, p90, p99, mx := percentiles(lat)
	return &Percentiles{N: len(lat), P50: ms(p50), P90: ms(p90), P99: ms(p99), Max: ms(mx)}
}

// ScaleSummary sums up a phase's samples: mean CPU, the peak and the
// last of the memory figures.
type ScaleSummary struct {
	Seconds       int     `json:"seconds"`
	MeanMilli     float64 `json:"agent_millicores_mean"`
	PeakMilli     float64 `json:"agent_millicores_peak"`
	PeakRSS       float64 `json:"agent_rss_mib_peak"`
	PeakAnon      float64 `json:"agent_anon_rss_mib_peak"`
	LastRSS       float64 `json:"agent_rss_mib_last"`
	LastHeap      float64 `json:"agent_heap_mib_last"`
	BPFMaps       float64 `json:"bpf_maps_mib"`
	MeanRxKiBps   float64 `json:"agent_rx_kib_per_s_mean"`
	MeanAPIMilli  float64 `json:"apiserver_millicores_mean"`
	MeanEtcdMilli float64 `json:"etcd_millicores_mean"`
	MeanKCMMilli  float64 `json:"controller_manager_millicores_mean"`
	IPCache       int     `json:"ipcache_entries"`
	Identities    int     `json:"identities"`
	Backends      int     `json:"service_backends"`
}

// ScaleRun is a kpath bench scale run.
type ScaleRun struct {
	Machine   Machine         `json:"machine"`
	Started   time.Time       `json:"started"`
	Options   ScaleOptions    `json:"options"`
	Scenarios []ScaleScenario `json:"scenarios"`
}

// Scale runs E2.
func Scale(ctx context.Context, o ScaleOptions) (*ScaleRun, error) {
	if o.Progress == nil {
		o.Progress = io.Discard
	}
	for _, sc := range o.Scenarios {
		if !slices.Contains([]string{"a", "b", "c"}, sc) {
			return nil, fmt.Errorf("scenario %q: want a, b or c", sc)
		}
		l := newScaleLayout(sc, o)
		if err := l.validate(); err != nil {
			return nil, err
		}
		if o.StartPods > l.pods {
			return nil, fmt.Errorf("scenario %s: %d start pods > %d pods", sc, o.StartPods, l.pods)
		}
	}
	if len(o.Dataplanes) == 0 {
		o.Dataplanes = []string{"kpath"}
	}
	for _, dp := range o.Dataplanes {
		if dp != "kpath" && dp != "cilium" {
			return nil, fmt.Errorf("dataplane %q: want kpath or cilium", dp)
		}
	}
	run := &ScaleRun{Machine: DescribeMachine(""), Started: time.Now(), Options: o}
	for _, sc := range o.Scenarios {
		for _, dp := range o.Dataplanes {
			res, err := scaleScenario(ctx, o, sc, dp)
			if err != nil {
				return run, fmt.Errorf("scenario %s (%s): %w", sc, dp, err)
			}
			run.Scenarios = append(run.Scenarios, *res)
			if err := run.write(o.Out); err != nil {
				return run, err
			}
		}
	}
	return run, nil
}

func scaleScenario(ctx context.Context, o ScaleOptions, name, mode string) (*ScaleScenario, error) {
	dir, err := os.MkdirTemp("", "kpath-e2-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	l := newScaleLayout(name, o)
	fmt.Fprintf(o.Progress, "scenario %s (%s): %d nodes, %d pods (%d local), lab up\n", name, mode, l.nodes, l.pods, l.local)
	labName := o.LabName
	if labName == "" {
		labName = "scale"
	}
	lb, err := lab.Start(ctx, lab.Options{Name: labName, Dir: filepath.Join(dir, "lab"), Nodes: 1, Routing: "native", Services: mode,
		BinDir: o.BinDir, K8sBin: o.K8sBin, CiliumBin: o.CiliumBin}, 5*time.Minute)
	if err != nil {
		return nil, err
	}
	defer lb.Stop()
	c, node := lb.Client, lb.State.Nodes[0]
	dp, err := lb.State.Dataplane()
	if err != nil {
		return nil, err
	}
	var peers *ciliumPeers
	if mode == "cilium" {
		cfg, err := lab.RestConfig(lb.State)
		if err != nil {
			return nil, err
		}
		dc, err := dynamic.NewForConfig(cfg)
		if err != nil {
			return nil, err
		}
		fmt.Fprintf(o.Progress, "cilium: %d CiliumNodes, %d CiliumIdentities\n", l.nodes-1, l.namespaces()*l.deployments())
		if peers, err = startCiliumPeers(ctx, dc, l, o.Progress); err != nil {
			return nil, err
		}
		defer peers.close()
	}
	var written atomic.Int64
	phase := atomic.Value{}
	phase.Store("setup")
	labDir := filepath.Join(dir, "lab")
	smp := &sampler{agent: dp.Agent(node), gauges: func() (dataplane.Gauges, error) { return dp.Gauges(ctx, node) },
		api:  procOf{"kube-apiserver", "--cert-dir=" + labDir},
		etcd: procOf{"etcd", "--data-dir=" + labDir}, kcm: procOf{"kube-controller-manager", "--kubeconfig=" + labDir},
		start: time.Now(),
		phase: func() (string, int) { return phase.Load().(string), int(written.Load()) }}
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() { smp.run(stop); close(done) }()
	stopSampling := func() {
		select {
		case <-stop:
		default:
			close(stop)
		}
		<-done
	}
	defer stopSampling()

	start := time.Now()
	res := &ScaleScenario{Name: name, Dataplane: mode, Pods: l.pods, Nodes: l.nodes}
	if err := createScaleNamespaces(ctx, c, l.namespaces()); err != nil {
		return nil, err
	}
	if err := createScaleNodes(ctx, c, 0, l.nodes-1, o.Progress); err != nil {
		return nil, err
	}
	policyNamespaces := map[string]bool{}
	if name != "a" {
		var n int
		if res.Policy, n, err = createScalePolicies(ctx, c, l, o.Policies); err != nil {
			return nil, err
		}
		for i := range n {
			policyNamespaces[scaleNS(i)] = true
		}
	}
	if l.services > 0 {
		if err := createScaleServices(ctx, c, l); err != nil {
			return nil, err
		}
		res.Services, res.Backends = l.namespaces()*l.services, l.pods
	}
	local, err := createLocalPods(ctx, c, node.Name, l)
	if err != nil {
		return nil, err
	}
	// The timed policy changes need isolated pods: those of the
	// namespaces that have the plan's policies.
	local = slices.DeleteFunc(local, func(t policyTarget) bool { return !policyNamespaces[t.ns] })
	probe, err := startScaleProbe(ctx, c, lb.State, node, filepath.Join(o.BinDir, "kpath"))
	if err != nil {
		return nil, err
	}
	written.Store(int64(l.local))
	first := min(max(o.StartPods-l.local, 0), l.fake())
	if err := createScalePods(ctx, c, l, 0, first, peers, o.Progress); err != nil {
		return nil, err
	}
	written.Add(int64(first))
	res.Setup = time.Since(start)

	phase.Store("ramp")
	rampFrom := len(smp.taken())
	for at := first; at < l.fake(); {
		to := min(at+1000, l.fake())
		if err := createScalePods(ctx, c, l, at, to, peers, io.Discard); err != nil {
			return nil, err
		}
		written.Add(int64(to - at))
		fmt.Fprintf(o.Progress, "\rramp: %d/%d pods", int(written.Load()), l.pods)
		at = to
	}
	fmt.Fprintln(o.Progress)
	// The agent has caught up when its ipcache holds every pod (and, in
	// (c), its services every backend, once the controller manager wrote
	// the slices). Cilium's ipcache holds the other nodes' addresses too.
	wantIPs := l.pods + 2
	if mode == "cilium" {
		wantIPs += l.nodes - 1
	}
	caughtUp := func(s ScaleSample) bool { return s.IPCache >= wantIPs && s.Backends >= res.Backends }
	if err := waitSample(smp, 5*time.Minute, caughtUp); err != nil {
		if peers != nil {
			err = fmt.Errorf("%w; %d CiliumEndpointSlices not written yet", err, peers.pending())
		}
		return nil, fmt.Errorf("after the ramp: %w", err)
	}
	rampTo := len(smp.taken())
	profile := func(phase string) {
		if o.Out == "" || mode != "kpath" { // kpath-agent's pprof, on its local API
			return
		}
		if err := os.MkdirAll(o.Out, 0o755); err == nil {
			if err := saveHeapProfile(node.AgentSocket, filepath.Join(o.Out, "heap-"+name+"-"+phase+".pb.gz")); err != nil {
				fmt.Fprintf(o.Progress, "%v\n", err)
			}
		}
	}
	profile("ramp")

	phase.Store("steady")
	fmt.Fprintf(o.Progress, "steady state: %s, %d pod changes/s\n", o.Steady, o.ChangesPerSec)
	// kpath-agent's work by event kind, from its metrics.
	eventMetrics := func() (map[string]float64, error) {
		if mode != "kpath" {
			return nil, nil
		}
		return dataplane.Scrape(node.Netns, dataplane.KpathMetrics)
	}
	before, err := eventMetrics()
	if err != nil {
		return nil, err
	}
	stopChurn := make(chan struct{})
	time.AfterFunc(o.Steady, func() { close(stopChurn) })
	steadyStart := time.Now()
	if res.Changes, err = churn(ctx, c, l, o.ChangesPerSec, stopChurn, 0, peers); err != nil {
		return nil, fmt.Errorf("steady state: %w", err)
	}
	steadyTime := time.Since(steadyStart)
	after, err := eventMetrics()
	if err != nil {
		return nil, err
	}
	profile("steady")
	steadyTo := len(smp.taken())

	// Policy changes, timed while the churn goes on: a phase of their own,
	// so the steady state's CPU is the pod churn's alone (as the seed's
	// figures are), and this phase's is reported beside it.
	policyTo := steadyTo
	if res.Policy > 0 && o.PolicyChanges > 0 && len(local) > 0 {
		phase.Store("policy")
		fmt.Fprintf(o.Progress, "policy changes: %d, one each %s, with the churn going on\n", o.PolicyChanges, scalePolicyPace)
		stopChurn := make(chan struct{})
		churned := make(chan error, 1)
		steadyChanges := res.Changes
		go func() {
			n, err := churn(ctx, c, l, o.ChangesPerSec, stopChurn, steadyChanges, peers)
			res.PolicyPhaseChanges = n
			churned <- err
		}()
		lat, err := timeScalePolicyChanges(ctx, c, dp, node, local, o.PolicyChanges)
		close(stopChurn)
		if cerr := <-churned; err == nil && cerr != nil {
			err = fmt.Errorf("churn: %w", cerr)
		}
		if err != nil {
			return nil, fmt.Errorf("policy changes: %w", err)
		}
		res.PolicyChange = percentilesOf(lat)
		policyTo = len(smp.taken())
	}

	phase.Store("restart")
	if res.Restart, err = measureRestart(ctx, o.Progress, dp, node, probe, caughtUp, smp); err != nil {
		return nil, fmt.Errorf("restart: %w", err)
	}
	stopSampling()
	all := smp.taken()
	res.Samples = all
	res.Ramp = summarize(all[min(rampFrom, len(all)):min(rampTo, len(all))])
	steady := summarize(all[min(rampTo, len(all)):min(steadyTo, len(all))])
	res.Steady = steady
	if policyTo > steadyTo {
		p := summarize(all[steadyTo:min(policyTo, len(all))])
		res.PolicyPhase = &p
	}
	res.Events = eventWork(before, after, steadyTime, steady.MeanMilli)
	restart := summarize(all[min(policyTo, len(all)):])
	res.Restart.PeakRSS, res.Restart.PeakAnon = restart.PeakRSS, restart.PeakAnon
	return res, nil
}

// waitSample waits until the sampler's last sample satisfies ok.
func waitSample(smp *sampler, timeout time.Duration, ok func(ScaleSample) bool) error {
	var last ScaleSample
	for deadline := time.Now().Add(timeout); time.Now().Before(deadline); time.Sleep(500 * time.Millisecond) {
		if s := smp.taken(); len(s) > 0 {
			if last = s[len(s)-1]; ok(last) {
				return nil
			}
		}
	}
	return fmt.Errorf("the agent did not catch up within %s (ipcache %d, service backends %d)", timeout, last.IPCache, last.Backends)
}

// createLocalPods creates the layout's local pods on the measured node,
// which the lab's runtime runs for real (an idle workload, the real CNI
// plugin), spread over the namespaces with their deployments' labels,
// waits until they run and returns them as policy targets.
func createLocalPods(ctx context.Context, c kubernetes.Interface, node string, l scaleLayout) ([]policyTarget, error) {
	err := parallel(ctx, 0, l.local, 4, func(i int) error {
		ns := scaleNS(i % l.namespaces())
		p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: fmt.Sprintf("local-%d", i), Labels: l.labels(ns, i%l.deployments())},
			Spec: corev1.PodSpec{NodeName: node, Containers: []corev1.Container{{Name: "app", Image: "kpath/idle",
				Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}}}}}}
		return retryTransient(ctx, func() error {
			_, err := c.CoreV1().Pods(ns).Create(ctx, p, metav1.CreateOptions{})
			return ignoreExists(err)
		})
	})
	if err != nil {
		return nil, err
	}
	for deadline := time.Now().Add(3 * time.Minute); time.Now().Before(deadline); time.Sleep(time.Second) {
		pl, err := c.CoreV1().Pods("").List(ctx, metav1.ListOptions{FieldSelector: "spec.nodeName=" + node})
		if err != nil {
			continue
		}
		var out []policyTarget
		for _, p := range pl.Items {
			if ip, err := netip.ParseAddr(p.Status.PodIP); err == nil && p.Status.Phase == corev1.PodRunning && p.Namespace != scaleProbeNS {
				// app names the deployment in its namespace, as
				// pod-template-hash does; Cilium leaves the hash out of
				// the labels its policies select on.
				out = append(out, policyTarget{ns: p.Namespace, ip: ip, selector: map[string]string{"app": p.Labels["app"]}})
			}
		}
		if len(out) >= l.local {
			slices.SortFunc(out, func(a, b policyTarget) int { return a.ip.Compare(b.ip) })
			return out, nil
		}
	}
	return nil, fmt.Errorf("%d local pods not running after 3 minutes", l.local)
}

// createScalePolicies writes the plan's policies, 4 per namespace in (b)
// and 8 in (c), up to want, and returns how many, in how many namespaces
// (the first ones).
func createScalePolicies(ctx context.Context, c kubernetes.Interface, l scaleLayout, want int) (policies, namespaces int, err error) {
	variants := 1
	if l.services > 0 {
		variants = 2
	}
	n := min(want/(4*variants), l.namespaces())
	err = parallel(ctx, 0, n, 8, func(i int) error {
		for v := range variants {
			for _, p := range benchPolicySet(scaleNS(i), v) {
				if err := retryTransient(ctx, func() error {
					_, err := c.NetworkingV1().NetworkPolicies(p.Namespace).Create(ctx, p, metav1.CreateOptions{})
					return ignoreExists(err)
				}); err != nil {
					return err
				}
			}
		}
		return nil
	})
	return 4 * variants * n, n, err
}

// scalePolicyPace is how often E2 starts a timed policy change.
const scalePolicyPace = 500 * time.Millisecond

// timeScalePolicyChanges times policy changes that each allow one more
// source to a local pod, reading the decisions from the dataplane's pinned
// maps (no load on the agent).
func timeScalePolicyChanges(ctx context.Context, c kubernetes.Interface, dp dataplane.Dataplane, node lab.NodeInfo, targets []policyTarget, changes int) ([]time.Duration, error) {
	v, err := dp.OpenPolicy(ctx, node)
	if err != nil {
		return nil, err
	}
	defer v.Close()
	decide := func(local, peer netip.Addr) (bool, error) { return v.AllowedIn(local, peer, 9999) }
	return timePolicyChanges(ctx, c, decide, targets, changes, scalePolicyPace)
}
