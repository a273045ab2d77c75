package bench

import (
	"bufio"
	"context"
	"encoding/csv"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"

	"github.com/kpath/kpath/internal/agent"
	"github.com/kpath/kpath/internal/cniapi"
	"github.com/kpath/kpath/internal/lab"
	"github.com/kpath/kpath/internal/nsutil"
)

// LatencyOptions configure E1 (BENCHMARKS.md): service routing latency vs
// cluster size, every service dataplane measured in the same run.
type LatencyOptions struct {
	Points    []int    // numbers of simulated services S (10 endpoints each)
	Requests  int      // ab requests per run
	Rounds    int      // direct/service alternations per point
	Modes     []string // lab.ServiceModes
	Scenarios []string // "loaded" (-c 16 with churn), "quiet" (-c 1)
	OutDir    string
	BinDir    string // kpath, kpath-agent, kpath-cni
	K8sBin    string
	Progress  io.Writer
}

// LatencyRow is one measured (mode, scenario, point, target): medians over
// the rounds.
type LatencyRow struct {
	Mode, Scenario string
	Services, Pods int
	Target         string // direct or service
	TotalMs        float64
	MeanMs         float64
	P50Ms, P99Ms   float64
	ReadyMs        float64 // last object created -> dataplane ready
	RSSMiB         float64 // dataplane process
	CPUSeconds     float64 // dataplane process, children included
}

const benchNamespace = "default"

// Latency runs E1.
func Latency(ctx context.Context, o LatencyOptions) ([]LatencyRow, error) {
	if _, err := exec.LookPath("ab"); err != nil {
		return nil, fmt.Errorf("ab not found: install apache2-utils")
	}
	var rows []LatencyRow
	for _, mode := range o.Modes {
		r, err := latencyMode(ctx, o, mode)
		if err != nil {
			return rows, fmt.Errorf("mode %s: %w", mode, err)
		}
		rows = append(rows, r...)
	}
	if o.OutDir != "" {
		if err := writeLatencyCSV(filepath.Join(o.OutDir, "latency.csv"), rows); err != nil {
			return rows, err
		}
	}
	return rows, nil
}

func latencyMode(ctx context.Context, o LatencyOptions, mode string) ([]LatencyRow, error) {
	say := func(f string, a ...any) { fmt.Fprintf(o.Progress, "[%s] "+f+"\n", append([]any{mode}, a...)...) }
	dir, err := os.MkdirTemp("", "kpath-e1-")
	if err != nil {
		return nil, err
	}
	labDir := filepath.Join(dir, "lab")
	_ = lab.Down(labDir, func(string, ...any) {})
	lctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		done <- lab.Supervise(lctx, lab.Options{Dir: labDir, Nodes: 1, Routing: "native", Services: mode,
			BinDir: o.BinDir, K8sBin: o.K8sBin, Log: func(string, ...any) {}})
	}()
	defer func() {
		cancel()
		<-done
		_ = lab.Down(labDir, func(string, ...any) {})
		os.RemoveAll(dir)
	}()
	say("lab up")
	var st *lab.State
	for deadline := time.Now().Add(2 * time.Minute); ; time.Sleep(100 * time.Millisecond) {
		if st, err = lab.LoadState(labDir); err == nil && st.Error != "" {
			return nil, fmt.Errorf("lab: %s", st.Error)
		}
		if err == nil && st.Ready {
			break
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("lab not ready")
		}
	}
	c, err := lab.Client(st)
	if err != nil {
		return nil, err
	}
	node := st.Nodes[0]
	target, clientNS, echoIP, err := latencyTargets(ctx, c, node.Name)
	if err != nil {
		return nil, err
	}
	say("target %s, echo pod %s", target, echoIP)
	cg, err := os.Open(node.Cgroup)
	if err != nil {
		return nil, err
	}
	defer cg.Close()

	var rows []LatencyRow
	created := 0
	for _, s := range o.Points {
		if s > created {
			say("creating services %d..%d (10 simulated remote endpoints each)", created, s)
			if err := createSimulated(ctx, c, created, s); err != nil {
				return rows, err
			}
			created = s
		}
		start := time.Now()
		if err := waitDataplane(ctx, mode, node, st, created+2, start); err != nil {
			return rows, err
		}
		ready := time.Since(start)
		say("dataplane ready %s after the last object", ready.Round(time.Millisecond))
		for _, scenario := range o.Scenarios {
			conc, churn := 1, false
			if scenario == "loaded" {
				conc, churn = 16, created > 0
			}
			stop := make(chan struct{})
			var wg sync.WaitGroup
			if churn {
				wg.Go(func() { churnSlices(ctx, c, created, stop) })
			}
			samples := map[string][]abResult{}
			for round := range o.Rounds {
				for _, tg := range []struct{ name, url, ports string }{
					{"direct", "http://" + echoIP + ":8080/", "20000 39999"},
					{"service", "http://" + target + "/", "40000 59999"},
				} {
					if mode == "none" && tg.name == "service" {
						continue
					}
					r, err := runAB(clientNS, cg, tg.url, tg.ports, o.Requests, conc)
					if err != nil {
						close(stop)
						wg.Wait()
						return rows, fmt.Errorf("ab %s round %d: %w", tg.name, round, err)
					}
					samples[tg.name] = append(samples[tg.name], r)
				}
			}
			close(stop)
			wg.Wait()
			rss, cpu := dataplaneUsage(mode, node)
			for _, tg := range []string{"direct", "service"} {
				if len(samples[tg]) == 0 {
					continue
				}
				row := medianRow(samples[tg])
				row.Mode, row.Scenario, row.Services, row.Pods, row.Target = mode, scenario, created, created*10, tg
				row.ReadyMs, row.RSSMiB, row.CPUSeconds = float64(ready.Microseconds())/1000, rss, cpu
				rows = append(rows, row)
				say("S=%d %s %s: total %.0f ms, mean %.3f ms, p50 %.2f ms, p99 %.2f ms", created, scenario, tg, row.TotalMs, row.MeanMs, row.P50Ms, row.P99Ms)
			}
		}
	}
	return rows, nil
}

