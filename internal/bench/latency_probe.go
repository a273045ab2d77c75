package bench

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/kpath/kpath/internal/agent"
	"github.com/kpath/kpath/internal/cniapi"
	"github.com/kpath/kpath/internal/lab"
	"github.com/kpath/kpath/internal/nsutil"
	"github.com/kpath/kpath/internal/procstat"
)

// What E1 reads of the measured node's service dataplane: readiness,
// kube-proxy's metrics, drops, memory and CPU.

// dataplaneProbe reads the measured node's service dataplane: the agent's
// status for kpath, kube-proxy's metrics for kube-proxy.
type dataplaneProbe struct {
	mode       string
	node       lab.NodeInfo
	st         *lab.State
	kubeconfig string // this lab's: tells its processes from any other lab's
	kpathBin   string
}

// drops reads the node datapath's drop counters by reason (kpath's
// programs run in every mode: they wire the pods).
func (p dataplaneProbe) drops(ctx context.Context) map[string]uint64 {
	out, err := exec.CommandContext(ctx, "nsenter", "--net=/run/netns/"+p.node.Netns, p.kpathBin,
		"dp", "counters", "--pin-dir", p.node.PinDir, "-o", "json").Output()
	if err != nil {
		return nil
	}
	var cs []struct {
		Reason, Dir string
		Drop        bool
		Packets     uint64
	}
	if json.Unmarshal(out, &cs) != nil {
		return nil
	}
	m := map[string]uint64{}
	for _, c := range cs {
		if c.Drop {
			m[c.Dir+"/"+c.Reason] += c.Packets
		}
	}
	return m
}

// dropsSince formats the drops counted after before, "" when none.
func dropsSince(before, after map[string]uint64) (uint64, string) {
	var total uint64
	var parts []string
	for k, v := range after {
		if d := v - before[k]; d > 0 {
			total += d
			parts = append(parts, fmt.Sprintf("%s %d", k, d))
		}
	}
	slices.Sort(parts)
	return total, strings.Join(parts, ", ")
}

// changeCounts are the dataplane's cumulative counts of service and
// endpoint changes seen, and of full resyncs and their seconds
// (kube-proxy); zero for kpath, whose status gives absolute object counts
// instead.
type changeCounts struct{ services, endpoints, fullSyncs, fullSyncSeconds float64 }

func (p dataplaneProbe) kubeProxy() bool { return strings.HasPrefix(p.mode, "kube-proxy") }

// changes reads the change counters, waiting up to a minute for
// kube-proxy's metrics to answer (it opens them after its first sync).
func (p dataplaneProbe) changes(ctx context.Context) (changeCounts, error) {
	if !p.kubeProxy() {
		return changeCounts{}, nil
	}
	m, err := kubeProxyMetrics(p.node.Netns)
	for deadline := time.Now().Add(time.Minute); err != nil && time.Now().Before(deadline) && ctx.Err() == nil; {
		time.Sleep(200 * time.Millisecond)
		m, err = kubeProxyMetrics(p.node.Netns)
	}
	if err != nil {
		return changeCounts{}, err
	}
	return changeCounts{m["kubeproxy_sync_proxy_rules_service_changes_total"], m["kubeproxy_sync_proxy_rules_endpoint_changes_total"],
		m["kubeproxy_sync_full_proxy_rules_duration_seconds_count"], m["kubeproxy_sync_full_proxy_rules_duration_seconds_sum"]}, nil
}

// waitReady waits until the dataplane holds every object created: for
// kpath, the agent has seen all services and slices, none is pending and
// none retrying; for kube-proxy, it has counted the added services and
// slices as changes, none is pending, and its last completed sync is not
// older than the last one queued.
func (p dataplaneProbe) waitReady(ctx context.Context, services int, base changeCounts, added int) error {
	if p.mode == "none" {
		return nil
	}
	var last string
	for deadline := time.Now().Add(readyWait); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if p.mode == "cilium" {
			// Cilium's own view: its service map holds a frontend with
			// backends for each service (+2: kubernetes and the target).
			n, err := p.st.CiliumServices(ctx, p.node)
			if err != nil {
				last = err.Error()
			} else if n >= services+2 {
				return nil
			} else {
				last = fmt.Sprintf("cilium: %d of %d services with backends", n, services+2)
			}
			time.Sleep(200 * time.Millisecond) // each look lists every service
			continue
		}
		if !p.kubeProxy() {
			var s agent.Status
			if err := cniapi.NewClient(p.node.AgentSocket).Do("GET", "/v1/status", nil, &s); err != nil {
				last = err.Error()
				continue
			}
			// +2: the kubernetes and target services; +1: the target's slice.
			if s.Services >= services+2 && s.Slices >= services+1 && s.Pending == 0 && s.Reconciler.Retrying == 0 &&
				s.Reconciler.Frontends >= services+2 {
				return nil
			}
			last = fmt.Sprintf("agent: %d services, %d slices, %d pending, %d retrying, %d frontends",
				s.Services, s.Slices, s.Pending, s.Reconciler.Retrying, s.Reconciler.Frontends)
			continue
		}
		m, err := kubeProxyMetrics(p.node.Netns)
		if err != nil {
			last = err.Error()
			continue
		}
		svc, ep := m["kubeproxy_sync_proxy_rules_service_changes_total"], m["kubeproxy_sync_proxy_rules_endpoint_changes_total"]
		pending := m["kubeproxy_sync_proxy_rules_service_changes_pending"] + m["kubeproxy_sync_proxy_rules_endpoint_changes_pending"]
		synced, queued := m["kubeproxy_sync_proxy_rules_last_timestamp_seconds"], m["kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds"]
		if svc >= base.services+float64(added) && ep >= base.endpoints+float64(added) && pending == 0 && synced > 0 && synced >= queued {
			return nil
		}
		last = fmt.Sprintf("kube-proxy: %.0f/%.0f service and %.0f/%.0f endpoint changes, %.0f pending, last sync %.3f, last queued %.3f",
			svc-base.services, float64(added), ep-base.endpoints, float64(added), pending, synced, queued)
	}
	return &notReadyError{wait: readyWait, last: last}
}

