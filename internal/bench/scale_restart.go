package bench

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"

	"github.com/kpath/kpath/internal/agent"
	"github.com/kpath/kpath/internal/cniapi"
	"github.com/kpath/kpath/internal/datapath"
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

type scaleProbe struct {
	netns  string // the client pod's
	svcURL string
}

// startScaleProbe creates the probe's echo server and client pods on the
// measured node and a Service in front of the echo server, and waits
// until they run.
func startScaleProbe(ctx context.Context, c kubernetes.Interface, st *lab.State, node string) (*scaleProbe, error) {
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
			Spec: corev1.PodSpec{NodeName: node, Containers: []corev1.Container{{Name: "echo", Image: "kpath/echo", Ports: []corev1.ContainerPort{{ContainerPort: 8080}}}}}},
		{ObjectMeta: metav1.ObjectMeta{Namespace: scaleProbeNS, Name: "client"},
			Spec: corev1.PodSpec{NodeName: node, Containers: []corev1.Container{{Name: "client", Image: "kpath/idle"}}}},
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
		p := &scaleProbe{netns: st.PodNetns(node, client.UID), svcURL: "http://" + net.JoinHostPort(s.Spec.ClusterIP, "80") + "/"}
		// The Service's frontend may lag the pods: ready when it answers.
		for time.Now().Before(deadline) {
			if st := p.run(200*time.Millisecond, nil); st.NewFailed == 0 && st.HeldFailed == 0 {
				return p, nil
			}
		}
	}
	return nil, fmt.Errorf("probe pods in %s not answering within 2 minutes", scaleProbeNS)
}

// run sends a request on the held connection and one on a new connection
// every 20 ms (each waits for the one before), for at least d and then until stop (nil: d only).
func (p *scaleProbe) run(d time.Duration, stop <-chan struct{}) ProbeStats {
	var st ProbeStats
	var mu sync.Mutex
	dial := nsutil.Dialer(p.netns)
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
		ok := get(held, p.svcURL)
		mu.Lock()
		st.Held++
		if !ok {
			st.HeldFailed++
		}
		mu.Unlock()
		st.New++
		if !get(fresh, p.svcURL) {
			st.NewFailed++
		}
	}
}

// measureRestart restarts the node's agent (SIGTERM; the lab starts it
// again as a DaemonSet would) with the probe running, then kills it and
// removes its pins for a cold start, and times both to ready.
func measureRestart(ctx context.Context, progress io.Writer, node lab.NodeInfo, probe *scaleProbe, caughtUp func(ScaleSample) bool, smp *sampler) (*ScaleRestart, error) {
	ag := procOf{"kpath-agent", "--pin-dir=" + node.PinDir}
	res := &ScaleRestart{}
	stopProbe := make(chan struct{})
	probed := make(chan ProbeStats, 1)
	go func() { probed <- probe.run(time.Second, stopProbe) }()
	time.Sleep(2 * time.Second)
	killed := time.Now()
	newPid, ready, err := restartAgent(ctx, ag, node.AgentSocket, syscall.SIGTERM, nil)
	if err != nil {
		close(stopProbe)
		<-probed
		return nil, err
	}
	res.RestartReadyMs, res.KillToReadyMs = ms(ready), ms(time.Since(killed))
	time.Sleep(3 * time.Second)
	close(stopProbe)
	res.Probe = <-probed
	fmt.Fprintf(progress, "restart over pinned maps: ready %s after start (%s after the kill); probe %+v\n",
		ready.Round(time.Millisecond), time.Since(killed).Round(time.Millisecond), res.Probe)
	if err := waitSample(smp, time.Minute, caughtUp); err != nil {
		return nil, fmt.Errorf("after the restart: %w", err)
	}

	pins := datapath.DefaultConfig()
	pins.PinDir = node.PinDir
	_, ready, err = restartAgent(ctx, ag, node.AgentSocket, syscall.SIGKILL, func(pid int) error {
		if pid != newPid {
			return fmt.Errorf("agent %d is not the restarted one (%d)", pid, newPid)
		}
		return datapath.Reset(pins)
	})
	if err != nil {
		return nil, fmt.Errorf("cold start: %w", err)
	}
	res.ColdReadyMs = ms(ready)
	fmt.Fprintf(progress, "cold start (pins removed): ready %s after start\n", ready.Round(time.Millisecond))
	return res, nil
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// restartAgent signals the running agent, runs exited (if set) once it
// has exited, and waits for the lab's next agent to be ready: its pid and
// its start -> ready.
func restartAgent(ctx context.Context, ag procOf, socket string, sig syscall.Signal, exited func(pid int) error) (int, time.Duration, error) {
	pid := ag.pid()
	if pid == 0 {
		return 0, 0, fmt.Errorf("no agent running")
	}
	if err := syscall.Kill(pid, sig); err != nil {
		return 0, 0, fmt.Errorf("signal agent %d: %w", pid, err)
	}
	deadline := time.Now().Add(2 * time.Minute)
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
	for time.Now().Before(deadline) && ctx.Err() == nil {
		if p := ag.pid(); p != 0 && p != pid {
			if st, err := agentStatus(socket); err == nil && st.Ready {
				d, err := time.ParseDuration(st.StartToReady)
				return p, d, err
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	return 0, 0, fmt.Errorf("no agent ready within 2 minutes of the %s", sig)
}

func agentStatus(socket string) (agent.Status, error) {
	var st agent.Status
	c := cniapi.NewClient(socket)
	c.Timeout = 2 * time.Second
	return st, c.Do("GET", "/v1/status", nil, &st)
}
