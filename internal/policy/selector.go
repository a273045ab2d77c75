package policy

import (
	"fmt"
	"net/netip"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"

	"github.com/kpath/kpath/internal/model"
)

// Selector converts a model selector into apimachinery's own selector, so
// matching follows the API's code and not a copy of it. A nil selector is
// missing, which callers treat differently from empty; here it is an error.
func Selector(s *model.LabelSelector) (labels.Selector, error) {
	if s == nil {
		return nil, fmt.Errorf("missing selector")
	}
	ls := &metav1.LabelSelector{MatchLabels: s.MatchLabels}
	for _, r := range s.MatchExpressions {
		ls.MatchExpressions = append(ls.MatchExpressions, metav1.LabelSelectorRequirement{
			Key: r.Key, Operator: metav1.LabelSelectorOperator(r.Operator), Values: r.Values,
		})
	}
	sel, err := metav1.LabelSelectorAsSelector(ls)
	if err != nil {
		return nil, fmt.Errorf("label selector %s: %w", s, err)
	}
	return sel, nil
}

// compiled is a NetworkPolicy with its selectors parsed once.
type compiled struct {
	*model.NetworkPolicy
	pods    labels.Selector // spec.podSelector
	ingress []compiledRule
	egress  []compiledRule
	// problem is why part of the policy could not be used; the policy then
	// selects what it may select and allows less, never more.
	problem string
}

type compiledRule struct {
	all   bool // no peers: every peer
	peers []compiledPeer
	ports []model.PolicyPort
}

type compiledPeer struct {
	pods, namespaces labels.Selector // nil: the field is missing
	block            *model.IPBlock
	broken           bool // a selector failed to parse: matches nothing
}

func compilePolicy(p *model.NetworkPolicy) *compiled {
	c := &compiled{NetworkPolicy: p, problem: p.Invalid}
	sel, err := Selector(&p.PodSelector)
	if err != nil {
		// Fail closed: isolate every pod of the namespace, allow nothing.
		c.pods = labels.Everything()
		c.problem = fmt.Sprintf("spec.podSelector: %v", err)
		return c
	}
	c.pods = sel
	c.ingress = compileRules(p.Ingress, c)
	c.egress = compileRules(p.Egress, c)
	return c
}

func compileRules(rules []model.PolicyRule, c *compiled) []compiledRule {
	out := make([]compiledRule, 0, len(rules))
	for _, r := range rules {
		cr := compiledRule{all: len(r.Peers) == 0, ports: r.Ports}
		for _, p := range r.Peers {
			cp := compiledPeer{block: p.IPBlock}
			var err error
			if p.PodSelector != nil {
				if cp.pods, err = Selector(p.PodSelector); err != nil {
					cp.broken = true
				}
			}
			if p.NamespaceSelector != nil && !cp.broken {
				if cp.namespaces, err = Selector(p.NamespaceSelector); err != nil {
					cp.broken = true
				}
			}
			if p.IPBlock == nil && p.PodSelector == nil && p.NamespaceSelector == nil {
				cp.broken = true // an empty peer is rejected by the API; match nothing
				err = fmt.Errorf("peer with no selector and no ipBlock")
			}
			if cp.broken && c.problem == "" {
				c.problem = fmt.Sprintf("peer: %v", err)
			}
			cr.peers = append(cr.peers, cp)
		}
		out = append(out, cr)
	}
	return out
}

// inBlock reports whether ip is in b's CIDR and in none of its exceptions.
func inBlock(b *model.IPBlock, ip netip.Addr) bool {
	if !b.CIDR.Contains(ip) {
		return false
	}
	for _, e := range b.Except {
		if e.Contains(ip) {
			return false
		}
	}
	return true
}
