// Package procstat reads a process's state, CPU time and memory from
// /proc/PID/stat, as ps and top do.
package procstat

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// userHZ is the unit of /proc's CPU times (USER_HZ, 100 on Linux).
const userHZ = 100

// Stat is what /proc/PID/stat says of a process.
type Stat struct {
	State byte // R, S, D, Z...
	PPID  int
	// CPU is its user and system time; ChildrenCPU that of the children it
	// waited for (iptables-restore under kube-proxy, for instance).
	CPU, ChildrenCPU time.Duration
	RSSBytes         uint64
}

// Read reads pid's stat.
func Read(pid int) (Stat, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return Stat{}, fmt.Errorf("process %d: %w", pid, err)
	}
	return parse(string(data))
}

// parse reads "pid (comm) state ppid ...": comm may hold spaces and
// parentheses, so fields are counted from its last ')'.
func parse(s string) (Stat, error) {
	i := strings.LastIndexByte(s, ')')
	if i < 0 || i+2 > len(s) {
		return Stat{}, fmt.Errorf("malformed /proc stat %q", s)
	}
	f := strings.Fields(s[i+2:]) // f[0] is field 3 (state)
	if len(f) < 22 {
		return Stat{}, fmt.Errorf("malformed /proc stat %q: %d fields", s, len(f)+2)
	}
	num := func(field int) uint64 {
		v, _ := strconv.ParseUint(f[field-3], 10, 64)
		return v
	}
	ticks := func(fields ...int) time.Duration {
		var t uint64
		for _, fi := range fields {
			t += num(fi)
		}
		return time.Duration(t) * time.Second / userHZ
	}
	return Stat{
		State: f[0][0], PPID: int(num(4)),
		CPU: ticks(14, 15), ChildrenCPU: ticks(16, 17),
		RSSBytes: num(24) * uint64(os.Getpagesize()),
	}, nil
}

// AnonRSS is the anonymous part of pid's RSS (RssAnon of
// /proc/PID/status): the memory the process itself allocated, without the
// file pages it maps (its executable's text, shared and reclaimable).
func AnonRSS(pid int) (uint64, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, fmt.Errorf("process %d: %w", pid, err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "RssAnon:"); ok {
			kb, err := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			if err != nil {
				return 0, fmt.Errorf("process %d: RssAnon %q: %w", pid, v, err)
			}
			return kb << 10, nil
		}
	}
	return 0, fmt.Errorf("process %d: no RssAnon in its status", pid)
}

// Find lists the processes (other than this one) whose command line, split
// into its arguments, match accepts. A process that exits meanwhile is
// skipped.
func Find(match func(argv []string) bool) []int {
	var pids []int
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if err != nil || len(cmdline) == 0 {
			continue
		}
		if match(strings.Split(strings.TrimSuffix(string(cmdline), "\x00"), "\x00")) {
			pids = append(pids, pid)
		}
	}
	return pids
}
