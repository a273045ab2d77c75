package connectivity

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"slices"
	"strconv"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"

	"github.com/kpath/kpath/internal/lab"
)

// The matrix's pods: two backends and a client on each node. Clients run
// the echo server too, so a client can be its own Service's backend.
var pods = []struct {
	name, node string // node: index into the lab's nodes
	labels     map[string]string
}{
	{"be-1", "0", map[string]string{svcWeb: "yes", svcWith: "yes", svcSticky: "yes", labelNear: "yes"}},
	{"be-2", "1", map[string]string{svcSticky: "yes", labelNear: "yes"}},
	{"client-1", "0", map[string]string{svcSelf: "yes", svcWith: "yes"}},
	{"client-2", "1", nil},
}

// labelNear selects the backends of the trafficDistribution Services.
const labelNear = "near"

// External and load-balancer IPs, routed by the vnet to a node as a cloud
// network would: web's to node-1, web-local's external IP to node-1 (its
// backend's node) and its load-balancer IP to node-2 (no local backend).
var external = map[string][2]string{
	svcWeb:   {"192.168.201.10", "192.168.201.11"},
	svcLocal: {"192.168.201.20", "192.168.201.21"},
	svcGuard: {"", "192.168.201.31"}, // no external IP
}

// Env is a lab with the matrix's objects in place.
type Env struct {
	State *lab.State
	nodes []string
	// LabDir is the lab's directory (for the pods' service account files).
	LabDir  string
	podNS   map[string]string // client pod@node -> its namespace
	podUID  map[string]types.UID
	names   map[string]string // pod and node address -> its name
	addr    map[string]netip.AddrPort
	cgroups map[string]string // node -> cgroup
}

