package test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"

	"github.com/kpath/kpath/internal/cniapi"
	"github.com/kpath/kpath/internal/cniplugin"
	"github.com/kpath/kpath/internal/datapath"
	klab "github.com/kpath/kpath/internal/lab"
	"github.com/kpath/kpath/internal/testenv"
	"github.com/kpath/kpath/internal/testutil"
	"github.com/kpath/kpath/internal/workload"
)

// buildLabBinaries builds kpath, kpath-agent and kpath-cni side by side, as
// the lab expects them.
func buildLabBinaries(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	for _, c := range []string{"kpath", "kpath-agent", "kpath-cni"} {
		if b, err := exec.Command("go", "build", "-o", filepath.Join(dir, c), "../cmd/"+c).CombinedOutput(); err != nil {
			t.Fatalf("build %s: %v\n%s", c, err, b)
		}
	}
	// containerd calls it for every pod (real nodes).
	if b, err := exec.Command("go", "build", "-o", filepath.Join(dir, "loopback"), "github.com/containernetworking/plugins/plugins/main/loopback").CombinedOutput(); err != nil {
		t.Fatalf("build loopback: %v\n%s", err, b)
	}
	return dir
}

// labPrerequisites skips (or, in CI, fails) without root, the lab's tools
// and the pinned control plane, and builds the lab's binaries.
func labPrerequisites(t *testing.T) (string, string) {
	t.Helper()
	testutil.RequireRoot(t)
	testutil.RequireTool(t, "ip", "nsenter", "nft")
	k8sBin, err := testenv.BinDir()
	if err != nil {
		testutil.SkipOrFail(t, err.Error())
	}
	if _, err := os.Stat(filepath.Join(k8sBin, "kube-controller-manager")); err != nil {
		testutil.SkipOrFail(t, "kube-controller-manager not built: run make k8s-bins")
	}
	return buildLabBinaries(t), k8sBin
}

// TestLab runs the lab end to end in each routing mode: two nodes, pods on
// both, pod-to-pod across nodes, pod -> ClusterIP -> remote backend, a
// NodePort from the vnet, pod traffic to outside the cluster masqueraded,
// a deleted pod's address and programs released, and down leaving nothing.
func TestLab(t *testing.T) {
	bin, k8sBin := labPrerequisites(t)
	for _, mode := range []string{"native", "direct", "vxlan"} {
		t.Run(mode, func(t *testing.T) { labScenario(t, bin, k8sBin, mode, "kpath") })
	}
	// kpath's pod networking with the real kube-proxy handling services,
	// as the latency benchmark (E1) compares them.
	for _, services := range []string{"kube-proxy-iptables", "kube-proxy-nftables"} {
		t.Run(services, func(t *testing.T) {
			testutil.RequireTool(t, "iptables", "nft")
			labScenario(t, bin, k8sBin, "native", services)
		})
	}
}