// latencyTargets creates the echo server and client pods on the measured
// node and the target Service; it returns the ClusterIP, the client's
// namespace and the echo pod's address.
func latencyTargets(ctx context.Context, c kubernetes.Interface, node string) (string, string, string, error) {
	svc, err := c.CoreV1().Services(benchNamespace).Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "target"},
		Spec: corev1.ServiceSpec{Selector: map[string]string{"app": "target"},
			Ports: []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromInt32(8080)}}},
	}, metav1.CreateOptions{})
	if err != nil {
		return "", "", "", err
	}
	for _, p := range []struct{ name, image string }{{"echo", "kpath/echo"}, {"client", "kpath/client"}} {
		labels := map[string]string{}
		if p.name == "echo" {
			labels["app"] = "target"
		}
		_, err := c.CoreV1().Pods(benchNamespace).Create(ctx, &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: p.name, Labels: labels},
			Spec: corev1.PodSpec{NodeName: node, Containers: []corev1.Container{{Name: "main", Image: p.image,
				Ports: []corev1.ContainerPort{{ContainerPort: 8080}}}}},
		}, metav1.CreateOptions{})
		if err != nil {
			return "", "", "", err
		}
	}
	var echoIP, clientNS string
	for deadline := time.Now().Add(time.Minute); echoIP == "" || clientNS == ""; time.Sleep(100 * time.Millisecond) {
		if time.Now().After(deadline) {
			return "", "", "", fmt.Errorf("pods not running")
		}
		l, err := c.CoreV1().Pods(benchNamespace).List(ctx, metav1.ListOptions{})
		if err != nil {
			continue
		}
		for _, p := range l.Items {
			if p.Status.PodIP == "" {
				continue
			}
			if p.Name == "echo" {
				echoIP = p.Status.PodIP
			} else {
				clientNS = lab.PodNetns(node, p.UID)
			}
		}
	}
	return svc.Spec.ClusterIP, clientNS, echoIP, nil
}

func simulatedSlice(k int) *discoveryv1.EndpointSlice {
	s := benchSlice(k, 10)
	s.Namespace = benchNamespace
	s.Name = fmt.Sprintf("sim-%d-1", k)
	s.Labels[discoveryv1.LabelServiceName] = fmt.Sprintf("sim-%d", k)
	s.Labels[discoveryv1.LabelManagedBy] = "kpath-bench"
	return s
}