// Setup creates the matrix's namespace, pods and Services in a lab with at
// least two nodes, routes the external addresses in its vnet, and waits
// until every pod runs and every Service has its endpoints.
func Setup(ctx context.Context, st *lab.State, c kubernetes.Interface) (*Env, error) {
	if len(st.Nodes) < 2 {
		return nil, fmt.Errorf("the connectivity matrix needs a lab of at least 2 nodes, this one has %d", len(st.Nodes))
	}
	e := &Env{State: st, podNS: map[string]string{}, podUID: map[string]types.UID{}, names: map[string]string{}, addr: map[string]netip.AddrPort{}, cgroups: map[string]string{}}
	for _, n := range st.Nodes[:2] {
		e.nodes = append(e.nodes, n.Name)
		e.cgroups[n.Name] = n.Cgroup
		e.names[n.IP] = n.Name
	}
	if _, err := c.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: Namespace}}, metav1.CreateOptions{}); err != nil {
		return nil, fmt.Errorf("namespace %s: %w", Namespace, err)
	}
	for _, p := range pods {
		i, _ := strconv.Atoi(p.node)
		pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: p.name, Labels: p.labels},
			Spec: corev1.PodSpec{NodeName: e.nodes[i], Containers: []corev1.Container{lab.EchoContainer("echo", []corev1.ContainerPort{{ContainerPort: 8080}})}}}
		if _, err := c.CoreV1().Pods(Namespace).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
			return nil, fmt.Errorf("pod %s: %w", p.name, err)
		}
	}
	ports := []corev1.ServicePort{
		{Name: "tcp", Port: 80, TargetPort: intstr.FromInt32(8080), Protocol: corev1.ProtocolTCP},
		{Name: "udp", Port: 80, TargetPort: intstr.FromInt32(8080), Protocol: corev1.ProtocolUDP},
	}
	svc := func(name string, typ corev1.ServiceType, sel string, mod func(*corev1.ServiceSpec)) *corev1.Service {
		s := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: name},
			Spec: corev1.ServiceSpec{Type: typ, Selector: map[string]string{sel: "yes"}, Ports: ports}}
		if mod != nil {
			mod(&s.Spec)
		}
		return s
	}
	local := corev1.ServiceInternalTrafficPolicyLocal
	for _, s := range []*corev1.Service{
		svc(svcWeb, corev1.ServiceTypeLoadBalancer, svcWeb, func(s *corev1.ServiceSpec) { s.ExternalIPs = []string{external[svcWeb][0]} }),
		svc(svcLocal, corev1.ServiceTypeLoadBalancer, svcWeb, func(s *corev1.ServiceSpec) {
			s.ExternalIPs = []string{external[svcLocal][0]}
			s.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicyLocal
			s.InternalTrafficPolicy = &local
		}),
		svc(svcSelf, corev1.ServiceTypeClusterIP, svcSelf, nil),
		svc(svcWith, corev1.ServiceTypeClusterIP, svcWith, nil),
		svc(svcEmpty, corev1.ServiceTypeNodePort, "nothing", nil),
		svc(svcSticky, corev1.ServiceTypeClusterIP, svcSticky, func(s *corev1.ServiceSpec) { s.SessionAffinity = corev1.ServiceAffinityClientIP }),
		svc(svcGuard, corev1.ServiceTypeLoadBalancer, svcWeb, func(s *corev1.ServiceSpec) {
			s.LoadBalancerSourceRanges = []string{st.Nodes[0].PodCIDR, st.Nodes[0].IP + "/32"}
		}),
		svc(svcNearNode, corev1.ServiceTypeClusterIP, labelNear, func(s *corev1.ServiceSpec) {
			s.TrafficDistribution = ptr(corev1.ServiceTrafficDistributionPreferSameNode)
		}),
		svc(svcNearZone, corev1.ServiceTypeClusterIP, labelNear, func(s *corev1.ServiceSpec) {
			s.TrafficDistribution = ptr(corev1.ServiceTrafficDistributionPreferClose)
		}),
	} {
		created, err := c.CoreV1().Services(Namespace).Create(ctx, s, metav1.CreateOptions{})
		if err != nil {
			return nil, fmt.Errorf("service %s: %w", s.Name, err)
		}
		if ips, ok := external[s.Name]; ok {
			// No cloud controller in the lab: the test is the load balancer.
			created.Status.LoadBalancer.Ingress = []corev1.LoadBalancerIngress{{IP: ips[1]}}
			if _, err := c.CoreV1().Services(Namespace).UpdateStatus(ctx, created, metav1.UpdateOptions{}); err != nil {
				return nil, fmt.Errorf("service %s status: %w", s.Name, err)
			}
		}
	}
	// In-cluster clients list their namespace's pods, as a controller would.
	if _, err := c.RbacV1().RoleBindings(Namespace).Create(ctx, &rbacv1.RoleBinding{ObjectMeta: metav1.ObjectMeta{Name: "default-view"},
		Subjects: []rbacv1.Subject{{Kind: "ServiceAccount", Name: "default", Namespace: Namespace}},
		RoleRef:  rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: "view"}}, metav1.CreateOptions{}); err != nil {
		return nil, fmt.Errorf("role binding: %w", err)
	}
	for svc, ips := range external {
		for i, ip := range ips {
			if ip == "" {
				continue
			}
			via := st.Nodes[0].IP
			if svc == svcLocal && i == 1 {
				via = st.Nodes[1].IP
			}
			if out, err := exec.Command("ip", "-n", st.Vnet, "route", "replace", ip+"/32", "via", via).CombinedOutput(); err != nil {
				return nil, fmt.Errorf("route %s in %s: %v: %s", ip, st.Vnet, err, out)
			}
		}
	}
	if err := e.wait(ctx, c); err != nil {
		return nil, err
	}
	return e, nil
}

// Ready waits until the service dataplane of both nodes has programmed
// every Service: from the pod on each node, each ClusterIP with a backend
// it may use (for the trafficDistribution Services, its own node's), and from node-1's pod the NodePort of each node, answer TCP
// (a dataplane may lag the API server by seconds, kube-proxy's first sync
// more).
func (e *Env) Ready(ctx context.Context, kpath string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for i, node := range e.nodes {
		client := Client{Name: "pod@" + node, Kind: PodClient, Node: node}
		for _, tg := range Targets(e.nodes) {
			switch {
			case tg.Service == svcEmpty, tg.Kind == ExternalIP, tg.Kind == LBIP,
				tg.Service == svcLocal && (i > 0 || tg.Kind != ClusterIP), // iTP/eTP Local: node-1's backend
				tg.Kind == NodePort && (i > 0 || tg.Service != svcWeb):
				continue
			}
			c := Cell{Client: client, Socket: Sockets[0], Target: tg}
			for {
				r := e.probe(ctx, c, kpath)
				// A trafficDistribution Service is ready when the
				// dataplane follows its hints (it may lag the API server
				// by a sync): the client's own node's backend answers.
				near := tg.Service == svcNearNode || tg.Service == svcNearZone
				if r.Outcome == Answered && (!near || slices.Equal(backends(r), []string{fmt.Sprintf("be-%d", i+1)})) {
					break
				}
				if time.Now().After(deadline) {
					return fmt.Errorf("%s from %s not served after %s: %s %s", tg.Name, client.Name, timeout, r.Summary(), r.Err)
				}
				time.Sleep(200 * time.Millisecond)
			}
		}
	}
	return nil
}

