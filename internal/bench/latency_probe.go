package bench

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/kpath/kpath/internal/dataplane"
	"github.com/kpath/kpath/internal/procstat"
)

// What E1 reads of the measured node's service dataplane, through
// internal/dataplane: readiness, change counters, drops, memory and CPU.

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

// waitReady waits until the node's dataplane holds every object created:
// the simulated services, plus the kubernetes and target services and
// the target's slice; added of them (services and slices) since base.
func (m *modeLab) waitReady(ctx context.Context, base dataplane.Counters, added int) error {
	w := dataplane.Want{Services: m.created + 2, Slices: m.created + 1, Since: base, Added: added}
	var last string
	for deadline := time.Now().Add(readyWait); time.Now().Before(deadline); {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		t := time.Now()
		ok, why := m.dp.Ready(ctx, m.node, w)
		if ok {
			return nil
		}
		last = why
		// A look that takes long (Cilium's lists every service) is not
		// repeated back to back: the probe takes at most half the time.
		time.Sleep(max(20*time.Millisecond, time.Since(t)))
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

type usage struct{ rssMiB, cpuSeconds float64 }

// usage reports the RSS and CPU seconds of the node's service dataplane
// process (kpath-agent, kube-proxy or cilium-agent), waited-for children
// (iptables-restore, nft) included.
func (m *modeLab) usage() usage {
	pid := m.dp.Agent(m.node).Pid()
	if pid == 0 {
		return usage{}
	}
	st, err := procstat.Read(pid)
	if err != nil {
		return usage{}
	}
	return usage{float64(st.RSSBytes) / (1 << 20), (st.CPU + st.ChildrenCPU).Seconds()}
}
