package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/kpath/kpath/internal/dataplane"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// LatencyOptions configure E1 (BENCHMARKS.md): service routing latency vs
// cluster size, every service dataplane measured in the same run.
type LatencyOptions struct {
	Points    []int    // numbers of simulated services S (10 endpoints each)
	Requests  int      // ab requests per run
	Rounds    int      // direct/service alternations per point
	Modes     []string // lab.ServiceModes
	Scenarios []string // "loaded" (-c 16 with churn), "quiet" (-c 1)
	OutDir    string   // latency.json, latency.csv, latency.svg, latency.md, rewritten after every scenario; logs/ at the end
	BinDir    string   // kpath, kpath-agent, kpath-cni
	K8sBin    string
	CiliumBin string // for mode cilium (hack/cilium/build.sh's directory)
	Command   string // the command line, recorded to reproduce the run
	// LabPrefix starts the labs' names (default e1): a run sweeps any lab
	// of its names still up, so runs side by side need prefixes of their
	// own (the tests use one).
	LabPrefix string `json:"-"`
	Progress  io.Writer
}

// LatencyRow is one measured (mode, scenario, point, target): medians over
// the rounds.
type LatencyRow struct {
	Mode, Scenario string
	Services, Pods int
	Target         string // direct or service
	TotalMs        float64
	TotalMinMs     float64 // fastest and slowest round: the noise band
	TotalMaxMs     float64
	MeanMs         float64
	P50Ms, P99Ms   float64
	ReadyMs        float64 // last object created -> dataplane ready; -1: not ready within readyWait
	RSSMiB         float64 // dataplane process, after the runs
	CPUSeconds     float64 // dataplane process, children included, during this scenario's runs
	// FullSyncs and FullSyncSeconds are kube-proxy's full resyncs (all
	// rules rewritten; it forces one an hour) from the point's first object
	// created to the end of the scenario, and the time they took: a full
	// resync holds back every change queued behind it.
	FullSyncs       int     `json:",omitempty"`
	FullSyncSeconds float64 `json:",omitempty"`
	ChurnPerSec     float64 // EndpointSlice updates per second achieved during the runs
	// Failed counts requests that got no proper answer over all rounds
	// (ab's failed requests and non-2xx responses); Failures is ab's
	// breakdown of the last round with any.
	Failed   int
	Failures string
	// Drops are packets kpath's programs on the node dropped during the
	// scenario's runs (direct and service together), by reason.
	Drops       uint64
	DropReasons string
}

// LatencyRun is one invocation of E1: what ran, where, and the rows.
type LatencyRun struct {
	Command   string       `json:"command"`
	Machine   Machine      `json:"machine"`
	Started   time.Time    `json:"started"`
	Finished  time.Time    `json:"finished,omitzero"`
	Points    []int        `json:"points"`
	Requests  int          `json:"requests"`
	Rounds    int          `json:"rounds"`
	Modes     []string     `json:"modes"`
	Scenarios []string     `json:"scenarios"`
	Rows      []LatencyRow `json:"rows"`
	Errors    []string     `json:"errors,omitempty"`
	// Interleaved: the modes' labs ran side by side, measured in turn
	// round by round (runs before this field ran modes one after another).
	Interleaved bool `json:"interleaved,omitempty"`
	// Notes say where a merged run's rows came from (MergeLatencyRuns).
	Notes []string `json:"notes,omitempty"`
}

const benchNamespace = "default"

