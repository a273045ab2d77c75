package connectivity

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/kpath/kpath/internal/lab"
	"github.com/kpath/kpath/internal/workload"
)

// RunOptions tune Run.
type RunOptions struct {
	// Kpath is the kpath binary whose `workload probe` makes the
	// connections.
	Kpath string
	// Parallel is how many cells probe at once (default 12).
	Parallel int
}

// requests per cell, and per cell with session affinity; how often a
// cell with only some requests answered is probed again.
const (
	requests       = 2
	stickyRequests = 6
	partialRetries = 2
)

// Run probes every cell and returns the results by cell key.
func (e *Env) Run(ctx context.Context, cells []Cell, o RunOptions) map[string]Result {
	if o.Parallel <= 0 {
		o.Parallel = 12
	}
	out := make(map[string]Result, len(cells))
	var mu sync.Mutex
	sem := make(chan struct{}, o.Parallel)
	var wg sync.WaitGroup
	for _, c := range cells {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			r := e.probe(ctx, c, o.Kpath)
			// Only some requests answered: probed again (a first
			// datagram can be lost while a neighbour resolves); the cell
			// is answered if a whole run is.
			for i := 0; i < partialRetries && r.Outcome == Partial; i++ {
				r = e.probe(ctx, c, o.Kpath)
			}
			mu.Lock()
			out[r.Key] = r
			mu.Unlock()
		})
	}
	wg.Wait()
	return out
}

// probe runs one cell's connections with `kpath workload probe` inside
// the client's namespace (and, on a node, the node's cgroup, where the
// socket hook applies).
func (e *Env) probe(ctx context.Context, c Cell, kpath string) Result {
	res := Result{Key: c.Key()}
	addr, ok := e.addr[c.Target.Name+"/"+c.Socket.Proto]
	if !ok {
		res.Outcome, res.Err = Failed, "no address for "+c.Target.Name+" over "+c.Socket.Proto
		return res
	}
	netns, cgroup := e.State.Vnet, ""
	switch c.Client.Kind {
	case PodClient:
		netns, cgroup = e.podNS[c.Client.Name], e.cgroups[c.Client.Node]
	case HostClient:
		netns, cgroup = e.State.NetnsPrefix+c.Client.Node, e.cgroups[c.Client.Node]
	}
	if c.Socket.InCluster {
		return e.inCluster(ctx, c, netns, cgroup, kpath)
	}
	n := requests
	if c.Target.Sticky {
		n = stickyRequests
	}
	args := []string{"netns", "exec", netns, kpath, "workload", "probe", c.Socket.Proto + "://" + addr.String(),
		"-n", fmt.Sprint(n), "--timeout", "1s", "-o", "json"}
	if c.Socket.V4Mapped {
		args = append(args, "--v4-mapped")
	}
	if c.Socket.Unconnected {
		args = append(args, "--udp-unconnected")
	}
	if !c.Target.AnyBackend && c.Target.Service != svcKube {
		args = append(args, "--source")
	}
	out, err := run(ctx, cgroup, nil, args) // a failed request exits 1 after printing its result
	var pr workload.ProbeResult
	if jerr := json.Unmarshal(out, &pr); jerr != nil {
		res.Outcome, res.Err = Failed, fmt.Sprintf("probe: %v %v", err, jerr)
		return res
	}
	res = classify(res, pr)
	res.Answers = e.named(res.Answers)
	return res
}

// named writes the source addresses of "NAME from IP" answers as the pod
// or node they belong to: addresses differ from lab to lab (pod CIDRs are
// handed out in any order), names do not.
func (e *Env) named(answers map[string]int) map[string]int {
	if answers == nil {
		return nil
	}
	out := make(map[string]int, len(answers))
	for a, n := range answers {
		if who, ip, ok := strings.Cut(a, " from "); ok {
			if name, known := e.names[ip]; known {
				a = who + " from " + name
			}
		}
		out[a] += n
	}
	return out
}

// run runs ip with args in cgroup ("" for none) with extra environment,
// and returns its standard output.
func run(ctx context.Context, cgroup string, env, args []string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, "ip", args...)
	cmd.Env = append(os.Environ(), env...)
	if cgroup != "" {
		f, err := os.Open(cgroup)
		if err != nil {
			return nil, err
		}
		defer f.Close()
		cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: int(f.Fd())}
	}
	return cmd.Output()
}

// inCluster runs client-go's in-cluster client in the client pod, with
// the pod's service account and environment, as the pod's own process.
func (e *Env) inCluster(ctx context.Context, c Cell, netns, cgroup, kpath string) Result {
	res := Result{Key: c.Key()}
	sa := lab.PodServiceAccountDir(e.LabDir, c.Client.Node, e.podUID[c.Client.Name])
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	out, err := run(ctx, cgroup, lab.PodEnv(), []string{"netns", "exec", netns, kpath, "workload", "sandbox", "--serviceaccount", sa, "--",
		kpath, "workload", "in-cluster"})
	if err != nil {
		res.Outcome, res.Err = failure(fmt.Sprint(err)), fmt.Sprintf("%v: %s", err, out)
		if res.Outcome == Failed && ctx.Err() != nil {
			res.Outcome = NoAnswer
		}
		return res
	}
	res.Outcome, res.Answers = Answered, map[string]int{strings.TrimSpace(string(out)): 1}
	return res
}

// classify turns a probe's result into the cell's outcome. The answers of
// the API server (an HTTPS port spoken to in plain HTTP) are its error
// page, which only says that it answered.
func classify(res Result, pr workload.ProbeResult) Result {
	res.Answers = pr.Backends
	for a := range res.Answers {
		if strings.Contains(a, "HTTPS server") {
			delete(res.Answers, a)
			res.Answers["the API server"] += pr.Requests - pr.Failures
		}
	}
	if len(res.Answers) == 0 {
		res.Answers = nil
	}
	switch {
	case pr.Failures == 0:
		res.Outcome = Answered
		return res
	case pr.Failures < pr.Requests:
		res.Outcome = Partial
	default:
		res.Outcome = failure(pr.LastErr)
	}
	res.Err = pr.LastErr
	return res
}

func failure(err string) string {
	switch {
	case strings.Contains(err, "connection refused"):
		return Refused
	case strings.Contains(err, "operation not permitted"):
		return Denied
	case strings.Contains(err, "network is unreachable"), strings.Contains(err, "no route to host"):
		return Unreachable
	case strings.Contains(err, "timeout"), strings.Contains(err, "deadline exceeded"), strings.Contains(err, "operation now in progress"):
		return NoAnswer
	}
	return Failed
}
