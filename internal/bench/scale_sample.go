package bench

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/kpath/kpath/internal/dataplane"
	"github.com/kpath/kpath/internal/procstat"
)

// ScaleSample is one second of E2: the measured agent's cost and the
// control plane's, apart.
type ScaleSample struct {
	T     float64 `json:"t_s"` // since the run started
	Phase string  `json:"phase"`
	Pods  int     `json:"pods"` // pods written so far
	// The agent: CPU over the last second (millicores), RSS, Go heap in
	// use, its BPF maps' memory (memlock), bytes a second it receives (its
	// node's uplink, where the API server's watch streams arrive), and the
	// addresses and identities its ipcache holds.
	AgentMilli  float64 `json:"agent_millicores"`
	AgentRSS    float64 `json:"agent_rss_mib"`
	AgentAnon   float64 `json:"agent_anon_rss_mib"` // RSS less the executable's file pages
	AgentHeap   float64 `json:"agent_heap_mib"`
	BPFMaps     float64 `json:"bpf_maps_mib"`
	RxKiBps     float64 `json:"agent_rx_kib_per_s"`
	IPCache     int     `json:"ipcache_entries"`
	Identities  int     `json:"identities"`
	Backends    int     `json:"service_backends"`
	APIMilli    float64 `json:"apiserver_millicores"`
	EtcdMilli   float64 `json:"etcd_millicores"`
	KCMMilli    float64 `json:"controller_manager_millicores"`
	ControlMiBs float64 `json:"apiserver_rss_mib"`
}

// sampler reads the agent's and the control plane's processes every
// second into samples.
type sampler struct {
	agent          dataplane.Process
	api, etcd, kcm procOf
	// gauges reads the agent's own figures (its metrics, its maps).
	gauges func() (dataplane.Gauges, error)
	phase  func() (string, int)
	start  time.Time

	mu      sync.Mutex
	samples []ScaleSample
}

type cpuMark struct {
	cpu time.Duration
	at  time.Time
}

func (s *sampler) run(stop <-chan struct{}) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	last := map[string]cpuMark{}
	var lastRx uint64
	var lastRxAt time.Time
	var gauges *dataplane.Gauges
	tick := 0
	milli := func(key string, pid int) (float64, *procstat.Stat) {
		if pid == 0 {
			return 0, nil
		}
		st, err := procstat.Read(pid)
		if err != nil {
			return 0, nil
		}
		now := time.Now()
		m, ok := last[key]
		last[key] = cpuMark{st.CPU + st.ChildrenCPU, now}
		if !ok || st.CPU+st.ChildrenCPU < m.cpu {
			return 0, &st
		}
		return float64(st.CPU+st.ChildrenCPU-m.cpu) / float64(now.Sub(m.at)) * 1000, &st
	}
	for {
		select {
		case <-stop:
			return
		case <-t.C:
		}
		phase, pods := s.phase()
		smp := ScaleSample{T: time.Since(s.start).Seconds(), Phase: phase, Pods: pods}
		var agent *procstat.Stat
		agentPid := s.agent.Pid()
		smp.AgentMilli, agent = milli("agent", agentPid)
		if agent != nil {
			smp.AgentRSS = mib(agent.RSSBytes)
			if anon, err := procstat.AnonRSS(agentPid); err == nil {
				smp.AgentAnon = mib(anon)
			}
			smp.BPFMaps = mib(bpfMapMemory(agentPid))
			if rx, err := uplinkRx(agentPid); err == nil {
				if !lastRxAt.IsZero() && rx >= lastRx {
					smp.RxKiBps = float64(rx-lastRx) / 1024 / time.Since(lastRxAt).Seconds()
				}
				lastRx, lastRxAt = rx, time.Now()
			}
		}
		var api *procstat.Stat
		smp.APIMilli, api = milli("api", s.api.pid())
		if api != nil {
			smp.ControlMiBs = mib(api.RSSBytes)
		}
		smp.EtcdMilli, _ = milli("etcd", s.etcd.pid())
		smp.KCMMilli, _ = milli("kcm", s.kcm.pid())
		// The agent's gauges every scrapeEvery, as a Prometheus would
		// scrape its metrics (each scrape is work for the agent); the
		// samples in between repeat the last.
		if tick%scrapeEvery == 0 || gauges == nil {
			if g, err := s.gauges(); err == nil {
				gauges = &g
			}
		}
		tick++
		if g := gauges; g != nil {
			smp.AgentHeap = g.HeapBytes / (1 << 20)
			smp.IPCache, smp.Identities, smp.Backends = g.IPCache, g.Identities, g.Backends
		}
		s.mu.Lock()
		s.samples = append(s.samples, smp)
		s.mu.Unlock()
	}
}

// scrapeEvery is how often (in samples, seconds) the sampler reads the
// agent's metrics.
const scrapeEvery = 5

func (s *sampler) taken() []ScaleSample {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]ScaleSample(nil), s.samples...)
}

func mib(b uint64) float64 { return float64(b) / (1 << 20) }

// bpfMapMemory sums the memlock of the BPF maps pid holds open, as
// /proc/PID/fdinfo reports them (what Cilium's scalability report counts).
func bpfMapMemory(pid int) uint64 {
	fds, _ := filepath.Glob(fmt.Sprintf("/proc/%d/fdinfo/*", pid))
	var total uint64
	seen := map[string]bool{}
	for _, fd := range fds {
		b, err := os.ReadFile(fd)
		if err != nil {
			continue
		}
		var id string
		var memlock uint64
		for _, line := range strings.Split(string(b), "\n") {
			k, v, ok := strings.Cut(line, ":")
			if !ok {
				continue
			}
			switch strings.TrimSpace(k) {
			case "map_id":
				id = strings.TrimSpace(v)
			case "memlock":
				memlock, _ = strconv.ParseUint(strings.TrimSpace(v), 10, 64)
			}
		}
		if id != "" && !seen[id] { // a map opened twice counts once
			seen[id] = true
			total += memlock
		}
	}
	return total
}

// uplinkRx is the bytes received on eth0 of pid's network namespace.
func uplinkRx(pid int) (uint64, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/net/dev", pid))
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		name, rest, ok := strings.Cut(sc.Text(), ":")
		if ok && strings.TrimSpace(name) == "eth0" {
			fields := strings.Fields(rest)
			if len(fields) > 0 {
				return strconv.ParseUint(fields[0], 10, 64)
			}
		}
	}
	return 0, fmt.Errorf("no eth0 in pid %d's namespace", pid)
}

// agentHTTP is a client of the agent's local API socket.
func agentHTTP(socket string, timeout time.Duration) *http.Client {
	return &http.Client{Timeout: timeout, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", socket)
		}, DisableKeepAlives: true}}
}

// saveHeapProfile writes the agent's heap profile (Go's pprof format,
// after a GC) from its local API socket to path.
func saveHeapProfile(socket, path string) error {
	resp, err := agentHTTP(socket, 30*time.Second).Get("http://kpath-agent/debug/pprof/heap?gc=1")
	if err != nil {
		return fmt.Errorf("heap profile: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("heap profile: %s", resp.Status)
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, resp.Body); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