// readyWait is how long waitReady waits for a dataplane to hold every
// object of a point.
const readyWait = 15 * time.Minute

// notReadyError is a dataplane that did not hold every object within
// readyWait; last is what it showed last.
type notReadyError struct {
	wait time.Duration
	last string
}

func (e *notReadyError) Error() string {
	return fmt.Sprintf("dataplane not ready after %s (%s)", e.wait, e.last)
}

// kubeProxyMetrics reads kube-proxy's metrics (IPv4 only where labelled by
// family) from its metrics port inside the node's namespace.
func kubeProxyMetrics(netns string) (map[string]float64, error) {
	body, err := getInNetns(netns, "http://127.0.0.1:10249/metrics", 5*time.Second)
	if err != nil {
		return nil, fmt.Errorf("kube-proxy metrics: %w", err)
	}
	defer body.Close()
	m := map[string]float64{}
	s := bufio.NewScanner(body)
	s.Buffer(make([]byte, 64<<10), 1<<20)
	for s.Scan() {
		line := s.Text()
		if !strings.HasPrefix(line, "kubeproxy_sync_") || strings.Contains(line, "_bucket{") {
			continue
		}
		f := strings.Fields(line)
		if len(f) != 2 {
			continue
		}
		name := f[0]
		if i := strings.IndexByte(name, '{'); i >= 0 {
			if strings.Contains(name, "ip_family=") && !strings.Contains(name, `ip_family="IPv4"`) {
				continue
			}
			name = name[:i]
		}
		v, err := strconv.ParseFloat(f[1], 64)
		if err != nil {
			continue
		}
		m[name] = v
	}
	return m, s.Err()
}

// getInNetns GETs url from inside the named network namespace (where the
// lab's dataplanes serve their metrics). No keep-alive: a transport per
// call would otherwise leave its idle connection open, and polling every
// 20 ms through a 15-minute wait ran the bench out of file descriptors.
func getInNetns(netns, url string, timeout time.Duration) (io.ReadCloser, error) {
	client := &http.Client{Timeout: timeout, Transport: &http.Transport{DialContext: nsutil.Dialer(netns), DisableKeepAlives: true}}
	resp, err := client.Get(url)
	if err != nil {
		return nil, err
	}
	return resp.Body, nil
}

type usage struct{ rssMiB, cpuSeconds float64 }

// usage finds the node's service dataplane process (kpath-agent or
// kube-proxy) and reports its RSS and CPU seconds, waited-for children
// (iptables-restore, nft) included.
func (p dataplaneProbe) usage() usage {
	name, kubeconfigArg := "kpath-agent", "--kubeconfig="
	switch {
	case p.kubeProxy():
		name = "kube-proxy"
	case p.mode == "cilium":
		name, kubeconfigArg = "cilium-agent", "--k8s-kubeconfig-path="
	}
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		args := strings.Split(string(cmdline), "\x00")
		// cilium-agent takes its node's name from the environment: one
		// node per E1 lab, so its kubeconfig tells it apart.
		if len(args) == 0 || filepath.Base(args[0]) != name || !slices.Contains(args, kubeconfigArg+p.kubeconfig) ||
			name != "cilium-agent" && !slices.Contains(args, "--hostname-override="+p.node.Name) && !slices.Contains(args, "--node-name="+p.node.Name) {
			continue
		}
		st, err := procstat.Read(pid)
		if err != nil {
			continue
		}
		return usage{float64(st.RSSBytes) / (1 << 20), (st.CPU + st.ChildrenCPU).Seconds()}
	}
	return usage{}
}
