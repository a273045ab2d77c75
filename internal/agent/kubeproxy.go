package agent

import (
	"context"
	"slices"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"

	"github.com/kpath/kpath/internal/kubeproxyrules"
)

// kubeProxyCheckInterval is how often the agent looks for kube-proxy's
// rules (a kube-proxy may be started, or come back, after the agent).
const kubeProxyCheckInterval = time.Minute

// kubeProxyRules warns, while kpath replaces kube-proxy, about kube-proxy's
// rules on the node: two service dataplanes on one node break
// connections. Each check sets kpath_kube_proxy_rules (by kind); a change
// to what is found is logged and recorded as a Warning Event on the Node
// (docs/operations.md says how to clean them).
func (a *Agent) kubeProxyRules(ctx context.Context, events *podEvents) {
	gauge := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "kpath_kube_proxy_rules",
		Help: "kube-proxy's chains and tables found on the node while kpath replaces kube-proxy, by kind (nftables, iptables-nft, iptables-legacy); anything but 0 breaks connections",
	}, []string{"kind"})
	if err := a.reg.Register(gauge); err != nil {
		a.log.Error("register kube-proxy rules metric", "error", err)
		return
	}
	var last string
	t := time.NewTicker(kubeProxyCheckInterval)
	defer t.Stop()
	for {
		found, err := kubeproxyrules.Find(-1)
		if err != nil {
			a.log.Debug("cannot look for kube-proxy's rules", "error", err)
		} else {
			counts := map[string]float64{"nftables": 0, "iptables-nft": 0, "iptables-legacy": 0}
			var what []string
			for _, f := range found {
				counts[f.Kind]++
				what = append(what, f.String())
			}
			for k, n := range counts {
				gauge.WithLabelValues(k).Set(n)
			}
			slices.Sort(what)
			if now := strings.Join(what, ", "); now != last {
				last = now
				if now != "" {
					a.log.Warn("kube-proxy's rules are on this node while kpath replaces kube-proxy: two service dataplanes break connections; remove kube-proxy and its rules (kube-proxy --cleanup)", "found", now)
					events.nodeWarning(a.cfg.NodeName, "KubeProxyRulesFound",
						"kube-proxy's rules are on this node while kpath replaces kube-proxy (%s): remove kube-proxy and run kube-proxy --cleanup, or connections break", now)
				}
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (e *podEvents) nodeWarning(node, reason, format string, args ...any) {
	if e == nil {
		return
	}
	ref := &corev1.ObjectReference{Kind: "Node", APIVersion: "v1", Name: node}
	e.rec.Eventf(ref, corev1.EventTypeWarning, reason, format, args...)
}
