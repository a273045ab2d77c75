package dataplane

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// kubeProxy is the real kube-proxy (iptables or nftables mode) as a node's
// service dataplane, kpath-agent wiring the pods with its kube-proxy
// replacement off.
type kubeProxy struct {
	kpath
	proxyMode string
}

func (d kubeProxy) Start(ctx context.Context, n Node, k Keeper) (CNI, error) {
	cni, err := d.kpath.Start(ctx, n, k)
	if err != nil {
		return CNI{}, err
	}
	logf, err := os.Create(d.log(n))
	if err != nil {
		return CNI{}, err
	}
	cmd := exec.Command("nsenter", "--net=/run/netns/"+n.Netns, filepath.Join(d.c.K8sBin, "kube-proxy"),
		"--kubeconfig="+d.c.Kubeconfig, "--hostname-override="+n.Name, "--proxy-mode="+d.proxyMode,
		"--cluster-cidr="+d.c.ClusterCIDR,
		// A node namespace cannot set the host-wide conntrack table sizes.
		"--conntrack-max-per-core=0", "--conntrack-tcp-timeout-established=0", "--conntrack-tcp-timeout-close-wait=0",
		"--metrics-bind-address=127.0.0.1:10249", "--healthz-bind-address=127.0.0.1:10256")
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if _, err := k.Start(cmd, func() { logf.Close() }); err != nil {
		return CNI{}, fmt.Errorf("start kube-proxy on %s: %w", n.Name, err)
	}
	return cni, nil
}

func (d kubeProxy) log(n Node) string { return filepath.Join(d.c.nodeDir(n), "kube-proxy.log") }

// metrics reads kube-proxy's kubeproxy_sync_* samples, IPv4 only where
// labelled by family, histograms' buckets left out.
func (d kubeProxy) metrics(n Node) (map[string]float64, error) {
	all, err := Scrape(n.Netns, KubeProxyMetrics)
	if err != nil {
		return nil, fmt.Errorf("kube-proxy metrics: %w", err)
	}
	m := map[string]float64{}
	for name, v := range all {
		if !strings.HasPrefix(name, "kubeproxy_sync_") || strings.Contains(name, "_bucket{") {
			continue
		}
		if i := strings.IndexByte(name, '{'); i >= 0 {
			if strings.Contains(name, "ip_family=") && !strings.Contains(name, `ip_family="IPv4"`) {
				continue
			}
			name = name[:i]
		}
		m[name] = v
	}
	return m, nil
}

// Counters waits up to a minute for kube-proxy's metrics to answer (it
// opens them after its first sync).
func (d kubeProxy) Counters(ctx context.Context, n Node) (Counters, error) {
	m, err := d.metrics(n)
	for deadline := time.Now().Add(time.Minute); err != nil && time.Now().Before(deadline) && ctx.Err() == nil; {
		time.Sleep(200 * time.Millisecond)
		m, err = d.metrics(n)
	}
	if err != nil {
		return Counters{}, err
	}
	return Counters{m["kubeproxy_sync_proxy_rules_service_changes_total"], m["kubeproxy_sync_proxy_rules_endpoint_changes_total"],
		m["kubeproxy_sync_full_proxy_rules_duration_seconds_count"], m["kubeproxy_sync_full_proxy_rules_duration_seconds_sum"]}, nil
}

// Ready: kube-proxy has counted the added services and slices as changes,
// none is pending, and its last completed sync is not older than the last
// one queued.
func (d kubeProxy) Ready(_ context.Context, n Node, w Want) (bool, string) {
	m, err := d.metrics(n)
	if err != nil {
		return false, err.Error()
	}
	svc, ep := m["kubeproxy_sync_proxy_rules_service_changes_total"], m["kubeproxy_sync_proxy_rules_endpoint_changes_total"]
	pending := m["kubeproxy_sync_proxy_rules_service_changes_pending"] + m["kubeproxy_sync_proxy_rules_endpoint_changes_pending"]
	synced, queued := m["kubeproxy_sync_proxy_rules_last_timestamp_seconds"], m["kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds"]
	added := float64(w.Added)
	if svc >= w.Since.Services+added && ep >= w.Since.Endpoints+added && pending == 0 && synced > 0 && synced >= queued {
		return true, ""
	}
	return false, fmt.Sprintf("kube-proxy: %.0f/%.0f service and %.0f/%.0f endpoint changes, %.0f pending, last sync %.3f, last queued %.3f",
		svc-w.Since.Services, added, ep-w.Since.Endpoints, added, pending, synced, queued)
}

func (d kubeProxy) Gauges(context.Context, Node) (Gauges, error) {
	return Gauges{}, fmt.Errorf("kube-proxy gauges: %w", ErrNotMeasured)
}

func (d kubeProxy) Agent(n Node) Process {
	return Process{Binary: "kube-proxy", Args: []string{"--kubeconfig=" + d.c.Kubeconfig, "--hostname-override=" + n.Name}}
}

func (d kubeProxy) Logs(n Node) []string { return append(d.kpath.Logs(n), d.log(n)) }