// wait waits for the pods to run and the Services to hold their
// addresses and endpoints (the kubernetes Service's from the API server's
// own endpoint reconciler).
func (e *Env) wait(ctx context.Context, c kubernetes.Interface) error {
	deadline := time.Now().Add(2 * time.Minute)
	for ; ; time.Sleep(200 * time.Millisecond) {
		if time.Now().After(deadline) {
			return fmt.Errorf("connectivity objects not ready after 2 minutes")
		}
		l, err := c.CoreV1().Pods(Namespace).List(ctx, metav1.ListOptions{})
		if err != nil || len(l.Items) != len(pods) {
			continue
		}
		ready := 0
		for _, p := range l.Items {
			if p.Status.PodIP != "" && p.Status.Phase == corev1.PodRunning {
				ready++
				e.names[p.Status.PodIP] = p.Name
				if slices.Contains(e.nodes, p.Spec.NodeName) && (p.Name == "client-1" || p.Name == "client-2") {
					ns, err := e.State.PodNetns(p.Spec.NodeName, p.UID)
					if err != nil {
						return err
					}
					e.podNS["pod@"+p.Spec.NodeName] = ns
					e.podUID["pod@"+p.Spec.NodeName] = p.UID
				}
			}
		}
		if ready != len(pods) || !e.addresses(ctx, c) {
			continue
		}
		return nil
	}
}

// addresses records every target's address per protocol; false until
// every Service and its endpoints exist.
func (e *Env) addresses(ctx context.Context, c kubernetes.Interface) bool {
	for _, tg := range Targets(e.nodes) {
		ns := Namespace
		if tg.Service == svcKube {
			ns = "default"
		}
		s, err := c.CoreV1().Services(ns).Get(ctx, tg.Service, metav1.GetOptions{})
		if err != nil {
			return false
		}
		if tg.Service != svcEmpty {
			eps, err := c.DiscoveryV1().EndpointSlices(ns).List(ctx, metav1.ListOptions{LabelSelector: "kubernetes.io/service-name=" + tg.Service})
			if err != nil || len(eps.Items) == 0 || len(eps.Items[0].Endpoints) == 0 {
				return false
			}
			if (tg.Service == svcNearNode || tg.Service == svcNearZone) && !hinted(eps.Items[0].Endpoints, tg.Service == svcNearNode) {
				return false
			}
		}
		for _, p := range s.Spec.Ports {
			proto := "tcp"
			if p.Protocol == corev1.ProtocolUDP {
				proto = "udp"
			}
			var host string
			port := p.Port
			switch tg.Kind {
			case ClusterIP:
				host = s.Spec.ClusterIP
			case NodePort:
				host, port = e.nodeIP(tg.Node), p.NodePort
			case ExternalIP:
				host = external[tg.Service][0]
			case LBIP:
				host = external[tg.Service][1]
			}
			a, err := netip.ParseAddrPort(net.JoinHostPort(host, strconv.Itoa(int(port))))
			if err != nil {
				return false
			}
			e.addr[tg.Name+"/"+proto] = a
		}
	}
	return true
}

// hinted: both backends of a trafficDistribution Service are ready and
// carry the EndpointSlice controller's zone hints (and node hints for
// PreferSameNode), so that the matrix sees the settled state.
func hinted(eps []discoveryv1.Endpoint, nodes bool) bool {
	if len(eps) != 2 {
		return false
	}
	for _, ep := range eps {
		if ep.Conditions.Ready == nil || !*ep.Conditions.Ready || ep.Hints == nil || len(ep.Hints.ForZones) == 0 ||
			nodes && len(ep.Hints.ForNodes) == 0 {
			return false
		}
	}
	return true
}

func ptr[T any](v T) *T { return &v }

func (e *Env) nodeIP(name string) string {
	for _, n := range e.State.Nodes {
		if n.Name == name {
			return n.IP
		}
	}
	return ""
}
