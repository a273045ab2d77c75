// Package lab builds a real multi-node Kubernetes cluster out of network
// namespaces on one machine (see DESIGN.md). This file is the lab's node
// runtime: what a kubelet and a container runtime do for kpath's purposes.
package lab

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/containernetworking/cni/libcni"
	types100 "github.com/containernetworking/cni/pkg/types/100"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"

	"github.com/kpath/kpath/internal/image"
	"github.com/kpath/kpath/internal/nsutil"
)

// Runtime runs the pods bound to one node: for each, a network namespace
// wired by the real CNI plugin through libcni (as container runtimes call
// it), a workload process, and the pod's IP and readiness reported to the
// API server. Deleting a pod stops its workload, calls CNI DEL and removes
// the namespace. As a kubelet's pod workers do, each pod has a worker of
// its own, so a pod's start and stop never run at once while one pod's
// slow API call holds up no other, and a teardown whose CNI DEL failed (the
// agent restarting) is retried until it succeeds.
//
// Workloads by image: an image whose name contains "echo", "agnhost" or
// "netpol" runs the echo server (`kpath workload echo`), HTTP and UDP, on
// the first container port (8080 if none) and on 80 and 81, answering with
// the pod's name; any other image runs an idle
// process, and `kpath lab exec` runs commands in the pod.
type Runtime struct {
	Client kubernetes.Interface
	Node   string
	// NodeNetns is the node's network namespace, where the CNI plugin must
	// run ("": the current one).
	NodeNetns string
	// NetnsPrefix starts the names of the pods' namespaces (the lab's).
	NetnsPrefix string
	CNI         *libcni.CNIConfig
	NetConf     *libcni.NetworkConfigList
	// Cgroup is an open cgroup v2 directory for workloads (the node's, so
	// its socket hook applies); nil for none.
	Cgroup *os.File
	// KpathBin is the kpath binary that runs workloads.
	KpathBin string
	// LabDir holds the pods' files (PodServiceAccountDir); ServiceAccountCA
	// is the API server's CA, for their in-cluster clients. "" for none.
	LabDir, ServiceAccountCA string
	Log                      *slog.Logger

	mu   sync.Mutex
	pods map[types.UID]*podState
	// crash ends the current Run as a crash would (Crash).
	crash context.CancelFunc
	// teardown are stopped pods whose CNI DEL failed, retried.
	teardown map[types.UID]*podState
}

// podEvent is a pod to start or (gone from the API) to stop.
type podEvent struct {
	pod     *corev1.Pod
	deleted bool
}

type podState struct {
	netns string
	proc  *exec.Cmd
	ip    netip.Addr
}

// PodNetns is the network namespace name of a pod of node, in the lab
// whose namespaces start with prefix.
func PodNetns(prefix, node string, uid types.UID) string {
	h := sha256.Sum256([]byte(uid))
	return prefix + node + "-" + hex.EncodeToString(h[:4])
}

// ErrCrashed is what Run returns after Crash.
var ErrCrashed = errors.New("the node runtime crashed (Crash)")

// Crash ends the current Run at once, as a crashed kubelet: pods keep
// running, events go unseen until it is run again.
func (r *Runtime) Crash() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.crash != nil {
		r.crash()
	}
}

