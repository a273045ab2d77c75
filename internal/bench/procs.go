package bench

import (
	"path/filepath"
	"slices"
	"strings"

	"github.com/kpath/kpath/internal/procstat"
)

// Finding the lab's processes (dataplanes, control plane) to sample or
// freeze, by what their command lines hold.

// processesNaming lists the processes with an argument containing s.
func processesNaming(s string) []int {
	return procstat.Find(func(argv []string) bool {
		return slices.ContainsFunc(argv, func(a string) bool { return strings.Contains(a, s) })
	})
}

// procOf names a process: its binary, and a string its command line holds
// (the lab's processes are told apart by their directories).
type procOf struct{ binary, marker string }

// pid is the process's, 0 when none runs (a wrapper such as nsenter with
// the same arguments is not it).
func (p procOf) pid() int {
	pids := procstat.Find(func(argv []string) bool {
		return filepath.Base(argv[0]) == p.binary && slices.ContainsFunc(argv, func(a string) bool { return strings.Contains(a, p.marker) })
	})
	if len(pids) == 0 {
		return 0
	}
	return pids[0]
}
