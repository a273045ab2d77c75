package policy_test

import (
	"net/netip"
	"testing"
	"time"

	"github.com/kpath/kpath/internal/model"
	"github.com/kpath/kpath/internal/policy"
)

// TestCompileLargeAndOddInput: 10,000 ipBlocks (with exceptions), a port
// range of 65,535 ports and an empty selector compile quickly into entries
// whose size does not grow with the repetition, and decide as the
// evaluator does.
func TestCompileLargeAndOddInput(t *testing.T) {
	s := policy.NewStore()
	s.SetNamespace("x", &model.Namespace{Name: "x", Labels: map[string]string{"kubernetes.io/metadata.name": "x"}})
	self := &model.Pod{Key: model.PodKey{Namespace: "x", Name: "a"}, Labels: map[string]string{"app": "a"},
		IPs: []netip.Addr{netip.MustParseAddr("10.0.0.2")}, NodeName: "n1"}
	s.SetPod(self.Key, self)
	var peers []model.PolicyPeer
	base := netip.MustParseAddr("172.16.0.0")
	for i := range 10000 {
		a := base.As4()
		a[2], a[3] = byte(i/256), byte(i%256)
		cidr := netip.PrefixFrom(netip.AddrFrom4(a), 32)
		peers = append(peers, model.PolicyPeer{IPBlock: &model.IPBlock{CIDR: cidr}})
	}
	peers = append(peers, model.PolicyPeer{IPBlock: &model.IPBlock{CIDR: netip.MustParsePrefix("192.168.0.0/16"),
		Except: []netip.Prefix{netip.MustParsePrefix("192.168.1.0/24")}}})
	s.SetPolicy(model.PolicyKey{Namespace: "x", Name: "many"}, &model.NetworkPolicy{
		PodSelector: model.LabelSelector{}, PolicyIngress: true,
		Ingress: []model.PolicyRule{
			{Peers: peers, Ports: []model.PolicyPort{{Protocol: model.TCP, Port: 1, EndPort: 65535}}},
			{Peers: []model.PolicyPeer{{PodSelector: &model.LabelSelector{}}}, Ports: []model.PolicyPort{{Protocol: model.UDP, Port: 53}}},
		},
	})
	start := time.Now()
	ps := s.SetOf(self)
	e := s.Compile(ps)
	took := time.Since(start)
	if took > 2*time.Second {
		t.Errorf("compiling 10,000 ipBlocks took %s", took)
	}
	// One group for all the /32s (same rule, same ports), one for the rest
	// of 192.168.0.0/16, none for its exception: entries stay few.
	if len(e.CIDRs) != 10002 || len(e.Entries) > 40 {
		t.Errorf("%d prefixes and %d entries; want 10,002 prefixes and a few entries", len(e.CIDRs), len(e.Entries))
	}
	t.Logf("10,000 ipBlocks: %d prefixes, %d entries, compiled in %s", len(e.CIDRs), len(e.Entries), took.Round(time.Millisecond))
	for _, c := range []struct {
		src   string
		proto model.Protocol
		port  uint16
	}{
		{"172.16.0.1", model.TCP, 1}, {"172.16.39.15", model.TCP, 65535}, {"172.16.39.16", model.TCP, 80},
		{"192.168.1.9", model.TCP, 80}, {"192.168.2.9", model.TCP, 443}, {"10.0.0.2", model.UDP, 53},
		{"172.16.0.1", model.UDP, 53}, {"8.8.8.8", model.TCP, 80},
	} {
		src := netip.MustParseAddr(c.src)
		want := s.EvaluateIPs(src, self.IPs[0], c.proto, c.port).Ingress.Allowed
		got, _ := e.Allows(true, s.IdentityOf(src, "n1"), src, c.proto, c.port)
		if got != want {
			t.Errorf("%s -> a %s/%d: compiled %v, evaluator %v", c.src, c.proto, c.port, got, want)
		}
	}
}