// Latency runs E1. Every mode gets its own one-node lab, and the labs run
// side by side: a round measures every mode in turn (in an order that
// rotates with the round), while the labs not being measured are frozen
// (SIGSTOP), so the machine's drift falls on all modes alike and an idle
// kube-proxy's periodic resync does not land in another mode's run. A
// mode that fails is recorded and the others go on; the results so far are
// written to OutDir after every scenario.
func Latency(ctx context.Context, o LatencyOptions) (*LatencyRun, error) {
	if _, err := exec.LookPath("ab"); err != nil {
		return nil, fmt.Errorf("ab not found: install apache2-utils")
	}
	for _, m := range o.Modes {
		if labNames[m] == "" {
			return nil, fmt.Errorf("mode %q: want one of none, kpath, kpath-tc, %s, %s, kube-proxy-iptables, kube-proxy-nftables", m, PolicyMode, NoFlowsMode)
		}
	}
	run := &LatencyRun{Command: o.Command, Machine: DescribeMachine(o.K8sBin), Started: time.Now(),
		Points: o.Points, Requests: o.Requests, Rounds: o.Rounds, Modes: o.Modes, Scenarios: o.Scenarios, Interleaved: true}
	save := func() error {
		if o.OutDir == "" {
			return nil
		}
		return WriteLatencyResults(o.OutDir, run)
	}
	fail := func(m *modeLab, err error) {
		m.err = err
		run.Errors = append(run.Errors, fmt.Sprintf("mode %s: %v", m.mode, err))
		fmt.Fprintf(o.Progress, "[%s] failed: %v\n", m.mode, err)
		m.close()
	}
	var labs []*modeLab
	defer func() {
		for _, m := range labs {
			m.close()
		}
	}()
	live := func() []*modeLab {
		return slices.DeleteFunc(slices.Clone(labs), func(m *modeLab) bool { return m.err != nil })
	}
	for _, mode := range o.Modes {
		m := &modeLab{mode: mode, progress: o.Progress}
		if o.OutDir != "" {
			m.logDir = filepath.Join(o.OutDir, "logs")
		}
		labs = append(labs, m)
		if err := m.start(ctx, o); err != nil {
			fail(m, err)
		}
		m.freeze(true)
		if ctx.Err() != nil {
			break
		}
	}
	for _, s := range o.Points {
		if ctx.Err() != nil {
			break
		}
		for _, m := range live() {
			// One lab at a time, the others frozen: the time to ready is
			// the dataplane's own, not shared with another's creation.
			m.freeze(false)
			if err := m.grow(ctx, s); err != nil {
				fail(m, err)
				continue
			}
			m.freeze(true)
		}
		for _, scenario := range o.Scenarios {
			ms := live()
			if len(ms) == 0 {
				break
			}
			acc := make([]*scenarioAcc, len(ms))
			for i, m := range ms {
				acc[i] = &scenarioAcc{drops0: m.dp.Drops(ctx, m.node), samples: map[string][]abResult{}}
			}
			for round := range o.Rounds {
				for k := range ms {
					i := (k + round) % len(ms)
					if ms[i].err != nil {
						continue
					}
					if err := ms[i].measure(ctx, o, scenario, round, acc[i]); err != nil {
						fail(ms[i], err)
					}
				}
			}
			for i, m := range ms {
				if m.err != nil {
					continue
				}
				run.Rows = append(run.Rows, acc[i].rows(ctx, m, scenario)...)
			}
			if err := save(); err != nil {
				return run, err
			}
		}
	}
	run.Finished = time.Now()
	if err := save(); err != nil {
		return run, err
	}
	if len(run.Errors) > 0 {
		return run, fmt.Errorf("%s", strings.Join(run.Errors, "; "))
	}
	return run, nil
}

// simLatency names E1's simulated services: sim-K in the default namespace,
// 10 endpoints each on simulated remote nodes.
var simLatency = simService{ns: benchNamespace, prefix: "sim", backends: 10}

// grow creates the simulated services up to s and waits for the dataplane
// to hold them.
func (m *modeLab) grow(ctx context.Context, s int) error {
	base, err := m.dp.Counters(ctx, m.node)
	if err != nil {
		return fmt.Errorf("dataplane before S=%d: %w", s, err)
	}
	m.syncBase = base
	added := 0
	if s > m.created {
		m.say("S=%d: creating services %d..%d (10 simulated remote endpoints each)", s, m.created, s-1)
		if _, err := simLatency.load(ctx, m.c, m.created, s, m.progress); err != nil {
			return err
		}
		added, m.created = s-m.created, s
	}
	start := time.Now()
	if err := m.waitReady(ctx, base, added); err != nil {
		var late *notReadyError
		if !errors.As(err, &late) || ctx.Err() != nil {
			return fmt.Errorf("S=%d: %w", m.created, err)
		}
		// A dataplane that has not caught up is what its clients get:
		// measure it as it is, with the ready time marked as not reached.
		m.ready = -1
		m.say("S=%d: %v; measuring it as it is", m.created, err)
		return nil
	}
	m.ready = time.Since(start)
	m.say("S=%d: dataplane ready %s after the last object", m.created, m.ready.Round(time.Millisecond))
	return nil
}

