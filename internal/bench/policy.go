package bench

import (
	"context"
	"fmt"
	"io"
	"net/netip"
	"slices"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/util/retry"

	"github.com/kpath/kpath/internal/model"
)

// E3's policy part: NetworkPolicy change -> enforced on the node, with
// Policies loaded as BENCHMARKS.md's E2 plan has them (four kinds per
// namespace: default-deny ingress; api from web of the same namespace on
// 8080; web from the namespaces of the same team on 80 and 443; db egress to
// 10.0.0.0/8 except 10.96.0.0/12 on 5432), three pods per namespace (web,
// api, db) as API objects, the first LocalPods of them on the measured node.

// PolicyResult is what the policy part of E3 measured.
type PolicyResult struct {
	Policies   int           `json:"policies"`
	Namespaces int           `json:"namespaces"`
	Pods       int           `json:"pods"`
	LocalPods  int           `json:"local_pods"`
	LoadTime   time.Duration `json:"load_ns"`
	Changes    int           `json:"changes"`
	P50, P90   time.Duration `json:"-"`
	P99, Max   time.Duration `json:"-"`
	P50ms      float64       `json:"change_to_enforced_p50_ms"`
	P99ms      float64       `json:"change_to_enforced_p99_ms"`
}

func policyNS(i int) string { return fmt.Sprintf("kpath-bench-pol-%03d", i) }

// policyPodIP: 10.64.0.0/11, clear of the endpoints (10.128.0.0/10) and
// services (10.96.0.0/12).
func policyPodIP(i int) netip.Addr {
	return netip.AddrFrom4([4]byte{10, 64 + byte(i/62500), byte(i / 250 % 250), byte(i%250 + 1)})
}

var benchTiers = []string{"web", "api", "db"}

func benchPolicies(ns string) []*networkingv1.NetworkPolicy { return benchPolicySet(ns, 0) }

// benchPolicySet is the plan's four policies of ns; variant 1 is E2 (c)'s
// second four: the same kinds, with their ports one higher and the
// default deny scoped to the db tier.
func benchPolicySet(ns string, variant int) []*networkingv1.NetworkPolicy {
	tcp := corev1.ProtocolTCP
	port := func(p int32) networkingv1.NetworkPolicyPort {
		v := intstr.FromInt32(p + int32(variant))
		return networkingv1.NetworkPolicyPort{Protocol: &tcp, Port: &v}
	}
	tier := func(t string) metav1.LabelSelector {
		return metav1.LabelSelector{MatchLabels: map[string]string{"tier": t}}
	}
	meta := func(name string) metav1.ObjectMeta {
		if variant > 0 {
			name = fmt.Sprintf("%s-%d", name, variant+1)
		}
		return metav1.ObjectMeta{Namespace: ns, Name: name}
	}
	web, denied := tier("web"), metav1.LabelSelector{}
	if variant > 0 {
		denied = tier("db")
	}
	return []*networkingv1.NetworkPolicy{
		{ObjectMeta: meta("default-deny"), Spec: networkingv1.NetworkPolicySpec{PodSelector: denied, PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress}}},
		{ObjectMeta: meta("api-from-web"), Spec: networkingv1.NetworkPolicySpec{PodSelector: tier("api"),
			Ingress: []networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{{PodSelector: &web}}, Ports: []networkingv1.NetworkPolicyPort{port(8080)}}}}},
		{ObjectMeta: meta("web-from-team"), Spec: networkingv1.NetworkPolicySpec{PodSelector: web,
			Ingress: []networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{{NamespaceSelector: &metav1.LabelSelector{
				MatchLabels: map[string]string{"team": teamOf(ns)}}}}, Ports: []networkingv1.NetworkPolicyPort{port(80), port(443)}}}}},
		{ObjectMeta: meta("db-egress"), Spec: networkingv1.NetworkPolicySpec{PodSelector: tier("db"), PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeEgress},
			Egress: []networkingv1.NetworkPolicyEgressRule{{To: []networkingv1.NetworkPolicyPeer{{IPBlock: &networkingv1.IPBlock{CIDR: "10.0.0.0/8", Except: []string{"10.96.0.0/12"}}}},
				Ports: []networkingv1.NetworkPolicyPort{port(5432)}}}}},
	}
}

func teamOf(ns string) string { return fmt.Sprintf("team-%d", len(ns)%10+int(ns[len(ns)-1]-'0')) }

func retryTransient(_ context.Context, f func() error) error {
	return retry.OnError(apiBackoff, transientAPIError, f)
}

func ignoreExists(err error) error {
	if apierrors.IsAlreadyExists(err) { // an earlier try timed out but was written
		return nil
	}
	return err
}

