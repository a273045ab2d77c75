package dataplane

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"

	"k8s.io/client-go/rest"

	"github.com/kpath/kpath/internal/agent"
	"github.com/kpath/kpath/internal/cniapi"
	"github.com/kpath/kpath/internal/datapath"
	"github.com/kpath/kpath/internal/model"
)

// kpath is kpath-agent as a node's dataplane: with its socket hook
// (kpath), per packet only (kpath-tc), or wiring pods only with kube-proxy
// replacement off (none, and under kube-proxy).
type kpath struct {
	c    Cluster
	mode string
}

func (d kpath) Mode() string { return d.mode }

func (d kpath) cniBin() string { return filepath.Join(d.c.Dir, "cni-bin") }

// Setup links kpath-cni where every node's runtime finds it.
func (d kpath) Setup(context.Context, *rest.Config) error {
	if err := os.MkdirAll(d.cniBin(), 0o755); err != nil {
		return err
	}
	_ = os.Remove(filepath.Join(d.cniBin(), "kpath"))
	return os.Symlink(filepath.Join(d.c.BinDir, "kpath-cni"), filepath.Join(d.cniBin(), "kpath"))
}

func (d kpath) Start(_ context.Context, n Node, k Keeper) (CNI, error) {
	dir := d.c.nodeDir(n)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return CNI{}, err
	}
	logPath := filepath.Join(dir, "agent.log")
	args := []string{"--net=/run/netns/" + n.Netns, filepath.Join(d.c.BinDir, "kpath-agent"),
		"--kubeconfig=" + d.c.Kubeconfig, "--node-name=" + n.Name, "--pin-dir=" + n.PinDir,
		"--device=eth0", "--routing=" + d.c.Routing, "--cluster-cidr=" + d.c.ClusterCIDR,
		"--cgroup-root=" + n.Cgroup, "--api-socket=" + n.AgentSocket, "--ipam-dir=" + filepath.Join(dir, "ipam"),
		"--hubble-socket=" + n.HubbleSocket, "--hubble-listen-address=" + n.HubbleAddress,
		"--metrics-addr=127.0.0.1:9964"}
	if t := d.c.HubbleTLSDir; t != "" {
		args = append(args, "--hubble-tls-cert-file="+filepath.Join(t, n.Name+".crt"), "--hubble-tls-key-file="+filepath.Join(t, n.Name+".key"),
			"--hubble-tls-client-ca-files="+filepath.Join(t, "hubble-ca.crt"))
	} else {
		args = append(args, "--hubble-disable-tls")
	}
	args = append(args, d.c.AgentArgs...)
	switch d.mode {
	case "kpath-tc":
		args = append(args, "--socket-hook=false")
	case "kpath":
	default: // kube-proxy or none: kpath keeps pod networking only
		args = append(args, "--kube-proxy-replacement=false")
	}
	exited, err := k.Keep("kpath-agent on "+n.Name, func() (*exec.Cmd, func(), error) {
		logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
		if err != nil {
			return nil, nil, err
		}
		cmd := exec.Command("nsenter", args...)
		cmd.Stdout, cmd.Stderr = logf, logf
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		return cmd, func() { logf.Close() }, nil
	})
	if err != nil {
		return CNI{}, fmt.Errorf("start agent on %s: %w", n.Name, err)
	}
	conf := []byte(fmt.Sprintf(`{"cniVersion":"1.1.0","name":"kpath","plugins":[{"type":"kpath","agentSocket":%q}]}`, n.AgentSocket))
	client := cniapi.NewClient(n.AgentSocket)
	for deadline := time.Now().Add(60 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		if client.Do("GET", "/v1/cni/status", nil, nil) == nil {
			return CNI{BinDir: d.cniBin(), Conf: conf}, nil
		}
		select {
		case <-exited:
			return CNI{}, fmt.Errorf("kpath-agent on %s exited (log: %s):\n%s", n.Name, logPath, TailFile(logPath, 15))
		default:
		}
	}
	return CNI{}, fmt.Errorf("kpath-agent on %s not ready within 60s (log: %s):\n%s", n.Name, logPath, TailFile(logPath, 15))
}