func labScenario(t *testing.T, bin, k8sBin, mode, services string) {
	// A named lab, as kpath bench runs them side by side.
	l := upLab(t, bin, k8sBin, "test", mode, services, 2)
	st, c, dir, down := l.st, l.c, l.dir, l.down
	bg := context.Background()
	svc, pods := echoPods(t, c)
	node2 := st.Nodes[1]
	cg, err := os.Open(node2.Cgroup)
	if err != nil {
		t.Fatal(err)
	}
	defer cg.Close()
	clientNS := podNetns(t, st, "node-2", pods["client"].UID)
	probe := func(netns string, cgroup *os.File, url string, n int) workload.ProbeResult {
		t.Helper()
		return labProbe(t, bin, netns, cgroup, url, n)
	}
	both := func(what string, r workload.ProbeResult) {
		t.Helper()
		t.Logf("%s/%s %s: %v in %s", mode, services, what, r.Backends, r.Total)
		if r.Failures != 0 || r.Backends["echo-1"] == 0 || r.Backends["echo-2"] == 0 {
			t.Errorf("%s: %+v", what, r)
		}
	}
	// Pod to pod across nodes, then through the ClusterIP (socket hook)
	// and per packet (no cgroup: the tc path), then a NodePort from outside.
	if r := probe(clientNS, cg, fmt.Sprintf("http://%s:8080/", pods["echo-1"].Status.PodIP), 5); r.Backends["echo-1"] != 5 {
		t.Errorf("pod on node-2 -> pod on node-1: %+v", r)
	}
	both("pod -> ClusterIP (socket hook)", probe(clientNS, cg, "http://"+svc.Spec.ClusterIP+"/", 40))
	if services != "kpath" {
		// kube-proxy translated everything: kpath's datapath saw no service.
		out, _ := exec.Command("nsenter", "--net=/run/netns/"+node2.Netns, filepath.Join(bin, "kpath"), "dp",
			"--pin-dir", node2.PinDir, "counters", "-o", "json").Output()
		if strings.Contains(string(out), "service translated") {
			t.Errorf("%s: kpath translated services with kube-proxy replacement off: %s", services, out)
		}
	}
	both("pod -> ClusterIP (tc)", probe(clientNS, nil, "http://"+svc.Spec.ClusterIP+"/", 40))
	np := svc.Spec.Ports[0].NodePort
	for _, n := range st.Nodes {
		both("vnet -> NodePort on "+n.Name, probe(st.Vnet, nil, fmt.Sprintf("http://%s:%d/", n.IP, np), 40))
	}

	// Pod traffic leaving the cluster is masqueraded to the node address.
	startHelper(t, st.Vnet, "backend", "outside", nil)
	client := startHelper(t, clientNS, "client", "client", nil)
	if a := strings.Fields(client.do(t, fmt.Sprintf("peer 192.168.200.1:%d", peerPort)).Answer); len(a) != 2 || a[1] != node2.IP {
		t.Errorf("pod -> outside: the server saw %q, want the node address %s", a, node2.IP)
	}

	// Deleting a pod frees its address and detaches its programs.
	e2 := pods["echo-2"]
	if err := c.CoreV1().Pods("default").Delete(bg, "echo-2", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, "echo-2 removed", func() bool {
		_, err := c.CoreV1().Pods("default").Get(bg, "echo-2", metav1.GetOptions{})
		return err != nil
	})
	var chk cniapi.CheckResponse
	if err := cniapi.NewClient(st.Nodes[0].AgentSocket).Do("POST", "/v1/cni/check", cniapi.CheckRequest{ContainerID: string(e2.UID), IfName: "eth0"}, &chk); err != nil {
		t.Fatal(err)
	}
	if chk.Addr.IsValid() {
		t.Errorf("deleted pod's address %s still allocated", chk.Addr)
	}
	hostIf := cniplugin.HostIfName(string(e2.UID), "eth0")
	if m, _ := filepath.Glob(filepath.Join(datapath.DefaultConfig().BPFFS, st.Nodes[0].PinDir, "links", "tcx_"+hostIf+"_*")); len(m) != 0 {
		t.Errorf("deleted pod's programs still attached: %v", m)
	}

	if mode == "native" && services == "kpath" {
		kubeProxyLeftovers(t, st, c)
	}

	// down leaves nothing behind.
	down()
	out, _ := exec.Command("ip", "netns", "list").Output()
	if strings.Contains(string(out), st.NetnsPrefix) {
		t.Errorf("namespaces left after down:\n%s", out)
	}
	for _, n := range st.Nodes {
		if _, err := os.Stat(filepath.Join(datapath.DefaultConfig().BPFFS, n.PinDir)); err == nil {
			t.Errorf("pinned datapath %s left after down", n.PinDir)
		}
		if _, err := os.Stat(filepath.Dir(n.Cgroup)); err == nil {
			t.Errorf("cgroup %s left after down", filepath.Dir(n.Cgroup))
		}
	}
	if _, err := os.Stat(dir); err == nil {
		t.Error("state directory left after down")
	}
}

