package chaos

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kpath/kpath/internal/dataplane"
	"github.com/kpath/kpath/internal/lab"
)

// Faults are the faults a run can inject, in the order they run.
var Faults = []string{FaultAgentKill, FaultAPIServerRestart, FaultEtcdRestart, FaultAPIServerUnreachable, FaultRuntimeKill, FaultCTFlood, FaultPolicyFill}

// The faults.
const (
	// FaultAgentKill kills a node's agent (SIGKILL) AgentKills times,
	// alternating nodes; the lab starts it again, as a DaemonSet would.
	FaultAgentKill = "agent-kill"
	// FaultAPIServerRestart stops kube-apiserver and starts it again.
	FaultAPIServerRestart = "apiserver-restart"
	// FaultEtcdRestart stops etcd (the API server stays up, failing) and
	// starts it again.
	FaultEtcdRestart = "etcd-restart"
	// FaultAPIServerUnreachable drops every node's traffic to the API
	// server (a blackhole route in each node) for Unreachable.
	FaultAPIServerUnreachable = "apiserver-unreachable"
	// FaultRuntimeKill crashes each node's runtime (the kubelet of the
	// lab's nodes) in turn; the lab starts it again, and it must tear down
	// the pods deleted meanwhile.
	FaultRuntimeKill = "runtime-kill"
	// FaultCTFlood runs a pod that floods the echo pods with new flows
	// (UDP datagrams to every port, TCP connection attempts) for FloodFor,
	// more than the connection table holds, then deletes it: the other
	// pods' connections must neither be cut nor refused.
	FaultCTFlood = "ct-flood"
	// FaultPolicyFill gives a pod policies until its node's policy map
	// (sized fillMapSize for the run) cannot hold them: the pod keeps its
	// last good policy, nothing else changes; then they are deleted.
	FaultPolicyFill = "policy-fill"
)

// Options configure a run.
type Options struct {
	// Lab is the lab to bring up (2 nodes at least; Name and Dir its own).
	Lab lab.Options
	// Kpath is the kpath binary that runs the probes in the pods.
	Kpath  string
	Faults []string
	// AgentKills in the agent-kill fault (default 3).
	AgentKills int
	// Unreachable is how long the API server is unreachable (default 60 s).
	Unreachable time.Duration
	// FloodFor is how long the ct-flood fault floods (default 30 s).
	FloodFor time.Duration
	// FloodCTSize is the nodes' connection table size in a run with the
	// ct-flood fault (default 131,072): what this 2-vCPU lab's flood
	// overflows several times over in 30 s (it sends some 16,000 new
	// flows a second; the default table holds 512k). What happens when
	// it is full does not depend on its size.
	FloodCTSize uint32
	// Churn is pods created (and each deleted 2 s later) a second
	// (default 20; 0 for none).
	Churn int
	// Held long-lived connections per client (default 4).
	Held int
	// Settle is the load's time before the first fault and after each
	// recovery (default 10 s).
	Settle time.Duration
	// CleanUp is how long the nodes get to tear the churned pods down once
	// they are deleted before what is left counts (default 2 minutes: the
	// agents release an address whose DEL never came within a minute).
	CleanUp time.Duration
	// LogDir, when set, gets the nodes' logs (agents, runtimes) at the end.
	LogDir string
	Log    func(format string, args ...any)
}

// Phase is what the load saw during one part of the run.
type Phase struct {
	Name    string  `json:"name"`
	Seconds float64 `json:"seconds"`
	// Denied are the counts of the clients policy denies the target to
	// (their ClusterIP, NodePort and held traffic, and the denied probes).
	Denied Counts `json:"clients"`
	// Allowed is the allowed client's (its target probes are answered).
	Allowed Counts `json:"allowed"`
	// Recovery says how the fault ended (agent ready after, API back).
	Recovery string `json:"recovery,omitempty"`
	// ReadyMin is the fewest of the echo Service's endpoints the API had
	// ready (of 2) during the phase, and NoneReady how long it had none:
	// requests then fail whatever the dataplane does.
	ReadyMin  int     `json:"echo_ready_min"`
	NoneReady float64 `json:"echo_none_ready_seconds"`
}

