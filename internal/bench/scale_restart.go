package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"sync"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"

	"github.com/kpath/kpath/internal/dataplane"
	"github.com/kpath/kpath/internal/lab"
	"github.com/kpath/kpath/internal/nsutil"
)

// E2's restart measurements at full size (E3's targets): the agent
// restarted over its pinned maps while a probe runs traffic between two
// pods of the node (one connection held, one new connection each time,
// through a Service), then started cold with its pins removed.

// scaleProbeNS holds the probe's pods, out of every policy's namespace.
const scaleProbeNS = "scale-probe"

// ScaleRestart is how the agent came back at full size.
type ScaleRestart struct {
	// RestartReadyMs: the restarted agent's start -> ready (its own
	// clock: every informer listed, every map in sync), over pinned maps.
	RestartReadyMs float64 `json:"restart_to_ready_ms"`
	// KillToReadyMs adds the exit, the lab's restart and the process
	// start: what the node saw.
	KillToReadyMs float64 `json:"kill_to_ready_ms"`
	// ColdReadyMs: start -> ready with the pinned maps removed first.
	ColdReadyMs float64 `json:"cold_start_to_ready_ms"`
	// Probe is the traffic during the restart (not the cold start, which
	// loses connection state by design).
	Probe ProbeStats `json:"probe"`
	// PeakRSS and PeakAnon are the agents' peaks over both restarts:
	// what a restart at full size costs (the initial lists).
	PeakRSS  float64 `json:"agent_rss_mib_peak"`
	PeakAnon float64 `json:"agent_anon_rss_mib_peak"`
}

// ProbeStats count the probe's requests through a Service: on one held
// connection (Dials stays 1 when it survives) and on a new connection
// each.
type ProbeStats struct {
	Held       int `json:"held_requests"`
	HeldFailed int `json:"held_failed"`
	Dials      int `json:"held_dials"`
	New        int `json:"new_connection_requests"`
	NewFailed  int `json:"new_connection_failed"`
}

// scaleProbe is the probe's client: a `kpath bench probe` process in the
// client pod's network namespace and in the node's cgroup (the pods'), so
// its connections take the path a pod's do, the socket hook included.
type scaleProbe struct {
	netns  string // the client pod's
	svcURL string
	cgroup string
	kpath  string
}

// startScaleProbe creates the probe's echo server and client pods on the
// measured node and a Service in front of the echo server, and waits
// until they run.
func startScaleProbe(ctx context.Context, c kubernetes.Interface, st *lab.State, node lab.NodeInfo, kpath string) (*scaleProbe, error) {
	if err := retryTransient(ctx, func() error {
		_, err := c.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: scaleProbeNS}}, metav1.CreateOptions{})
		if err = ignoreExists(err); err != nil {
			return err
		}
		// The controller manager makes it too, but maybe not before the
		// pods are created, which need it.
		_, err = c.CoreV1().ServiceAccounts(scaleProbeNS).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "default"}}, metav1.CreateOptions{})
		return ignoreExists(err)
	}); err != nil {
		return nil, err
	}
	sel := map[string]string{"app": "probe-echo"}
	svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: scaleProbeNS, Name: "echo"}, Spec: corev1.ServiceSpec{Selector: sel,
		Ports: []corev1.ServicePort{{Port: 80, Protocol: corev1.ProtocolTCP, TargetPort: intstr.FromInt32(8080)}}}}
	pods := []*corev1.Pod{
		{ObjectMeta: metav1.ObjectMeta{Namespace: scaleProbeNS, Name: "echo", Labels: sel},
			Spec: corev1.PodSpec{NodeName: node.Name, Containers: []corev1.Container{{Name: "echo", Image: "kpath/echo", Ports: []corev1.ContainerPort{{ContainerPort: 8080}}}}}},
		{ObjectMeta: metav1.ObjectMeta{Namespace: scaleProbeNS, Name: "client"},
			Spec: corev1.PodSpec{NodeName: node.Name, Containers: []corev1.Container{{Name: "client", Image: "kpath/idle"}}}},
	}
	if err := retryTransient(ctx, func() error {
		_, err := c.CoreV1().Services(scaleProbeNS).Create(ctx, svc, metav1.CreateOptions{})
		return ignoreExists(err)
	}); err != nil {
		return nil, err
	}
	for _, p := range pods {
		if err := retryTransient(ctx, func() error {
			_, err := c.CoreV1().Pods(scaleProbeNS).Create(ctx, p, metav1.CreateOptions{})
			return ignoreExists(err)
		}); err != nil {
			return nil, err
		}
	}
	for deadline := time.Now().Add(2 * time.Minute); time.Now().Before(deadline); time.Sleep(500 * time.Millisecond) {
		echo, err1 := c.CoreV1().Pods(scaleProbeNS).Get(ctx, "echo", metav1.GetOptions{})
		client, err2 := c.CoreV1().Pods(scaleProbeNS).Get(ctx, "client", metav1.GetOptions{})
		s, err3 := c.CoreV1().Services(scaleProbeNS).Get(ctx, "echo", metav1.GetOptions{})
		if err1 != nil || err2 != nil || err3 != nil || echo.Status.Phase != corev1.PodRunning || client.Status.Phase != corev1.PodRunning {
			continue
		}
		netns, err := st.PodNetns(node.Name, client.UID)
		if err != nil {
			return nil, err
		}
		p := &scaleProbe{netns: netns, svcURL: "http://" + net.JoinHostPort(s.Spec.ClusterIP, "80") + "/",
			cgroup: node.Cgroup, kpath: kpath}
		// The Service's frontend may lag the pods: ready when it answers.
		for time.Now().Before(deadline) {
			if st, err := p.run(200*time.Millisecond, nil); err == nil && st.New > 0 && st.NewFailed == 0 && st.HeldFailed == 0 {
				return p, nil
			}
		}
	}
	return nil, fmt.Errorf("probe pods in %s not answering within 2 minutes", scaleProbeNS)
}

