package test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/kpath/kpath/internal/image"
	"github.com/kpath/kpath/internal/ipam"
	klab "github.com/kpath/kpath/internal/lab"
	"github.com/kpath/kpath/internal/nsutil"
	"github.com/kpath/kpath/internal/procstat"
	"github.com/kpath/kpath/internal/workload"
)

// upgradeTag is the tag of the image helm upgrade rolls out.
const upgradeTag = image.Tag + "-upgrade"

// helmLifecycle is what a platform engineer does to an installed kpath,
// with traffic flowing (the connection-disruption check of Cilium's
// upgrade CI): a client holds long-lived connections (pod to pod on its
// node and across, through a ClusterIP, through a NodePort) and streams
// requests through the ClusterIP while helm upgrade rolls a new image over
// the nodes: nothing may be cut or fail. Then a node's kubelet and
// containerd are killed and come back, with a pod deleted meanwhile: the
// node's pods run, a new one starts, and IPAM holds exactly the node's
// pods. Last, helm uninstall and the documented cleanup leave no kpath
// program, pinned map, route, masquerade table, CNI file or binary on any
// node. svc is the echo Service.
func helmLifecycle(t *testing.T, l *testLab, images string, svc *corev1.Service) {
	ctx := context.Background()
	c := l.c
	// The echo pods admitted only role=allowed: the policy goes.
	if err := c.NetworkingV1().NetworkPolicies("default").DeleteCollection(ctx, metav1.DeleteOptions{}, metav1.ListOptions{}); err != nil {
		t.Fatal(err)
	}
	node1, node2 := l.st.Nodes[0], l.st.Nodes[1]
	echoOn := map[string]string{} // node -> echo pod address
	pods, err := c.CoreV1().Pods("default").List(ctx, metav1.ListOptions{LabelSelector: "app=echo"})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range pods.Items {
		echoOn[p.Spec.NodeName] = p.Status.PodIP
	}
	nodePort := svc.Spec.Ports[0].NodePort
	args := []string{"/usr/bin/kpath", "workload", "disruption", "--conns", "2", "--interval", "100ms", "--status", ":9090",
		"--hold", echoOn[node1.Name] + ":8080", "--hold", echoOn[node2.Name] + ":8080",
		"--hold", svc.Spec.ClusterIP + ":80", "--hold", fmt.Sprintf("%s:%d", node2.IP, nodePort),
		"--stream", "http://" + svc.Spec.ClusterIP + "/"}
	client, err := c.CoreV1().Pods("default").Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "disruption"},
		Spec: corev1.PodSpec{NodeSelector: map[string]string{"kubernetes.io/hostname": node1.Name}, Containers: []corev1.Container{{
			Name: "client", Image: "kpath/client:" + image.Tag, ImagePullPolicy: corev1.PullNever, Command: args}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, time.Minute, "the disruption client running", func() bool {
		client, err = c.CoreV1().Pods("default").Get(ctx, "disruption", metav1.GetOptions{})
		return err == nil && client.Status.PodIP != "" && client.Status.Phase == corev1.PodRunning
	})
	// Its counts, read from the vnet, which routes the pod CIDRs.
	hc := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{DialContext: nsutil.Dialer(l.st.Vnet)}}
	status := func() (workload.DisruptionStatus, error) {
		var s workload.DisruptionStatus
		resp, err := hc.Get("http://" + client.Status.PodIP + ":9090/")
		if err != nil {
			return s, err
		}
		defer resp.Body.Close()
		return s, json.NewDecoder(resp.Body).Decode(&s)
	}
	const held = 8 // 4 targets x 2 connections
	var s workload.DisruptionStatus
	waitFor(t, time.Minute, "8 connections established and requests streaming", func() bool {
		s, err = status()
		return err == nil && s.Established == held && s.Streams[0].Requests > 10
	})
	checkUndisrupted := func(when string) workload.DisruptionStatus {
		t.Helper()
		s, err := status()
		if err != nil {
			t.Fatalf("%s: disruption status: %v", when, err)
		}
		if s.Established != held || s.Cut != 0 || s.Streams[0].Failures != 0 {
			data, _ := json.MarshalIndent(s, "", "  ")
			t.Errorf("%s: %d connections cut, %d of %d streamed requests failed (want 0):\n%s", when, s.Cut, s.Streams[0].Failures, s.Streams[0].Requests, data)
		}
		return s
	}

	// helm upgrade to a new image, rolled node by node.
	tar := upgradeImage(t, images)
	if err := klab.ImportImage(l.st, tar); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if out, err := klab.Helm(l.st, "upgrade", klab.HelmRelease, l.st.Chart, "--reuse-values", "--set", "image.tag="+upgradeTag,
		"--wait=watcher", "--timeout", "4m"); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	rollout := time.Since(start)
	agents, err := c.CoreV1().Pods(klab.HelmNamespace).List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/name=kpath-agent"})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range agents.Items {
		if p.Spec.Containers[0].Image != "kpath/kpath:"+upgradeTag || p.Status.Phase != corev1.PodRunning {
			t.Errorf("after the upgrade, agent %s on %s: %s, %s", p.Name, p.Spec.NodeName, p.Spec.Containers[0].Image, p.Status.Phase)
		}
	}
	time.Sleep(2 * time.Second) // requests through the new agents
	s = checkUndisrupted("helm upgrade")
	t.Logf("helm upgrade rolled 2 nodes in %s; %d requests streamed, %d on held connections, none failed",
		rollout.Round(100*time.Millisecond), s.Streams[0].Requests, sumRequests(s))

	// node-2's kubelet and containerd killed; a pod of node-2 deleted
	// while they are down.
	victim := runIdlePod(t, c, "victim", node2.Name)
	nodeDir := filepath.Join(l.dir, node2.Name, "real")
	for _, what := range []string{"kubelet.yaml", "containerd.toml"} {
		cfg := filepath.Join(nodeDir, what)
		pids := procstat.Find(func(argv []string) bool {
			return slices.ContainsFunc(argv, func(a string) bool { return strings.HasSuffix(a, cfg) })
		})
		if len(pids) == 0 {
			t.Fatalf("no process runs with %s", cfg)
		}
		for _, pid := range pids {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
	if err := c.CoreV1().Pods("default").Delete(ctx, "victim", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 2*time.Minute, "the deleted pod gone once node-2's kubelet is back", func() bool {
		_, err := c.CoreV1().Pods("default").Get(ctx, "victim", metav1.GetOptions{})
		return err != nil
	})
	runIdlePod(t, c, "after-restart", node2.Name)
	checkUndisrupted("kubelet and containerd restart")
	// IPAM holds exactly node-2's pods: the victim's address is freed
	// once the restarted kubelet has torn down the pod it no longer has
	// (its housekeeping, a few seconds).
	var want, have []string
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(time.Second) {
		want, have = nodePodAddresses(t, c, node2.Name), ipamAddresses(t, node2.PodCIDR, filepath.Join(nodeDir, "root", "var", "lib", "kpath", "ipam"))
		if slices.Equal(want, have) || time.Now().After(deadline) {
			break
		}
	}
	if !slices.Equal(want, have) || slices.Contains(have, victim.Status.PodIP) {
		t.Errorf("node-2's IPAM holds %v; its pods have %v (the deleted pod had %s)", have, want, victim.Status.PodIP)
	}

	// Uninstall: workloads first, then kpath, then the cleanup release.
	if err := c.CoreV1().Pods("default").DeleteCollection(ctx, metav1.DeleteOptions{GracePeriodSeconds: new(int64)}, metav1.ListOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 2*time.Minute, "every workload pod gone", func() bool {
		p, err := c.CoreV1().Pods("default").List(ctx, metav1.ListOptions{})
		return err == nil && len(p.Items) == 0
	})
	if out, err := klab.Helm(l.st, "uninstall", klab.HelmRelease, "--wait", "--timeout", "2m"); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	values := filepath.Join(l.st.Dir, "helm", "values.yaml")
	if out, err := klab.Helm(l.st, "install", "kpath-cleanup", l.st.Chart, "--values", values, "--set", "cleanup.enabled=true",
		"--wait=watcher", "--timeout", "2m"); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if out, err := klab.Helm(l.st, "uninstall", "kpath-cleanup", "--wait", "--timeout", "2m"); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	checkNodesClean(t, l)
}

// nodePodAddresses are the addresses of a node's pods in every namespace
// (relay's too), sorted; host-network pods (the agents) have none of
// kpath's.
func nodePodAddresses(t *testing.T, c kubernetes.Interface, node string) []string {
	t.Helper()
	pods, err := c.CoreV1().Pods("").List(context.Background(), metav1.ListOptions{FieldSelector: "spec.nodeName=" + node})
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, p := range pods.Items {
		if p.Status.PodIP != "" && !p.Spec.HostNetwork {
			out = append(out, p.Status.PodIP)
		}
	}
	slices.Sort(out)
	return out
}

// ipamAddresses are the addresses a node's IPAM state holds, sorted.
func ipamAddresses(t *testing.T, podCIDR, dir string) []string {
	t.Helper()
	al, err := ipam.NewOverlay(netip.MustParsePrefix(podCIDR), dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, a := range al.Allocations() {
		out = append(out, a.Addr.String())
	}
	slices.Sort(out)
	return out
}

// checkNodesClean: nothing of kpath on any node of an uninstalled lab.
func checkNodesClean(t *testing.T, l *testLab) {
	t.Helper()
	for _, n := range l.st.Nodes {
		root := filepath.Join(l.dir, n.Name, "real", "root")
		for _, f := range []string{"etc/cni/net.d/05-kpath.conflist", "opt/cni/bin/kpath", "var/lib/kpath/ipam", "run/kpath/agent.sock"} {
			if _, err := os.Stat(filepath.Join(root, f)); err == nil {
				t.Errorf("%s: /%s left", n.Name, f)
			}
		}
		inNode := func(args ...string) (string, error) {
			out, err := exec.Command("nsenter", append([]string{"--net=/run/netns/" + n.Netns, "--mount=" + filepath.Join(l.dir, n.Name, "real", "ns", "mnt"), "--"}, args...)...).CombinedOutput()
			return strings.TrimSpace(string(out)), err
		}
		if out, _ := inNode("ls", "/sys/fs/bpf"); slices.Contains(strings.Fields(out), "kpath") {
			t.Errorf("%s: pins left in its bpffs: %s", n.Name, out)
		}
		if _, err := inNode("mountpoint", "-q", "/run/kpath/cgroupv2"); err == nil {
			t.Errorf("%s: the cgroup2 mount for the socket hooks left", n.Name)
		}
		if out, _ := inNode("ip", "route", "show", "proto", "0xb7"); out != "" {
			t.Errorf("%s: kpath's routes left:\n%s", n.Name, out)
		}
		if out, err := inNode("nft", "list", "table", "ip", "kpath_masq"); err == nil {
			t.Errorf("%s: masquerade table left:\n%s", n.Name, out)
		}
		if got := kpathCgroupHooks(t, n.Cgroup); got != 0 {
			t.Errorf("%s: %d socket hooks left on its cgroup", n.Name, got)
		}
	}
	// No program of kpath's is loaded anywhere: whatever held one (a pin,
	// a link, a filter) is gone. (Freed a moment after the last reference.)
	var left []string
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		if left = loadedKpathPrograms(); len(left) == 0 {
			return
		}
	}
	t.Errorf("kpath programs still loaded after uninstall and cleanup: %v", left)
}

// loadedKpathPrograms lists the loaded BPF programs named like kpath's.
func loadedKpathPrograms() []string {
	var out []string
	for id := ebpf.ProgramID(0); ; {
		next, err := ebpf.ProgramGetNextID(id)
		if err != nil {
			return out
		}
		id = next
		p, err := ebpf.NewProgramFromID(id)
		if err != nil {
			continue
		}
		if info, err := p.Info(); err == nil && strings.HasPrefix(info.Name, "kp_") {
			out = append(out, fmt.Sprintf("%s (id %d)", info.Name, id))
		}
		p.Close()
	}
}

func sumRequests(s workload.DisruptionStatus) int {
	n := 0
	for _, h := range s.Held {
		n += h.Requests
	}
	return n
}

// runIdlePod runs an idle pod on node and waits until it runs.
func runIdlePod(t *testing.T, c kubernetes.Interface, name, node string) *corev1.Pod {
	t.Helper()
	ctx := context.Background()
	_, err := c.CoreV1().Pods("default").Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: corev1.PodSpec{NodeSelector: map[string]string{"kubernetes.io/hostname": node}, TerminationGracePeriodSeconds: new(int64),
			Containers: []corev1.Container{{Name: "idle", Image: "kpath/client:" + image.Tag, ImagePullPolicy: corev1.PullNever,
				Command: []string{"/usr/bin/kpath", "workload", "idle"}}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var p *corev1.Pod
	waitFor(t, 2*time.Minute, name+" running on "+node, func() bool {
		p, err = c.CoreV1().Pods("default").Get(ctx, name, metav1.GetOptions{})
		return err == nil && p.Status.Phase == corev1.PodRunning && p.Status.PodIP != ""
	})
	return p
}

// upgradeImage builds the kpath image again under upgradeTag from the
// static binaries buildImages built, as a release's new image.
func upgradeImage(t *testing.T, images string) string {
	t.Helper()
	specs, err := image.Project(filepath.Join(filepath.Dir(images), "static"), upgradeTag)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range specs {
		if !strings.HasPrefix(s.Ref, "kpath/kpath:") {
			continue
		}
		img, err := image.Build(s)
		if err != nil {
			t.Fatal(err)
		}
		tar := filepath.Join(t.TempDir(), "kpath-upgrade.tar")
		if err := image.WriteLayout(tar, s.Ref, img); err != nil {
			t.Fatal(err)
		}
		return tar
	}
	t.Fatal("no kpath/kpath image in the project's images")
	return ""
}