// Run handles the node's pods until ctx ends (nil) or Crash (ErrCrashed).
// Run again, it takes up the pods it started (they ran on) and stops those
// the API no longer has, as a kubelet that restarts cleans up the
// sandboxes of pods deleted while it was down.
func (r *Runtime) Run(parent context.Context) error {
	ctx, crash := context.WithCancel(parent)
	defer crash()
	r.mu.Lock()
	r.crash = crash
	if r.pods == nil {
		r.pods = map[types.UID]*podState{}
	}
	if r.teardown == nil {
		r.teardown = map[types.UID]*podState{}
	}
	r.mu.Unlock()
	f := informers.NewSharedInformerFactoryWithOptions(r.Client, 0, informers.WithTweakListOptions(func(o *metav1.ListOptions) {
		o.FieldSelector = fields.OneTermEqualSelector("spec.nodeName", r.Node).String()
	}))
	inf := f.Core().V1().Pods().Informer()
	work := make(chan podEvent, 1024)
	enqueue := func(obj any) {
		if p, ok := obj.(*corev1.Pod); ok {
			work <- podEvent{pod: p}
		}
	}
	if _, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    enqueue,
		UpdateFunc: func(_, obj any) { enqueue(obj) },
		DeleteFunc: func(obj any) {
			if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
				obj = t.Obj
			}
			if p, ok := obj.(*corev1.Pod); ok {
				work <- podEvent{pod: p, deleted: true}
			}
		},
	}); err != nil {
		return err
	}
	f.Start(ctx.Done())
	go func() {
		if !cache.WaitForCacheSync(ctx.Done(), inf.HasSynced) {
			return
		}
		listed := map[types.UID]bool{}
		for _, obj := range inf.GetStore().List() {
			if p, ok := obj.(*corev1.Pod); ok {
				listed[p.UID] = true
			}
		}
		r.mu.Lock()
		var gone []types.UID
		for uid := range r.pods {
			if !listed[uid] {
				gone = append(gone, uid)
			}
		}
		r.mu.Unlock()
		for _, uid := range gone {
			p := &corev1.Pod{}
			p.UID = uid
			select {
			case work <- podEvent{pod: p, deleted: true}:
			case <-ctx.Done():
				return
			}
		}
	}()
	retry := time.NewTicker(2 * time.Second)
	defer retry.Stop()
	workers := map[types.UID]chan podEvent{}
	done := make(chan types.UID, 64)
	// Stopping the runtime leaves pods running (the lab stays up until
	// its supervisor exits; workloads die with it, Pdeathsig).
	for {
		select {
		case <-ctx.Done():
			if parent.Err() == nil {
				return ErrCrashed
			}
			return nil
		case ev := <-work:
			q := workers[ev.pod.UID]
			if q == nil {
				q = make(chan podEvent, 64)
				workers[ev.pod.UID] = q
				go r.podWorker(ctx, ev.pod.UID, q, done)
			}
			select {
			case q <- ev:
			case <-ctx.Done():
				if parent.Err() == nil {
					return ErrCrashed
				}
				return nil
			}
		case uid := <-done:
			// The worker stopped its pod and took no event after it
			// (a pod's UID is never used again).
			delete(workers, uid)
		case <-retry.C:
			r.retryTeardowns()
		}
	}
}

// podWorker runs one pod's events in order until the pod is stopped.
func (r *Runtime) podWorker(ctx context.Context, uid types.UID, q <-chan podEvent, done chan<- types.UID) {
	for {
		select {
		case <-ctx.Done():
			return
		case ev := <-q:
			if ev.deleted || ev.pod.DeletionTimestamp != nil {
				if ev.deleted {
					r.stop(uid)
				} else {
					r.handle(ctx, ev.pod) // stops it and lets the API server remove it
				}
				// Drain what came meanwhile: the pod is gone for good.
				for {
					select {
					case <-q:
						continue
					default:
					}
					break
				}
				select {
				case done <- uid:
				case <-ctx.Done():
				}
				return
			}
			r.handle(ctx, ev.pod)
		}
	}
}

func (r *Runtime) handle(ctx context.Context, p *corev1.Pod) {
	r.mu.Lock()
	st := r.pods[p.UID]
	r.mu.Unlock()
	switch {
	case p.DeletionTimestamp != nil:
		r.stop(p.UID)
		// The runtime has cleaned up: let the API server remove the pod.
		err := r.Client.CoreV1().Pods(p.Namespace).Delete(ctx, p.Name, metav1.DeleteOptions{
			GracePeriodSeconds: new(int64), Preconditions: &metav1.Preconditions{UID: &p.UID}})
		if err != nil && !strings.Contains(err.Error(), "not found") {
			r.Log.Error("delete pod", "pod", p.Namespace+"/"+p.Name, "error", err)
		}
	case st == nil:
		if err := r.start(ctx, p); err != nil {
			r.Log.Error("start pod", "pod", p.Namespace+"/"+p.Name, "error", err)
			r.stop(p.UID)
		}
	}
}

