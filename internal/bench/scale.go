package bench

import (
	"context"
	"encoding/csv"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"sync/atomic"
	"text/tabwriter"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

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
	// NetworkPolicies).
	Scenarios []string
	// Nodes counts the measured node; Pods counts its LocalPods.
	Nodes, Pods, LocalPods int
	// StartPods are written before the ramp is measured (the ramp goes
	// from them to Pods).
	StartPods int
	// Policies for scenario b, 4 per namespace (the plan's four kinds).
	Policies int
	Steady   time.Duration
	// ChangesPerSec in the steady state.
	ChangesPerSec  int
	BinDir, K8sBin string
	Progress       io.Writer
	// Out receives scale.json, scale-<scenario>.csv and the agent's heap
	// profiles at the end of each phase, heap-<scenario>-<phase>.pb.gz.
	Out string
}

// DefaultScaleOptions are BENCHMARKS.md's E2; Quick the --quick run.
func DefaultScaleOptions() ScaleOptions {
	return ScaleOptions{Scenarios: []string{"a", "b"}, Nodes: 1000, Pods: 100000, LocalPods: 100, StartPods: 20000,
		Policies: 2000, Steady: 2 * time.Minute, ChangesPerSec: 50}
}

// Quick shrinks o to the --quick size: 100 nodes, 10k pods, 200 policies.
func (o ScaleOptions) Quick() ScaleOptions {
	o.Nodes, o.Pods, o.LocalPods, o.StartPods, o.Policies = 100, 10000, 100, 2000, 200
	return o
}

// ScaleScenario is one scenario's samples and what they add up to.
type ScaleScenario struct {
	Name    string        `json:"scenario"`
	Pods    int           `json:"pods"`
	Nodes   int           `json:"nodes"`
	Policy  int           `json:"policies"`
	Changes int           `json:"steady_changes"`
	Steady  ScaleSummary  `json:"steady"`
	Ramp    ScaleSummary  `json:"ramp"`
	Setup   time.Duration `json:"setup_ns"`
	Samples []ScaleSample `json:"samples"`
}

// ScaleSummary sums up a phase's samples: mean CPU, the peak and the
// last of the memory figures.
type ScaleSummary struct {
	Seconds       int     `json:"seconds"`
	MeanMilli     float64 `json:"agent_millicores_mean"`
	PeakMilli     float64 `json:"agent_millicores_peak"`
	PeakRSS       float64 `json:"agent_rss_mib_peak"`
	LastRSS       float64 `json:"agent_rss_mib_last"`
	LastHeap      float64 `json:"agent_heap_mib_last"`
	BPFMaps       float64 `json:"bpf_maps_mib"`
	MeanRxKiBps   float64 `json:"agent_rx_kib_per_s_mean"`
	MeanAPIMilli  float64 `json:"apiserver_millicores_mean"`
	MeanEtcdMilli float64 `json:"etcd_millicores_mean"`
	IPCache       int     `json:"ipcache_entries"`
	Identities    int     `json:"identities"`
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
	if o.Nodes < 2 || o.LocalPods < 0 || o.Pods-o.LocalPods > (o.Nodes-1)*scalePodsPerNode || o.StartPods > o.Pods {
		return nil, fmt.Errorf("scale: %d pods (%d local) do not fit %d nodes of %d pods, or start %d > pods", o.Pods, o.LocalPods, o.Nodes, scalePodsPerNode, o.StartPods)
	}
	if o.Progress == nil {
		o.Progress = io.Discard
	}
	run := &ScaleRun{Machine: DescribeMachine(""), Started: time.Now(), Options: o}
	for _, sc := range o.Scenarios {
		if sc != "a" && sc != "b" {
			return nil, fmt.Errorf("scenario %q: want a or b", sc)
		}
		res, err := scaleScenario(ctx, o, sc)
		if err != nil {
			return run, fmt.Errorf("scenario %s: %w", sc, err)
		}
		run.Scenarios = append(run.Scenarios, *res)
		if err := run.write(o.Out); err != nil {
			return run, err
		}
	}
	return run, nil
}

