package bench

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"

	"github.com/kpath/kpath/internal/image"
	"github.com/kpath/kpath/internal/lab"
	"github.com/kpath/kpath/internal/procstat"
)

// kpath bench pod-start: what a pod's start costs with kpath on each kind
// of node the lab has, side by side in one run. N pods are created at once
// (placed round-robin, so the scheduler is not measured) and each one's
// creation -> address (status.podIP) and creation -> Ready are timed from
// a watch; on real nodes also containerd's RunPodSandbox (sandbox start to
// the pod's network set up: CNI ADD as containerd calls it), from its log.
// The agents' CPU and memory are sampled at idle and during the starts;
// with helm the DaemonSet's rollout is timed too.

// Pod-start setups: the lab's runtime, real nodes with the lab's agents,
// real nodes with kpath installed by helm.
const (
	SetupLab        = "lab"
	SetupContainerd = "containerd"
	SetupHelm       = "helm"
)

// PodStartOptions configure kpath bench pod-start.
type PodStartOptions struct {
	Pods, Nodes int
	Setups      []string
	BinDir      string
	K8sBin      string
	HelmBin     string
	ImageDir    string
	Progress    io.Writer
}

// Dist is a distribution of durations, in milliseconds.
type Dist struct {
	N   int     `json:"n"`
	P50 float64 `json:"p50_ms"`
	P99 float64 `json:"p99_ms"`
	Max float64 `json:"max_ms"`
}

func dist(ds []time.Duration) Dist {
	if len(ds) == 0 {
		return Dist{}
	}
	slices.Sort(ds)
	at := func(q float64) float64 {
		return float64(ds[min(len(ds)-1, int(q*float64(len(ds))))]) / float64(time.Millisecond)
	}
	return Dist{N: len(ds), P50: at(0.5), P99: at(0.99), Max: float64(ds[len(ds)-1]) / float64(time.Millisecond)}
}

// AgentUse is one node's agent over a phase: mean CPU and peak RSS.
type AgentUse struct {
	Node     string  `json:"node"`
	CPUMilli float64 `json:"cpu_millicores"`
	RSSMiB   float64 `json:"rss_peak_mib"`
}

// PodStartResult is one setup's figures.
type PodStartResult struct {
	Setup         string     `json:"setup"`
	Pods          int        `json:"pods"`
	CreateToIP    Dist       `json:"create_to_ip"`
	CreateToReady Dist       `json:"create_to_ready"`
	Sandbox       *Dist      `json:"run_pod_sandbox,omitempty"`
	AgentIdle     []AgentUse `json:"agent_idle"`
	AgentBusy     []AgentUse `json:"agent_during_starts"`
	Rollout       string     `json:"rollout,omitempty"`
	Error         string     `json:"error,omitempty"`
}

// PodStart runs every setup in turn, each in a lab of its own.
func PodStart(ctx context.Context, o PodStartOptions) []PodStartResult {
	var out []PodStartResult
	for _, s := range o.Setups {
		r, err := podStartSetup(ctx, o, s)
		if err != nil {
			r.Error = err.Error()
			fmt.Fprintf(o.Progress, "[%s] failed: %v\n", s, err)
		}
		out = append(out, r)
	}
	return out
}

