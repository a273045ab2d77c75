package lab

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"

	"github.com/kpath/kpath/internal/dataplane"
)

// The lab's side of its nodes' service dataplanes (internal/dataplane):
// the processes they start are the supervisor's children, and a running
// lab's state names its dataplane.

// keeper starts a dataplane's processes as the supervisor's children.
type keeper struct {
	c   *children
	log func(string, ...any)
}

func (k keeper) Keep(what string, mk func() (*exec.Cmd, func(), error)) (<-chan struct{}, error) {
	return k.c.keep(what, mk, k.log)
}

func (k keeper) Start(cmd *exec.Cmd, onExit func()) (<-chan struct{}, error) {
	return k.c.start(cmd, onExit)
}

// Dataplane is the running lab's service dataplane, to ask its nodes
// what they hold.
func (s *State) Dataplane() (dataplane.Dataplane, error) {
	return dataplane.New(s.Services, dataplane.Cluster{Dir: s.Dir, Kubeconfig: s.Kubeconfig, Routing: s.Routing,
		ClusterCIDR: ClusterCIDR, BinDir: s.BinDir, CiliumBin: s.CiliumBin})
}

// AgentHealth is node n's dataplane agent as kpath lab status shows it:
// kpath-agent's readiness, or cilium-agent's own status line.
func (s *State) AgentHealth(n NodeInfo) string {
	dp, err := s.Dataplane()
	if err != nil {
		return err.Error()
	}
	return dp.Health(context.Background(), n)
}

// unmountUnder unmounts what is mounted under dir (the Cilium nodes'
// namespace files and binds), deepest first, so that their namespaces and
// bpffs go once their processes have.
func unmountUnder(dir string) error {
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return err
	}
	var points []string
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) > 4 && (f[4] == dir || strings.HasPrefix(f[4], dir+"/")) {
			points = append(points, f[4])
		}
	}
	var firstErr error
	for i := len(points) - 1; i >= 0; i-- {
		if err := syscall.Unmount(points[i], syscall.MNT_DETACH); err != nil && firstErr == nil && err != syscall.EINVAL {
			firstErr = fmt.Errorf("unmount %s: %w", points[i], err)
		}
	}
	return firstErr
}