// Report is a run's result.
type Report struct {
	Started   time.Time    `json:"started"`
	Services  string       `json:"services"`
	Nodes     int          `json:"nodes"`
	Phases    []Phase      `json:"phases"`
	Total     Phase        `json:"total"`
	Churn     ChurnCounts  `json:"churn"`
	Leftovers Leftovers    `json:"leftovers"`
	Flood     *FloodResult `json:"flood,omitempty"`
	Fill      *FillResult  `json:"policy_fill,omitempty"`
}

// Failures lists the targets the run missed: a held connection cut, a
// denied probe answered, anything left behind, the control never answered.
func (r *Report) Failures() []string {
	var out []string
	t := r.Total
	if c := t.Denied.HeldCut + t.Allowed.HeldCut; c > 0 {
		out = append(out, fmt.Sprintf("%d established connections cut", c))
	}
	if o := t.Denied.DeniedTCPOpen + t.Denied.DeniedUDPOpen; o > 0 {
		out = append(out, fmt.Sprintf("%d probes policy denies were answered (TCP %d, UDP %d)", o, t.Denied.DeniedTCPOpen, t.Denied.DeniedUDPOpen))
	}
	if t.Allowed.DeniedTCP > 0 && t.Allowed.DeniedTCPOpen == 0 {
		out = append(out, "the allowed client never reached the target: the denied probes prove nothing")
	}
	if r.Fill != nil && r.Fill.ClosedAnswered > 0 {
		out = append(out, fmt.Sprintf("a port no policy opens answered %d of %d probes while the policy map was full", r.Fill.ClosedAnswered, r.Fill.ClosedProbes))
	}
	if n := r.Leftovers.Total(); n > 0 {
		out = append(out, fmt.Sprintf("%d entries left for deleted pods", n))
	}
	return out
}

