package k8s

import (
	"context"
	"net/netip"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes/fake"
	clienttesting "k8s.io/client-go/testing"

	"github.com/kpath/kpath/internal/model"
)

func prefix(s string) netip.Prefix { return netip.MustParsePrefix(s) }

func intPort(p int32) *intstr.IntOrString { v := intstr.FromInt32(p); return &v }

func namedPort(n string) *intstr.IntOrString { v := intstr.FromString(n); return &v }

func protoPtr(p corev1.Protocol) *corev1.Protocol { return &p }

var (
	appWeb   = metav1.LabelSelector{MatchLabels: map[string]string{"app": "web"}}
	modelWeb = model.LabelSelector{MatchLabels: map[string]string{"app": "web"}}
	// badOp is a selector with an operator the API does not have.
	badOp = &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "app", Operator: "Near", Values: []string{"web"}}}}
	// v4Peer is a valid peer to keep beside invalid ones.
	v4Peer      = networkingv1.NetworkPolicyPeer{IPBlock: &networkingv1.IPBlock{CIDR: "192.0.2.0/24"}}
	modelV4Peer = model.PolicyPeer{IPBlock: &model.IPBlock{CIDR: prefix("192.0.2.0/24")}}
)

func TestNetworkPolicyConversion(t *testing.T) {
	key := model.PolicyKey{Namespace: "ns", Name: "np"}
	tests := []struct {
		name string
		spec networkingv1.NetworkPolicySpec
		want model.NetworkPolicy
		// invalid: substrings Invalid must contain; none: Invalid must be empty.
		invalid []string
	}{
		{
			name: "no policyTypes and no egress: ingress only",
			spec: networkingv1.NetworkPolicySpec{PodSelector: appWeb},
			want: model.NetworkPolicy{PodSelector: modelWeb, PolicyIngress: true},
		},
		{
			name: "no policyTypes with egress rules: both",
			spec: networkingv1.NetworkPolicySpec{Egress: []networkingv1.NetworkPolicyEgressRule{{}}},
			want: model.NetworkPolicy{Egress: []model.PolicyRule{{}}, PolicyIngress: true, PolicyEgress: true},
		},
		{
			name: "explicit Egress only, ingress rules kept but not isolating",
			spec: networkingv1.NetworkPolicySpec{
				PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeEgress},
				Ingress:     []networkingv1.NetworkPolicyIngressRule{{}},
			},
			want: model.NetworkPolicy{Ingress: []model.PolicyRule{{}}, PolicyEgress: true},
		},
		{
			name:    "unknown policy type isolates both directions",
			spec:    networkingv1.NetworkPolicySpec{PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress, "Sideways"}},
			want:    model.NetworkPolicy{PolicyIngress: true, PolicyEgress: true},
			invalid: []string{"spec.policyTypes[1]"},
		},
		{
			name: "{} versus nil selectors, and both in one peer",
			spec: networkingv1.NetworkPolicySpec{Ingress: []networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{
				{PodSelector: &metav1.LabelSelector{}},
				{NamespaceSelector: &metav1.LabelSelector{}},
				{PodSelector: &appWeb, NamespaceSelector: &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{
					{Key: "team", Operator: metav1.LabelSelectorOpIn, Values: []string{"a", "b"}},
					{Key: "legacy", Operator: metav1.LabelSelectorOpDoesNotExist},
				}}},
			}}}},
			want: model.NetworkPolicy{PolicyIngress: true, Ingress: []model.PolicyRule{{Peers: []model.PolicyPeer{
				{PodSelector: &model.LabelSelector{}},
				{NamespaceSelector: &model.LabelSelector{}},
				{PodSelector: &modelWeb, NamespaceSelector: &model.LabelSelector{MatchExpressions: []model.SelectorRequirement{
					{Key: "team", Operator: model.SelectorIn, Values: []string{"a", "b"}},
					{Key: "legacy", Operator: model.SelectorDoesNotExist},
				}}},
			}}}},
		},
		{
			name: "numeric, named, missing port, endPort, UDP and SCTP",
			spec: networkingv1.NetworkPolicySpec{Ingress: []networkingv1.NetworkPolicyIngressRule{{Ports: []networkingv1.NetworkPolicyPort{
				{Port: intPort(80)},
				{Port: namedPort("http"), Protocol: protoPtr(corev1.ProtocolTCP)},
				{Protocol: protoPtr(corev1.ProtocolUDP)},
				{Port: intPort(30000), EndPort: ptr(int32(32767))},
				{Port: intPort(9), Protocol: protoPtr(corev1.ProtocolSCTP)},
			}}}},
			want: model.NetworkPolicy{PolicyIngress: true, Ingress: []model.PolicyRule{{Ports: []model.PolicyPort{
				{Protocol: model.TCP, Port: 80},
				{Protocol: model.TCP, Name: "http"},
				{Protocol: model.UDP},
				{Protocol: model.TCP, Port: 30000, EndPort: 32767},
				{Protocol: model.SCTP, Port: 9},
			}}}},
		},
		{
			name: "ipBlock with except, masked",
			spec: networkingv1.NetworkPolicySpec{Egress: []networkingv1.NetworkPolicyEgressRule{{To: []networkingv1.NetworkPolicyPeer{
				{IPBlock: &networkingv1.IPBlock{CIDR: "10.1.2.3/8", Except: []string{"10.9.0.1/16", "10.10.0.0/16"}}},
			}}}},
			want: model.NetworkPolicy{PolicyIngress: true, PolicyEgress: true, Egress: []model.PolicyRule{{Peers: []model.PolicyPeer{
				{IPBlock: &model.IPBlock{CIDR: prefix("10.0.0.0/8"), Except: []netip.Prefix{prefix("10.9.0.0/16"), prefix("10.10.0.0/16")}}},
			}}}},
		},
		{
			name: "IPv6 ipBlock beside an IPv4 one: dropped alone",
			spec: networkingv1.NetworkPolicySpec{Ingress: []networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{
				{IPBlock: &networkingv1.IPBlock{CIDR: "2001:db8::/32"}}, v4Peer,
			}}}},
			want: model.NetworkPolicy{PolicyIngress: true, Ingress: []model.PolicyRule{{Peers: []model.PolicyPeer{modelV4Peer}}}},
		},
		{
			name: "IPv6-only rule is dropped, not widened to every peer",
			spec: networkingv1.NetworkPolicySpec{Ingress: []networkingv1.NetworkPolicyIngressRule{
				{From: []networkingv1.NetworkPolicyPeer{{IPBlock: &networkingv1.IPBlock{CIDR: "2001:db8::/32"}}, {IPBlock: &networkingv1.IPBlock{CIDR: "::ffff:10.0.0.0/104"}}}},
				{From: []networkingv1.NetworkPolicyPeer{v4Peer}, Ports: []networkingv1.NetworkPolicyPort{{Port: intPort(443)}}},
			}},
			want: model.NetworkPolicy{PolicyIngress: true, Ingress: []model.PolicyRule{
				{Peers: []model.PolicyPeer{modelV4Peer}, Ports: []model.PolicyPort{{Protocol: model.TCP, Port: 443}}},
			}},
			invalid: []string{"spec.ingress[0].from", "rule dropped"},
		},
		{
			name: "bad CIDR: the peer is dropped, the rule keeps its good peer",
			spec: networkingv1.NetworkPolicySpec{Ingress: []networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{
				{IPBlock: &networkingv1.IPBlock{CIDR: "10.0.0.0/33"}}, v4Peer,
			}}}},
			want:    model.NetworkPolicy{PolicyIngress: true, Ingress: []model.PolicyRule{{Peers: []model.PolicyPeer{modelV4Peer}}}},
			invalid: []string{"spec.ingress[0].from[0]", "ipBlock.cidr"},
		},
		{
			name: "bad CIDR as the only peer: the rule is dropped, ingress stays isolated",
			spec: networkingv1.NetworkPolicySpec{Ingress: []networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{
				{IPBlock: &networkingv1.IPBlock{CIDR: "10.0.0.0"}},
			}}}},
			want:    model.NetworkPolicy{PolicyIngress: true},
			invalid: []string{"spec.ingress[0].from[0]", "ipBlock.cidr", "rule dropped"},
		},
		{
			name: "bad except drops the peer rather than widening the block",
			spec: networkingv1.NetworkPolicySpec{Egress: []networkingv1.NetworkPolicyEgressRule{{To: []networkingv1.NetworkPolicyPeer{
				{IPBlock: &networkingv1.IPBlock{CIDR: "10.0.0.0/8", Except: []string{"10.1.0.0/x"}}},
			}}}},
			want:    model.NetworkPolicy{PolicyIngress: true, PolicyEgress: true},
			invalid: []string{"spec.egress[0].to[0]", "ipBlock.except[0]"},
		},
		{
			name: "bad selector operator in a peer: the peer is dropped",
			spec: networkingv1.NetworkPolicySpec{Ingress: []networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{
				{PodSelector: &appWeb, NamespaceSelector: badOp}, v4Peer,
			}}}},
			want:    model.NetworkPolicy{PolicyIngress: true, Ingress: []model.PolicyRule{{Peers: []model.PolicyPeer{modelV4Peer}}}},
			invalid: []string{"spec.ingress[0].from[0]", "namespaceSelector", "Near"},
		},
		{
			name: "bad top-level podSelector: every pod isolated, no rules, policyTypes kept",
			spec: networkingv1.NetworkPolicySpec{
				PodSelector: *badOp,
				Ingress:     []networkingv1.NetworkPolicyIngressRule{{}},
				Egress:      []networkingv1.NetworkPolicyEgressRule{{}},
			},
			want:    model.NetworkPolicy{PolicyIngress: true, PolicyEgress: true},
			invalid: []string{"spec.podSelector"},
		},
		{
			name:    "In with no values is a bad selector",
			spec:    networkingv1.NetworkPolicySpec{PodSelector: metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "a", Operator: metav1.LabelSelectorOpIn}}}},
			want:    model.NetworkPolicy{PolicyIngress: true},
			invalid: []string{"spec.podSelector"},
		},
		{
			name:    "peer with neither selector nor ipBlock is dropped",
			spec:    networkingv1.NetworkPolicySpec{Ingress: []networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{{}}}}},
			want:    model.NetworkPolicy{PolicyIngress: true},
			invalid: []string{"spec.ingress[0].from[0]"},
		},
		{
			name: "ipBlock with a selector is dropped",
			spec: networkingv1.NetworkPolicySpec{Ingress: []networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{
				{IPBlock: &networkingv1.IPBlock{CIDR: "10.0.0.0/8"}, PodSelector: &appWeb}, v4Peer,
			}}}},
			want:    model.NetworkPolicy{PolicyIngress: true, Ingress: []model.PolicyRule{{Peers: []model.PolicyPeer{modelV4Peer}}}},
			invalid: []string{"spec.ingress[0].from[0]"},
		},
		{
			name: "bad ports drop their rule, never becoming every port",
			spec: networkingv1.NetworkPolicySpec{Egress: []networkingv1.NetworkPolicyEgressRule{
				{Ports: []networkingv1.NetworkPolicyPort{{Port: intPort(53)}, {Port: intPort(53), Protocol: protoPtr("ICMP")}}},
				{Ports: []networkingv1.NetworkPolicyPort{{Port: namedPort("dns"), EndPort: ptr(int32(60))}}},
				{Ports: []networkingv1.NetworkPolicyPort{{Port: intPort(0)}}},
				{Ports: []networkingv1.NetworkPolicyPort{{Port: namedPort("")}}},
				{Ports: []networkingv1.NetworkPolicyPort{{Port: intPort(100), EndPort: ptr(int32(99))}}},
				{Ports: []networkingv1.NetworkPolicyPort{{EndPort: ptr(int32(99))}}},
				{Ports: []networkingv1.NetworkPolicyPort{{Port: intPort(70000)}}},
				{Ports: []networkingv1.NetworkPolicyPort{{Port: intPort(53), Protocol: protoPtr(corev1.ProtocolUDP)}}},
			}},
			want: model.NetworkPolicy{PolicyIngress: true, PolicyEgress: true, Egress: []model.PolicyRule{
				{Ports: []model.PolicyPort{{Protocol: model.UDP, Port: 53}}},
			}},
			invalid: []string{"spec.egress[0].ports[1]", "ICMP", "spec.egress[1].ports[0]", "spec.egress[2].ports[0]",
				"spec.egress[3].ports[0]", "spec.egress[4].ports[0]", "spec.egress[5].ports[0]", "spec.egress[6].ports[0]"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			np := &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "np"}, Spec: tt.spec}
			got := NetworkPolicy(np)
			want := tt.want
			want.Key = key
			invalid := got.Invalid
			got.Invalid, want.Invalid = "", ""
			if !reflect.DeepEqual(*got, want) {
				t.Errorf("got  %+v\nwant %+v", *got, want)
			}
			if len(tt.invalid) == 0 && invalid != "" {
				t.Errorf("Invalid = %q, want none", invalid)
			}
			if len(tt.invalid) > 0 && invalid == "" {
				t.Errorf("Invalid empty, want it to mention %q", tt.invalid)
			}
			for _, s := range tt.invalid {
				if !strings.Contains(invalid, s) {
					t.Errorf("Invalid = %q, want it to mention %q", invalid, s)
				}
			}
		})
	}
}