// loadPolicies creates the namespaces, pods (status written) and policies,
// with parallel writers.
func loadPolicies(ctx context.Context, c kubernetes.Interface, namespaces, localPods int, node string, progress io.Writer) ([]model.PodKey, error) {
	var local []model.PodKey
	var mu sync.Mutex
	sem := make(chan struct{}, 16)
	errc := make(chan error, 1)
	var wg sync.WaitGroup
	for i := range namespaces {
		ns := policyNS(i)
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			err := retryTransient(ctx, func() error {
				_, err := c.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns,
					Labels: map[string]string{"team": teamOf(ns)}}}, metav1.CreateOptions{})
				if err = ignoreExists(err); err != nil {
					return err
				}
				// No controller manager here makes it: pods need it to exist.
				_, err = c.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "default"}}, metav1.CreateOptions{})
				return ignoreExists(err)
			})
			for j, tier := range benchTiers {
				if err != nil {
					break
				}
				idx := i*len(benchTiers) + j
				podNode := "bench-remote"
				if idx < localPods {
					podNode = node
				}
				err = retryTransient(ctx, func() error {
					p, err := c.CoreV1().Pods(ns).Create(ctx, &corev1.Pod{
						ObjectMeta: metav1.ObjectMeta{Name: tier, Labels: map[string]string{"tier": tier, "app": tier}},
						Spec:       corev1.PodSpec{NodeName: podNode, Containers: []corev1.Container{{Name: "c", Image: "bench"}}},
					}, metav1.CreateOptions{})
					if err != nil {
						return ignoreExists(err)
					}
					ip := policyPodIP(idx).String()
					p.Status = corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ip, PodIPs: []corev1.PodIP{{IP: ip}}}
					_, err = c.CoreV1().Pods(ns).UpdateStatus(ctx, p, metav1.UpdateOptions{})
					return err
				})
				if err == nil && podNode == node {
					mu.Lock()
					local = append(local, model.PodKey{Namespace: ns, Name: tier})
					mu.Unlock()
				}
			}
			for _, p := range benchPolicies(ns) {
				if err != nil {
					break
				}
				err = retryTransient(ctx, func() error {
					_, err := c.NetworkingV1().NetworkPolicies(ns).Create(ctx, p, metav1.CreateOptions{})
					return ignoreExists(err)
				})
			}
			if err != nil {
				select {
				case errc <- fmt.Errorf("load namespace %s: %w", ns, err):
				default:
				}
			}
		})
		if (i+1)%50 == 0 {
			fmt.Fprintf(progress, "  %d/%d namespaces\n", i+1, namespaces)
		}
	}
	wg.Wait()
	select {
	case err := <-errc:
		return nil, err
	default:
	}
	return local, nil
}

// policyTarget is a local pod a timed policy change selects.
type policyTarget struct {
	ns       string
	selector map[string]string
	ip       netip.Addr
}

// decideFunc says whether the node's maps allow peer's new TCP connection
// to local's port 9999.
type decideFunc func(local, peer netip.Addr) (bool, error)

// timePolicyChanges creates, then deletes, a policy that allows one more
// source to a local pod, and times each from the API call to the node's
// datapath deciding that source's connections the new way. Changes start
// at most one per pace.
func timePolicyChanges(ctx context.Context, c kubernetes.Interface, decide decideFunc, targets []policyTarget, changes int, pace time.Duration) ([]time.Duration, error) {
	lat := make([]time.Duration, 0, changes)
	for i := range changes {
		t := targets[i/2%len(targets)]
		create := i%2 == 0
		src := netip.AddrFrom4([4]byte{198, 51, 100, byte(i/2%250 + 1)})
		name := "probe-allow"
		start := time.Now()
		var err error
		if create {
			p := &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: t.ns, Name: name}, Spec: networkingv1.NetworkPolicySpec{
				PodSelector: metav1.LabelSelector{MatchLabels: t.selector},
				Ingress:     []networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{{IPBlock: &networkingv1.IPBlock{CIDR: src.String() + "/32"}}}}},
			}}
			_, err = c.NetworkingV1().NetworkPolicies(t.ns).Create(ctx, p, metav1.CreateOptions{})
		} else {
			src = netip.AddrFrom4([4]byte{198, 51, 100, byte((i-1)/2%250 + 1)})
			err = c.NetworkingV1().NetworkPolicies(t.ns).Delete(ctx, name, metav1.DeleteOptions{})
		}
		if err != nil {
			return nil, fmt.Errorf("policy change %d: %w", i, err)
		}
		for {
			allowed, err := decide(t.ip, src)
			if err != nil {
				return nil, err
			}
			if allowed == create {
				lat = append(lat, time.Since(start))
				break
			}
			if time.Since(start) > 30*time.Second {
				return nil, fmt.Errorf("policy change %d (%s/%s, create %v) not enforced after 30s", i, t.ns, t.ip, create)
			}
			time.Sleep(200 * time.Microsecond)
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(pace - time.Since(start)):
		}
	}
	return lat, nil
}

func percentiles(lat []time.Duration) (p50, p90, p99, maxv time.Duration) {
	slices.Sort(lat)
	pct := func(p int) time.Duration { return lat[min(len(lat)-1, len(lat)*p/100)] }
	return pct(50), pct(90), pct(99), lat[len(lat)-1]
}
