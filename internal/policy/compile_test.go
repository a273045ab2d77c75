package policy

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"testing"

	"github.com/kpath/kpath/internal/model"
)

// randomCluster builds namespaces x, y, z (labelled), pods with labels and
// named ports from small vocabularies (so selectors collide often), two
// nodes, and n random policies.
func randomCluster(r *rand.Rand, n int) (*Store, []netip.Addr) {
	s := NewStore()
	vals := []string{"a", "b", "c"}
	for i, ns := range []string{"x", "y", "z"} {
		s.SetNamespace(ns, &model.Namespace{Name: ns, Labels: map[string]string{
			"kubernetes.io/metadata.name": ns, "team": vals[i%2], "env": vals[r.IntN(3)],
		}})
	}
	s.SetNode("n1", []netip.Addr{netip.MustParseAddr("192.168.0.1")})
	s.SetNode("n2", []netip.Addr{netip.MustParseAddr("192.168.0.2")})
	addrs := []netip.Addr{netip.MustParseAddr("192.168.0.1"), netip.MustParseAddr("192.168.0.2"),
		netip.MustParseAddr("8.8.8.8"), netip.MustParseAddr("10.0.9.9")}
	ip := netip.MustParseAddr("10.0.0.10")
	for _, ns := range []string{"x", "y", "z"} {
		for _, name := range []string{"a", "b", "c", "d"} {
			p := &model.Pod{Key: model.PodKey{Namespace: ns, Name: name}, IPs: []netip.Addr{ip},
				Labels: map[string]string{"pod": name, "app": vals[r.IntN(3)]}, NodeName: []string{"n1", "n2"}[r.IntN(2)]}
			if r.IntN(3) > 0 {
				p.NamedPorts = []model.NamedPort{{Name: "serve", Protocol: model.TCP, Port: uint16(80 + r.IntN(2))}}
				if r.IntN(2) == 0 {
					p.NamedPorts = append(p.NamedPorts, model.NamedPort{Name: "serve", Protocol: model.UDP, Port: 81})
				}
			}
			s.SetPod(p.Key, p)
			addrs = append(addrs, ip)
			ip = ip.Next()
		}
	}
	for i := range n {
		s.SetPolicy(model.PolicyKey{Namespace: []string{"x", "y", "z"}[r.IntN(3)], Name: fmt.Sprint("p", i)}, randomPolicy(r))
	}
	return s, addrs
}

func randomSelector(r *rand.Rand, keys ...string) *model.LabelSelector {
	sel := &model.LabelSelector{}
	vals := []string{"a", "b", "c"}
	switch r.IntN(5) {
	case 0: // {}
	case 1:
		sel.MatchLabels = map[string]string{keys[r.IntN(len(keys))]: vals[r.IntN(3)]}
	case 2:
		sel.MatchExpressions = []model.SelectorRequirement{{Key: keys[r.IntN(len(keys))], Operator: model.SelectorIn, Values: []string{vals[r.IntN(3)], vals[r.IntN(3)]}}}
	case 3:
		sel.MatchExpressions = []model.SelectorRequirement{{Key: keys[r.IntN(len(keys))], Operator: model.SelectorNotIn, Values: []string{vals[r.IntN(3)]}}}
	case 4:
		op := []model.SelectorOperator{model.SelectorExists, model.SelectorDoesNotExist}[r.IntN(2)]
		sel.MatchExpressions = []model.SelectorRequirement{{Key: []string{"app", "nope", "team"}[r.IntN(3)], Operator: op}}
	}
	return sel
}

