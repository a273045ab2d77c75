package bench

import (
	"context"
	"fmt"
	"hash/fnv"
	"io"
	"net/netip"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
)

// E2's object plan (BENCHMARKS.md): nodes scale-node-NNNN with /24 pod
// CIDRs out of 10.128.0.0/10; namespaces of deployments of 10 pods
// labelled app, tier and pod-template-hash (and svc in (c)); namespace
// labels team (10 values) and env.
const (
	scaleMaxPerNode   = 100 // pods a simulated node holds in the plan
	scalePerDeploy    = 10
	scaleSvcDeploys   = 6 // deployments one (c) service selects: 60 pods
	scaleChurnPerNode = 150
)

// scaleLayout is a scenario's plan: (a) and (b) have 500 namespaces x 200
// pods (20 deployments); (c) 250 x 240 (24 deployments) and 4 services per
// namespace, each selecting 60 pods by their svc label.
type scaleLayout struct {
	pods, local, nodes int // nodes counts the measured one
	podsPerNS          int
	services           int // per namespace
	perNode            int // pods per simulated node
}

func newScaleLayout(scenario string, o ScaleOptions) scaleLayout {
	l := scaleLayout{pods: o.Pods, local: o.LocalPods, nodes: o.Nodes, podsPerNS: 200}
	if scenario == "c" {
		l.pods, l.podsPerNS, l.services = o.Pods*6/10, 240, 4
	}
	l.perNode = min(scaleMaxPerNode, (l.fake()+l.nodes-2)/max(l.nodes-1, 1))
	return l
}

func (l scaleLayout) fake() int        { return l.pods - l.local }
func (l scaleLayout) namespaces() int  { return (l.pods + l.podsPerNS - 1) / l.podsPerNS }
func (l scaleLayout) deployments() int { return l.podsPerNS / scalePerDeploy }

func (l scaleLayout) validate() error {
	if l.nodes < 2 || l.local < 0 || l.local > l.pods || l.fake() > (l.nodes-1)*scaleMaxPerNode {
		return fmt.Errorf("scale: %d pods (%d local) do not fit %d nodes of %d pods", l.pods, l.local, l.nodes, scaleMaxPerNode)
	}
	return nil
}

func scaleNodeName(i int) string { return fmt.Sprintf("scale-node-%04d", i) }
func scaleNS(i int) string       { return fmt.Sprintf("scale-%03d", i) }

// scaleNodeCIDR is node i's /24: 10.128.0.0/10 holds 16,384 of them.
func scaleNodeCIDR(i int) netip.Prefix {
	return netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 128 + byte(i>>8), byte(i), 0}), 24)
}

// scaleNodeIP: node addresses out of 10.250.0.0/16, routed nowhere (no
// traffic goes to simulated nodes).
func scaleNodeIP(i int) netip.Addr { return netip.AddrFrom4([4]byte{10, 250, byte(i >> 8), byte(i)}) }

// scalePod is pod i of the plan: its namespace (and its index), name,
// node, deployment and labels, and the CiliumEndpointSlice that holds it
// in the cilium column.
type scalePod struct {
	ns, name   string
	nsIdx, dep int
	node       int
	ip         netip.Addr
	labels     map[string]string
	slice      string
}

// pod is the plan's simulated pod i, of [0, fake()).
func (l scaleLayout) pod(i int) scalePod {
	nsIdx, inNS := i/l.podsPerNS, i%l.podsPerNS
	dep := inNS % l.deployments()
	node := i / l.perNode
	cidr := scaleNodeCIDR(node).Addr().As4()
	cidr[3] = byte(i%l.perNode + 1)
	return scalePod{
		ns: scaleNS(nsIdx), name: fmt.Sprintf("app-%02d-%d", dep, inNS/l.deployments()), nsIdx: nsIdx, dep: dep, node: node,
		ip: netip.AddrFrom4(cidr), labels: l.labels(scaleNS(nsIdx), dep),
		slice: fmt.Sprintf("ces-%s-%d", scaleNS(nsIdx), inNS/cesMaxEndpoints),
	}
}

// labels are the labels of deployment dep's pods in ns.
func (l scaleLayout) labels(ns string, dep int) map[string]string {
	h := fnv.New32a()
	fmt.Fprintf(h, "%s/%d", ns, dep)
	m := map[string]string{"app": fmt.Sprintf("app-%02d", dep), "tier": benchTiers[dep%len(benchTiers)],
		"pod-template-hash": fmt.Sprintf("%08x", h.Sum32())}
	if l.services > 0 {
		m["svc"] = scaleSvcName(dep / scaleSvcDeploys)
	}
	return m
}