// run runs the probe's client for at least d and then until stop (nil:
// d only), and returns what it counted.
func (p *scaleProbe) run(d time.Duration, stop <-chan struct{}) (ProbeStats, error) {
	cg, err := os.Open(p.cgroup)
	if err != nil {
		return ProbeStats{}, err
	}
	defer cg.Close()
	var out bytes.Buffer
	args := []string{"bench", "probe", "--netns", p.netns, "--url", p.svcURL, "--for", d.String()}
	if stop != nil {
		args = append(args, "--until-stopped")
	}
	cmd := exec.Command(p.kpath, args...)
	cmd.Stdout, cmd.Stderr = &out, os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, UseCgroupFD: true, CgroupFD: int(cg.Fd())}
	if err := cmd.Start(); err != nil {
		return ProbeStats{}, fmt.Errorf("probe: %w", err)
	}
	exited := make(chan struct{})
	go func() {
		select {
		case <-stop:
			_ = cmd.Process.Signal(syscall.SIGTERM)
		case <-exited:
		}
	}()
	err = cmd.Wait()
	close(exited)
	if err != nil {
		return ProbeStats{}, fmt.Errorf("probe: %w", err)
	}
	var st ProbeStats
	if err := json.Unmarshal(out.Bytes(), &st); err != nil {
		return ProbeStats{}, fmt.Errorf("probe's counts: %w", err)
	}
	return st, nil
}

// ProbeService is `kpath bench probe`, E2's probe client: it sends a
// request through the Service at url on one held connection and one on a
// new connection every 20 ms (each waits for the one before), from the
// network namespace netns, for at least d and then until stop (nil: d
// only).
func ProbeService(netns, url string, d time.Duration, stop <-chan struct{}) ProbeStats {
	var st ProbeStats
	var mu sync.Mutex
	dial := nsutil.Dialer(netns)
	held := &http.Client{Timeout: time.Second, Transport: &http.Transport{MaxConnsPerHost: 1, MaxIdleConnsPerHost: 1,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			mu.Lock()
			st.Dials++
			mu.Unlock()
			return dial(ctx, network, addr)
		}}}
	fresh := &http.Client{Timeout: time.Second, Transport: &http.Transport{DialContext: dial, DisableKeepAlives: true}}
	defer held.CloseIdleConnections()
	get := func(c *http.Client, url string) bool {
		resp, err := c.Get(url)
		if err != nil {
			return false
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	}
	end := time.Now().Add(d)
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for {
		if time.Now().After(end) {
			if stop == nil {
				return st
			}
			select {
			case <-stop:
				return st
			default:
			}
		}
		<-t.C
		ok := get(held, url)
		mu.Lock()
		st.Held++
		if !ok {
			st.HeldFailed++
		}
		mu.Unlock()
		st.New++
		if !get(fresh, url) {
			st.NewFailed++
		}
	}
}