func podStartSetup(ctx context.Context, o PodStartOptions, setup string) (PodStartResult, error) {
	res := PodStartResult{Setup: setup, Pods: o.Pods}
	say := func(f string, a ...any) { fmt.Fprintf(o.Progress, "[%s] "+f+"\n", append([]any{setup}, a...)...) }
	lo := lab.Options{Name: "ps-" + setup, Nodes: o.Nodes, Routing: "native", Services: "kpath", BinDir: o.BinDir, K8sBin: o.K8sBin,
		Log: func(string, ...any) {}}
	switch setup {
	case SetupLab:
	case SetupContainerd, SetupHelm:
		lo.Runtime, lo.ImageDir = lab.RuntimeContainerd, o.ImageDir
		if setup == SetupHelm {
			lo.Install, lo.HelmBin = lab.InstallHelm, o.HelmBin
		}
	default:
		return res, fmt.Errorf("setup %q: want %s, %s or %s", setup, SetupLab, SetupContainerd, SetupHelm)
	}
	dir, err := os.MkdirTemp("", "kpath-podstart-")
	if err != nil {
		return res, err
	}
	defer os.RemoveAll(dir)
	lo.Dir = filepath.Join(dir, "lab")
	_ = lab.Down(lo.Dir, lo.Name, func(string, ...any) {})
	lctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- lab.Supervise(lctx, lo) }()
	defer func() {
		cancel()
		<-done
		_ = lab.Down(lo.Dir, lo.Name, func(string, ...any) {})
	}()
	say("bringing up %d nodes", o.Nodes)
	var st *lab.State
	for deadline := time.Now().Add(5 * time.Minute); ; time.Sleep(200 * time.Millisecond) {
		st, err = lab.LoadState(lo.Dir)
		if err == nil && st.Error != "" {
			return res, fmt.Errorf("lab: %s", st.Error)
		}
		if err == nil && st.Ready {
			break
		}
		if time.Now().After(deadline) {
			return res, fmt.Errorf("lab not ready in 5 minutes")
		}
	}
	c, err := lab.Client(st)
	if err != nil {
		return res, err
	}
	agents := map[string]int{}
	for _, n := range st.Nodes {
		if pid := agentPid(n.Name); pid != 0 {
			agents[n.Name] = pid
		}
	}
	if len(agents) != len(st.Nodes) {
		return res, fmt.Errorf("found the agents of %d of %d nodes", len(agents), len(st.Nodes))
	}
	say("agents at idle for 10s")
	res.AgentIdle = sampleAgents(agents, func() bool { return false }, 10*time.Second)

	say("starting %d pods", o.Pods)
	ns := "podstart"
	if _, err := c.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		return res, err
	}
	times, err := startPods(ctx, c, ns, st.Nodes, o.Pods, func(finished func() bool) {
		res.AgentBusy = sampleAgents(agents, finished, 10*time.Minute)
	})
	if err != nil {
		return res, err
	}
	var ip, ready []time.Duration
	for _, t := range times {
		ip, ready = append(ip, t.ip.Sub(t.created)), append(ready, t.ready.Sub(t.created))
	}
	res.CreateToIP, res.CreateToReady = dist(ip), dist(ready)
	if setup != SetupLab {
		var sb []time.Duration
		for _, n := range st.Nodes {
			sb = append(sb, runPodSandboxTimes(filepath.Join(lo.Dir, n.Name, "real", "containerd.log"), "ps-")...)
		}
		d := dist(sb)
		res.Sandbox = &d
	}
	if setup == SetupHelm {
		say("rolling the DaemonSet (a configuration change)")
		start := time.Now()
		if _, err := lab.Helm(st, "upgrade", lab.HelmRelease, st.Chart, "--reuse-values", "--set", "agent.logLevel=debug",
			"--wait=watcher", "--timeout", "4m"); err != nil {
			return res, err
		}
		res.Rollout = time.Since(start).Round(100 * time.Millisecond).String()
	}
	say("done: create->IP p50 %.0f ms p99 %.0f ms, create->Ready p50 %.0f ms p99 %.0f ms", res.CreateToIP.P50, res.CreateToIP.P99,
		res.CreateToReady.P50, res.CreateToReady.P99)
	return res, nil
}

// agentPid is the process of node's kpath-agent (run by the lab or by the
// kubelet: both name the node on its command line).
func agentPid(node string) int {
	pids := procstat.Find(func(argv []string) bool {
		return filepath.Base(argv[0]) == "kpath-agent" && slices.Contains(argv, "--node-name="+node)
	})
	if len(pids) == 0 {
		return 0
	}
	return pids[0]
}

// sampleAgents samples the agents every 500ms until done or within: mean
// CPU and peak RSS for each.
func sampleAgents(agents map[string]int, done func() bool, within time.Duration) []AgentUse {
	type mark struct {
		cpu time.Duration
		rss uint64
	}
	peak := map[string]uint64{}
	read := func() map[string]mark {
		m := map[string]mark{}
		for node, pid := range agents {
			if s, err := procstat.Read(pid); err == nil {
				m[node] = mark{s.CPU, s.RSSBytes}
				peak[node] = max(peak[node], s.RSSBytes)
			}
		}
		return m
	}
	start := time.Now()
	first := read()
	deadline := start.Add(within)
	for time.Now().Before(deadline) && !done() {
		time.Sleep(500 * time.Millisecond)
		read()
	}
	last, elapsed := read(), time.Since(start)
	var out []AgentUse
	for node := range agents {
		u := AgentUse{Node: node, RSSMiB: float64(peak[node]) / (1 << 20)}
		if l, ok := last[node]; ok {
			u.CPUMilli = float64(l.cpu-first[node].cpu) / float64(elapsed) * 1000
		}
		out = append(out, u)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Node < out[j].Node })
	return out
}

