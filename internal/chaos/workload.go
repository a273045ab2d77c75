package chaos

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	networkingv1 "k8s.io/api/networking/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"

	"github.com/kpath/kpath/internal/image"
	"github.com/kpath/kpath/internal/lab"
)

// The namespaces of the load: the probed pods, and the pods created and
// deleted all along.
const (
	loadNS  = "chaos"
	churnNS = "chaos-churn"
)

// prober is a client pod and what its probe does.
type prober struct {
	pod    string
	node   lab.NodeInfo
	cfg    ProbeConfig
	denied bool // policy denies it the target: any answer is a hole
}

// workload is the load's fixed pods: an echo Service (ClusterIP and
// NodePort) over a backend on each node, a target whose policy admits only
// app=allowed, a client on each node that the policy denies, and an
// allowed client (the control: the target answers it).
type workload struct {
	probers []prober
}

// pod is a pod of the load: an echo server on 8080 (image "kpath/echo")
// or an idle process to run probes beside (any other), in images real
// nodes have (make image's) and the lab's runtime recognises.
func pod(name, node, img string, labels map[string]string) *corev1.Pod {
	c := corev1.Container{Name: "app", Image: "kpath/client:" + image.Tag, ImagePullPolicy: corev1.PullNever}
	if img == "kpath/echo" {
		c = lab.EchoContainer("app", []corev1.ContainerPort{{ContainerPort: 8080}})
	}
	return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: loadNS, Name: name, Labels: labels},
		Spec: corev1.PodSpec{NodeName: node, TerminationGracePeriodSeconds: new(int64), Containers: []corev1.Container{c}}}
}

// setUp creates the load's objects and waits until every client reaches
// the Service and the allowed one the target.
func setUp(ctx context.Context, c kubernetes.Interface, nodes []lab.NodeInfo, held int) (*workload, error) {
	if len(nodes) < 2 {
		return nil, fmt.Errorf("chaos needs 2 nodes, the lab has %d", len(nodes))
	}
	for _, ns := range []string{loadNS, churnNS} {
		if _, err := c.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			return nil, fmt.Errorf("namespace %s: %w", ns, err)
		}
		sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "default"}}
		if _, err := c.CoreV1().ServiceAccounts(ns).Create(ctx, sa, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			return nil, fmt.Errorf("service account in %s: %w", ns, err)
		}
	}
	n1, n2 := nodes[0], nodes[1]
	echo := map[string]string{"app": "echo"}
	pods := []*corev1.Pod{
		pod("echo-1", n1.Name, "kpath/echo", echo), pod("echo-2", n2.Name, "kpath/echo", echo),
		pod("target", n2.Name, "kpath/echo", map[string]string{"app": "target"}),
		pod("client-1", n1.Name, "kpath/idle", map[string]string{"app": "client"}),
		pod("client-2", n2.Name, "kpath/idle", map[string]string{"app": "client"}),
		pod("allowed", n1.Name, "kpath/idle", map[string]string{"app": "allowed"}),
	}
	svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: loadNS, Name: "echo"}, Spec: corev1.ServiceSpec{
		Type: corev1.ServiceTypeNodePort, Selector: echo,
		Ports: []corev1.ServicePort{{Port: 80, Protocol: corev1.ProtocolTCP, TargetPort: intstr.FromInt32(8080)}}}}
	pol := &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: loadNS, Name: "target-allowed-only"},
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "target"}},
			PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress},
			Ingress: []networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{
				{PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "allowed"}}}}}}}}
	if _, err := c.NetworkingV1().NetworkPolicies(loadNS).Create(ctx, pol, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return nil, fmt.Errorf("policy: %w", err)
	}
	if _, err := c.CoreV1().Services(loadNS).Create(ctx, svc, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return nil, fmt.Errorf("service: %w", err)
	}
	for _, p := range pods {
		if _, err := c.CoreV1().Pods(loadNS).Create(ctx, p, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			return nil, fmt.Errorf("pod %s: %w", p.Name, err)
		}
	}
	var (
		s      *corev1.Service
		target *corev1.Pod
	)
	for deadline := time.Now().Add(2 * time.Minute); ; time.Sleep(500 * time.Millisecond) {
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("the load's pods in %s not running within 2 minutes", loadNS)
		}
		list, err := c.CoreV1().Pods(loadNS).List(ctx, metav1.ListOptions{})
		if err != nil {
			continue
		}
		running := 0
		for i := range list.Items {
			if list.Items[i].Status.Phase == corev1.PodRunning && list.Items[i].Status.PodIP != "" {
				running++
			}
			if list.Items[i].Name == "target" {
				target = &list.Items[i]
			}
		}
		if s, err = c.CoreV1().Services(loadNS).Get(ctx, "echo", metav1.GetOptions{}); err == nil && running == len(pods) {
			break
		}
	}
	cluster := net.JoinHostPort(s.Spec.ClusterIP, "80")
	nodePort := func(n lab.NodeInfo) string {
		return net.JoinHostPort(n.IP, strconv.Itoa(int(s.Spec.Ports[0].NodePort)))
	}
	denied := net.JoinHostPort(target.Status.PodIP, "8080")
	return &workload{probers: []prober{
		{pod: "client-1", node: n1, denied: true, cfg: ProbeConfig{ClusterIP: cluster, NodePort: nodePort(n2), Held: held, Denied: denied}},
		{pod: "client-2", node: n2, denied: true, cfg: ProbeConfig{ClusterIP: cluster, NodePort: nodePort(n1), Held: held, Denied: denied}},
		{pod: "allowed", node: n1, cfg: ProbeConfig{ClusterIP: cluster, Denied: denied}},
	}}, nil
}