// Run brings up the lab, starts the load, injects the faults one after
// the other while it runs, then deletes the churned pods and counts what
// the nodes still hold for them.
func Run(ctx context.Context, o Options) (*Report, error) {
	if o.AgentKills == 0 {
		o.AgentKills = 3
	}
	if o.Unreachable == 0 {
		o.Unreachable = 60 * time.Second
	}
	if o.FloodFor == 0 {
		o.FloodFor = 30 * time.Second
	}
	if o.FloodCTSize == 0 {
		o.FloodCTSize = 131072
	}
	if slices.Contains(o.Faults, FaultCTFlood) {
		o.Lab.AgentArgs = append(o.Lab.AgentArgs, fmt.Sprintf("--map-size-conntrack=%d", o.FloodCTSize))
	}
	if slices.Contains(o.Faults, FaultPolicyFill) {
		o.Lab.AgentArgs = append(o.Lab.AgentArgs, fmt.Sprintf("--map-size-policy-entries=%d", fillMapSize))
	}
	if o.Held == 0 {
		o.Held = 4
	}
	if o.Settle == 0 {
		o.Settle = 10 * time.Second
	}
	if o.CleanUp == 0 {
		o.CleanUp = 2 * time.Minute
	}
	if o.Log == nil {
		o.Log = func(string, ...any) {}
	}
	for _, f := range o.Faults {
		if !slices.Contains(Faults, f) {
			return nil, fmt.Errorf("unknown fault %q: want some of %s", f, strings.Join(Faults, ", "))
		}
	}
	if o.Lab.Nodes < 2 {
		o.Lab.Nodes = 2
	}
	rep := &Report{Started: time.Now(), Services: o.Lab.Services, Nodes: o.Lab.Nodes}
	o.Log("bringing up a lab of %d nodes (services %s)", o.Lab.Nodes, o.Lab.Services)
	r, err := lab.Start(ctx, o.Lab, 5*time.Minute)
	if err != nil {
		return nil, err
	}
	defer func() { _ = r.Stop() }()
	dp, err := r.State.Dataplane()
	if err != nil {
		return nil, err
	}
	if o.LogDir != "" {
		defer keepLogs(o.LogDir, dp, r.State.Nodes)
	}
	w, err := setUp(ctx, r.Client, r.State.Nodes, o.Held)
	if err != nil {
		return nil, err
	}
	probes, err := startProbes(ctx, o.Kpath, r.State, w)
	if err != nil {
		return nil, err
	}
	defer probes.stop()
	rctx, stopReady := context.WithCancel(ctx)
	defer stopReady()
	ready := watchReadiness(rctx, r.Client)
	ch := &churn{c: r.Client, nodes: r.State.Nodes}
	cctx, stopChurn := context.WithCancel(ctx)
	churned := make(chan struct{})
	go func() { ch.run(cctx, o.Churn); close(churned) }()
	defer func() { stopChurn(); <-churned }()

	phase := func(name string, f func() (string, error)) error {
		start, before := time.Now(), probes.counts()
		ready.take()
		recovery, err := f()
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		time.Sleep(o.Settle)
		after := probes.counts()
		p := Phase{Name: name, Seconds: time.Since(start).Seconds(), Recovery: recovery}
		minReady, none := ready.take()
		p.ReadyMin, p.NoneReady = minReady, none.Seconds()
		for i, pr := range w.probers {
			d := after[i].Sub(before[i])
			if pr.denied {
				p.Denied = p.Denied.Add(d)
			} else {
				p.Allowed = p.Allowed.Add(d)
			}
		}
		rep.Phases = append(rep.Phases, p)
		o.Log("%s: %s", name, p.summary())
		return nil
	}
	if err := phase("steady", func() (string, error) { return "", nil }); err != nil {
		return nil, err
	}
	for _, f := range o.Faults {
		o.Log("fault: %s", f)
		if err := phase(f, func() (string, error) { return inject(ctx, f, o, r, dp, rep) }); err != nil {
			return rep, err
		}
	}
	if err := phase("clean-up", func() (string, error) {
		stopChurn()
		<-churned
		if err := deleteAll(ctx, r.Client, 2*time.Minute); err != nil {
			return "", err
		}
		// The nodes tear deleted pods down as their runtimes get to them:
		// what is left after CleanUp is left for good.
		deleted := time.Now()
		for {
			l, err := countLeftovers(ctx, r.Client, r.State)
			if err != nil {
				return "", err
			}
			rep.Leftovers = l
			if l.Total() == 0 {
				return fmt.Sprintf("churned pods deleted; nodes clean %.1f s later", time.Since(deleted).Seconds()), nil
			}
			if time.Since(deleted) > o.CleanUp {
				return fmt.Sprintf("churned pods deleted; %d entries still left %s later", l.Total(), o.CleanUp), nil
			}
			time.Sleep(time.Second)
		}
	}); err != nil {
		return rep, err
	}
	rep.Churn = ch.snapshot()
	for i, p := range rep.Phases {
		rep.Total.Seconds += p.Seconds
		rep.Total.Denied = rep.Total.Denied.Add(p.Denied)
		rep.Total.Allowed = rep.Total.Allowed.Add(p.Allowed)
		rep.Total.NoneReady += p.NoneReady
		if i == 0 || p.ReadyMin < rep.Total.ReadyMin {
			rep.Total.ReadyMin = p.ReadyMin
		}
	}
	rep.Total.Name = "total"
	return rep, nil
}

// keepLogs copies the nodes' log files into dir, each prefixed with its
// node's name.
func keepLogs(dir string, dp dataplane.Dataplane, nodes []lab.NodeInfo) {
	_ = os.MkdirAll(dir, 0o755)
	for _, n := range nodes {
		for _, f := range dp.Logs(n) {
			if data, err := os.ReadFile(f); err == nil {
				_ = os.WriteFile(filepath.Join(dir, n.Name+"-"+filepath.Base(f)), data, 0o644)
			}
		}
	}
}

