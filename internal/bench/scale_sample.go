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
	agent, api, etcd, kcm procOf
	netns                 string // the agent's (metrics, uplink)
	phase                 func() (string, int)
	start                 time.Time

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
	var metrics map[string]float64
	tick := 0
	milli := func(p procOf, pid int) (float64, *procstat.Stat) {
		if pid == 0 {
			return 0, nil
		}
		st, err := procstat.Read(pid)
		if err != nil {
			return 0, nil
		}
		now := time.Now()
		m, ok := last[p.binary]
		last[p.binary] = cpuMark{st.CPU + st.ChildrenCPU, now}
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
		agentPid := s.agent.pid()
		smp.AgentMilli, agent = milli(s.agent, agentPid)
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
		smp.APIMilli, api = milli(s.api, s.api.pid())
		if api != nil {
			smp.ControlMiBs = mib(api.RSSBytes)
		}
		smp.EtcdMilli, _ = milli(s.etcd, s.etcd.pid())
		smp.KCMMilli, _ = milli(s.kcm, s.kcm.pid())
		// The agent's metrics every scrapeEvery, as a Prometheus would
		// scrape them (each scrape is work for the agent); the samples in
		// between repeat the last.
		if tick%scrapeEvery == 0 || metrics == nil {
			if m, err := agentMetricsText(s.netns); err == nil {
				metrics = m
			}
		}
		tick++
		if m := metrics; m != nil {
			smp.AgentHeap = m["go_memstats_heap_inuse_bytes"] / (1 << 20)
			smp.IPCache = int(m["kpath_ipcache_entries"])
			smp.Identities = int(m["kpath_identities"])
			smp.Backends = int(m["kpath_service_backends"])
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

// agentMetricsText reads the unlabelled samples of the agent's metrics in
// its node's namespace.
func agentMetricsText(netns string) (map[string]float64, error) {
	all, err := agentMetricsAll(netns)
	if err != nil {
		return nil, err
	}
	for name := range all {
		if strings.Contains(name, "{") {
			delete(all, name)
		}
	}
	return all, nil
}

// agentMetricsAll reads every sample of the agent's metrics, keyed by the
// name with its labels as exposed (name{a="x",b="y"}).
func agentMetricsAll(netns string) (map[string]float64, error) {
	body, err := getInNetns(netns, "http://127.0.0.1:9964/metrics", 2*time.Second)
	if err != nil {
		return nil, err
	}
	defer body.Close()
	b, err := io.ReadAll(body)
	if err != nil {
		return nil, err
	}
	out := map[string]float64{}
	for _, line := range strings.Split(string(b), "\n") {
		i := strings.LastIndexByte(line, ' ')
		if i < 0 || strings.HasPrefix(line, "#") {
			continue
		}
		name, val := line[:i], line[i+1:]
		if v, err := strconv.ParseFloat(strings.TrimSpace(val), 64); err == nil {
			out[name] = v
		}
	}
	return out, nil
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