// createSimulated creates services from..to-1 without selectors and their
// EndpointSlices, whose endpoints are on simulated remote nodes.
func createSimulated(ctx context.Context, c kubernetes.Interface, from, to int) error {
	jobs := make(chan int)
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		firstErr error
	)
	for range 16 {
		wg.Go(func() {
			for k := range jobs {
				_, err := c.CoreV1().Services(benchNamespace).Create(ctx, &corev1.Service{
					ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("sim-%d", k)},
					Spec:       corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "http", Port: 80}}},
				}, metav1.CreateOptions{})
				if err == nil {
					_, err = c.DiscoveryV1().EndpointSlices(benchNamespace).Create(ctx, simulatedSlice(k), metav1.CreateOptions{})
				}
				if err != nil {
					mu.Lock()
					if firstErr == nil {
						firstErr = err
					}
					mu.Unlock()
				}
			}
		})
	}
	for k := from; k < to; k++ {
		jobs <- k
	}
	close(jobs)
	wg.Wait()
	return firstErr
}

// churnSlices changes 20 simulated EndpointSlices per second until stop.
func churnSlices(ctx context.Context, c kubernetes.Interface, n int, stop <-chan struct{}) {
	t := time.NewTicker(50 * time.Millisecond)
	defer t.Stop()
	for i := 0; ; i++ {
		select {
		case <-stop:
			return
		case <-t.C:
		}
		k := i % n
		s, err := c.DiscoveryV1().EndpointSlices(benchNamespace).Get(ctx, fmt.Sprintf("sim-%d-1", k), metav1.GetOptions{})
		if err != nil {
			continue
		}
		ready := s.Endpoints[0].Conditions.Ready == nil || *s.Endpoints[0].Conditions.Ready
		flip := !ready
		s.Endpoints[0].Conditions.Ready = &flip
		_, _ = c.DiscoveryV1().EndpointSlices(benchNamespace).Update(ctx, s, metav1.UpdateOptions{})
	}
}

// waitDataplane waits until the node's service dataplane holds the
// objects created before since.
func waitDataplane(ctx context.Context, mode string, node lab.NodeInfo, st *lab.State, frontends int, since time.Time) error {
	deadline := time.Now().Add(10 * time.Minute)
	for ; time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		switch {
		case mode == "none":
			return nil
		case strings.HasPrefix(mode, "kpath"):
			var s agent.Status
			if err := cniapi.NewClient(node.AgentSocket).Do("GET", "/v1/status", nil, &s); err == nil &&
				s.Reconciler.Frontends >= frontends && s.Reconciler.Retrying == 0 {
				return nil
			}
		default:
			if ts, err := kubeProxyLastSync(node.Netns); err == nil && ts.After(since) {
				return nil
			}
		}
	}
	return fmt.Errorf("dataplane not ready after 10 minutes")
}

// kubeProxyLastSync reads kube-proxy's last successful rules sync.
func kubeProxyLastSync(netns string) (time.Time, error) {
	client := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{DialContext: nsutil.Dialer(netns)}}
	resp, err := client.Get("http://127.0.0.1:10249/metrics")
	if err != nil {
		return time.Time{}, err
	}
	defer resp.Body.Close()
	s := bufio.NewScanner(resp.Body)
	for s.Scan() {
		line := s.Text()
		if !strings.HasPrefix(line, "kubeproxy_sync_proxy_rules_last_timestamp_seconds") || !strings.Contains(line, `ip_family="IPv4"`) {
			continue
		}
		if f := strings.Fields(line); len(f) == 2 {
			f, err := strconv.ParseFloat(f[1], 64)
			if err != nil {
				return time.Time{}, err
			}
			return time.Unix(0, int64(f*1e9)), nil
		}
	}
	return time.Time{}, fmt.Errorf("no sync timestamp yet")
}

type abResult struct{ total, mean, p50, p99 float64 }