// ChurnCounts are what the pod churn did.
type ChurnCounts struct {
	Created   int64 `json:"created"`
	Deleted   int64 `json:"deleted"`
	APIErrors int64 `json:"api_errors"` // calls refused while the control plane was down
}

// churn creates pods in churnNS at rate a second, alternating nodes, and
// deletes each 2 s after creating it, until ctx ends.
type churn struct {
	c      kubernetes.Interface
	nodes  []lab.NodeInfo
	counts struct{ created, deleted, errors atomic.Int64 }
	wg     sync.WaitGroup
}

func (ch *churn) run(ctx context.Context, rate int) {
	if rate <= 0 {
		return
	}
	t := time.NewTicker(time.Second / time.Duration(rate))
	defer t.Stop()
	for i := 0; ; i++ {
		select {
		case <-ctx.Done():
			ch.wg.Wait()
			return
		case <-t.C:
		}
		name := fmt.Sprintf("churn-%d", i)
		p := pod(name, ch.nodes[i%len(ch.nodes)].Name, "kpath/idle", map[string]string{"app": "churn"})
		p.Namespace = churnNS
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		_, err := ch.c.CoreV1().Pods(churnNS).Create(cctx, p, metav1.CreateOptions{})
		cancel()
		if err != nil {
			ch.counts.errors.Add(1)
			continue
		}
		ch.counts.created.Add(1)
		ch.wg.Add(1)
		go func() {
			defer ch.wg.Done()
			select {
			case <-ctx.Done():
				return // the clean-up deletes it
			case <-time.After(2 * time.Second):
			}
			dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			defer cancel()
			if err := ch.c.CoreV1().Pods(churnNS).Delete(dctx, name, metav1.DeleteOptions{GracePeriodSeconds: new(int64)}); err != nil && !apierrors.IsNotFound(err) {
				ch.counts.errors.Add(1)
				return
			}
			ch.counts.deleted.Add(1)
		}()
	}
}

func (ch *churn) snapshot() ChurnCounts {
	return ChurnCounts{Created: ch.counts.created.Load(), Deleted: ch.counts.deleted.Load(), APIErrors: ch.counts.errors.Load()}
}

// deleteAll deletes every churn pod left and waits until the API has none
// and each node's runtime has torn its pods down.
func deleteAll(ctx context.Context, c kubernetes.Interface, within time.Duration) error {
	deadline := time.Now().Add(within)
	for {
		err := c.CoreV1().Pods(churnNS).DeleteCollection(ctx, metav1.DeleteOptions{GracePeriodSeconds: new(int64)}, metav1.ListOptions{})
		if err == nil {
			list, lerr := c.CoreV1().Pods(churnNS).List(ctx, metav1.ListOptions{})
			if lerr == nil && len(list.Items) == 0 {
				return nil
			}
			err = errors.Join(err, lerr)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("churn pods still there after %s: %v", within, err)
		}
		time.Sleep(time.Second)
	}
}

// readiness follows, from the API, how many of the echo Service's
// endpoints are ready: requests fail, whatever the dataplane does, while
// the control plane has taken every backend away (a node it could not
// hear from has its pods marked not ready).
type readiness struct {
	mu      sync.Mutex
	min     int           // fewest ready since the last take (-1: none seen)
	none    time.Duration // time with none ready since the last take
	last    time.Time
	lastNum int
}

func watchReadiness(ctx context.Context, c kubernetes.Interface) *readiness {
	r := &readiness{min: -1}
	go tick(ctx, 200*time.Millisecond, func() {
		lctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		list, err := c.DiscoveryV1().EndpointSlices(loadNS).List(lctx, metav1.ListOptions{LabelSelector: discoveryv1.LabelServiceName + "=echo"})
		cancel()
		if err != nil {
			return // the API server is down: no news
		}
		n := 0
		for _, s := range list.Items {
			for _, e := range s.Endpoints {
				if e.Conditions.Ready == nil || *e.Conditions.Ready {
					n++
				}
			}
		}
		r.observe(n, time.Now())
	})
	return r
}

func (r *readiness) observe(n int, now time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.last.IsZero() && r.lastNum == 0 {
		r.none += now.Sub(r.last)
	}
	r.last, r.lastNum = now, n
	if r.min < 0 || n < r.min {
		r.min = n
	}
}

// take returns what was seen since the last take and starts again.
func (r *readiness) take() (minReady int, none time.Duration) {
	r.mu.Lock()
	defer r.mu.Unlock()
	minReady, none = r.min, r.none
	r.min, r.none = r.lastNum, 0
	if r.last.IsZero() {
		r.min = -1 // nothing seen yet
	}
	return minReady, none
}
