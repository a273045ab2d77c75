package test

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"

	"github.com/kpath/kpath/internal/datapath"
	"github.com/kpath/kpath/internal/image"
	klab "github.com/kpath/kpath/internal/lab"
	"github.com/kpath/kpath/internal/testenv"
	"github.com/kpath/kpath/internal/testutil"
)

// realNodePrerequisites skips (or, required, fails) a test of real nodes
// on a machine without containerd and runc, or without the kubelet.
func realNodePrerequisites(t *testing.T, k8sBin string) {
	t.Helper()
	testutil.RequireTool(t, "containerd", "ctr", "runc")
	if _, err := os.Stat(filepath.Join(k8sBin, "kubelet")); err != nil {
		testutil.SkipOrFail(t, "kubelet not built: run make k8s-bins")
	}
}

// helmPrerequisite is the pinned helm CLI, for a test that installs the
// chart; it skips (or, required, fails) the test without it.
func helmPrerequisite(t *testing.T) string {
	t.Helper()
	dir, err := testenv.HelmBinDir()
	if err != nil {
		t.Fatal(err)
	}
	helm := filepath.Join(dir, "helm")
	if _, err := os.Stat(helm); err != nil {
		testutil.SkipOrFail(t, "helm not built: run make helm-bins")
	}
	return helm
}

// buildImages builds the project's images as make image does (static
// binaries, then kpath image build's code, hubble-relay's too) into a
// directory of the test's.
func buildImages(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	static := filepath.Join(dir, "static")
	for _, b := range image.Binaries {
		cmd := exec.Command("go", "build", "-trimpath", "-buildvcs=false", "-ldflags", "-s -w -buildid=", "-o", filepath.Join(static, b), "../cmd/"+b)
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("build %s: %v\n%s", b, err, out)
		}
	}
	specs, err := image.Project(static, image.Tag)
	if err != nil {
		t.Fatal(err)
	}
	// Relay's image, from make cilium-bins' hubble-relay, as make image
	// builds it when there is one.
	relay, err := image.HubbleRelay(ciliumBin(t, "hubble-relay"), testenv.PinnedCilium)
	if err != nil {
		t.Fatal(err)
	}
	specs = append(specs, relay)
	images := filepath.Join(dir, "images")
	if err := os.MkdirAll(images, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, s := range specs {
		img, err := image.Build(s)
		if err != nil {
			t.Fatal(err)
		}
		repo, _, _ := strings.Cut(s.Ref, ":")
		if err := image.WriteLayout(filepath.Join(images, filepath.Base(repo)+".tar"), s.Ref, img); err != nil {
			t.Fatal(err)
		}
	}
	return images
}

// machineState is what a real-node lab must leave as it found it: the
// kernel settings a kubelet tunes, the machine's paths it would use, the
// processes it would leave, and the mounts.
func machineState(t *testing.T) map[string]string {
	t.Helper()
	st := map[string]string{}
	for _, k := range []string{"vm/overcommit_memory", "vm/panic_on_oom", "kernel/panic", "kernel/panic_on_oops", "kernel/keys/root_maxkeys"} {
		b, _ := os.ReadFile("/proc/sys/" + k)
		st["sysctl "+k] = strings.TrimSpace(string(b))
	}
	st["hostname"], _ = os.Hostname()
	for _, d := range []string{"/opt/cni", "/etc/cni", "/var/lib/kubelet", "/var/lib/containerd", "/var/log/pods", "/var/log/containers", "/run/containerd"} {
		_, err := os.Stat(d)
		st["path "+d] = fmt.Sprint(err == nil)
	}
	// Live processes by name (comm is cut at 15 characters).
	procs := map[string]int{}
	stats, _ := filepath.Glob("/proc/[0-9]*/stat")
	for _, f := range stats {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		open, end := strings.IndexByte(string(b), '('), strings.LastIndexByte(string(b), ')')
		if open < 0 || end < open || len(b) < end+3 || b[end+2] == 'Z' {
			continue
		}
		procs[string(b[open+1:end])]++
	}
	for _, p := range []string{"containerd", "kubelet", "containerd-shim", "pause", "kpath-agent"} {
		st["process "+p] = fmt.Sprint(procs[p])
	}
	mounts, _ := os.ReadFile("/proc/self/mountinfo")
	var points []string
	for line := range strings.SplitSeq(string(mounts), "\n") {
		if f := strings.Fields(line); len(f) > 4 {
			points = append(points, f[4])
		}
	}
	slices.Sort(points)
	st["mounts"] = strings.Join(points, " ")
	return st
}

