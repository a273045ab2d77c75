package test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	klab "github.com/kpath/kpath/internal/lab"
	"github.com/kpath/kpath/internal/testenv"
	"github.com/kpath/kpath/internal/testutil"
	"github.com/kpath/kpath/internal/workload"
)

// podNetnsPrefix starts the names of the namespaces the runtime makes for
// pods: the test's own, apart from any lab's.
const podNetnsPrefix = "kpt-rt-"

// TestNodeRuntime runs the lab's node runtime against a real control plane
// (with kube-controller-manager: node pod CIDRs and EndpointSlices) and a
// real agent process: pods bound to the node get namespaces through the
// CNI plugin, report IP and readiness, become endpoints of a Service, are
// reachable through its ClusterIP by the socket hook, and are cleaned up
// when deleted.
func TestNodeRuntime(t *testing.T) {
	testutil.RequireRoot(t)
	testutil.RequireTool(t, "ip", "nsenter")
	env := testenv.StartForTest(t, testenv.Options{ClusterCIDR: "10.244.0.0/16"})
	c := env.Client
	ctx := context.Background()
	setupCluster(t, c)
	waitFor(t, 30*time.Second, "node pod CIDR from kube-controller-manager", func() bool {
		n, err := c.CoreV1().Nodes().Get(ctx, agentNode, metav1.GetOptions{})
		return err == nil && n.Spec.PodCIDR != ""
	})

	bin := buildBinaries(t)
	node := testutil.NewNetns(t, "kpt-"+testutil.UniqueID()+"-node")
	testutil.Run(t, "ip", "netns", "exec", node, "sysctl", "-qw", "net.ipv4.ip_forward=1")
	testutil.ForwardIntoNetns(t, node, strings.TrimPrefix(env.APIServerURL, "https://"))
	cg := testCgroup(t)
	socket, _ := startAgentProcess(t, env, bin, node, "--socket-hook=true", "--cgroup-root="+cg.Name())

	netconf, err := libcni.ConfListFromBytes([]byte(fmt.Sprintf(`{"cniVersion":"1.1.0","name":"kpath","plugins":[{"type":"kpath","agentSocket":%q}]}`, socket)))
	if err != nil {
		t.Fatal(err)
	}
	rt := &klab.Runtime{
		Client: c, Node: agentNode, NodeNetns: node, NetnsPrefix: podNetnsPrefix,
		CNI: libcni.NewCNIConfigWithCacheDir([]string{bin}, t.TempDir(), nil), NetConf: netconf,
		Cgroup: cg, KpathBin: filepath.Join(bin, "cli", "kpath"),
		Log: slog.New(slog.NewTextHandler(io.Discard, nil)),
	}
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- rt.Run(rctx) }()
	t.Cleanup(func() {
		// Deleting the pods first lets the runtime clean their namespaces.
		_ = c.CoreV1().Pods(testNS).DeleteCollection(ctx, metav1.DeleteOptions{}, metav1.ListOptions{})
		waitFor(t, 30*time.Second, "pods cleaned up", func() bool {
			l, _ := c.CoreV1().Pods(testNS).List(ctx, metav1.ListOptions{})
			return l != nil && len(l.Items) == 0
		})
		cancel()
		<-done
	})

	svc, err := c.CoreV1().Services(testNS).Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "echo", Namespace: testNS},
		Spec: corev1.ServiceSpec{Selector: map[string]string{"app": "echo"},
			Ports: []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromInt32(8080)}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	pod := func(name, image string, labels map[string]string) {
		_, err := c.CoreV1().Pods(testNS).Create(ctx, &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: testNS, Labels: labels},
			Spec: corev1.PodSpec{NodeName: agentNode, Containers: []corev1.Container{{Name: "main", Image: image,
				Ports: []corev1.ContainerPort{{ContainerPort: 8080}}}}},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
	}
	pod("echo-a", "kpath/echo", map[string]string{"app": "echo"})
	pod("echo-b", "kpath/echo", map[string]string{"app": "echo"})
	pod("client", "kpath/client", nil)

	waitFor(t, 30*time.Second, "two ready endpoints", func() bool {
		sl, err := c.DiscoveryV1().EndpointSlices(testNS).List(ctx, metav1.ListOptions{LabelSelector: discoveryv1.LabelServiceName + "=echo"})
		if err != nil {
			return false
		}
		n := 0
		for _, s := range sl.Items {
			for _, e := range s.Endpoints {
				if e.Conditions.Ready != nil && *e.Conditions.Ready {
					n++
				}
			}
		}
		return n == 2
	})
	var client *corev1.Pod
	waitFor(t, 30*time.Second, "client pod running", func() bool {
		client, err = c.CoreV1().Pods(testNS).Get(ctx, "client", metav1.GetOptions{})
		return err == nil && client.Status.PodIP != ""
	})

	probe := func(n int) workload.ProbeResult {
		t.Helper()
		var r workload.ProbeResult
		deadline := time.Now().Add(15 * time.Second)
		for {
			cmd := exec.Command("ip", "netns", "exec", klab.PodNetns(podNetnsPrefix, agentNode, client.UID), rt.KpathBin,
				"workload", "probe", "http://"+svc.Spec.ClusterIP+"/", "-n", fmt.Sprint(n), "--timeout", "2s", "-o", "json")
			cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: int(cg.Fd())}
			out, _ := cmd.Output()
			_ = json.Unmarshal(out, &r)
			if r.Failures == 0 && r.Requests == n || time.Now().After(deadline) {
				return r
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
	r := probe(40)
	t.Logf("40 requests from the client pod to %s: %v", svc.Spec.ClusterIP, r.Backends)
	if r.Backends["echo-a"] == 0 || r.Backends["echo-b"] == 0 || r.Failures != 0 {
		t.Fatalf("probe %+v", r)
	}

	// Deleting a pod frees its address and namespace.
	a, _ := c.CoreV1().Pods(testNS).Get(ctx, "echo-a", metav1.GetOptions{})
	if err := c.CoreV1().Pods(testNS).Delete(ctx, "echo-a", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, "echo-a gone", func() bool {
		_, err := c.CoreV1().Pods(testNS).Get(ctx, "echo-a", metav1.GetOptions{})
		return err != nil
	})
	if _, err := os.Stat("/run/netns/" + klab.PodNetns(podNetnsPrefix, agentNode, a.UID)); err == nil {
		t.Error("deleted pod's namespace still exists")
	}
	waitFor(t, 15*time.Second, "only echo-b answering", func() bool {
		r := probe(10)
		return r.Backends["echo-b"] == 10
	})
}