// TestLabDownAfterFailedUp: an up that fails half way (here: no Kubernetes
// binaries, after the vnet exists) leaves nothing once down has run, and
// down of one lab leaves a lab of another name alone.
func TestLabDownAfterFailedUp(t *testing.T) {
	testutil.RequireRoot(t)
	testutil.RequireTool(t, "ip", "nsenter")
	failedUp := func(name string) (string, *klab.State) {
		dir := filepath.Join(t.TempDir(), "lab")
		_ = klab.Down(dir, name, t.Logf)
		t.Cleanup(func() { _ = klab.Down(dir, name, t.Logf) })
		err := klab.Supervise(context.Background(), klab.Options{Name: name, Dir: dir, Nodes: 2, Routing: "native",
			BinDir: t.TempDir(), K8sBin: t.TempDir(), Log: t.Logf})
		if err == nil || !strings.Contains(err.Error(), "kube-apiserver not found") {
			t.Fatalf("supervise without binaries: %v", err)
		}
		st, err := klab.LoadState(dir)
		if err != nil || st.Error == "" {
			t.Fatalf("state after failure: %+v %v, want the error recorded", st, err)
		}
		if _, err := os.Stat("/run/netns/" + st.Vnet); err != nil {
			t.Fatalf("the failed up should have got as far as the vnet: %v", err)
		}
		return dir, st
	}
	// Named labs only: the unnamed one may be a user's running lab.
	dir, st := failedUp("test-one")
	_, other := failedUp("test-other")
	if err := klab.Down(dir, "test-one", t.Logf); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat("/run/netns/" + st.Vnet); err == nil {
		t.Errorf("namespace %s left", st.Vnet)
	}
	if _, err := os.Stat("/run/netns/" + other.Vnet); err != nil {
		t.Errorf("down of one lab removed the other lab's %s", other.Vnet)
	}
	if _, err := os.Stat(dir); err == nil {
		t.Error("state directory left")
	}
}

// echoPods creates the lab scenarios' NodePort Service "echo" and its pods:
// echo-1 and echo-2 on node-1, a client on node-2, and waits until they run.
func echoPods(t *testing.T, c kubernetes.Interface) (*corev1.Service, map[string]*corev1.Pod) {
	t.Helper()
	bg := context.Background()
	svc, err := c.CoreV1().Services("default").Create(bg, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "echo"},
		Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeNodePort, Selector: map[string]string{"app": "echo"},
			Ports: []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromInt32(8080)}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []struct {
		name, node, image string
		labels            map[string]string
	}{
		{"echo-1", "node-1", "kpath/echo", map[string]string{"app": "echo"}},
		{"echo-2", "node-1", "kpath/echo", map[string]string{"app": "echo"}},
		{"client", "node-2", "kpath/client", nil},
	} {
		if _, err := c.CoreV1().Pods("default").Create(bg, &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: p.name, Labels: p.labels},
			Spec: corev1.PodSpec{NodeName: p.node, Containers: []corev1.Container{{Name: "main", Image: p.image,
				Ports: []corev1.ContainerPort{{ContainerPort: 8080}}}}},
		}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	pods := map[string]*corev1.Pod{}
	waitFor(t, 2*time.Minute, "pods running", func() bool {
		l, err := c.CoreV1().Pods("default").List(bg, metav1.ListOptions{})
		if err != nil {
			return false
		}
		for i := range l.Items {
			if l.Items[i].Status.PodIP != "" {
				pods[l.Items[i].Name] = &l.Items[i]
			}
		}
		return len(pods) == 3
	})
	// Both echo pods ready in the service's slice: the dataplanes follow
	// the slice, and a machine under load can write it well after the
	// pods run.
	waitFor(t, 2*time.Minute, "both echo pods in the service's EndpointSlice", func() bool {
		l, err := c.DiscoveryV1().EndpointSlices("default").List(bg, metav1.ListOptions{LabelSelector: "kubernetes.io/service-name=echo"})
		if err != nil {
			return false
		}
		ready := 0
		for _, s := range l.Items {
			for _, e := range s.Endpoints {
				if e.Conditions.Ready == nil || *e.Conditions.Ready {
					ready++
				}
			}
		}
		return ready == 2
	})
	return svc, pods
}

// labProbe runs kpath workload probe in a lab namespace (and, with cgroup
// set, in that cgroup, as a pod's processes are) until all n requests are
// answered or 20 s have passed.
func labProbe(t *testing.T, bin, netns string, cgroup *os.File, url string, n int) workload.ProbeResult {
	t.Helper()
	var r workload.ProbeResult
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(250 * time.Millisecond) {
		cmd := exec.Command("ip", "netns", "exec", netns, filepath.Join(bin, "kpath"), "workload", "probe", url,
			"-n", fmt.Sprint(n), "--timeout", "2s", "-o", "json")
		if cgroup != nil {
			cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: int(cgroup.Fd())}
		}
		out, _ := cmd.Output()
		r = workload.ProbeResult{}
		_ = json.Unmarshal(out, &r)
		if (r.Requests == n && r.Failures == 0) || time.Now().After(deadline) {
			return r
		}
	}
}