// runAB runs ApacheBench from the client pod (in the node's cgroup, where
// the socket hook applies) with a client port range of its own.
func runAB(netns string, cg *os.File, url, ports string, n, conc int) (abResult, error) {
	if out, err := exec.Command("ip", "netns", "exec", netns, "sysctl", "-qw", "net.ipv4.ip_local_port_range="+ports).CombinedOutput(); err != nil {
		return abResult{}, fmt.Errorf("port range: %v: %s", err, out)
	}
	csvPath := filepath.Join(os.TempDir(), fmt.Sprintf("kpath-ab-%d.csv", time.Now().UnixNano()))
	defer os.Remove(csvPath)
	cmd := exec.Command("ip", "netns", "exec", netns, "ab", "-q", "-r", "-n", strconv.Itoa(n), "-c", strconv.Itoa(conc), "-e", csvPath, url)
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: int(cg.Fd())}
	out, err := cmd.CombinedOutput()
	if err != nil {
		return abResult{}, fmt.Errorf("%v: %s", err, out)
	}
	var r abResult
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		switch {
		case strings.HasPrefix(line, "Time taken for tests:") && len(f) >= 5:
			v, _ := strconv.ParseFloat(f[4], 64)
			r.total = v * 1000
		case strings.HasPrefix(line, "Time per request:") && strings.Contains(line, "(mean)") && !strings.Contains(line, "across") && len(f) >= 4:
			r.mean, _ = strconv.ParseFloat(f[3], 64)
		case strings.HasPrefix(line, "Failed requests:") && len(f) >= 3 && f[2] != "0":
			return r, fmt.Errorf("ab: %s", line)
		}
	}
	data, err := os.ReadFile(csvPath)
	if err != nil {
		return r, err
	}
	recs, _ := csv.NewReader(strings.NewReader(string(data))).ReadAll()
	for _, rec := range recs {
		if len(rec) != 2 {
			continue
		}
		v, err := strconv.ParseFloat(rec[1], 64)
		if err != nil {
			continue
		}
		switch rec[0] {
		case "50":
			r.p50 = v
		case "99":
			r.p99 = v
		}
	}
	return r, nil
}

func medianRow(rs []abResult) LatencyRow {
	med := func(get func(abResult) float64) float64 {
		v := make([]float64, len(rs))
		for i, r := range rs {
			v[i] = get(r)
		}
		sort.Float64s(v)
		return v[len(v)/2]
	}
	return LatencyRow{
		TotalMs: med(func(r abResult) float64 { return r.total }), MeanMs: med(func(r abResult) float64 { return r.mean }),
		P50Ms: med(func(r abResult) float64 { return r.p50 }), P99Ms: med(func(r abResult) float64 { return r.p99 }),
	}
}

// dataplaneUsage finds the node's service dataplane process (kpath-agent or
// kube-proxy) and reports its RSS and CPU seconds, children included.
func dataplaneUsage(mode string, node lab.NodeInfo) (float64, float64) {
	name := "kpath-agent"
	if strings.HasPrefix(mode, "kube-proxy") {
		name = "kube-proxy"
	}
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		args := strings.Split(string(cmdline), "\x00")
		if len(args) == 0 || filepath.Base(args[0]) != name || !strings.Contains(string(cmdline), node.Name) {
			continue
		}
		stat, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		s := string(stat)
		i := strings.LastIndexByte(s, ')')
		f := strings.Fields(s[i+2:])
		if len(f) < 22 {
			continue
		}
		tick := 100.0 // USER_HZ
		var cpu float64
		for _, idx := range []int{11, 12, 13, 14} { // utime stime cutime cstime
			v, _ := strconv.ParseFloat(f[idx], 64)
			cpu += v / tick
		}
		rssPages, _ := strconv.ParseFloat(f[21], 64)
		return rssPages * float64(os.Getpagesize()) / (1 << 20), cpu
	}
	return 0, 0
}

func writeLatencyCSV(path string, rows []LatencyRow) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	w := csv.NewWriter(f)
	_ = w.Write([]string{"mode", "scenario", "services", "pods", "target", "total_ms", "mean_ms", "p50_ms", "p99_ms", "ready_ms", "rss_mib", "cpu_s"})
	ff := func(v float64) string { return strconv.FormatFloat(v, 'f', 3, 64) }
	for _, r := range rows {
		_ = w.Write([]string{r.Mode, r.Scenario, strconv.Itoa(r.Services), strconv.Itoa(r.Pods), r.Target,
			ff(r.TotalMs), ff(r.MeanMs), ff(r.P50Ms), ff(r.P99Ms), ff(r.ReadyMs), ff(r.RSSMiB), ff(r.CPUSeconds)})
	}
	w.Flush()
	return w.Error()
}
