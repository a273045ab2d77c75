// Package policytest generates random clusters and policies for tests
// that check the compiled datapath against the reference evaluator.
package policytest

import (
	"fmt"
	"math/rand/v2"
	"net/netip"

	"github.com/kpath/kpath/internal/model"
	"github.com/kpath/kpath/internal/policy"
)

// RandomCluster builds namespaces x, y, z (labelled), pods with labels and
// named ports from small vocabularies (so selectors collide often), two
// nodes, and n random policies.
func RandomCluster(r *rand.Rand, n int) (*policy.Store, []netip.Addr) {
	s := policy.NewStore()
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
		s.SetPolicy(model.PolicyKey{Namespace: []string{"x", "y", "z"}[r.IntN(3)], Name: fmt.Sprint("p", i)}, RandomPolicy(r))
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

// RandomPolicy is a policy with random selectors, peers and ports.
func RandomPolicy(r *rand.Rand) *model.NetworkPolicy {
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