func (r *Runtime) start(ctx context.Context, p *corev1.Pod) error {
	ns := PodNetns(r.NetnsPrefix, r.Node, p.UID)
	st := &podState{netns: ns}
	r.mu.Lock()
	r.pods[p.UID] = st
	r.mu.Unlock()
	if out, err := exec.Command("ip", "netns", "add", ns).CombinedOutput(); err != nil && !strings.Contains(string(out), "exists") {
		return fmt.Errorf("ip netns add %s: %v: %s", ns, err, out)
	}
	if out, err := exec.Command("ip", "-n", ns, "link", "set", "lo", "up").CombinedOutput(); err != nil {
		return fmt.Errorf("lo up: %v: %s", err, out)
	}
	rt := r.runtimeConf(p, ns)
	var res *types100.Result
	err := nsutil.Do(r.NodeNetns, func() error {
		out, err := r.CNI.AddNetworkList(ctx, r.NetConf, rt)
		if err != nil {
			return err
		}
		res, err = types100.NewResultFromResult(out)
		return err
	})
	if err != nil {
		return fmt.Errorf("CNI ADD: %w", err)
	}
	if len(res.IPs) == 0 {
		return fmt.Errorf("CNI ADD returned no address")
	}
	st.ip, _ = netip.AddrFromSlice(res.IPs[0].Address.IP.To4())

	args := []string{"netns", "exec", ns}
	if r.LabDir != "" && r.ServiceAccountCA != "" {
		dir := PodServiceAccountDir(r.LabDir, r.Node, p.UID)
		if err := r.writeServiceAccount(ctx, p, dir); err != nil {
			r.Log.Error("service account files; the pod runs without", "pod", p.Namespace+"/"+p.Name, "error", err)
		} else {
			args = append(args, r.KpathBin, "workload", "sandbox", "--serviceaccount", dir, "--")
		}
	}
	args = append(args, r.KpathBin, "workload")
	// Echo images, and the upstream e2e suites' (agnhost, netpol), run the
	// echo server on the first container port (8080 if none) and, as the
	// e2e network policy suite's pods do, on 80 and 81: TCP and UDP each.
	if c := p.Spec.Containers; len(c) > 0 && (strings.Contains(c[0].Image, "echo") ||
		strings.Contains(c[0].Image, "agnhost") || strings.Contains(c[0].Image, "netpol")) {
		first := 8080
		if len(c[0].Ports) > 0 && c[0].Ports[0].ContainerPort > 0 {
			first = int(c[0].Ports[0].ContainerPort)
		}
		listen := []string{":" + strconv.Itoa(first)}
		for _, port := range []int{80, 81} {
			if port != first {
				listen = append(listen, ":"+strconv.Itoa(port))
			}
		}
		ports := strings.Join(listen, ",")
		args = append(args, "echo", "--name", p.Name, "--http", ports, "--udp", ports)
	} else {
		args = append(args, "idle")
	}
	cmd := exec.Command("ip", args...)
	cmd.Env = append(os.Environ(), PodEnv()...)
	// Workloads die with the runtime (the lab's supervisor).
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if r.Cgroup != nil {
		cmd.SysProcAttr.UseCgroupFD, cmd.SysProcAttr.CgroupFD = true, int(r.Cgroup.Fd())
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start workload: %w", err)
	}
	st.proc = cmd
	go func() { _ = cmd.Wait() }()

	// Report the pod running and ready.
	now := metav1.NewTime(time.Now())
	p = p.DeepCopy()
	p.Status.Phase = corev1.PodRunning
	p.Status.HostIP = ""
	p.Status.PodIP = st.ip.String()
	p.Status.PodIPs = []corev1.PodIP{{IP: st.ip.String()}}
	p.Status.StartTime = &now
	p.Status.Conditions = nil
	for _, c := range []corev1.PodConditionType{corev1.PodScheduled, corev1.PodInitialized, corev1.ContainersReady, corev1.PodReady} {
		p.Status.Conditions = append(p.Status.Conditions, corev1.PodCondition{Type: c, Status: corev1.ConditionTrue, LastTransitionTime: now})
	}
	p.Status.ContainerStatuses = nil
	for _, c := range p.Spec.Containers {
		p.Status.ContainerStatuses = append(p.Status.ContainerStatuses, corev1.ContainerStatus{
			Name: c.Name, Image: c.Image, Ready: true, Started: new(bool),
			State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: now}},
		})
		*p.Status.ContainerStatuses[len(p.Status.ContainerStatuses)-1].Started = true
	}
	if _, err := r.Client.CoreV1().Pods(p.Namespace).UpdateStatus(ctx, p, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("report status: %w", err)
	}
	r.Log.Info("pod running", "pod", p.Namespace+"/"+p.Name, "ip", st.ip, "netns", ns)
	return nil
}

