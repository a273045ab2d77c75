package chaos

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"slices"
	"strings"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"

	"github.com/kpath/kpath/internal/datapath"
	"github.com/kpath/kpath/internal/lab"
	"github.com/kpath/kpath/internal/nsutil"
	"github.com/kpath/kpath/internal/policysync"
)

// FloodResult is what the ct-flood fault did.
type FloodResult struct {
	FloodCounts
	Seconds float64 `json:"seconds"`
	// CTEntries is each node's connection-table fill when the flood
	// ended, of CTMax.
	CTEntries map[string]int `json:"ct_entries"`
	CTMax     uint32         `json:"ct_max"`
}

func (f *FloodResult) ctSummary() string {
	var parts []string
	for _, n := range slices.Sorted(maps.Keys(f.CTEntries)) {
		parts = append(parts, fmt.Sprintf("%d (%s)", f.CTEntries[n], n))
	}
	return strings.Join(parts, ", ")
}

// FillResult is what the policy-fill fault did.
type FillResult struct {
	Policies int `json:"policies"` // created before the map refused one
	// Entries is the policy map's fill on the pod's node when it was
	// full, of Capacity.
	Entries  int `json:"entries"`
	Capacity int `json:"capacity"`
	// Refused is whether the agent reported the pod's policy not applied
	// (the Event kubectl describe shows).
	Refused bool `json:"refused"`
	// ClosedProbes are connections tried to a port no policy of the pod
	// opens while its policy was refused; ClosedAnswered must be 0.
	ClosedProbes   int `json:"closed_probes"`
	ClosedAnswered int `json:"closed_answered"`
	// EntriesAfter is the map's fill once the policies were deleted.
	EntriesAfter int `json:"entries_after"`
}

// fillMapSize is the policy map's size in a run with the policy-fill
// fault: a few policies fill it (the default, 1M entries, would take
// hundreds), and what happens at the limit does not depend on its size.
const fillMapSize = 16384

// runPod creates a pod of the load on node and waits until it runs.
func runPod(ctx context.Context, c kubernetes.Interface, p *corev1.Pod) (*corev1.Pod, error) {
	if _, err := c.CoreV1().Pods(loadNS).Create(ctx, p, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return nil, fmt.Errorf("pod %s: %w", p.Name, err)
	}
	// A real kubelet with a backlog of churned pods can take its time.
	for deadline := time.Now().Add(3 * time.Minute); time.Now().Before(deadline); time.Sleep(250 * time.Millisecond) {
		got, err := c.CoreV1().Pods(loadNS).Get(ctx, p.Name, metav1.GetOptions{})
		if err == nil && got.Status.Phase == corev1.PodRunning && got.Status.PodIP != "" {
			return got, nil
		}
	}
	return nil, fmt.Errorf("pod %s not running within 3 minutes", p.Name)
}

// deletePod deletes a pod of the load and waits until the API has it no
// more.
func deletePod(ctx context.Context, c kubernetes.Interface, name string) error {
	if err := c.CoreV1().Pods(loadNS).Delete(ctx, name, metav1.DeleteOptions{GracePeriodSeconds: new(int64)}); err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("delete pod %s: %w", name, err)
	}
	for deadline := time.Now().Add(time.Minute); time.Now().Before(deadline); time.Sleep(250 * time.Millisecond) {
		if _, err := c.CoreV1().Pods(loadNS).Get(ctx, name, metav1.GetOptions{}); apierrors.IsNotFound(err) {
			return nil
		}
	}
	return fmt.Errorf("pod %s still there a minute after its delete", name)
}

// podCommand is kpath run in a pod's network namespace and its node's
// cgroup (the socket hook sees it as the pod).
func podCommand(kpath string, st *lab.State, node lab.NodeInfo, p *corev1.Pod, args ...string) (*exec.Cmd, func(), error) {
	netns, err := st.PodNetns(node.Name, p.UID)
	if err != nil {
		return nil, nil, err
	}
	cmd := exec.Command(kpath, append([]string{"lab", "chaos-probe", "--netns", netns}, args...)...)
	cg, err := os.Open(node.Cgroup)
	if err != nil {
		return nil, nil, err
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, UseCgroupFD: true, CgroupFD: int(cg.Fd())}
	cmd.Stderr = os.Stderr
	return cmd, func() { cg.Close() }, nil
}