// status is the agent's own view (its local API).
func (d kpath) status(n Node) (agent.Status, error) {
	var s agent.Status
	c := cniapi.NewClient(n.AgentSocket)
	c.Timeout = 2 * time.Second
	return s, c.Do("GET", "/v1/status", nil, &s)
}

// Ready: the agent has seen every service and slice, none is pending and
// none retrying, and its reconciler holds a frontend for each service.
// none is ready at once: it programs no service.
func (d kpath) Ready(_ context.Context, n Node, w Want) (bool, string) {
	if d.mode == "none" {
		return true, ""
	}
	s, err := d.status(n)
	if err != nil {
		return false, err.Error()
	}
	if s.Services >= w.Services && s.Slices >= w.Slices && s.Pending == 0 && s.Reconciler.Retrying == 0 &&
		s.Reconciler.Frontends >= w.Services {
		return true, ""
	}
	return false, fmt.Sprintf("agent: %d services, %d slices, %d pending, %d retrying, %d frontends",
		s.Services, s.Slices, s.Pending, s.Reconciler.Retrying, s.Reconciler.Frontends)
}

func (d kpath) Up(_ context.Context, n Node) (bool, time.Duration) {
	s, err := d.status(n)
	if err != nil || !s.Ready {
		return false, 0
	}
	ready, _ := time.ParseDuration(s.StartToReady)
	return true, ready
}

func (d kpath) Reset(n Node) error {
	pins := datapath.DefaultConfig()
	pins.PinDir = n.PinDir
	return datapath.Reset(pins)
}

func (d kpath) Counters(context.Context, Node) (Counters, error) { return Counters{}, nil }

func (d kpath) Gauges(_ context.Context, n Node) (Gauges, error) {
	m, err := Scrape(n.Netns, KpathMetrics)
	if err != nil {
		return Gauges{}, err
	}
	return Gauges{HeapBytes: m["go_memstats_heap_inuse_bytes"], IPCache: int(m["kpath_ipcache_entries"]),
		Identities: int(m["kpath_identities"]), Backends: int(m["kpath_service_backends"])}, nil
}

// Drops reads the node datapath's drop counters (kpath's programs wire
// the pods in every mode but cilium).
func (d kpath) Drops(ctx context.Context, n Node) map[string]uint64 {
	out, err := exec.CommandContext(ctx, "nsenter", "--net=/run/netns/"+n.Netns, filepath.Join(d.c.BinDir, "kpath"),
		"dp", "counters", "--pin-dir", n.PinDir, "-o", "json").Output()
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

// kpathPolicy is kpath's pinned policy maps.
type kpathPolicy struct{ v *datapath.PolicyView }

func (p kpathPolicy) AllowedIn(local, peer netip.Addr, port uint16) (bool, error) {
	d, err := p.v.Decide(local, peer, true, model.TCP, port)
	return d.Allowed, err
}

func (p kpathPolicy) Close() error { return p.v.Close() }

func (d kpath) OpenPolicy(_ context.Context, n Node) (PolicyView, error) {
	v, err := datapath.OpenPolicyView(datapath.DefaultConfig().BPFFS, n.PinDir)
	if err != nil {
		return nil, err
	}
	return kpathPolicy{v}, nil
}

func (d kpath) Agent(n Node) Process {
	return Process{Binary: "kpath-agent", Args: []string{"--pin-dir=" + n.PinDir}}
}

func (d kpath) Logs(n Node) []string { return []string{filepath.Join(d.c.nodeDir(n), "agent.log")} }

func (d kpath) Health(_ context.Context, n Node) string {
	st, err := d.status(n)
	if err != nil {
		return "kpath-agent down"
	}
	if !st.Ready {
		return "kpath-agent starting"
	}
	return "kpath-agent ready"
}
