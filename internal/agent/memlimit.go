package agent

import (
	"log/slog"

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