// ctFlood runs a pod on the first node that floods the echo pods with new
// flows for d, then deletes it (its entries must go with it).
func ctFlood(ctx context.Context, kpath string, r *lab.Running, d time.Duration) (*FloodResult, error) {
	c, n1 := r.Client, r.State.Nodes[0]
	var targets []string
	for _, name := range []string{"echo-1", "echo-2"} {
		p, err := c.CoreV1().Pods(loadNS).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return nil, err
		}
		targets = append(targets, p.Status.PodIP)
	}
	p, err := runPod(ctx, c, pod("flood", n1.Name, "kpath/idle", map[string]string{"app": "flood"}))
	if err != nil {
		return nil, err
	}
	cfg, _ := json.Marshal(FloodConfig{Targets: targets})
	cmd, closeCg, err := podCommand(kpath, r.State, n1, p, "--flood", string(cfg))
	if err != nil {
		return nil, err
	}
	var out bytes.Buffer
	cmd.Stdout = &out
	start := time.Now()
	err = cmd.Start()
	closeCg()
	if err != nil {
		return nil, fmt.Errorf("flood: %w", err)
	}
	time.Sleep(d)
	_ = cmd.Process.Signal(syscall.SIGTERM)
	if err := cmd.Wait(); err != nil {
		return nil, fmt.Errorf("flood: %w", err)
	}
	res := &FloodResult{Seconds: time.Since(start).Seconds(), CTEntries: map[string]int{}}
	if err := json.Unmarshal(out.Bytes(), &res.FloodCounts); err != nil {
		return nil, fmt.Errorf("flood's counts %q: %w", out.String(), err)
	}
	for _, n := range r.State.Nodes {
		var us []datapath.MapUsage
		if err := agentGet(n.AgentSocket, "/v1/bpf/usage", &us); err != nil {
			return nil, fmt.Errorf("%s: %w", n.Name, err)
		}
		for _, u := range us {
			if u.Name == "kp_ct" {
				res.CTEntries[n.Name], res.CTMax = u.Entries, u.Max
			}
		}
	}
	return res, deletePod(ctx, c, "flood")
}