func (r *Runtime) runtimeConf(p *corev1.Pod, ns string) *libcni.RuntimeConf {
	return &libcni.RuntimeConf{
		ContainerID: string(p.UID), NetNS: "/run/netns/" + ns, IfName: "eth0",
		Args: [][2]string{{"K8S_POD_NAMESPACE", p.Namespace}, {"K8S_POD_NAME", p.Name}, {"K8S_POD_UID", string(p.UID)}},
	}
}

// stop kills a pod's workload, calls CNI DEL and removes its namespace;
// a failed DEL is retried (retryTeardowns).
func (r *Runtime) stop(uid types.UID) {
	r.mu.Lock()
	st := r.pods[uid]
	delete(r.pods, uid)
	r.mu.Unlock()
	if st == nil {
		return
	}
	if st.proc != nil && st.proc.Process != nil {
		_ = syscall.Kill(-st.proc.Process.Pid, syscall.SIGKILL)
	}
	r.tearDown(uid, st)
}

// tearDown calls CNI DEL for a stopped pod and removes its namespace, or
// keeps it for a retry when the DEL fails.
func (r *Runtime) tearDown(uid types.UID, st *podState) {
	rt := &libcni.RuntimeConf{ContainerID: string(uid), NetNS: "/run/netns/" + st.netns, IfName: "eth0"}
	if err := nsutil.Do(r.NodeNetns, func() error { return r.CNI.DelNetworkList(context.Background(), r.NetConf, rt) }); err != nil {
		r.Log.Error("CNI DEL; retrying", "uid", uid, "error", err)
		r.mu.Lock()
		r.teardown[uid] = st
		r.mu.Unlock()
		return
	}
	r.mu.Lock()
	delete(r.teardown, uid)
	r.mu.Unlock()
	_ = exec.Command("ip", "netns", "del", st.netns).Run()
	if r.LabDir != "" {
		_ = os.RemoveAll(filepath.Dir(PodServiceAccountDir(r.LabDir, r.Node, uid)))
	}
	r.Log.Info("pod stopped", "uid", uid, "ip", st.ip)
}

// retryTeardowns calls CNI DEL again for the pods whose DEL failed.
func (r *Runtime) retryTeardowns() {
	r.mu.Lock()
	pending := maps.Clone(r.teardown)
	r.mu.Unlock()
	for uid, st := range pending {
		r.tearDown(uid, st)
	}
}

// EchoContainer is an echo server container that runs the same on both
// runtimes: on real nodes the project's echo image (tagged, never pulled)
// serving HTTP and UDP on every port given (8080 when none) and answering
// with the pod's name; the lab's runtime, which runs an echo server for
// any image named like it, serves the first port and 80 and 81 (the
// upstream e2e network policy pods' ports).
func EchoContainer(name string, ports []corev1.ContainerPort) corev1.Container {
	var listen []string
	for _, p := range ports {
		listen = append(listen, ":"+strconv.Itoa(int(p.ContainerPort)))
	}
	if len(listen) == 0 {
		listen = []string{":8080"}
	}
	slices.Sort(listen)
	listen = slices.Compact(listen)
	addrs := strings.Join(listen, ",")
	return corev1.Container{Name: name, Image: "kpath/echo:" + image.Tag, ImagePullPolicy: corev1.PullNever, Ports: ports,
		Args: []string{"--name=$(POD_NAME)", "--http=" + addrs, "--udp=" + addrs},
		Env:  []corev1.EnvVar{{Name: "POD_NAME", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.name"}}}}}
}