func scaleScenario(ctx context.Context, o ScaleOptions, name string) (*ScaleScenario, error) {
	dir, err := os.MkdirTemp("", "kpath-e2-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	fmt.Fprintf(o.Progress, "scenario %s: lab up\n", name)
	l, err := lab.Start(ctx, lab.Options{Name: "scale", Dir: filepath.Join(dir, "lab"), Nodes: 1, Routing: "native", Services: "kpath",
		BinDir: o.BinDir, K8sBin: o.K8sBin}, 2*time.Minute)
	if err != nil {
		return nil, err
	}
	defer l.Stop()
	c, node := l.Client, l.State.Nodes[0]
	namespaces := (o.Pods + scalePodsPerNS - 1) / scalePodsPerNS
	fake := o.Pods - o.LocalPods
	var written atomic.Int64
	phase := atomic.Value{}
	phase.Store("setup")
	smp := &sampler{agent: procOf{"kpath-agent", "--pin-dir=" + node.PinDir},
		api:  procOf{"kube-apiserver", "--cert-dir=" + filepath.Join(dir, "lab")},
		etcd: procOf{"etcd", "--data-dir=" + filepath.Join(dir, "lab")}, netns: node.Netns, start: time.Now(),
		phase: func() (string, int) { return phase.Load().(string), int(written.Load()) }}
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() { smp.run(stop); close(done) }()
	defer func() {
		select {
		case <-stop:
		default:
			close(stop)
		}
		<-done
	}()

	start := time.Now()
	if err := createScaleNamespaces(ctx, c, namespaces); err != nil {
		return nil, err
	}
	if err := createScaleNodes(ctx, c, 0, o.Nodes-1, o.Progress); err != nil {
		return nil, err
	}
	policies := 0
	if name == "b" {
		if policies, err = createScalePolicies(ctx, c, namespaces, o.Policies); err != nil {
			return nil, err
		}
	}
	if err := createLocalPods(ctx, c, node.Name, o.LocalPods, namespaces); err != nil {
		return nil, err
	}
	written.Store(int64(o.LocalPods))
	first := min(max(o.StartPods-o.LocalPods, 0), fake)
	if err := createScalePods(ctx, c, 0, first, o.Progress); err != nil {
		return nil, err
	}
	written.Add(int64(first))
	setup := time.Since(start)

	phase.Store("ramp")
	rampFrom := len(smp.taken())
	for at := first; at < fake; {
		to := min(at+1000, fake)
		if err := createScalePods(ctx, c, at, to, io.Discard); err != nil {
			return nil, err
		}
		written.Add(int64(to - at))
		fmt.Fprintf(o.Progress, "\rramp: %d/%d pods", int(written.Load()), o.Pods)
		at = to
	}
	fmt.Fprintln(o.Progress)
	// The agent has caught up when its ipcache holds every pod.
	for deadline := time.Now().Add(2 * time.Minute); time.Now().Before(deadline); time.Sleep(500 * time.Millisecond) {
		if s := smp.taken(); len(s) > 0 && s[len(s)-1].IPCache >= o.Pods {
			break
		}
	}
	rampTo := len(smp.taken())
	profile := func(phase string) {
		if o.Out == "" {
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
	stopChurn := make(chan struct{})
	time.AfterFunc(o.Steady, func() { close(stopChurn) })
	changes, err := churn(ctx, c, fake, o.Nodes-1, namespaces, o.ChangesPerSec, stopChurn)
	if err != nil {
		return nil, fmt.Errorf("steady state: %w", err)
	}
	profile("steady")
	close(stop)
	<-done
	all := smp.taken()
	res := &ScaleScenario{Name: name, Pods: o.Pods, Nodes: o.Nodes, Policy: policies, Changes: changes, Setup: setup, Samples: all,
		Ramp: summarize(all[min(rampFrom, len(all)):min(rampTo, len(all))]), Steady: summarize(all[min(rampTo, len(all)):])}
	return res, nil
}

// createLocalPods creates n pods on the measured node, which the lab's
// runtime runs for real (an idle workload, the real CNI plugin), spread
// over the namespaces with their deployments' labels, and waits until
// they run.
func createLocalPods(ctx context.Context, c kubernetes.Interface, node string, n, namespaces int) error {
	err := parallel(ctx, 0, n, 4, func(i int) error {
		ns := scaleNS(i % namespaces)
		p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: fmt.Sprintf("local-%d", i), Labels: deploymentLabels(ns, i%scaleDeployments)},
			Spec: corev1.PodSpec{NodeName: node, Containers: []corev1.Container{{Name: "app", Image: "kpath/idle"}}}}
		return retryTransient(ctx, func() error {
			_, err := c.CoreV1().Pods(ns).Create(ctx, p, metav1.CreateOptions{})
			return ignoreExists(err)
		})
	})
	if err != nil {
		return err
	}
	for deadline := time.Now().Add(3 * time.Minute); time.Now().Before(deadline); time.Sleep(time.Second) {
		l, err := c.CoreV1().Pods("").List(ctx, metav1.ListOptions{FieldSelector: "spec.nodeName=" + node})
		if err != nil {
			continue
		}
		running := 0
		for _, p := range l.Items {
			if p.Status.Phase == corev1.PodRunning && p.Status.PodIP != "" {
				running++
			}
		}
		if running >= n {
			return nil
		}
	}
	return fmt.Errorf("%d local pods not running after 3 minutes", n)
}

// createScalePolicies writes the plan's four policies per namespace, up
// to want, and returns how many.
func createScalePolicies(ctx context.Context, c kubernetes.Interface, namespaces, want int) (int, error) {
	n := min(want/4, namespaces)
	err := parallel(ctx, 0, n, 8, func(i int) error {
		for _, p := range benchPolicies(scaleNS(i)) {
			if err := retryTransient(ctx, func() error {
				_, err := c.NetworkingV1().NetworkPolicies(p.Namespace).Create(ctx, p, metav1.CreateOptions{})
				return ignoreExists(err)
			}); err != nil {
				return err
			}
		}
		return nil
	})
	return 4 * n, err
}

func summarize(ss []ScaleSample) ScaleSummary {
	var s ScaleSummary
	if len(ss) == 0 {
		return s
	}
	s.Seconds = len(ss)
	for _, x := range ss {
		s.MeanMilli += x.AgentMilli / float64(len(ss))
		s.MeanRxKiBps += x.RxKiBps / float64(len(ss))
		s.MeanAPIMilli += x.APIMilli / float64(len(ss))
		s.MeanEtcdMilli += x.EtcdMilli / float64(len(ss))
		s.PeakMilli = max(s.PeakMilli, x.AgentMilli)
		s.PeakRSS = max(s.PeakRSS, x.AgentRSS)
	}
	last := ss[len(ss)-1]
	s.LastRSS, s.LastHeap, s.BPFMaps, s.IPCache, s.Identities = last.AgentRSS, last.AgentHeap, last.BPFMaps, last.IPCache, last.Identities
	return s
}

// scaleTargets are E2's steady-state targets: millicores and MiB.
var scaleTargets = map[string][2]float64{"a": {50, 150}, "b": {75, 200}, "c": {100, 250}}

// Print writes the run's table.
func (r *ScaleRun) Print(w io.Writer) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SCENARIO\tNODES\tPODS\tPOLICIES\tSTEADY CPU\tSTEADY RSS\tHEAP\tBPF MAPS\tRX\tRAMP PEAK CPU\tRAMP PEAK RSS\tAPISERVER / ETCD CPU\tTARGET CPU / RSS")
	for _, s := range r.Scenarios {
		t := scaleTargets[s.Name]
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%.0fm\t%.0f MiB\t%.0f MiB\t%.0f MiB\t%.0f KiB/s\t%.0fm\t%.0f MiB\t%.0fm / %.0fm\t<= %.0fm / <= %.0f MiB\n",
			s.Name, s.Nodes, s.Pods, s.Policy, s.Steady.MeanMilli, s.Steady.PeakRSS, s.Steady.LastHeap, s.Steady.BPFMaps,
			s.Steady.MeanRxKiBps, s.Ramp.PeakMilli, s.Ramp.PeakRSS, s.Steady.MeanAPIMilli, s.Steady.MeanEtcdMilli, t[0], t[1])
	}
	tw.Flush()
}