func scaleSvcName(j int) string { return fmt.Sprintf("svc-%d", j) }

// createScaleServices writes (c)'s services, port 80 to the pods' named
// port http; kube-controller-manager builds their EndpointSlices.
func createScaleServices(ctx context.Context, c kubernetes.Interface, l scaleLayout) error {
	return parallel(ctx, 0, l.namespaces()*l.services, 8, func(i int) error {
		ns := scaleNS(i / l.services)
		svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: scaleSvcName(i % l.services)},
			Spec: corev1.ServiceSpec{Selector: map[string]string{"svc": scaleSvcName(i % l.services)},
				Ports: []corev1.ServicePort{{Name: "http", Port: 80, Protocol: corev1.ProtocolTCP, TargetPort: intstr.FromString("http")}}}}
		return retryTransient(ctx, func() error {
			_, err := c.CoreV1().Services(ns).Create(ctx, svc, metav1.CreateOptions{})
			return ignoreExists(err)
		})
	})
}

// createScaleNodes writes nodes [from, to) with their pod CIDRs and
// addresses, Ready, from parallel writers.
func createScaleNodes(ctx context.Context, c kubernetes.Interface, from, to int, progress io.Writer) error {
	p := newProgress(progress, "nodes", to-from)
	defer p.Done()
	return parallel(ctx, from, to, 8, func(i int) error {
		n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: scaleNodeName(i)},
			Spec: corev1.NodeSpec{PodCIDR: scaleNodeCIDR(i).String(), PodCIDRs: []string{scaleNodeCIDR(i).String()}}}
		if err := retryTransient(ctx, func() error {
			_, err := c.CoreV1().Nodes().Create(ctx, n, metav1.CreateOptions{})
			return ignoreExists(err)
		}); err != nil {
			return fmt.Errorf("node %s: %w", n.Name, err)
		}
		n.Status = corev1.NodeStatus{
			Addresses:  []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: scaleNodeIP(i).String()}},
			Conditions: []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue, LastHeartbeatTime: metav1.Now()}},
		}
		if err := retryTransient(ctx, func() error {
			_, err := c.CoreV1().Nodes().UpdateStatus(ctx, n, metav1.UpdateOptions{})
			return err
		}); err != nil {
			return fmt.Errorf("node %s status: %w", n.Name, err)
		}
		p.Add(1)
		return nil
	})
}

// createScaleNamespaces writes namespaces [0, n) with their labels.
func createScaleNamespaces(ctx context.Context, c kubernetes.Interface, n int) error {
	return parallel(ctx, 0, n, 8, func(i int) error {
		ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: scaleNS(i), Labels: scaleNSLabels(i)}}
		return retryTransient(ctx, func() error {
			_, err := c.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{})
			return ignoreExists(err)
		})
	})
}

// scaleNSLabels are namespace i's labels.
func scaleNSLabels(i int) map[string]string {
	return map[string]string{"team": fmt.Sprintf("team-%d", i%10), "env": []string{"prod", "dev"}[i%2]}
}

// createScalePods writes pods [from, to) bound to their simulated nodes,
// with status written as a kubelet would (Running, Ready, the IP).
// The cilium column's peers (nil otherwise) get each pod as its agent's
// endpoint.
func createScalePods(ctx context.Context, c kubernetes.Interface, l scaleLayout, from, to int, peers *ciliumPeers, progress io.Writer) error {
	p := newProgress(progress, "pods", to-from)
	defer p.Done()
	return parallel(ctx, from, to, 16, func(i int) error {
		sp := l.pod(i)
		if err := writeScalePod(ctx, c, sp); err != nil {
			return err
		}
		if peers != nil {
			peers.upsert(sp)
		}
		p.Add(1)
		return nil
	})
}

func writeScalePod(ctx context.Context, c kubernetes.Interface, sp scalePod) error {
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: sp.ns, Name: sp.name, Labels: sp.labels},
		Spec: corev1.PodSpec{NodeName: scaleNodeName(sp.node), Containers: []corev1.Container{{Name: "app", Image: "kpath/idle",
			Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}}}}}}
	var created *corev1.Pod
	if err := retryTransient(ctx, func() error {
		var err error
		created, err = c.CoreV1().Pods(sp.ns).Create(ctx, pod, metav1.CreateOptions{})
		if err != nil && ignoreExists(err) == nil {
			created, err = c.CoreV1().Pods(sp.ns).Get(ctx, sp.name, metav1.GetOptions{})
		}
		return err
	}); err != nil {
		return fmt.Errorf("pod %s/%s: %w", sp.ns, sp.name, err)
	}
	now := metav1.Now()
	created.Status = corev1.PodStatus{Phase: corev1.PodRunning, HostIP: scaleNodeIP(sp.node).String(),
		PodIP: sp.ip.String(), PodIPs: []corev1.PodIP{{IP: sp.ip.String()}}, StartTime: &now,
		Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue, LastTransitionTime: now}}}
	return retryTransient(ctx, func() error {
		_, err := c.CoreV1().Pods(sp.ns).UpdateStatus(ctx, created, metav1.UpdateOptions{})
		return err
	})
}