// inject runs one fault and waits until the nodes' agents are ready again.
func inject(ctx context.Context, fault string, o Options, r *lab.Running, dp dataplane.Dataplane, rep *Report) (string, error) {
	cp := r.ControlPlane
	start := time.Now()
	switch fault {
	case FaultAgentKill:
		var worst time.Duration
		for i := range o.AgentKills {
			n := r.State.Nodes[i%len(r.State.Nodes)]
			d, err := killAgent(ctx, dp, n)
			if err != nil {
				return "", err
			}
			worst = max(worst, d)
		}
		return fmt.Sprintf("%d kills, each agent ready again within %.1f s", o.AgentKills, worst.Seconds()), nil
	case FaultAPIServerRestart:
		cp.StopAPIServer()
		time.Sleep(2 * time.Second)
		if err := cp.RestartAPIServer(ctx); err != nil {
			return "", err
		}
	case FaultEtcdRestart:
		cp.StopEtcd()
		time.Sleep(2 * time.Second)
		if err := cp.RestartEtcd(ctx); err != nil {
			return "", err
		}
	case FaultRuntimeKill:
		if r.State.Runtime == lab.RuntimeContainerd {
			return killRealRuntimes(ctx, r.State)
		}
		for _, n := range r.State.Nodes {
			rt := r.Runtimes[n.Name]
			if rt == nil {
				return "", fmt.Errorf("%s: no runtime to crash", n.Name)
			}
			rt.Crash()
			time.Sleep(5 * time.Second)
		}
		return fmt.Sprintf("%d runtimes crashed, 5 s apart; the lab restarts each after 1 s", len(r.State.Nodes)), nil
	case FaultCTFlood:
		res, err := ctFlood(ctx, o.Kpath, r, o.FloodFor)
		if res == nil {
			return "", err
		}
		rep.Flood = res
		if err != nil {
			return "", err
		}
		return fmt.Sprintf("%d UDP flows and %d TCP attempts in %.0f s from one pod; connection tables of %d entries at %s when it ended; the pod deleted",
			res.UDPSent, res.TCPAttempts, res.Seconds, res.CTMax, res.ctSummary()), nil
	case FaultPolicyFill:
		res, err := policyFill(ctx, r)
		if res == nil {
			return "", err
		}
		rep.Fill = res
		if err != nil {
			return "", err
		}
		return fmt.Sprintf("policy %d of 500 ports refused at %d of %d entries; port 8080 refused %d of %d probes meanwhile; policies deleted, %d entries left",
			res.Policies, res.Entries, res.Capacity, res.ClosedProbes-res.ClosedAnswered, res.ClosedProbes, res.EntriesAfter), nil
	case FaultAPIServerUnreachable:
		u, err := url.Parse(r.State.APIServer)
		if err != nil {
			return "", err
		}
		undo, err := blackhole(r.State.Nodes, u.Hostname())
		if err != nil {
			return "", err
		}
		time.Sleep(o.Unreachable)
		if err := undo(); err != nil {
			return "", err
		}
	}
	if err := waitAgents(ctx, dp, r.State.Nodes, 2*time.Minute); err != nil {
		return "", err
	}
	return fmt.Sprintf("agents ready %.1f s after the fault began", time.Since(start).Seconds()), nil
}

// killAgent kills n's agent and returns how long until a new one was
// ready.
func killAgent(ctx context.Context, dp dataplane.Dataplane, n lab.NodeInfo) (time.Duration, error) {
	pid := dp.Agent(n).Pid()
	if pid == 0 {
		return 0, fmt.Errorf("%s: no agent running", n.Name)
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		return 0, fmt.Errorf("%s: kill agent %d: %w", n.Name, pid, err)
	}
	killed := time.Now()
	for deadline := killed.Add(2 * time.Minute); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if p := dp.Agent(n).Pid(); p != 0 && p != pid {
			if up, _ := dp.Up(ctx, n); up {
				return time.Since(killed), nil
			}
		}
	}
	return 0, fmt.Errorf("%s: no agent ready within 2 minutes of the kill", n.Name)
}