// write saves scale.json and a CSV of each scenario's samples.
func (r *ScaleRun) write(dir string) error {
	if dir == "" {
		return nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "scale.json"), b, 0o644); err != nil {
		return err
	}
	for _, s := range r.Scenarios {
		f, err := os.Create(filepath.Join(dir, "scale-"+s.Name+".csv"))
		if err != nil {
			return err
		}
		cw := csv.NewWriter(f)
		_ = cw.Write([]string{"t_s", "phase", "pods", "agent_millicores", "agent_rss_mib", "agent_heap_mib", "bpf_maps_mib",
			"agent_rx_kib_per_s", "ipcache_entries", "identities", "apiserver_millicores", "etcd_millicores", "apiserver_rss_mib"})
		for _, x := range s.Samples {
			ff := func(v float64) string { return strconv.FormatFloat(v, 'f', 1, 64) }
			_ = cw.Write([]string{ff(x.T), x.Phase, strconv.Itoa(x.Pods), ff(x.AgentMilli), ff(x.AgentRSS), ff(x.AgentHeap), ff(x.BPFMaps),
				ff(x.RxKiBps), strconv.Itoa(x.IPCache), strconv.Itoa(x.Identities), ff(x.APIMilli), ff(x.EtcdMilli), ff(x.ControlMiBs)})
		}
		cw.Flush()
		if err := f.Close(); err != nil {
			return err
		}
		if err := cw.Error(); err != nil {
			return err
		}
	}
	return nil
}