func randomPolicy(r *rand.Rand) *model.NetworkPolicy {
	p := &model.NetworkPolicy{PodSelector: *randomSelector(r, "pod", "app")}
	switch r.IntN(3) {
	case 0:
		p.PolicyIngress = true
	case 1:
		p.PolicyEgress = true
	default:
		p.PolicyIngress, p.PolicyEgress = true, true
	}
	rules := func() []model.PolicyRule {
		var out []model.PolicyRule
		for range r.IntN(3) {
			var rule model.PolicyRule
			for range r.IntN(3) {
				var peer model.PolicyPeer
				switch r.IntN(4) {
				case 0:
					peer.PodSelector = randomSelector(r, "pod", "app")
				case 1:
					peer.NamespaceSelector = randomSelector(r, "team", "env", "kubernetes.io/metadata.name")
				case 2:
					peer.PodSelector = randomSelector(r, "pod", "app")
					peer.NamespaceSelector = randomSelector(r, "team", "env")
				case 3:
					cidrs := []string{"10.0.0.0/24", "10.0.0.8/29", "0.0.0.0/0", "192.168.0.0/16", "10.0.0.16/30"}
					b := &model.IPBlock{CIDR: netip.MustParsePrefix(cidrs[r.IntN(len(cidrs))])}
					if r.IntN(2) == 0 {
						ex := []string{"10.0.0.12/30", "10.0.0.16/32", "192.168.0.2/32", "10.0.0.0/28"}[r.IntN(4)]
						if e := netip.MustParsePrefix(ex); b.CIDR.Bits() <= e.Bits() && b.CIDR.Contains(e.Addr()) {
							b.Except = []netip.Prefix{e}
						}
					}
					peer.IPBlock = b
				}
				rule.Peers = append(rule.Peers, peer)
			}
			for range r.IntN(3) {
				pp := model.PolicyPort{Protocol: []model.Protocol{model.TCP, model.UDP, model.SCTP}[r.IntN(3)]}
				switch r.IntN(4) {
				case 0: // all ports of the protocol
				case 1:
					pp.Port = uint16(80 + r.IntN(2))
				case 2:
					pp.Port, pp.EndPort = uint16(79+r.IntN(3)), uint16(81+r.IntN(1000))
				case 3:
					pp.Name = "serve"
				}
				rule.Ports = append(rule.Ports, pp)
			}
			out = append(out, rule)
		}
		return out
	}
	p.Ingress, p.Egress = rules(), rules()
	return p
}

// TestCompilerMatchesEvaluator: for random clusters, every (source,
// destination, protocol, port) the compiled entries answer as the reference
// evaluator does, in both directions.
func TestCompilerMatchesEvaluator(t *testing.T) {
	ports := []uint16{79, 80, 81, 82, 1080, 65535}
	for seed := range uint64(60) {
		r := rand.New(rand.NewPCG(seed, 7))
		s, addrs := randomCluster(r, 1+r.IntN(6))
		sets := map[string]*SetEntries{}
		compiledFor := func(ip netip.Addr) (*SetEntries, *model.Pod) {
			p := s.Peer(ip).Pod
			if p == nil {
				return nil, nil
			}
			ps := s.SetOf(p)
			if sets[ps.Key] == nil {
				sets[ps.Key] = s.Compile(ps)
			}
			return sets[ps.Key], p
		}
		for _, src := range addrs {
			for _, dst := range addrs {
				for _, proto := range []model.Protocol{model.TCP, model.UDP, model.SCTP} {
					for _, port := range ports {
						want := s.EvaluateIPs(src, dst, proto, port)
						if e, p := compiledFor(src); e != nil {
							got, _ := e.Allows(false, s.IdentityOf(dst, p.NodeName), dst, proto, port)
							if got != want.Egress.Allowed {
								t.Fatalf("seed %d: egress %s -> %s %s/%d: compiled %v, evaluator %v (%s)", seed, src, dst, proto, port, got, want.Egress.Allowed, want.Egress.Reason)
							}
						}
						if e, p := compiledFor(dst); e != nil {
							id := s.IdentityOf(src, p.NodeName)
							got, _ := e.Allows(true, id, src, proto, port)
							got = got || id == IdentityHost // the datapath lets the node reach its pods
							if got != want.Ingress.Allowed {
								t.Fatalf("seed %d: ingress %s -> %s %s/%d: compiled %v, evaluator %v (%s)", seed, src, dst, proto, port, got, want.Ingress.Allowed, want.Ingress.Reason)
							}
						}
					}
				}
			}
		}
	}
}

func TestPortBlocks(t *testing.T) {
	for _, c := range []struct{ lo, hi uint16 }{{80, 80}, {0, 65535}, {1, 65535}, {79, 1080}, {32768, 60999}, {65534, 65535}} {
		blocks := portBlocks(c.lo, c.hi)
		covered := map[uint32]bool{}
		for _, b := range blocks {
			size := uint32(1) << (16 - b.bits)
			if uint32(b.port)%size != 0 {
				t.Errorf("%d-%d: block %d/%d not aligned", c.lo, c.hi, b.port, b.bits)
			}
			for p := uint32(b.port); p < uint32(b.port)+size; p++ {
				if covered[p] {
					t.Errorf("%d-%d: port %d covered twice", c.lo, c.hi, p)
				}
				covered[p] = true
			}
		}
		if len(covered) != int(c.hi)-int(c.lo)+1 || !covered[uint32(c.lo)] || !covered[uint32(c.hi)] {
			t.Errorf("%d-%d: covered %d ports in %d blocks", c.lo, c.hi, len(covered), len(blocks))
		}
		if len(blocks) > 30 {
			t.Errorf("%d-%d: %d blocks", c.lo, c.hi, len(blocks))
		}
	}
}