// policyFill runs a pod on the second node and gives it policies, each
// opening 500 more ports to every pod, until the node's policy map cannot
// hold its set. Meanwhile a port none of them opens is probed (it must
// stay closed); then the policies and the pod are deleted.
func policyFill(ctx context.Context, r *lab.Running) (*FillResult, error) {
	c, n2 := r.Client, r.State.Nodes[1]
	p, err := runPod(ctx, c, pod("fill", n2.Name, "kpath/echo", map[string]string{"app": "fill"}))
	if err != nil {
		return nil, err
	}
	client, err := c.CoreV1().Pods(loadNS).Get(ctx, "client-2", metav1.GetOptions{})
	if err != nil {
		return nil, err
	}
	netns, err := r.State.PodNetns(n2.Name, client.UID)
	if err != nil {
		return nil, err
	}
	dial := nsutil.Dialer(netns)
	stats := func() (policysync.Stats, error) {
		var st struct {
			Policy *policysync.Stats `json:"policy"`
		}
		if err := agentGet(n2.AgentSocket, "/v1/status", &st); err != nil || st.Policy == nil {
			return policysync.Stats{}, fmt.Errorf("%s: policy status: %v", n2.Name, err)
		}
		return *st.Policy, nil
	}
	refused := func() bool {
		evs, err := c.CoreV1().Events(loadNS).List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.name=fill,reason=PolicyNotApplied"})
		return err == nil && len(evs.Items) > 0
	}
	res := &FillResult{Capacity: fillMapSize}
	closed := p.Status.PodIP + ":8080" // the echo port: no fill policy opens it
	answered := func() bool {
		dctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
		defer cancel()
		conn, err := dial(dctx, "tcp", closed)
		if err == nil {
			conn.Close()
		}
		return err == nil
	}
	enforced := false // the first policy closed the port (until then it is open)
	for i := 0; i < 100 && !res.Refused; i++ {
		ports := make([]networkingv1.NetworkPolicyPort, 500)
		for j := range ports {
			port := intstr.FromInt32(int32(10000 + i*500 + j))
			ports[j] = networkingv1.NetworkPolicyPort{Port: &port}
		}
		pol := &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: loadNS, Name: fmt.Sprintf("fill-%d", i), Labels: map[string]string{"chaos": "fill"}},
			Spec: networkingv1.NetworkPolicySpec{
				PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "fill"}},
				PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress},
				Ingress: []networkingv1.NetworkPolicyIngressRule{{Ports: ports,
					From: []networkingv1.NetworkPolicyPeer{{NamespaceSelector: &metav1.LabelSelector{}}}}}}}
		if _, err := c.NetworkingV1().NetworkPolicies(loadNS).Create(ctx, pol, metav1.CreateOptions{}); err != nil {
			return nil, fmt.Errorf("policy %s: %w", pol.Name, err)
		}
		res.Policies = i + 1
		// The agent compiles it, or refuses it, within a few seconds.
		for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline) && !res.Refused; time.Sleep(250 * time.Millisecond) {
			res.Refused = refused()
			open := answered()
			if !enforced {
				enforced = !open
				continue
			}
			res.ClosedProbes++
			if open {
				res.ClosedAnswered++
			}
		}
		if !enforced {
			return nil, fmt.Errorf("the first fill policy did not close port 8080 of pod fill within 5 s")
		}
		if s, err := stats(); err == nil {
			res.Entries = s.Entries
		}
	}
	if err := c.NetworkingV1().NetworkPolicies(loadNS).DeleteCollection(ctx, metav1.DeleteOptions{}, metav1.ListOptions{LabelSelector: "chaos=fill"}); err != nil {
		return nil, fmt.Errorf("delete the fill policies: %w", err)
	}
	if err := deletePod(ctx, c, "fill"); err != nil {
		return nil, err
	}
	// The map empties of the pod's set once both are gone.
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(500 * time.Millisecond) {
		s, err := stats()
		if err != nil {
			return nil, err
		}
		res.EntriesAfter = s.Entries
		if s.Entries < res.Entries/2 || time.Now().After(deadline) {
			break
		}
	}
	if !res.Refused {
		return res, fmt.Errorf("%d policies of 500 ports each did not fill a policy map of %d entries", res.Policies, fillMapSize)
	}
	return res, nil
}

// killRealRuntimes SIGKILLs each real node's containerd, then its kubelet,
// 5 s apart, and waits for each to be running again (the lab restarts
// them, as systemd would): the pods' containers (their shims) live on,
// and the kubelet, restarted, must catch up with what changed meanwhile.
func killRealRuntimes(ctx context.Context, st *lab.State) (string, error) {
	var worst time.Duration
	for _, n := range st.Nodes {
		for _, p := range st.RuntimeProcesses(n) {
			pid := p.Pid()
			if pid == 0 {
				return "", fmt.Errorf("%s: no %s running", n.Name, p.Binary)
			}
			if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
				return "", fmt.Errorf("%s: kill %s %d: %w", n.Name, p.Binary, pid, err)
			}
			killed := time.Now()
			for {
				if np := p.Pid(); np != 0 && np != pid {
					break
				}
				if time.Since(killed) > time.Minute || ctx.Err() != nil {
					return "", fmt.Errorf("%s: %s not running again within a minute of its kill", n.Name, p.Binary)
				}
				time.Sleep(50 * time.Millisecond)
			}
			worst = max(worst, time.Since(killed))
			time.Sleep(5 * time.Second)
		}
	}
	return fmt.Sprintf("containerd, then kubelet, SIGKILLed on each of %d nodes, 5 s apart; each running again within %.1f s", len(st.Nodes), worst.Seconds()), nil
}