func TestPodConversion(t *testing.T) {
	always := corev1.ContainerRestartPolicyAlways
	base := func() *corev1.Pod {
		return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "p", Labels: map[string]string{"app": "web"}}}
	}
	tests := []struct {
		name string
		pod  func(p *corev1.Pod)
		want model.Pod
	}{
		{
			name: "named ports from containers and sidecars, sorted and de-duplicated",
			pod: func(p *corev1.Pod) {
				p.Spec.Containers = []corev1.Container{
					{Name: "app", Ports: []corev1.ContainerPort{
						{Name: "http", ContainerPort: 8080},
						{ContainerPort: 9999}, // unnamed: not a named port
						{Name: "dns", ContainerPort: 53, Protocol: corev1.ProtocolUDP},
						{Name: "dns", ContainerPort: 53, Protocol: corev1.ProtocolTCP},
					}},
					{Name: "other", Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080, Protocol: corev1.ProtocolTCP}}},
				}
				p.Spec.InitContainers = []corev1.Container{
					{Name: "sidecar", RestartPolicy: &always, Ports: []corev1.ContainerPort{{Name: "metrics", ContainerPort: 9090, Protocol: corev1.ProtocolSCTP}}},
					{Name: "init", Ports: []corev1.ContainerPort{{Name: "setup", ContainerPort: 1234}}},
				}
			},
			want: model.Pod{NamedPorts: []model.NamedPort{
				{Name: "dns", Protocol: model.TCP, Port: 53},
				{Name: "dns", Protocol: model.UDP, Port: 53},
				{Name: "http", Protocol: model.TCP, Port: 8080},
				{Name: "metrics", Protocol: model.SCTP, Port: 9090},
			}},
		},
		{
			name: "IPv4 only from podIPs; node and host network",
			pod: func(p *corev1.Pod) {
				p.Spec.NodeName, p.Spec.HostNetwork = "n1", true
				p.Status.PodIP = "10.244.0.9"
				p.Status.PodIPs = []corev1.PodIP{{IP: "fd00::5"}, {IP: "10.244.0.5"}}
			},
			want: model.Pod{IPs: []netip.Addr{netip.MustParseAddr("10.244.0.5")}, NodeName: "n1", HostNetwork: true},
		},
		{
			name: "podIP when podIPs is empty",
			pod:  func(p *corev1.Pod) { p.Status.PodIP = "10.244.0.9" },
			want: model.Pod{IPs: []netip.Addr{netip.MustParseAddr("10.244.0.9")}},
		},
		{
			name: "being deleted: still a pod with its address",
			pod: func(p *corev1.Pod) {
				p.DeletionTimestamp = &metav1.Time{Time: time.Unix(1, 0)}
				p.Status.Phase = corev1.PodRunning
				p.Status.PodIPs = []corev1.PodIP{{IP: "10.244.0.7"}}
			},
			want: model.Pod{IPs: []netip.Addr{netip.MustParseAddr("10.244.0.7")}},
		},
		{
			name: "succeeded is terminal",
			pod:  func(p *corev1.Pod) { p.Status.Phase = corev1.PodSucceeded },
			want: model.Pod{Terminal: true},
		},
		{
			name: "failed is terminal",
			pod:  func(p *corev1.Pod) { p.Status.Phase = corev1.PodFailed },
			want: model.Pod{Terminal: true},
		},
		{
			name: "pending is not terminal",
			pod:  func(p *corev1.Pod) { p.Status.Phase = corev1.PodPending },
			want: model.Pod{},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := base()
			tt.pod(p)
			want := tt.want
			want.Key = model.PodKey{Namespace: "ns", Name: "p"}
			want.Labels = map[string]string{"app": "web"}
			if got := Pod(p); !reflect.DeepEqual(*got, want) {
				t.Errorf("got  %+v\nwant %+v", *got, want)
			}
		})
	}
}

