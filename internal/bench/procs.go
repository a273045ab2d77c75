package bench

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// Finding the lab's processes (dataplanes, control plane) to sample or
// freeze, by what their command lines hold.

// processesNaming lists the processes with an argument containing s.
func processesNaming(s string) []int {
	pids := []int{}
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if strings.Contains(string(cmdline), s) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// procOf names a process: its binary, and a string its command line holds
// (the lab's processes are told apart by their directories).
type procOf struct{ binary, marker string }

// pid is the process's, 0 when none runs (a wrapper such as nsenter with
// the same arguments is not it).
func (p procOf) pid() int {
	for _, pid := range processesNaming(p.marker) {
		cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		argv0, _, _ := strings.Cut(string(cmdline), "\x00")
		if filepath.Base(argv0) == p.binary {
			return pid
		}
	}
	return 0
}