// scenarioAcc gathers one mode's measurements of one scenario at one point
// across rounds.
type scenarioAcc struct {
	cpu       float64 // CPU seconds while the lab was measured
	drops0    map[string]uint64
	samples   map[string][]abResult
	churned   int
	churnTime time.Duration
	syncs     dataplane.Counters // the dataplane's counters after the last round, read while it ran
}

// measure runs one round of the scenario on the lab: direct to the echo
// pod and through the ClusterIP (disjoint client port ranges), with churn
// on the simulated services when loaded. The lab is thawed for the round
// only.
func (m *modeLab) measure(ctx context.Context, o LatencyOptions, scenario string, round int, acc *scenarioAcc) error {
	conc, loaded := 1, false
	if scenario == "loaded" {
		conc, loaded = 16, m.created > 0
	}
	m.freeze(false)
	defer m.freeze(true)
	cpu0 := m.usage()
	stop := make(chan struct{})
	var wg sync.WaitGroup
	if loaded {
		wg.Go(func() {
			start := time.Now()
			acc.churned += m.churn.run(ctx, m.created, stop)
			acc.churnTime += time.Since(start)
		})
	}
	defer func() {
		close(stop)
		wg.Wait()
		acc.cpu += m.usage().cpuSeconds - cpu0.cpuSeconds
		// Before the lab is frozen again: a stopped kube-proxy does not
		// answer its metrics.
		if c, err := m.dp.Counters(ctx, m.node); err == nil {
			acc.syncs = c
		}
	}()
	targets := []struct{ name, url, ports string }{
		{"direct", "http://" + m.echoIP + ":8080/", "20000 39999"},
		{"service", "http://" + m.target + "/", "40000 59999"},
	}
	if round%2 == 1 {
		// Odd rounds go service first, so neither target always runs
		// after the other (behind its TIME_WAIT sockets, say).
		slices.Reverse(targets)
	}
	for _, tg := range targets {
		if m.mode == "none" && tg.name == "service" {
			continue
		}
		r, err := runAB(ctx, m.clientNS, m.cg, tg.url, tg.ports, o.Requests, conc)
		var stall *abStalled
		if errors.As(err, &stall) {
			// ab gives up on the whole run when one request goes
			// unanswered: count that request as failed and measure the
			// round again, once.
			m.say("S=%d %s %s round %d: %v; running the round again", m.created, scenario, tg.name, round, err)
			if r, err = runAB(ctx, m.clientNS, m.cg, tg.url, tg.ports, o.Requests, conc); err == nil {
				r.failed++
				r.failures = strings.TrimSpace(r.failures + " " + stall.Error() + " (round run again)")
			}
		}
		if err != nil {
			return fmt.Errorf("S=%d %s ab %s round %d: %w", m.created, scenario, tg.name, round, err)
		}
		acc.samples[tg.name] = append(acc.samples[tg.name], r)
	}
	return nil
}