// parallel runs f for every i in [from, to) on workers goroutines and
// returns the first error (the rest are not started).
func parallel(ctx context.Context, from, to, workers int, f func(i int) error) error {
	next := make(chan int)
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		firstErr error
	)
	for range workers {
		wg.Go(func() {
			for i := range next {
				if err := f(i); err != nil {
					mu.Lock()
					if firstErr == nil {
						firstErr = err
					}
					mu.Unlock()
				}
			}
		})
	}
	for i := from; i < to; i++ {
		mu.Lock()
		failed := firstErr != nil
		mu.Unlock()
		if failed || ctx.Err() != nil {
			break
		}
		next <- i
	}
	close(next)
	wg.Wait()
	if firstErr == nil && ctx.Err() != nil {
		return ctx.Err()
	}
	return firstErr
}

// churnPod is the k-th pod the steady state creates: spread over the
// namespaces and nodes, addressed past the plan's pods of each node.
func (l scaleLayout) churnPod(k int) scalePod {
	nodes := l.nodes - 1
	node := k % nodes
	ip := scaleNodeCIDR(node).Addr().As4()
	ip[3] = byte(scaleMaxPerNode + 1 + (k/nodes)%scaleChurnPerNode)
	nsIdx, dep := k%l.namespaces(), k%l.deployments()
	ns := scaleNS(nsIdx)
	return scalePod{ns: ns, name: fmt.Sprintf("churn-%d", k), nsIdx: nsIdx, dep: dep, node: node, ip: netip.AddrFrom4(ip),
		labels: l.labels(ns, dep), slice: fmt.Sprintf("ces-%s-churn-%d", ns, k/(l.namespaces()*cesMaxEndpoints))}
}

// churn makes rate pod changes a second until stop: a third created, a
// third deleted (the plan's pods, spread over the namespaces), a third
// relabelled to another deployment's labels. It goes on from change from
// (what an earlier churn made) and returns how many it made. The cilium
// column's peers (nil otherwise) follow every change.
func churn(ctx context.Context, c kubernetes.Interface, l scaleLayout, rate int, stop <-chan struct{}, from int, peers *ciliumPeers) (changes int, err error) {
	t := time.NewTicker(time.Second / time.Duration(rate))
	defer t.Stop()
	for i := from; ; i++ {
		select {
		case <-stop:
			return changes, nil
		case <-ctx.Done():
			return changes, ctx.Err()
		case <-t.C:
		}
		var err error
		k := i / 3
		var mirror func()
		switch i % 3 {
		case 0:
			sp := l.churnPod(k)
			err = writeScalePod(ctx, c, sp)
			mirror = func() { peers.upsert(sp) }
		case 1:
			sp := l.pod(k * 7919 % l.fake()) // a prime stride: every namespace in turn
			// At once, as the kubelet confirms a deletion: no kubelet
			// runs on the simulated nodes, so a graceful delete would
			// leave the pod terminating for ever.
			err = c.CoreV1().Pods(sp.ns).Delete(ctx, sp.name, metav1.DeleteOptions{GracePeriodSeconds: new(int64)})
			mirror = func() { peers.remove(sp) }
		case 2:
			sp := l.pod((k*7919 + 1) % l.fake())
			sp.dep = (k + 1) % l.deployments()
			sp.labels = l.labels(sp.ns, sp.dep)
			err = retryTransient(ctx, func() error {
				p, err := c.CoreV1().Pods(sp.ns).Get(ctx, sp.name, metav1.GetOptions{})
				if err != nil {
					return err
				}
				p.Labels = sp.labels
				_, err = c.CoreV1().Pods(sp.ns).Update(ctx, p, metav1.UpdateOptions{})
				return err
			})
			mirror = func() { peers.upsert(sp) }
		}
		if err != nil && !apierrors.IsNotFound(err) {
			return changes, err
		}
		if err == nil && peers != nil {
			mirror()
		}
		changes++
	}
}
