package test

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/kpath/kpath/internal/datapath"
	klab "github.com/kpath/kpath/internal/lab"
	"github.com/kpath/kpath/internal/testenv"
	"github.com/kpath/kpath/internal/testutil"
	"github.com/kpath/kpath/internal/workload"
)

// ciliumPrerequisites skips (or, in CI, fails) without the pinned Cilium
// build (make cilium-bins) and the tools cilium-agent runs.
func ciliumPrerequisites(t *testing.T) string {
	t.Helper()
	testutil.RequireTool(t, "unshare", "ipset", "iptables")
	dir, err := testenv.CiliumBinDir()
	if err != nil {
		testutil.SkipOrFail(t, err.Error())
	}
	for _, f := range []string{"cilium-agent", "cilium-cni", "cilium-dbg", "bpf", "crds", "bin-path/clang"} {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			testutil.SkipOrFail(t, fmt.Sprintf("%s not in %s: run make cilium-bins (and hack/install-deps.sh for clang-19)", f, dir))
		}
	}
	return dir
}

// hostCgroupPrograms counts the socket-address programs attached to the
// host's cgroup root (where a Cilium escaping its node would put its
// socket LB).
func hostCgroupPrograms(t *testing.T) int {
	t.Helper()
	root, err := datapath.CgroupV2Root()
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(root)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	n := 0
	for _, a := range []ebpf.AttachType{ebpf.AttachCGroupInet4Connect, ebpf.AttachCGroupUDP4Sendmsg, ebpf.AttachCGroupUDP4Recvmsg,
		ebpf.AttachCgroupInet4GetPeername, ebpf.AttachCGroupInet6Connect, ebpf.AttachCgroupInetSockRelease} {
		if res, err := link.QueryPrograms(link.QueryOptions{Target: int(f.Fd()), Attach: a}); err == nil {
			n += len(res.Programs)
		}
	}
	return n
}

// TestLabCilium runs the real cilium-agent as the lab's dataplane (issue
// 14): two nodes, pod to pod across nodes, a ClusterIP and a NodePort
// through Cilium, the agents healthy in kpath lab status, nothing of
// Cilium on the host (no program on its cgroup root, no pin in its bpffs,
// no /run/cilium), and down leaving nothing.
func TestLabCilium(t *testing.T) {
	bin, k8sBin := labPrerequisites(t)
	ciliumBin := ciliumPrerequisites(t)
	hostPins, _ := os.ReadDir(datapath.DefaultConfig().BPFFS)
	hostProgs := hostCgroupPrograms(t)
	_, runCilium := os.Stat("/run/cilium")

	l := upLab(t, bin, k8sBin, "cil", "native", "cilium", 2, func(o *klab.Options) { o.CiliumBin = ciliumBin })
	st, c := l.st, l.c
	for _, n := range st.Nodes {
		if h := st.AgentHealth(n); !strings.HasPrefix(h, "cilium-agent OK") {
			t.Errorf("%s: %s", n.Name, h)
		}
	}
	svc, pods := echoPods(t, c)
	// A pod's processes live in its node's cgroup (where Cilium's socket
	// LB is attached): the probes from pods are run there too.
	node2 := st.Nodes[1]
	cg, err := os.Open(node2.Cgroup)
	if err != nil {
		t.Fatal(err)
	}
	defer cg.Close()
	probe := func(netns, url string, n int) workload.ProbeResult {
		t.Helper()
		if netns == st.Vnet {
			return labProbe(t, bin, netns, nil, url, n)
		}
		return labProbe(t, bin, netns, cg, url, n)
	}
	// Both backends answer (the Service's second one may take a moment to
	// reach the agent's service map).
	both := func(what, netns, url string) {
		t.Helper()
		var r workload.ProbeResult
		for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(time.Second) {
			if r = probe(netns, url, 40); r.Failures == 0 && r.Backends["echo-1"] > 0 && r.Backends["echo-2"] > 0 {
				break
			}
		}
		t.Logf("cilium %s: %v in %s", what, r.Backends, r.Total)
		if r.Failures != 0 || r.Backends["echo-1"] == 0 || r.Backends["echo-2"] == 0 {
			t.Errorf("%s: %+v", what, r)
		}
	}
	clientNS := podNetns(t, st, node2.Name, pods["client"].UID)
	if r := probe(clientNS, fmt.Sprintf("http://%s:8080/", pods["echo-1"].Status.PodIP), 5); r.Backends["echo-1"] != 5 {
		t.Errorf("pod on node-2 -> pod on node-1: %+v", r)
	}
	both("pod -> ClusterIP", clientNS, "http://"+svc.Spec.ClusterIP+"/")
	for _, n := range st.Nodes {
		both("vnet -> NodePort on "+n.Name, st.Vnet, fmt.Sprintf("http://%s:%d/", n.IP, svc.Spec.Ports[0].NodePort))
	}

	// Nothing of Cilium on the host.
	if n := hostCgroupPrograms(t); n != hostProgs {
		t.Errorf("the host's cgroup root has %d socket programs, %d before the lab", n, hostProgs)
	}
	after, _ := os.ReadDir(datapath.DefaultConfig().BPFFS)
	if len(after) != len(hostPins) {
		t.Errorf("the host's bpffs holds %d entries, %d before the lab", len(after), len(hostPins))
	}
	if _, err := os.Stat("/run/cilium"); err == nil && runCilium != nil {
		t.Error("/run/cilium created on the host")
	}

	l.down()
	if out, _ := exec.Command("ip", "netns", "list").Output(); strings.Contains(string(out), st.NetnsPrefix) {
		t.Errorf("namespaces left after down:\n%s", out)
	}
	if mounts, _ := os.ReadFile("/proc/self/mountinfo"); strings.Contains(string(mounts), l.dir) {
		t.Errorf("mounts left under %s after down", l.dir)
	}
	for _, n := range st.Nodes {
		if _, err := os.Stat(filepath.Dir(n.Cgroup)); err == nil {
			t.Errorf("cgroup %s left after down", filepath.Dir(n.Cgroup))
		}
	}
	if _, err := os.Stat(l.dir); err == nil {
		t.Error("state directory left after down")
	}
}