type podTimes struct{ created, ip, ready time.Time }

// startPods creates n idle pods on the nodes round-robin and times each
// from its creation to its address and to Ready, as a watch sees them;
// during runs while they start (it is given whether all are Ready).
func startPods(ctx context.Context, c kubernetes.Interface, ns string, nodes []lab.NodeInfo, n int, during func(finished func() bool)) (map[string]*podTimes, error) {
	var mu sync.Mutex
	times := map[string]*podTimes{}
	readyCount := 0
	allReady := make(chan struct{})
	// An informer, not a bare watch: it lists again and resumes when the
	// API server ends a watch.
	f := informers.NewSharedInformerFactoryWithOptions(c, 0, informers.WithNamespace(ns))
	seen := func(obj any) {
		p, ok := obj.(*corev1.Pod)
		if !ok {
			return
		}
		now := time.Now()
		mu.Lock()
		defer mu.Unlock()
		t := times[p.Name]
		if t == nil {
			t = &podTimes{}
			times[p.Name] = t
		}
		if t.ip.IsZero() && p.Status.PodIP != "" {
			t.ip = now
		}
		for _, cond := range p.Status.Conditions {
			if cond.Type == corev1.PodReady && cond.Status == corev1.ConditionTrue && t.ready.IsZero() {
				t.ready = now
				if readyCount++; readyCount == n {
					close(allReady)
				}
			}
		}
	}
	if _, err := f.Core().V1().Pods().Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: seen, UpdateFunc: func(_, obj any) { seen(obj) }}); err != nil {
		return nil, err
	}
	ictx, stop := context.WithCancel(ctx)
	defer stop()
	f.Start(ictx.Done())
	f.WaitForCacheSync(ictx.Done())
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		during(func() bool {
			select {
			case <-allReady:
				return true
			default:
				return false
			}
		})
	}()
	work := make(chan int)
	errs := make(chan error, n)
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for i := range work {
				name := fmt.Sprintf("ps-%d", i)
				node := nodes[i%len(nodes)].Name
				created := time.Now()
				_, err := c.CoreV1().Pods(ns).Create(ctx, &corev1.Pod{
					ObjectMeta: metav1.ObjectMeta{Name: name},
					Spec: corev1.PodSpec{NodeName: node, TerminationGracePeriodSeconds: new(int64), Containers: []corev1.Container{{
						Name: "idle", Image: "kpath/client:" + image.Tag, ImagePullPolicy: corev1.PullNever,
						Command: []string{"/usr/bin/kpath", "workload", "idle"}}}},
				}, metav1.CreateOptions{})
				if err != nil {
					errs <- err
					continue
				}
				mu.Lock()
				if times[name] == nil {
					times[name] = &podTimes{}
				}
				times[name].created = created
				mu.Unlock()
			}
		})
	}
	for i := range n {
		work <- i
	}
	close(work)
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		return nil, fmt.Errorf("create pods: %w", err)
	}
	select {
	case <-allReady:
	case <-time.After(10 * time.Minute):
		return nil, fmt.Errorf("%d of %d pods Ready after 10 minutes", readyCount, n)
	}
	<-sampled
	mu.Lock()
	defer mu.Unlock()
	return times, nil
}

// runPodSandbox matches containerd's log lines that start and end
// RunPodSandbox, with the pod's name and the line's time.
var runPodSandbox = regexp.MustCompile(`^time="([^"]+)".*msg="RunPodSandbox for &PodSandboxMetadata\{Name:([^,]+),.*?\}(.*)"`)

// runPodSandboxTimes reads how long containerd's RunPodSandbox took for
// each pod whose name starts with prefix (the sandbox made and its
// network set up by the CNI plugin).
func runPodSandboxTimes(logPath, prefix string) []time.Duration {
	f, err := os.Open(logPath)
	if err != nil {
		return nil
	}
	defer f.Close()
	started := map[string]time.Time{}
	var out []time.Duration
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		m := runPodSandbox.FindStringSubmatch(sc.Text())
		if m == nil || !strings.HasPrefix(m[2], prefix) {
			continue
		}
		at, err := time.Parse(time.RFC3339Nano, m[1])
		if err != nil {
			continue
		}
		if strings.Contains(m[3], "returns sandbox id") {
			if s, ok := started[m[2]]; ok {
				out = append(out, at.Sub(s))
				delete(started, m[2])
			}
			continue
		}
		started[m[2]] = at
	}
	return out
}
