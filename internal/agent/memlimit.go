package agent

import (
	"log/slog"
	"runtime/debug"
	"sync"

	"github.com/KimMachineGun/automemlimit/memlimit"
)

// memoryLimitRatio is the share of its container's memory limit the agent
// gives the Go runtime as GOMEMLIMIT: the rest is for what the runtime
// does not count (stacks, the binary, the kernel's accounting of its BPF
// maps under the cgroup).
const memoryLimitRatio = 0.9

// setMemoryLimit sets GOMEMLIMIT from the agent's cgroup (its container's
// memory limit, cgroup v1 or v2), unless GOMEMLIMIT is given: near the
// limit the collector works harder instead of the container being killed,
// and restarted into the same peak. Returns the limit in force
// (math.MaxInt64: none).
func setMemoryLimit(log *slog.Logger) int64 {
	limit, err := memlimit.Set(memlimit.WithRatio(memoryLimitRatio), memlimit.WithProvider(memlimit.FromCgroup), memlimit.WithLogger(log))
	if err != nil {
		// No cgroup to read (not in a container): no limit, as before.
		log.Debug("no memory limit from the cgroup", "error", err)
	}
	return limit
}

// startupGCPercent is the collector's target (GOGC) while the agent starts:
// the heap may grow a quarter past what was live at the last collection,
// not twice it. A start converts every pod, Service and policy of the
// cluster and fills every map at once; most of what it allocates stays
// live, and with Go's default of 100 the heap's headroom over that made
// the restart the agent's largest footprint (1.65x the steady RSS at
// 100k pods), which is what a DaemonSet's memory limit has to be sized
// for. The extra collections cost CPU during the start only.
const startupGCPercent = 25

// startupGC lowers GOGC to startupGCPercent until the returned function
// is first called (the agent is ready), unless GOGC is given.
func startupGC(getenv func(string) string) (restore func()) {
	if getenv("GOGC") != "" {
		return func() {}
	}
	old := debug.SetGCPercent(startupGCPercent)
	return sync.OnceFunc(func() { debug.SetGCPercent(old) })
}