// TestLabRealNodes: the lab's nodes as real nodes (--runtime containerd):
// a real containerd and kubelet on each, registered with the node's own
// credentials, pods placed by the real kube-scheduler and wired by
// kpath-cni as containerd calls it, running the project's images imported
// without a registry; pod to pod across nodes, through a ClusterIP and a
// NodePort work, NetworkPolicy holds and drops are flows; lab down leaves
// the machine as it found it. Twice: with the agents run by the lab, and
// with kpath installed as a user installs it (helm install of the chart:
// the agent a DaemonSet pod, the nodes Ready only once it is).
func TestLabRealNodes(t *testing.T) {
	bin, k8sBin := labPrerequisites(t)
	realNodePrerequisites(t, k8sBin)
	helmBin := helmPrerequisite(t)
	images := buildImages(t)
	t.Run("lab-agents", func(t *testing.T) { realNodesScenario(t, bin, k8sBin, images, klab.InstallLab, "") })
	t.Run("helm", func(t *testing.T) { realNodesScenario(t, bin, k8sBin, images, klab.InstallHelm, helmBin) })
}

func realNodesScenario(t *testing.T, bin, k8sBin, images, install, helmBin string) {
	before := machineState(t)
	l := upLab(t, bin, k8sBin, "real", "native", "kpath", 2, func(o *klab.Options) {
		o.Runtime, o.ImageDir, o.Install, o.HelmBin = klab.RuntimeContainerd, images, install, helmBin
		o.HubbleRelay = ciliumBin(t, "hubble-relay")
	})
	c := l.c
	ctx := context.Background()
	if install == klab.InstallHelm {
		checkInstalled(t, l)
	}
	waitFor(t, 2*time.Minute, "both nodes Ready", func() bool {
		nodes, err := c.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
		if err != nil || len(nodes.Items) != 2 {
			return false
		}
		for _, n := range nodes.Items {
			ready := false
			for _, cond := range n.Status.Conditions {
				ready = ready || cond.Type == corev1.NodeReady && cond.Status == corev1.ConditionTrue
			}
			if !ready {
				return false
			}
		}
		return true
	})

	// What a DaemonSet's hostPath or an agent's pins reach on one node is
	// that node's alone: each node's view (its mount namespace, where
	// containerd and the kubelet resolve them) of /var/lib/kpath and of
	// /sys/fs/bpf holds only what that node made, and the machine's none.
	inNode := func(node string, args ...string) (string, error) {
		out, err := exec.Command("nsenter", append([]string{"--mount=" + filepath.Join(l.dir, node, "real", "ns", "mnt"), "--"}, args...)...).CombinedOutput()
		return string(out), err
	}
	// A node's host name is its own (host-network pods answer with it, as
	// the upstream suite's tests expect); machineState checks the
	// machine's.
	for _, n := range l.st.Nodes {
		out, err := exec.Command("nsenter", "--uts="+filepath.Join(l.dir, n.Name, "real", "ns", "uts"), "hostname").CombinedOutput()
		if got := strings.TrimSpace(string(out)); err != nil || got != n.Name {
			t.Errorf("%s's host name: %q (%v)", n.Name, got, err)
		}
	}
	for _, n := range l.st.Nodes {
		for _, d := range []string{"/var/lib/kpath/", "/sys/fs/bpf/"} {
			if out, err := inNode(n.Name, "mkdir", "-p", d+"made-by-"+n.Name); err != nil {
				t.Fatalf("mkdir %s on %s: %v: %s", d, n.Name, err, out)
			}
		}
	}
	for _, n := range l.st.Nodes {
		for _, d := range []string{"/var/lib/kpath/", "/sys/fs/bpf/"} {
			out, err := inNode(n.Name, "ls", d)
			var made []string // a fresh bpffs also holds the kernel's maps.debug and progs.debug
			for _, f := range strings.Fields(out) {
				if strings.HasPrefix(f, "made-by-") {
					made = append(made, f)
				}
			}
			if err != nil || len(made) != 1 || made[0] != "made-by-"+n.Name {
				t.Errorf("%s's %s holds %q (%v), want only its own", n.Name, d, out, err)
			}
			if _, err := os.Stat(d + "made-by-" + n.Name); err == nil {
				t.Errorf("%s's %s reached the machine's", n.Name, d)
			}
		}
	}

	// Two echo pods without nodeName, kept apart by anti-affinity: the
	// scheduler puts one on each node.
	tag := ":" + image.Tag
	for i := 1; i <= 2; i++ {
		_, err := c.CoreV1().Pods("default").Create(ctx, &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("echo-%d", i), Labels: map[string]string{"app": "echo"}},
			Spec: corev1.PodSpec{
				Affinity: &corev1.Affinity{PodAntiAffinity: &corev1.PodAntiAffinity{RequiredDuringSchedulingIgnoredDuringExecution: []corev1.PodAffinityTerm{{
					LabelSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "echo"}}, TopologyKey: "kubernetes.io/hostname"}}}},
				Containers: []corev1.Container{{
					Name: "echo", Image: "kpath/echo" + tag, ImagePullPolicy: corev1.PullNever,
					Args:  []string{"--name=$(POD_NAME)", "--http=:8080"},
					Env:   []corev1.EnvVar{{Name: "POD_NAME", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.name"}}}},
					Ports: []corev1.ContainerPort{{ContainerPort: 8080}},
					ReadinessProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Port: intstr.FromInt32(8080)}},
						PeriodSeconds: 1},
				}},
			},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
	}
	svc, err := c.CoreV1().Services("default").Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "echo"},
		Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeNodePort, Selector: map[string]string{"app": "echo"},
			Ports: []corev1.ServicePort{{Port: 80, TargetPort: intstr.FromInt32(8080)}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ips, podNode := map[string]string{}, map[string]string{}
	waitFor(t, 3*time.Minute, "echo pods Ready on both nodes", func() bool {
		pods, err := c.CoreV1().Pods("default").List(ctx, metav1.ListOptions{LabelSelector: "app=echo"})
		if err != nil {
			return false
		}
		nodes := map[string]bool{}
		for _, p := range pods.Items {
			for _, cond := range p.Status.Conditions {
				if cond.Type == corev1.PodReady && cond.Status == corev1.ConditionTrue {
					nodes[p.Spec.NodeName] = true
					ips[p.Name], podNode[p.Name] = p.Status.PodIP, p.Spec.NodeName
				}
			}
		}
		return len(nodes) == 2
	})
	// Each address from kpath's IPAM on the pod's node: its pod CIDR.
	for name, ip := range ips {
		for _, n := range l.st.Nodes {
			if n.Name == podNode[name] && !netip.MustParsePrefix(n.PodCIDR).Contains(netip.MustParseAddr(ip)) {
				t.Errorf("%s on %s has %s, outside the node's pod CIDR %s", name, n.Name, ip, n.PodCIDR)
			}
		}
	}

	// Probes from a pod, as jobs whose exit status is the verdict.
	probe := func(name, url string) {
		t.Helper()
		runProbePod(t, c, name, "kpath/client"+tag, []string{"/usr/bin/kpath", "workload", "probe", url, "-n", "20", "--timeout", "2s"})
	}
	probe("to-pod", "http://"+ips["echo-1"]+":8080/")
	probe("to-pod-2", "http://"+ips["echo-2"]+":8080/")
	probe("to-service", "http://"+svc.Spec.ClusterIP+"/")
	probe("to-nodeport", fmt.Sprintf("http://%s:%d/", l.st.Nodes[1].IP, svc.Spec.Ports[0].NodePort))

	// NetworkPolicy on pods containerd started: the echo pods admit pods
	// labelled role=allowed only; the drop is a flow naming both pods.
	pol := netpol("default", "echo-1-from-allowed", &metav1.LabelSelector{MatchLabels: map[string]string{"app": "echo"}}, ingressOnly,
		[]networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{{PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"role": "allowed"}}}}}}, nil)
	if _, err := c.NetworkingV1().NetworkPolicies("default").Create(ctx, pol, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	probeCmd := []string{"/usr/bin/kpath", "workload", "probe", "http://" + ips["echo-1"] + ":8080/", "-n", "3", "--timeout", "1s"}
	runPod(t, c, "allowed", "kpath/client"+tag, probeCmd, map[string]string{"role": "allowed"}, corev1.PodSucceeded)
	runPod(t, c, "denied", "kpath/client"+tag, probeCmd, nil, corev1.PodFailed)
	node := l.st.Nodes[0]
	if podNode["echo-1"] != node.Name {
		node = l.st.Nodes[1]
	}
	waitFor(t, 20*time.Second, "the policy drop of probe-denied as a flow on "+node.Name, func() bool {
		for _, f := range observeFlows(t, bin, node.AgentSocket, "--verdict", "DROPPED") {
			if f.DropReason == "policy denied" && f.Source.Name() == "default/probe-denied" && f.Destination.Name() == "default/echo-1" {
				return true
			}
		}
		return false
	})
	// The same drop through hubble-relay, which found the agent by the
	// Peer service and reached it over mTLS.
	waitFor(t, 20*time.Second, "the policy drop through hubble-relay", func() bool {
		for _, r := range hubbleFlows(t, ciliumBin(t, "hubble"), "unix://"+l.st.HubbleRelay, "--verdict", "DROPPED", "--to-pod", "default/echo-1") {
			if r.Flow.DropReasonDesc == "POLICY_DENIED" && r.Flow.NodeName == node.Name {
				return true
			}
		}
		return false
	})
	if install == klab.InstallHelm {
		helmLifecycle(t, l, images, svc)
	}

	l.down()
	after := machineState(t)
	for k, v := range before {
		if after[k] != v {
			t.Errorf("%s: %q before the lab, %q after down", k, v, after[k])
		}
	}
	roots, _ := os.ReadDir("/sys/fs/cgroup")
	for _, r := range roots {
		if _, err := os.Stat(filepath.Join("/sys/fs/cgroup", r.Name(), "kpath-lab-real")); err == nil {
			t.Errorf("cgroup %s/kpath-lab-real left after down", r.Name())
		}
	}
}