// measureRestart restarts the node's agent (SIGTERM; the lab starts it
// again as a DaemonSet would) with the probe running, then kills it and
// removes its state (pinned maps) for a cold start, and times both to
// ready.
func measureRestart(ctx context.Context, progress io.Writer, dp dataplane.Dataplane, node lab.NodeInfo, probe *scaleProbe, caughtUp func(ScaleSample) bool, smp *sampler) (*ScaleRestart, error) {
	res := &ScaleRestart{}
	stopProbe := make(chan struct{})
	probed := make(chan ProbeStats, 1)
	probeErr := make(chan error, 1)
	go func() {
		st, err := probe.run(time.Second, stopProbe)
		probed <- st
		probeErr <- err
	}()
	time.Sleep(2 * time.Second)
	killed := time.Now()
	newPid, ready, err := restartAgent(ctx, dp, node, syscall.SIGTERM, nil)
	if err != nil {
		close(stopProbe)
		<-probed
		return nil, err
	}
	res.RestartReadyMs, res.KillToReadyMs = ms(ready), ms(time.Since(killed))
	time.Sleep(3 * time.Second)
	close(stopProbe)
	res.Probe = <-probed
	if err := <-probeErr; err != nil {
		return nil, err
	}
	fmt.Fprintf(progress, "restart over pinned maps: ready %s after start (%s after the kill); probe %+v\n",
		ready.Round(time.Millisecond), time.Duration(res.KillToReadyMs*float64(time.Millisecond)).Round(time.Millisecond), res.Probe)
	if err := waitSample(smp, time.Minute, caughtUp); err != nil {
		return nil, fmt.Errorf("after the restart: %w", err)
	}
	_, ready, err = restartAgent(ctx, dp, node, syscall.SIGKILL, func(pid int) error {
		if pid != newPid {
			return fmt.Errorf("agent %d is not the restarted one (%d)", pid, newPid)
		}
		return dp.Reset(node)
	})
	if err != nil {
		return nil, fmt.Errorf("cold start: %w", err)
	}
	res.ColdReadyMs = ms(ready)
	fmt.Fprintf(progress, "cold start (state removed): ready %s after start\n", ready.Round(time.Millisecond))
	return res, nil
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// restartAgent signals the running agent, runs exited (if set) once it
// has exited, and waits for the lab's next agent to be ready: its pid and
// its start -> ready (its own figure, or from when its process appeared
// for an agent that reports none).
func restartAgent(ctx context.Context, dp dataplane.Dataplane, node lab.NodeInfo, sig syscall.Signal, exited func(pid int) error) (int, time.Duration, error) {
	ag := dp.Agent(node)
	pid := ag.Pid()
	if pid == 0 {
		return 0, 0, fmt.Errorf("no agent running")
	}
	if err := syscall.Kill(pid, sig); err != nil {
		return 0, 0, fmt.Errorf("signal agent %d: %w", pid, err)
	}
	deadline := time.Now().Add(3 * time.Minute)
	for lab.ProcessAlive(pid) {
		if time.Now().After(deadline) {
			return 0, 0, fmt.Errorf("agent %d still running after %s", pid, sig)
		}
		time.Sleep(5 * time.Millisecond)
	}
	if exited != nil {
		if err := exited(pid); err != nil {
			return 0, 0, err
		}
	}
	var seen time.Time
	for time.Now().Before(deadline) && ctx.Err() == nil {
		t := time.Now()
		if p := ag.Pid(); p != 0 && p != pid {
			if seen.IsZero() {
				seen = t
			}
			if up, ready := dp.Up(ctx, node); up {
				if ready == 0 {
					ready = time.Since(seen)
				}
				return p, ready, nil
			}
		}
		time.Sleep(max(20*time.Millisecond, time.Since(t)))
	}
	return 0, 0, fmt.Errorf("no agent ready within 3 minutes of the %s", sig)
}