func TestNamespaceConversion(t *testing.T) {
	n := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "ns", Labels: map[string]string{"team": "a"}}}
	want := model.Namespace{Name: "ns", Labels: map[string]string{"team": "a"}}
	if got := Namespace(n); !reflect.DeepEqual(*got, want) {
		t.Errorf("got %+v, want %+v", *got, want)
	}
}

// recordingSink is a PolicySink that keeps the latest value of each key.
type recordingSink struct {
	mu         sync.Mutex
	pods       map[model.PodKey]*model.Pod
	namespaces map[string]*model.Namespace
	policies   map[model.PolicyKey]*model.NetworkPolicy
}

func (s *recordingSink) SetPod(k model.PodKey, p *model.Pod) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.pods[k] = p
}

func (s *recordingSink) SetNamespace(name string, n *model.Namespace) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.namespaces[name] = n
}

func (s *recordingSink) SetPolicy(k model.PolicyKey, p *model.NetworkPolicy) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.policies[k] = p
}

// eventually polls cond (under the sink's lock) until it holds.
func (s *recordingSink) eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		s.mu.Lock()
		ok := cond()
		s.mu.Unlock()
		if ok {
			return
		}
	}
	t.Fatalf("timed out waiting for %s", what)
}

func TestWatcherFeedsPolicySink(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	client := fake.NewClientset(
		&corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "p", Labels: map[string]string{"app": "web"}},
			Status: corev1.PodStatus{PodIP: "10.244.0.5"}},
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "ns", Labels: map[string]string{"team": "a"}}},
		&networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "np"}},
	)
	// The fake client loses events between an informer's list and its
	// watch: know when each watch has started before changing anything.
	var mu sync.Mutex
	watching := map[string]bool{}
	client.PrependWatchReactor("*", func(a clienttesting.Action) (bool, watch.Interface, error) {
		w, err := client.Tracker().Watch(a.GetResource(), a.GetNamespace())
		if err != nil {
			return false, nil, err
		}
		mu.Lock()
		watching[a.GetResource().Resource] = true
		mu.Unlock()
		return true, w, nil
	})
	sink := &recordingSink{pods: map[model.PodKey]*model.Pod{}, namespaces: map[string]*model.Namespace{}, policies: map[model.PolicyKey]*model.NetworkPolicy{}}
	w, err := NewWatcher(client, NewCache(), WatchOptions{NodesOnly: true, Policy: sink})
	if err != nil {
		t.Fatal(err)
	}
	w.Start(ctx)
	if err := w.WaitForSync(ctx, 10*time.Second); err != nil {
		t.Fatal(err)
	}

	pk, polk := model.PodKey{Namespace: "ns", Name: "p"}, model.PolicyKey{Namespace: "ns", Name: "np"}
	sink.eventually(t, "the listed objects", func() bool {
		p, n, np := sink.pods[pk], sink.namespaces["ns"], sink.policies[polk]
		return p != nil && len(p.IPs) == 1 && p.Labels["app"] == "web" && n != nil && n.Labels["team"] == "a" && np != nil && np.PolicyIngress
	})

	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		mu.Lock()
		ok := watching["pods"] && watching["namespaces"] && watching["networkpolicies"]
		mu.Unlock()
		if ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("informers did not start watching")
		}
	}
	if err := client.CoreV1().Pods("ns").Delete(ctx, "p", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := client.CoreV1().Namespaces().Delete(ctx, "ns", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := client.NetworkingV1().NetworkPolicies("ns").Delete(ctx, "np", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	sink.eventually(t, "the deletions", func() bool {
		p, pok := sink.pods[pk]
		n, nok := sink.namespaces["ns"]
		np, npok := sink.policies[polk]
		return pok && p == nil && nok && n == nil && npok && np == nil
	})
}