// runProbePod runs a pod with restartPolicy Never and waits for it to
// succeed; its log says what happened when it does not.
func runProbePod(t *testing.T, c kubernetes.Interface, name, img string, command []string) {
	t.Helper()
	runPod(t, c, name, img, command, nil, corev1.PodSucceeded)
}

// runPod runs pod probe-NAME until it ends in the phase wanted; its log
// says what happened when it does not. One that must succeed is run again
// on failure (restartPolicy OnFailure): a new pod's address reaches the
// other nodes' agents through the API server a moment after it starts, and
// until then policy there sees no pod behind it. One that must fail runs
// once.
func runPod(t *testing.T, c kubernetes.Interface, name, img string, command []string, labels map[string]string, want corev1.PodPhase) {
	t.Helper()
	ctx := context.Background()
	restart := corev1.RestartPolicyOnFailure
	if want == corev1.PodFailed {
		restart = corev1.RestartPolicyNever
	}
	_, err := c.CoreV1().Pods("default").Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "probe-" + name, Labels: labels},
		Spec: corev1.PodSpec{RestartPolicy: restart, Containers: []corev1.Container{{
			Name: "probe", Image: img, ImagePullPolicy: corev1.PullNever, Command: command}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var phase corev1.PodPhase
	waitFor(t, 2*time.Minute, "probe "+name+" finished", func() bool {
		p, err := c.CoreV1().Pods("default").Get(ctx, "probe-"+name, metav1.GetOptions{})
		if err == nil {
			phase = p.Status.Phase
		}
		return phase == corev1.PodSucceeded || phase == corev1.PodFailed
	})
	if phase != want {
		logs, _ := c.CoreV1().Pods("default").GetLogs("probe-"+name, &corev1.PodLogOptions{}).DoRaw(ctx)
		t.Errorf("probe %s: %s, want %s:\n%s", name, phase, want, logs)
	}
}

// checkInstalled: kpath as helm installed it. hubble-relay runs from the
// chart; the DaemonSet's agent runs on every node from the imported image, has written the CNI
// configuration itself once ready (and only then did the node turn
// Ready), and its socket hooks sit on the node's own cgroup, never on the
// machine's root.
func checkInstalled(t *testing.T, l *testLab) {
	t.Helper()
	ctx := context.Background()
	ds, err := l.c.AppsV1().DaemonSets(klab.HelmNamespace).Get(ctx, "kpath-agent", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if ds.Status.NumberReady != 2 || ds.Status.DesiredNumberScheduled != 2 {
		t.Errorf("DaemonSet kpath-agent: %d of %d ready, want 2 of 2", ds.Status.NumberReady, ds.Status.DesiredNumberScheduled)
	}
	// hubble-relay from the chart, on Cilium's image of the pinned version.
	relay, err := l.c.AppsV1().Deployments(klab.HelmNamespace).Get(ctx, "hubble-relay", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if relay.Status.ReadyReplicas != 1 || relay.Spec.Template.Spec.Containers[0].Image != "kpath/hubble-relay:"+testenv.PinnedCilium {
		t.Errorf("hubble-relay: %d ready, image %s", relay.Status.ReadyReplicas, relay.Spec.Template.Spec.Containers[0].Image)
	}
	pods, err := l.c.CoreV1().Pods(klab.HelmNamespace).List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/name=kpath-agent"})
	if err != nil {
		t.Fatal(err)
	}
	onNode := map[string]corev1.Pod{}
	for _, p := range pods.Items {
		onNode[p.Spec.NodeName] = p
	}
	for _, n := range l.st.Nodes {
		p, ok := onNode[n.Name]
		if !ok {
			t.Errorf("no agent pod on %s", n.Name)
			continue
		}
		if img := p.Spec.Containers[0].Image; img != "kpath/kpath:"+image.Tag {
			t.Errorf("agent on %s runs %s", n.Name, img)
		}
		logs, err := l.c.CoreV1().Pods(klab.HelmNamespace).GetLogs(p.Name, &corev1.PodLogOptions{Container: "agent"}).DoRaw(ctx)
		if err != nil || !strings.Contains(string(logs), "CNI network configuration written") {
			t.Errorf("agent on %s did not write the CNI configuration (%v):\n%s", n.Name, err, logs)
		}
		conf := filepath.Join(l.dir, n.Name, "real", "root", "etc", "cni", "net.d", "05-kpath.conflist")
		st, err := os.Stat(conf)
		if err != nil {
			t.Errorf("%s: %v", n.Name, err)
			continue
		}
		node, err := l.c.CoreV1().Nodes().Get(ctx, n.Name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		for _, cond := range node.Status.Conditions {
			if cond.Type == corev1.NodeReady && cond.LastTransitionTime.Time.Before(st.ModTime().Truncate(time.Second)) {
				t.Errorf("%s turned Ready at %s, before the agent wrote its CNI configuration at %s", n.Name, cond.LastTransitionTime, st.ModTime())
			}
		}
		if got := kpathCgroupHooks(t, n.Cgroup); got == 0 {
			t.Errorf("no socket hook on %s's cgroup %s", n.Name, n.Cgroup)
		}
	}
	root, err := datapath.CgroupV2Root()
	if err != nil {
		t.Fatal(err)
	}
	if got := kpathCgroupHooks(t, root); got != 0 {
		t.Errorf("%d kpath socket hooks on the machine's cgroup root %s", got, root)
	}
}

// kpathCgroupHooks counts kpath's connect4 programs attached to a cgroup.
func kpathCgroupHooks(t *testing.T, cgroup string) int {
	t.Helper()
	f, err := os.Open(cgroup)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	res, err := link.QueryPrograms(link.QueryOptions{Target: int(f.Fd()), Attach: ebpf.AttachCGroupInet4Connect})
	if err != nil {
		t.Fatalf("query %s: %v", cgroup, err)
	}
	n := 0
	for _, p := range res.Programs {
		if prog, err := ebpf.NewProgramFromID(p.ID); err == nil {
			if info, err := prog.Info(); err == nil && strings.HasPrefix(info.Name, "kp_sock") {
				n++
			}
			prog.Close()
		}
	}
	return n
}