func waitAgents(ctx context.Context, dp dataplane.Dataplane, nodes []lab.NodeInfo, within time.Duration) error {
	deadline := time.Now().Add(within)
	for _, n := range nodes {
		for {
			if up, _ := dp.Up(ctx, n); up {
				break
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("%s: agent not ready within %s", n.Name, within)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	return nil
}

// blackhole makes host unreachable from every node (a blackhole route in
// each node's namespace) and returns what undoes it.
func blackhole(nodes []lab.NodeInfo, host string) (func() error, error) {
	route := func(op string, n lab.NodeInfo) error {
		if out, err := exec.Command("ip", "-n", n.Netns, "route", op, "blackhole", host+"/32").CombinedOutput(); err != nil {
			return fmt.Errorf("%s: ip route %s blackhole %s: %w: %s", n.Name, op, host, err, out)
		}
		return nil
	}
	undo := func() error {
		var errs []error
		for _, n := range nodes {
			errs = append(errs, route("del", n))
		}
		return errors.Join(errs...)
	}
	for _, n := range nodes {
		if err := route("add", n); err != nil {
			_ = undo()
			return nil, err
		}
	}
	return undo, nil
}

// probes are the running probe processes, one per prober, and their
// latest counts.
type probes struct {
	mu     sync.Mutex
	latest []Counts
	cmds   []*exec.Cmd
	done   sync.WaitGroup
}

// startProbes runs `kpath lab chaos-probe` in each prober's pod (its
// network namespace, its node's cgroup: the socket hook sees it as the
// pod) and waits until each has counted answers from the Service.
func startProbes(ctx context.Context, kpath string, st *lab.State, w *workload) (*probes, error) {
	ps := &probes{latest: make([]Counts, len(w.probers))}
	c, err := lab.Client(st)
	if err != nil {
		return nil, err
	}
	for i, pr := range w.probers {
		p, err := c.CoreV1().Pods(loadNS).Get(ctx, pr.pod, metav1.GetOptions{})
		if err != nil {
			ps.stop()
			return nil, err
		}
		cfg, _ := json.Marshal(pr.cfg)
		cmd, closeCg, err := podCommand(kpath, st, pr.node, p, "--config", string(cfg))
		if err != nil {
			ps.stop()
			return nil, err
		}
		out, err := cmd.StdoutPipe()
		if err != nil {
			closeCg()
			ps.stop()
			return nil, err
		}
		err = cmd.Start()
		closeCg()
		if err != nil {
			ps.stop()
			return nil, fmt.Errorf("probe in %s: %w", pr.pod, err)
		}
		ps.cmds = append(ps.cmds, cmd)
		ps.done.Add(1)
		go func() {
			defer ps.done.Done()
			sc := bufio.NewScanner(out)
			for sc.Scan() {
				var c Counts
				if json.Unmarshal(sc.Bytes(), &c) == nil {
					ps.mu.Lock()
					ps.latest[i] = c
					ps.mu.Unlock()
				}
			}
			_ = cmd.Wait()
		}()
	}
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(250 * time.Millisecond) {
		ok := true
		for _, c := range ps.counts() {
			ok = ok && c.Requests > c.RequestsFailed
		}
		if ok {
			return ps, nil
		}
		if time.Now().After(deadline) {
			ps.stop()
			return nil, fmt.Errorf("the probes got no answer from the Service within a minute: %+v", ps.counts())
		}
	}
}

func (ps *probes) counts() []Counts {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	return slices.Clone(ps.latest)
}

func (ps *probes) stop() {
	for _, c := range ps.cmds {
		_ = c.Process.Signal(syscall.SIGTERM)
	}
	ps.done.Wait()
	ps.cmds = nil
}

// WriteJSON writes the report to dir/chaos.json.
func (r *Report) WriteJSON(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	data, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "chaos.json"), append(data, '\n'), 0o644)
}
