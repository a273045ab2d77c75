package bench

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"

	"github.com/kpath/kpath/internal/dataplane"
	"github.com/kpath/kpath/internal/lab"
)

// E1's labs: one per mode, brought up with the echo and client pods and
// the target service, frozen while the other modes run, their logs kept.

// modeLab is one mode's lab during an E1 run.
type modeLab struct {
	mode     string
	progress io.Writer
	logDir   string // where close keeps the node's dataplane logs; "" for none
	labDir   string
	stop     func() // ends the lab, keeps its logs and removes it
	st       *lab.State
	c        kubernetes.Interface
	target   string // the ClusterIP service's address
	clientNS string
	echoIP   string
	cg       *os.File // the node's cgroup, where ab runs (the socket hook applies)
	dp       dataplane.Dataplane
	node     lab.NodeInfo // the measured one
	churn    *churner
	created  int                // simulated services so far
	syncBase dataplane.Counters // the dataplane's counters before the current point's objects
	ready    time.Duration      // last object created -> dataplane ready, at the current point
	frozen   []int              // processes stopped by freeze
	err      error              // the mode stopped
}

func (m *modeLab) say(f string, a ...any) {
	fmt.Fprintf(m.progress, "[%s] "+f+"\n", append([]any{m.mode}, a...)...)
}

// labNames are the names of E1's labs, one per mode, short enough for
// lab names with a LabPrefix of a few letters in place of e1.
var labNames = map[string]string{"none": "e1-none", "kpath": "e1-kpath", "kpath-tc": "e1-kpath-tc", "kpath-policy": "e1-kpath-pol",
	NoFlowsMode:           "e1-kpath-nofl",
	"kube-proxy-iptables": "e1-iptables", "kube-proxy-nftables": "e1-nftables", "cilium": "e1-cilium"}

// start brings the mode's lab up with the echo and client pods and the
// target service.
func (m *modeLab) start(ctx context.Context, o LatencyOptions) error {
	name := labNames[m.mode]
	if o.LabPrefix != "" {
		name = o.LabPrefix + strings.TrimPrefix(name, "e1")
	}
	dir, err := os.MkdirTemp("", "kpath-e1-")
	if err != nil {
		return err
	}
	m.labDir = filepath.Join(dir, "lab")
	_ = lab.Down(m.labDir, name, func(string, ...any) {})
	lctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		done <- lab.Supervise(lctx, lab.Options{Name: name, Dir: m.labDir, Nodes: 1, Routing: "native", Services: labServices(m.mode),
			AgentArgs: agentArgs(m.mode), CiliumBin: o.CiliumBin,
			BinDir: o.BinDir, K8sBin: o.K8sBin, Log: func(string, ...any) {}})
	}()
	m.stop = func() {
		cancel()
		<-done
		m.keepLogs() // the processes have ended: their logs are complete
		_ = lab.Down(m.labDir, name, func(string, ...any) {})
		os.RemoveAll(dir)
	}
	m.say("lab up")
	for deadline := time.Now().Add(2 * time.Minute); ; time.Sleep(100 * time.Millisecond) {
		if m.st, err = lab.LoadState(m.labDir); err == nil && m.st.Error != "" {
			return fmt.Errorf("lab: %s", m.st.Error)
		}
		if err == nil && m.st.Ready {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("lab not ready after 2 minutes")
		}
	}
	if m.c, err = lab.Client(m.st); err != nil {
		return err
	}
	node := m.st.Nodes[0]
	if m.target, m.clientNS, m.echoIP, err = latencyTargets(ctx, m.c, m.st, node.Name); err != nil {
		return err
	}
	if m.mode == PolicyMode {
		if err := latencyPolicies(ctx, m.c); err != nil {
			return err
		}
	}
	m.say("target %s, echo pod %s", m.target, m.echoIP)
	if m.cg, err = os.Open(node.Cgroup); err != nil {
		return err
	}
	if m.dp, err = m.st.Dataplane(); err != nil {
		return err
	}
	m.node = node
	m.churn = &churner{c: m.c}
	return nil
}

// close thaws and ends the lab; it is safe to call twice.
func (m *modeLab) close() {
	m.freeze(false)
	if m.cg != nil {
		m.cg.Close()
		m.cg = nil
	}
	if m.stop != nil {
		m.stop()
		m.stop = nil
	}
}

// keepLogs copies the node's dataplane logs to logDir/<mode>-<file>, so a
// figure that looks wrong can be read against what the dataplane did after
// the lab is gone.
func (m *modeLab) keepLogs() {
	if m.logDir == "" || m.dp == nil || os.MkdirAll(m.logDir, 0o755) != nil {
		return
	}
	for _, f := range m.dp.Logs(m.node) {
		if b, err := os.ReadFile(f); err == nil {
			_ = os.WriteFile(filepath.Join(m.logDir, m.mode+"-"+filepath.Base(f)), b, 0o644)
		}
	}
}

// freeze stops (SIGSTOP) or continues every process of the lab: its control
// plane, kpath-agent and kube-proxy, all of which name the lab's directory
// on their command lines. The pods are idle between runs and stay as they
// are. Continuing waits a moment for the processes to run the timers that
// fell due while they were stopped (nothing else changed meanwhile).
func (m *modeLab) freeze(stop bool) {
	if m.stop == nil || stop == (m.frozen != nil) {
		return
	}
	if !stop {
		for _, pid := range m.frozen {
			_ = syscall.Kill(pid, syscall.SIGCONT)
		}
		m.frozen = nil
		time.Sleep(500 * time.Millisecond)
		return
	}
	m.frozen = processesNaming(m.labDir + "/")
	for _, pid := range m.frozen {
		_ = syscall.Kill(pid, syscall.SIGSTOP)
	}
}

// latencyTargets creates the echo server and client pods on the measured
// node and the target Service; it returns the ClusterIP, the client's
// namespace and the echo pod's address.
func latencyTargets(ctx context.Context, c kubernetes.Interface, st *lab.State, node string) (string, string, string, error) {
	svc, err := c.CoreV1().Services(benchNamespace).Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "target"},
		Spec: corev1.ServiceSpec{Selector: map[string]string{"app": "target"},
			Ports: []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromInt32(8080)}}},
	}, metav1.CreateOptions{})
	if err != nil {
		return "", "", "", err
	}
	for _, p := range []struct{ name, image string }{{"echo", "kpath/echo"}, {"client", "kpath/client"}} {
		labels := map[string]string{"role": "e1-" + p.name}
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
				ns, err := st.PodNetns(node, p.UID)
				if err != nil {
					return "", "", "", err
				}
				clientNS = ns
			}
		}
	}
	return svc.Spec.ClusterIP, clientNS, echoIP, nil
}