// rows turns a scenario's rounds into its rows (medians), and reports them.
func (acc *scenarioAcc) rows(ctx context.Context, m *modeLab, scenario string) []LatencyRow {
	use := m.usage()
	if m.logDir != "" && strings.HasPrefix(m.mode, "kpath") {
		// Where the agent's memory goes at this point (go tool pprof);
		// the lab is frozen between rounds.
		_ = os.MkdirAll(m.logDir, 0o755)
		m.freeze(false)
		err := saveHeapProfile(m.node.AgentSocket, filepath.Join(m.logDir, fmt.Sprintf("heap-%s-%s-%d.pb.gz", m.mode, scenario, m.created)))
		m.freeze(true)
		if err != nil {
			m.say("%v", err)
		}
	}
	dropped, dropDetail := dropsSince(acc.drops0, m.dp.Drops(ctx, m.node))
	var rate float64
	if acc.churnTime > 0 {
		rate = float64(acc.churned) / acc.churnTime.Seconds()
	}
	var out []LatencyRow
	for _, tg := range []string{"direct", "service"} {
		if len(acc.samples[tg]) == 0 {
			continue
		}
		row := medianRow(acc.samples[tg])
		row.Mode, row.Scenario, row.Services, row.Pods, row.Target = m.mode, scenario, m.created, m.created*simLatency.backends, tg
		row.ReadyMs, row.RSSMiB, row.CPUSeconds = float64(m.ready.Microseconds())/1000, use.rssMiB, acc.cpu
		if m.ready < 0 {
			row.ReadyMs = -1
		}
		row.ChurnPerSec, row.Drops, row.DropReasons = rate, dropped, dropDetail
		if acc.syncs.FullSyncs > m.syncBase.FullSyncs {
			row.FullSyncs = int(acc.syncs.FullSyncs - m.syncBase.FullSyncs)
			row.FullSyncSeconds = acc.syncs.FullSyncSeconds - m.syncBase.FullSyncSeconds
		}
		m.say("S=%d %s %s: total %.0f ms, mean %.3f ms, p50 %.2f ms, p99 %.2f ms, dataplane %.0f MiB %.1f CPU s, churn %.1f/s, failed %d %s, drops %d %s",
			m.created, scenario, tg, row.TotalMs, row.MeanMs, row.P50Ms, row.P99Ms, row.RSSMiB, row.CPUSeconds, rate, row.Failed, row.Failures, row.Drops, row.DropReasons)
		out = append(out, row)
	}
	return out
}

// churner changes the simulated services' EndpointSlices. It remembers
// what it wrote across runs, so every update is a real change (an update
// that changes nothing makes no watch event, and no dataplane sees it).
type churner struct {
	c        kubernetes.Interface
	next     int
	notReady map[int]bool // services whose first endpoint it made not ready
}

// run makes 20 EndpointSlice updates per second to the simulated services
// 0..n-1, round robin (flipping the first endpoint's readiness, which
// changes every dataplane's backend set) until stop, and returns how many
// it made. Updates go out from four workers so a slow API server costs
// rate, not the schedule; a tick that finds every worker busy is skipped.
func (ch *churner) run(ctx context.Context, n int, stop <-chan struct{}) int {
	type change struct {
		k        int
		notReady bool
	}
	work := make(chan change)
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex // guards done and ch.notReady
		done int
	)
	if ch.notReady == nil {
		ch.notReady = map[int]bool{}
	}
	for range 4 {
		wg.Go(func() {
			for w := range work {
				s := simLatency.slice(w.k)
				ready := !w.notReady
				s.Endpoints[0].Conditions.Ready = &ready
				// No resourceVersion: EndpointSlices allow unconditional
				// updates, which saves a read per change.
				_, err := ch.c.DiscoveryV1().EndpointSlices(s.Namespace).Update(ctx, s, metav1.UpdateOptions{})
				mu.Lock()
				if err == nil {
					done++
				} else {
					ch.notReady[w.k] = !w.notReady // not written: keep what the API holds
				}
				mu.Unlock()
			}
		})
	}
	t := time.NewTicker(50 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-stop:
		case <-ctx.Done():
		case <-t.C:
			k := ch.next % n
			mu.Lock()
			w := change{k, !ch.notReady[k]}
			ch.notReady[k] = w.notReady
			mu.Unlock()
			select {
			case work <- w:
				ch.next++
			default: // every writer busy: skip the tick
				mu.Lock()
				ch.notReady[k] = !w.notReady
				mu.Unlock()
			}
			continue
		}
		break
	}
	close(work)
	wg.Wait()
	return done
}
