package policy

import (
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/kpath/kpath/internal/model"
)

// TestEvaluateSpec checks the reference evaluator against the Kubernetes
// NetworkPolicy specification: the networking.k8s.io/v1 API reference and
// the concepts page
// (https://kubernetes.io/docs/concepts/services-networking/network-policies/).
// Each case is named after the sentence of the spec it checks; the parts in
// brackets are kpath's documented choices where the spec leaves room.
//
// The cluster every case runs in (specWorld):
//
//	namespace  labels (besides kubernetes.io/metadata.name)
//	prod       env=prod team=a
//	dev        env=dev team=b
//	staging    env=staging
//	ghost      (no Namespace object)
//
//	pod          labels              IP         node  named ports
//	prod/web     app=web tier=front  10.0.1.1   n1    http TCP 8080, dns UDP 5353
//	prod/db      app=db tier=back    10.0.1.2   n2    http TCP 9000, pg TCP 5432
//	prod/cache   app=cache           10.0.1.3   n1
//	prod/batch   app=batch           10.0.1.4   n2
//	dev/web      app=web tier=front  10.0.2.1   n1    http TCP 8081
//	dev/tool     app=tool            10.0.2.2   n2
//	staging/web  app=web             10.0.3.1   n2
//	ghost/probe  app=probe           10.0.9.1   n2
//
//	node n1 192.168.0.1, node n2 192.168.0.2; anything else is outside.
func TestEvaluateSpec(t *testing.T) {
	// Policies used by several cases.
	denyIngress := specPolicy("prod/default-deny-ingress", "Ingress", specSel(), nil, nil)
	denyEgress := specPolicy("prod/default-deny-egress", "Egress", specSel(), nil, nil)
	denyAll := specPolicy("prod/default-deny-all", "Ingress,Egress", specSel(), nil, nil)
	fromDB := specPolicy("prod/allow-from-db", "Ingress", specSel("app", "web"),
		specRules(specRule(nil, specPods(specSel("app", "db")))), nil)
	fromCache := specPolicy("prod/allow-from-cache", "Ingress", specSel("app", "web"),
		specRules(specRule(nil, specPods(specSel("app", "cache")))), nil)
	// Ingress of prod/db from the peers given.
	dbFrom := func(name string, peers ...model.PolicyPeer) *model.NetworkPolicy {
		return specPolicy("prod/"+name, "Ingress", specSel("app", "db"), specRules(specRule(nil, peers...)), nil)
	}
	// Ingress of prod/db from prod/web on the ports given.
	dbPorts := func(name string, ports ...model.PolicyPort) *model.NetworkPolicy {
		return specPolicy("prod/"+name, "Ingress", specSel("app", "db"),
			specRules(specRule(ports, specPods(specSel("app", "web")))), nil)
	}
	fromWeb := dbFrom("db-from-web", specPods(specSel("app", "web")))
	webEgressDB := specPolicy("prod/web-egress-db", "Egress", specSel("app", "web"), nil,
		specRules(specRule(nil, specPods(specSel("app", "db")))))
	namedIngress := specPolicy("prod/named-http", "Ingress", specSel(),
		specRules(specRule(specPorts(specNamed(model.TCP, "http")))), nil)
	namedEgress := specPolicy("prod/egress-named-http", "Egress", specSel("app", "web"), nil,
		specRules(specRule(specPorts(specNamed(model.TCP, "http")), specNamespaces(specSel()))))
	egressRange := specPolicy("prod/egress-range", "Egress", specSel("app", "web"), nil,
		specRules(specRule(specPorts(specRange(model.TCP, 32000, 32768)))))
	egressBlock := specPolicy("prod/egress-block", "Egress", specSel("app", "web"), nil,
		specRules(specRule(nil, specBlock("203.0.113.0/24", "203.0.113.128/25"))))
	fromDevCIDR := dbFrom("from-dev-cidr", specBlock("10.0.2.0/24", "10.0.2.2/32"))
	egressAllPods := specPolicy("prod/egress-all-pods", "Egress", specSel("app", "web"), nil,
		specRules(specRule(nil, specPodsIn(specSel(), specSel()))))
	dbAnySource := specPolicy("prod/db-any-source", "Ingress", specSel("app", "db"),
		specRules(specRule(specPorts(specPort(model.TCP, 5432)))), nil)
	webEgressAny := specPolicy("prod/web-egress-any", "Egress", specSel("app", "web"), nil,
		specRules(specRule(specPorts(specPort(model.UDP, 53)))))
	exprs := func(name string, ns bool, key string, op model.SelectorOperator, values ...string) *model.NetworkPolicy {
		sel := &model.LabelSelector{MatchExpressions: []model.SelectorRequirement{{Key: key, Operator: op, Values: values}}}
		if ns {
			return dbFrom(name, specNamespaces(sel))
		}
		return dbFrom(name, specPods(sel))
	}

	// Short names for directions.
	open := specDir{allowed: true}         // not isolated
	na := specDir{allowed: true, na: true} // not a pod: policy does not apply

	cases := []specCase{
		// "By default, a pod is non-isolated for ingress; all inbound
		// connections are allowed." / "... non-isolated for egress; all
		// outbound connections are allowed."
		{name: "no policy: a pod is non-isolated for ingress, all inbound connections are allowed",
			src: "203.0.113.7", dst: "prod/web", egress: na, ingress: open, allowed: true},
		{name: "no policy: a pod is non-isolated for egress, all outbound connections are allowed",
			src: "prod/web", dst: "8.8.8.8", proto: model.UDP, port: 53, egress: open, ingress: na, allowed: true},
		{name: "no policy: pod to pod of another namespace is allowed in both directions",
			src: "dev/tool", dst: "prod/db", proto: model.SCTP, port: 9, egress: open, ingress: open, allowed: true},

		// Default policies: "Default deny all ingress traffic".
		{name: "default deny ingress: podSelector {} with policyTypes Ingress and no rules isolates every pod of the namespace",
			policies: specPols(denyIngress), src: "dev/tool", dst: "prod/web",
			egress: open, ingress: specDeny("prod/default-deny-ingress")},
		{name: "default deny ingress: pods of the same namespace are denied too",
			policies: specPols(denyIngress), src: "prod/cache", dst: "prod/db",
			egress: open, ingress: specDeny("prod/default-deny-ingress")},
		{name: "default deny ingress: this policy does not affect isolation for egress from any pod",
			policies: specPols(denyIngress), src: "prod/web", dst: "dev/tool",
			egress: open, ingress: open, allowed: true},
		// "Default deny all egress traffic".
		{name: "default deny egress: podSelector {} with policyTypes Egress and no rules isolates every pod for egress",
			policies: specPols(denyEgress), src: "prod/web", dst: "dev/tool",
			egress: specDeny("prod/default-deny-egress"), ingress: open},
		{name: "default deny egress: traffic leaving the cluster is denied too",
			policies: specPols(denyEgress), src: "prod/web", dst: "8.8.8.8",
			egress: specDeny("prod/default-deny-egress"), ingress: na},
		{name: "default deny egress: this policy does not change the ingress isolation of any pod",
			policies: specPols(denyEgress), src: "dev/tool", dst: "prod/web",
			egress: open, ingress: open, allowed: true},
		// "Default deny all ingress and all egress traffic".
		{name: "default deny all: pods of the namespace can neither send nor receive",
			policies: specPols(denyAll), src: "prod/web", dst: "prod/db",
			egress: specDeny("prod/default-deny-all"), ingress: specDeny("prod/default-deny-all")},
		{name: "default deny all: a pod of another namespace cannot reach in",
			policies: specPols(denyAll), src: "dev/tool", dst: "prod/db",
			egress: open, ingress: specDeny("prod/default-deny-all")},
		{name: "default deny all: a client outside the cluster cannot reach in",
			policies: specPols(denyAll), src: "203.0.113.7", dst: "prod/web",
			egress: na, ingress: specDeny("prod/default-deny-all")},

		// "policyTypes ... If this field is not specified, it will default
		// based on the existence of ingress or egress rules" (defaulted by
		// the converter); once given, it alone says which directions the
		// policy isolates.
		{name: "policyTypes [Egress]: ingress rules in the object are ignored and ingress is not isolated",
			policies: specPols(specPolicy("prod/egress-only", "Egress", specSel(),
				specRules(specRule(nil, specPods(specSel("app", "cache")))), nil)),
			src: "dev/tool", dst: "prod/web", egress: open, ingress: open, allowed: true},
		{name: "policyTypes [Egress]: the selected pods are isolated for egress, and with no egress rules may send nothing",
			policies: specPols(specPolicy("prod/egress-only", "Egress", specSel(),
				specRules(specRule(nil, specPods(specSel("app", "cache")))), nil)),
			src: "prod/web", dst: "prod/cache", egress: specDeny("prod/egress-only"), ingress: open},
		{name: "policyTypes [Ingress]: egress rules in the object are ignored and egress is not isolated",
			policies: specPols(specPolicy("prod/ingress-only", "Ingress", specSel(), nil,
				specRules(specRule(nil, specPods(specSel("app", "cache")))))),
			src: "prod/web", dst: "dev/tool", egress: open, ingress: open, allowed: true},

		// "Network policies do not conflict; they are additive. If any
		// policy or policies apply to a given pod for a given direction, the
		// connections allowed in that direction from that pod is the union of
		// what the applicable policies allow."
		{name: "policies are additive: a connection allowed by the first of two policies is allowed",
			policies: specPols(fromDB, fromCache), src: "prod/db", dst: "prod/web",
			egress: open, ingress: specAllow("prod/allow-from-cache,prod/allow-from-db", "prod/allow-from-db ingress[0]"), allowed: true},
		{name: "policies are additive: a connection allowed by the second of two policies is allowed",
			policies: specPols(fromDB, fromCache), src: "prod/cache", dst: "prod/web",
			egress: open, ingress: specAllow("prod/allow-from-cache,prod/allow-from-db", "prod/allow-from-cache ingress[0]"), allowed: true},
		{name: "policies are additive: a connection allowed by neither policy is denied",
			policies: specPols(fromDB, fromCache), src: "prod/batch", dst: "prod/web",
			egress: open, ingress: specDeny("prod/allow-from-cache", "prod/allow-from-db")},
		{name: "policies do not conflict: a deny-all policy takes nothing away from what another policy allows",
			policies: specPols(denyIngress, fromDB), src: "prod/db", dst: "prod/web",
			egress: open, ingress: specAllow("prod/allow-from-db,prod/default-deny-ingress", "prod/allow-from-db ingress[0]"), allowed: true},
		{name: "ingress rules: traffic is allowed if it matches at least one rule; every matching rule is named by index",
			policies: specPols(specPolicy("prod/three-rules", "Ingress", specSel("app", "web"), specRules(
				specRule(nil, specPods(specSel("app", "cache"))),
				specRule(nil, specPods(specSel("app", "db"))),
				specRule(nil, specNamespaces(specSel())),
			), nil)),
			src: "prod/db", dst: "prod/web",
			egress: open, ingress: specAllow("prod/three-rules", "prod/three-rules ingress[1]", "prod/three-rules ingress[2]"), allowed: true},

		// "podSelector selects the pods to which this NetworkPolicy object
		// applies ... An empty podSelector selects all pods in this namespace."
		{name: "podSelector selects pods of the policy's own namespace only: a matching pod elsewhere is not isolated",
			policies: specPols(specPolicy("prod/deny-web", "Ingress", specSel("app", "web"), nil, nil)),
			src:      "prod/db", dst: "dev/web", egress: open, ingress: open, allowed: true},
		{name: "podSelector selects the matching pods of the policy's namespace",
			policies: specPols(specPolicy("prod/deny-web", "Ingress", specSel("app", "web"), nil, nil)),
			src:      "prod/db", dst: "prod/web", egress: open, ingress: specDeny("prod/deny-web")},
		{name: "podSelector: pods it does not select are not isolated",
			policies: specPols(specPolicy("prod/deny-web", "Ingress", specSel("app", "web"), nil, nil)),
			src:      "prod/web", dst: "prod/db", egress: open, ingress: open, allowed: true},

		// NetworkPolicyPeer: "podSelector ... If namespaceSelector is also
		// set ... Otherwise it selects the Pods matching podSelector in the
		// policy's own namespace."
		{name: "peer podSelector without namespaceSelector selects pods in the policy's own namespace",
			policies: specPols(fromWeb), src: "prod/web", dst: "prod/db",
			egress: open, ingress: specAllow("prod/db-from-web", "prod/db-from-web ingress[0]"), allowed: true},
		{name: "peer podSelector without namespaceSelector does not select matching pods of other namespaces",
			policies: specPols(fromWeb), src: "dev/web", dst: "prod/db",
			egress: open, ingress: specDeny("prod/db-from-web")},
		// "namespaceSelector ... Otherwise it selects all Pods in the
		// Namespaces selected by namespaceSelector."
		{name: "peer namespaceSelector alone selects all pods in the matching namespaces (dev/tool)",
			policies: specPols(dbFrom("from-dev", specNamespaces(specSel("env", "dev")))), src: "dev/tool", dst: "prod/db",
			egress: open, ingress: specAllow("prod/from-dev", "prod/from-dev ingress[0]"), allowed: true},
		{name: "peer namespaceSelector alone selects all pods in the matching namespaces (dev/web)",
			policies: specPols(dbFrom("from-dev", specNamespaces(specSel("env", "dev")))), src: "dev/web", dst: "prod/db",
			egress: open, ingress: specAllow("prod/from-dev", "prod/from-dev ingress[0]"), allowed: true},
		{name: "peer namespaceSelector alone does not select the policy's own namespace unless it matches",
			policies: specPols(dbFrom("from-dev", specNamespaces(specSel("env", "dev")))), src: "prod/web", dst: "prod/db",
			egress: open, ingress: specDeny("prod/from-dev")},
		// "If namespaceSelector is also set, then the NetworkPolicyPeer as a
		// whole selects the Pods matching podSelector in the Namespaces
		// selected by NamespaceSelector."
		{name: "namespaceSelector and podSelector in one peer: the matching pods of the matching namespaces (AND)",
			policies: specPols(dbFrom("dev-and-web", specPodsIn(specSel("env", "dev"), specSel("app", "web")))), src: "dev/web", dst: "prod/db",
			egress: open, ingress: specAllow("prod/dev-and-web", "prod/dev-and-web ingress[0]"), allowed: true},
		{name: "namespaceSelector and podSelector in one peer: other pods of the matching namespace are not selected",
			policies: specPols(dbFrom("dev-and-web", specPodsIn(specSel("env", "dev"), specSel("app", "web")))), src: "dev/tool", dst: "prod/db",
			egress: open, ingress: specDeny("prod/dev-and-web")},
		{name: "namespaceSelector and podSelector in one peer: matching pods of other namespaces are not selected",
			policies: specPols(dbFrom("dev-and-web", specPodsIn(specSel("env", "dev"), specSel("app", "web")))), src: "prod/web", dst: "prod/db",
			egress: open, ingress: specDeny("prod/dev-and-web")},
		// "from ... Items in this list are combined using a logical OR
		// operation."
		{name: "two peers in from are ORed: matched by the namespaceSelector peer",
			policies: specPols(dbFrom("dev-or-web", specNamespaces(specSel("env", "dev")), specPods(specSel("app", "web")))), src: "dev/tool", dst: "prod/db",
			egress: open, ingress: specAllow("prod/dev-or-web", "prod/dev-or-web ingress[0]"), allowed: true},
		{name: "two peers in from are ORed: matched by the podSelector peer",
			policies: specPols(dbFrom("dev-or-web", specNamespaces(specSel("env", "dev")), specPods(specSel("app", "web")))), src: "prod/web", dst: "prod/db",
			egress: open, ingress: specAllow("prod/dev-or-web", "prod/dev-or-web ingress[0]"), allowed: true},
		{name: "two peers in from are ORed: matched by neither peer",
			policies: specPols(dbFrom("dev-or-web", specNamespaces(specSel("env", "dev")), specPods(specSel("app", "web")))), src: "staging/web", dst: "prod/db",
			egress: open, ingress: specDeny("prod/dev-or-web")},
		{name: "peer podSelector {} selects all pods of the policy's namespace",
			policies: specPols(dbFrom("from-own-ns", specPods(specSel()))), src: "prod/batch", dst: "prod/db",
			egress: open, ingress: specAllow("prod/from-own-ns", "prod/from-own-ns ingress[0]"), allowed: true},
		{name: "peer podSelector {} selects no pod of another namespace",
			policies: specPols(dbFrom("from-own-ns", specPods(specSel()))), src: "dev/tool", dst: "prod/db",
			egress: open, ingress: specDeny("prod/from-own-ns")},
		{name: "peer namespaceSelector {} selects all namespaces",
			policies: specPols(dbFrom("from-all-ns", specNamespaces(specSel()))), src: "staging/web", dst: "prod/db",
			egress: open, ingress: specAllow("prod/from-all-ns", "prod/from-all-ns ingress[0]"), allowed: true},
		{name: "peer namespaceSelector {} selects a namespace that has no Namespace object yet",
			policies: specPols(dbFrom("from-all-ns", specNamespaces(specSel()))), src: "ghost/probe", dst: "prod/db",
			egress: open, ingress: specAllow("prod/from-all-ns", "prod/from-all-ns ingress[0]"), allowed: true},
		{name: "peer namespaceSelector {} and podSelector: the matching pods of all namespaces",
			policies: specPols(dbFrom("web-anywhere", specPodsIn(specSel(), specSel("app", "web")))), src: "staging/web", dst: "prod/db",
			egress: open, ingress: specAllow("prod/web-anywhere", "prod/web-anywhere ingress[0]"), allowed: true},
		{name: "peer namespaceSelector {} and podSelector: other pods are not selected",
			policies: specPols(dbFrom("web-anywhere", specPodsIn(specSel(), specSel("app", "web")))), src: "dev/tool", dst: "prod/db",
			egress: open, ingress: specDeny("prod/web-anywhere")},

		// Label selectors: "matchExpressions is a list of label selector
		// requirements. The requirements are ANDed." Operators In, NotIn,
		// Exists and DoesNotExist; "matchLabels ... The requirements are
		// ANDed" with matchExpressions.
		{name: "podSelector matchExpressions In: a pod whose label value is in the set",
			policies: specPols(exprs("pod-in", false, "app", model.SelectorIn, "web", "cache")), src: "prod/cache", dst: "prod/db",
			egress: open, ingress: specAllow("prod/pod-in", "prod/pod-in ingress[0]"), allowed: true},
		{name: "podSelector matchExpressions In: a pod whose label value is not in the set",
			policies: specPols(exprs("pod-in", false, "app", model.SelectorIn, "web", "cache")), src: "prod/batch", dst: "prod/db",
			egress: open, ingress: specDeny("prod/pod-in")},
		{name: "podSelector matchExpressions NotIn: a pod without the label matches",
			policies: specPols(exprs("pod-notin", false, "tier", model.SelectorNotIn, "front")), src: "prod/batch", dst: "prod/db",
			egress: open, ingress: specAllow("prod/pod-notin", "prod/pod-notin ingress[0]"), allowed: true},
		{name: "podSelector matchExpressions NotIn: a pod whose label value is in the set does not",
			policies: specPols(exprs("pod-notin", false, "tier", model.SelectorNotIn, "front")), src: "prod/web", dst: "prod/db",
			egress: open, ingress: specDeny("prod/pod-notin")},
		{name: "podSelector matchExpressions Exists: a pod with the label matches",
			policies: specPols(exprs("pod-exists", false, "tier", model.SelectorExists)), src: "prod/web", dst: "prod/db",
			egress: open, ingress: specAllow("prod/pod-exists", "prod/pod-exists ingress[0]"), allowed: true},
		{name: "podSelector matchExpressions Exists: a pod without the label does not",
			policies: specPols(exprs("pod-exists", false, "tier", model.SelectorExists)), src: "prod/batch", dst: "prod/db",
			egress: open, ingress: specDeny("prod/pod-exists")},
		{name: "podSelector matchExpressions DoesNotExist: a pod without the label matches",
			policies: specPols(exprs("pod-absent", false, "tier", model.SelectorDoesNotExist)), src: "prod/batch", dst: "prod/db",
			egress: open, ingress: specAllow("prod/pod-absent", "prod/pod-absent ingress[0]"), allowed: true},
		{name: "podSelector matchExpressions DoesNotExist: a pod with the label does not",
			policies: specPols(exprs("pod-absent", false, "tier", model.SelectorDoesNotExist)), src: "prod/web", dst: "prod/db",
			egress: open, ingress: specDeny("prod/pod-absent")},
		{name: "matchLabels and matchExpressions are ANDed",
			policies: specPols(dbFrom("and", specPods(&model.LabelSelector{
				MatchLabels:      map[string]string{"tier": "front"},
				MatchExpressions: []model.SelectorRequirement{{Key: "app", Operator: model.SelectorNotIn, Values: []string{"web"}}},
			}))), src: "prod/web", dst: "prod/db",
			egress: open, ingress: specDeny("prod/and")},
		{name: "namespaceSelector matchExpressions In: a namespace whose label value is in the set",
			policies: specPols(exprs("ns-in", true, "env", model.SelectorIn, "dev", "staging")), src: "staging/web", dst: "prod/db",
			egress: open, ingress: specAllow("prod/ns-in", "prod/ns-in ingress[0]"), allowed: true},
		{name: "namespaceSelector matchExpressions In: a namespace whose label value is not in the set",
			policies: specPols(exprs("ns-in", true, "env", model.SelectorIn, "dev", "staging")), src: "prod/web", dst: "prod/db",
			egress: open, ingress: specDeny("prod/ns-in")},
		{name: "namespaceSelector matchExpressions NotIn: a namespace whose label value is not in the set",
			policies: specPols(exprs("ns-notin", true, "env", model.SelectorNotIn, "prod")), src: "dev/tool", dst: "prod/db",
			egress: open, ingress: specAllow("prod/ns-notin", "prod/ns-notin ingress[0]"), allowed: true},
		{name: "namespaceSelector matchExpressions NotIn: a namespace whose label value is in the set",
			policies: specPols(exprs("ns-notin", true, "env", model.SelectorNotIn, "prod")), src: "prod/cache", dst: "prod/db",
			egress: open, ingress: specDeny("prod/ns-notin")},
		{name: "namespaceSelector matchExpressions Exists: a namespace with the label",
			policies: specPols(exprs("ns-exists", true, "team", model.SelectorExists)), src: "dev/tool", dst: "prod/db",
			egress: open, ingress: specAllow("prod/ns-exists", "prod/ns-exists ingress[0]"), allowed: true},
		{name: "namespaceSelector matchExpressions Exists: a namespace without the label",
			policies: specPols(exprs("ns-exists", true, "team", model.SelectorExists)), src: "staging/web", dst: "prod/db",
			egress: open, ingress: specDeny("prod/ns-exists")},
		{name: "namespaceSelector matchExpressions DoesNotExist: a namespace without the label",
			policies: specPols(exprs("ns-absent", true, "team", model.SelectorDoesNotExist)), src: "staging/web", dst: "prod/db",
			egress: open, ingress: specAllow("prod/ns-absent", "prod/ns-absent ingress[0]"), allowed: true},
		{name: "namespaceSelector matchExpressions DoesNotExist: a namespace with the label",
			policies: specPols(exprs("ns-absent", true, "team", model.SelectorDoesNotExist)), src: "dev/tool", dst: "prod/db",
			egress: open, ingress: specDeny("prod/ns-absent")},

		// "The Kubernetes control plane sets an immutable label
		// kubernetes.io/metadata.name on all namespaces, the value of the
		// label is the namespace name." [kpath: before the Namespace object
		// is seen, that is the only label the namespace has.]
		{name: "kubernetes.io/metadata.name selects a namespace with no Namespace object yet",
			policies: specPols(dbFrom("from-ghost", specNamespaces(specSel(specMetaName, "ghost")))), src: "ghost/probe", dst: "prod/db",
			egress: open, ingress: specAllow("prod/from-ghost", "prod/from-ghost ingress[0]"), allowed: true},
		{name: "a namespace with no Namespace object yet has no label but its name (Exists)",
			policies: specPols(exprs("ns-exists", true, "env", model.SelectorExists)), src: "ghost/probe", dst: "prod/db",
			egress: open, ingress: specDeny("prod/ns-exists")},
		{name: "a namespace with no Namespace object yet has no label but its name (NotIn matches)",
			policies: specPols(exprs("ns-notin", true, "env", model.SelectorNotIn, "prod")), src: "ghost/probe", dst: "prod/db",
			egress: open, ingress: specAllow("prod/ns-notin", "prod/ns-notin ingress[0]"), allowed: true},
		{name: "a namespace with no Namespace object yet does not match a selector on its name and another label",
			policies: specPols(dbFrom("ghost-qa", specNamespaces(specSel(specMetaName, "ghost", "env", "qa")))), src: "ghost/probe", dst: "prod/db",
			egress: open, ingress: specDeny("prod/ghost-qa")},
		{name: "once the Namespace object is known its labels are used",
			setup: func(s *Store) {
				s.SetNamespace("ghost", &model.Namespace{Name: "ghost", Labels: map[string]string{specMetaName: "ghost", "env": "qa"}})
			},
			policies: specPols(dbFrom("ghost-qa", specNamespaces(specSel(specMetaName, "ghost", "env", "qa")))), src: "ghost/probe", dst: "prod/db",
			egress: open, ingress: specAllow("prod/ghost-qa", "prod/ghost-qa ingress[0]"), allowed: true},

		// "IPBlock describes a particular CIDR ... that is allowed to the
		// pods matched by a NetworkPolicySpec's podSelector. The except entry
		// describes CIDRs that should not be included within this rule."
		{name: "ipBlock allows an address in cidr",
			policies: specPols(egressBlock), src: "prod/web", dst: "203.0.113.7", port: 443,
			egress: specAllow("prod/egress-block", "prod/egress-block egress[0]"), ingress: na, allowed: true},
		{name: "ipBlock except: an address in an except CIDR is not included",
			policies: specPols(egressBlock), src: "prod/web", dst: "203.0.113.200", port: 443,
			egress: specDeny("prod/egress-block"), ingress: na},
		{name: "ipBlock: an address outside cidr is not included",
			policies: specPols(egressBlock), src: "prod/web", dst: "8.8.8.8", port: 443,
			egress: specDeny("prod/egress-block"), ingress: na},
		{name: "ipBlock matches pod IPs as well [kpath]",
			policies: specPols(fromDevCIDR), src: "dev/web", dst: "prod/db",
			egress: open, ingress: specAllow("prod/from-dev-cidr", "prod/from-dev-cidr ingress[0]"), allowed: true},
		{name: "ipBlock except /32 excludes exactly one pod IP",
			policies: specPols(fromDevCIDR), src: "dev/tool", dst: "prod/db",
			egress: open, ingress: specDeny("prod/from-dev-cidr")},
		{name: "ipBlock does not match a pod whose IP is outside cidr",
			policies: specPols(fromDevCIDR), src: "prod/web", dst: "prod/db",
			egress: open, ingress: specDeny("prod/from-dev-cidr")},
		{name: "ipBlock /32 matches exactly its address: another node",
			policies: specPols(dbFrom("from-n1", specBlock("192.168.0.1/32"))), src: "node:n1", dst: "prod/db",
			egress: na, ingress: specAllow("prod/from-n1", "prod/from-n1 ingress[0]"), allowed: true},
		{name: "ipBlock /32 does not match the next address",
			policies: specPols(dbFrom("from-n1", specBlock("192.168.0.1/32"))), src: "192.168.0.3", dst: "prod/db",
			egress: na, ingress: specDeny("prod/from-n1")},
		{name: "ipBlock /32 on a pod IP (egress): that pod",
			policies: specPols(specPolicy("prod/web-to-db-ip", "Egress", specSel("app", "web"), nil, specRules(specRule(nil, specBlock("10.0.1.2/32"))))),
			src:      "prod/web", dst: "prod/db", egress: specAllow("prod/web-to-db-ip", "prod/web-to-db-ip egress[0]"), ingress: open, allowed: true},
		{name: "ipBlock /32 on a pod IP (egress): not its neighbour",
			policies: specPols(specPolicy("prod/web-to-db-ip", "Egress", specSel("app", "web"), nil, specRules(specRule(nil, specBlock("10.0.1.2/32"))))),
			src:      "prod/web", dst: "prod/cache", egress: specDeny("prod/web-to-db-ip"), ingress: open},

		// podSelector and namespaceSelector select Pods; only ipBlock (or a
		// rule with no peers) matches anything else.
		{name: "selectors select pods, never an address outside the cluster",
			policies: specPols(egressAllPods), src: "prod/web", dst: "8.8.8.8",
			egress: specDeny("prod/egress-all-pods"), ingress: na},
		{name: "selectors select pods, never a node",
			policies: specPols(egressAllPods), src: "prod/web", dst: "node:n2",
			egress: specDeny("prod/egress-all-pods"), ingress: na},
		{name: "selectors {} and {} select every pod",
			policies: specPols(egressAllPods), src: "prod/web", dst: "staging/web",
			egress: specAllow("prod/egress-all-pods", "prod/egress-all-pods egress[0]"), ingress: open, allowed: true},
		{name: "ingress selectors select pods, never a client outside the cluster",
			policies: specPols(dbFrom("from-all-ns", specNamespaces(specSel()))), src: "203.0.113.7", dst: "prod/db",
			egress: na, ingress: specDeny("prod/from-all-ns")},
		{name: "ingress selectors select pods, never another node",
			policies: specPols(dbFrom("from-all-ns", specNamespaces(specSel()))), src: "node:n1", dst: "prod/db",
			egress: na, ingress: specDeny("prod/from-all-ns")},
		// "from ... If this field is empty or missing, this rule matches all
		// sources (traffic not restricted by source)."
		{name: "from empty or missing: the rule matches all sources, outside the cluster too",
			policies: specPols(dbAnySource), src: "203.0.113.7", dst: "prod/db", port: 5432,
			egress: na, ingress: specAllow("prod/db-any-source", "prod/db-any-source ingress[0]"), allowed: true},
		{name: "from empty or missing: the rule matches all sources, other nodes too",
			policies: specPols(dbAnySource), src: "node:n1", dst: "prod/db", port: 5432,
			egress: na, ingress: specAllow("prod/db-any-source", "prod/db-any-source ingress[0]"), allowed: true},
		{name: "from empty or missing: the rule still matches only its ports",
			policies: specPols(dbAnySource), src: "203.0.113.7", dst: "prod/db", port: 80,
			egress: na, ingress: specDeny("prod/db-any-source")},
		// "to ... If this field is empty or missing, this rule matches all
		// destinations (traffic not restricted by destination)."
		{name: "to empty or missing: the rule matches all destinations outside the cluster",
			policies: specPols(webEgressAny), src: "prod/web", dst: "8.8.8.8", proto: model.UDP, port: 53,
			egress: specAllow("prod/web-egress-any", "prod/web-egress-any egress[0]"), ingress: na, allowed: true},
		{name: "to empty or missing: the rule matches all destinations, other nodes too",
			policies: specPols(webEgressAny), src: "prod/web", dst: "node:n2", proto: model.UDP, port: 53,
			egress: specAllow("prod/web-egress-any", "prod/web-egress-any egress[0]"), ingress: na, allowed: true},

		// "ports ... If this field is empty or missing, this rule matches all
		// ports (traffic not restricted by port)."
		{name: "ports empty or missing: the rule matches all ports (UDP)",
			policies: specPols(fromWeb), src: "prod/web", dst: "prod/db", proto: model.UDP, port: 9999,
			egress: open, ingress: specAllow("prod/db-from-web", "prod/db-from-web ingress[0]"), allowed: true},
		{name: "ports empty or missing: the rule matches all ports and protocols (SCTP)",
			policies: specPols(fromWeb), src: "prod/web", dst: "prod/db", proto: model.SCTP, port: 1,
			egress: open, ingress: specAllow("prod/db-from-web", "prod/db-from-web ingress[0]"), allowed: true},
		// NetworkPolicyPort.port: "If this field is not provided, this
		// matches all port names and numbers. If present, only traffic on the
		// specified protocol AND port will be matched."
		{name: "port not provided: all port numbers of the protocol",
			policies: specPols(dbPorts("udp-all", specAllPorts(model.UDP))), src: "prod/web", dst: "prod/db", proto: model.UDP, port: 12345,
			egress: open, ingress: specAllow("prod/udp-all", "prod/udp-all ingress[0]"), allowed: true},
		{name: "port not provided: only the protocol given",
			policies: specPols(dbPorts("udp-all", specAllPorts(model.UDP))), src: "prod/web", dst: "prod/db", proto: model.TCP, port: 12345,
			egress: open, ingress: specDeny("prod/udp-all")},
		{name: "numeric port: that port",
			policies: specPols(dbPorts("pg", specPort(model.TCP, 5432))), src: "prod/web", dst: "prod/db", port: 5432,
			egress: open, ingress: specAllow("prod/pg", "prod/pg ingress[0]"), allowed: true},
		{name: "numeric port: not another port",
			policies: specPols(dbPorts("pg", specPort(model.TCP, 5432))), src: "prod/web", dst: "prod/db", port: 5433,
			egress: open, ingress: specDeny("prod/pg")},
		{name: "protocol AND port: a TCP port does not allow UDP on the same number",
			policies: specPols(dbPorts("dns-tcp", specPort(model.TCP, 53))), src: "prod/web", dst: "prod/db", proto: model.UDP, port: 53,
			egress: open, ingress: specDeny("prod/dns-tcp")},
		{name: "protocol AND port: a UDP port allows UDP",
			policies: specPols(dbPorts("dns-udp", specPort(model.UDP, 53))), src: "prod/web", dst: "prod/db", proto: model.UDP, port: 53,
			egress: open, ingress: specAllow("prod/dns-udp", "prod/dns-udp ingress[0]"), allowed: true},
		{name: "protocol AND port: a UDP port does not allow TCP on the same number",
			policies: specPols(dbPorts("dns-udp", specPort(model.UDP, 53))), src: "prod/web", dst: "prod/db", proto: model.TCP, port: 53,
			egress: open, ingress: specDeny("prod/dns-udp")},
		{name: "protocol SCTP: an SCTP port allows SCTP",
			policies: specPols(dbPorts("sctp", specPort(model.SCTP, 9000))), src: "prod/web", dst: "prod/db", proto: model.SCTP, port: 9000,
			egress: open, ingress: specAllow("prod/sctp", "prod/sctp ingress[0]"), allowed: true},
		{name: "protocol SCTP: an SCTP port does not allow TCP on the same number",
			policies: specPols(dbPorts("sctp", specPort(model.SCTP, 9000))), src: "prod/web", dst: "prod/db", proto: model.TCP, port: 9000,
			egress: open, ingress: specDeny("prod/sctp")},
		{name: "protocol SCTP: an SCTP port does not allow another SCTP port",
			policies: specPols(dbPorts("sctp", specPort(model.SCTP, 9000))), src: "prod/web", dst: "prod/db", proto: model.SCTP, port: 9001,
			egress: open, ingress: specDeny("prod/sctp")},
		{name: "ports are ORed: a flow matching the second item of ports is allowed",
			policies: specPols(dbPorts("two-ports", specPort(model.TCP, 80), specPort(model.UDP, 53))), src: "prod/web", dst: "prod/db", proto: model.UDP, port: 53,
			egress: open, ingress: specAllow("prod/two-ports", "prod/two-ports ingress[0]"), allowed: true},
		// "endPort indicates that the range of ports from port to endPort if
		// set, inclusive, should be allowed by the policy."
		{name: "endPort: the range includes port",
			policies: specPols(egressRange), src: "prod/web", dst: "8.8.8.8", port: 32000,
			egress: specAllow("prod/egress-range", "prod/egress-range egress[0]"), ingress: na, allowed: true},
		{name: "endPort: the range includes a port inside it",
			policies: specPols(egressRange), src: "prod/web", dst: "8.8.8.8", port: 32500,
			egress: specAllow("prod/egress-range", "prod/egress-range egress[0]"), ingress: na, allowed: true},
		{name: "endPort: the range includes endPort",
			policies: specPols(egressRange), src: "prod/web", dst: "8.8.8.8", port: 32768,
			egress: specAllow("prod/egress-range", "prod/egress-range egress[0]"), ingress: na, allowed: true},
		{name: "endPort: the range excludes port-1",
			policies: specPols(egressRange), src: "prod/web", dst: "8.8.8.8", port: 31999,
			egress: specDeny("prod/egress-range"), ingress: na},
		{name: "endPort: the range excludes endPort+1",
			policies: specPols(egressRange), src: "prod/web", dst: "8.8.8.8", port: 32769,
			egress: specDeny("prod/egress-range"), ingress: na},
		{name: "endPort: the range is of its protocol only",
			policies: specPols(egressRange), src: "prod/web", dst: "8.8.8.8", proto: model.UDP, port: 32000,
			egress: specDeny("prod/egress-range"), ingress: na},

		// "port represents the port on the given protocol. This can either
		// be a numerical or named port on a pod." A named port is the
		// destination pod's: for ingress the selected pod, for egress the
		// peer.
		{name: "named port (ingress) resolves on the selected pod: prod/web's http is 8080",
			policies: specPols(namedIngress), src: "203.0.113.7", dst: "prod/web", port: 8080,
			egress: na, ingress: specAllow("prod/named-http", "prod/named-http ingress[0]"), allowed: true},
		{name: "named port (ingress) resolves on the selected pod: not another pod's http number",
			policies: specPols(namedIngress), src: "203.0.113.7", dst: "prod/web", port: 9000,
			egress: na, ingress: specDeny("prod/named-http")},
		{name: "named port (ingress) resolves per selected pod: prod/db's http is 9000",
			policies: specPols(namedIngress), src: "203.0.113.7", dst: "prod/db", port: 9000,
			egress: na, ingress: specAllow("prod/named-http", "prod/named-http ingress[0]"), allowed: true},
		{name: "named port (ingress) resolves per selected pod: 8080 is not prod/db's http",
			policies: specPols(namedIngress), src: "203.0.113.7", dst: "prod/db", port: 8080,
			egress: na, ingress: specDeny("prod/named-http")},
		{name: "named port (ingress): a selected pod without that port name allows nothing by it",
			policies: specPols(namedIngress), src: "203.0.113.7", dst: "prod/cache", port: 8080,
			egress: na, ingress: specDeny("prod/named-http")},
		{name: "named port (egress) resolves on the destination pod: prod/db's http is 9000",
			policies: specPols(namedEgress), src: "prod/web", dst: "prod/db", port: 9000,
			egress: specAllow("prod/egress-named-http", "prod/egress-named-http egress[0]"), ingress: open, allowed: true},
		{name: "named port (egress) resolves on the destination pod, not the source: 8080 is prod/web's own http",
			policies: specPols(namedEgress), src: "prod/web", dst: "prod/db", port: 8080,
			egress: specDeny("prod/egress-named-http"), ingress: open},
		{name: "named port (egress) resolves per destination pod: dev/web's http is 8081",
			policies: specPols(namedEgress), src: "prod/web", dst: "dev/web", port: 8081,
			egress: specAllow("prod/egress-named-http", "prod/egress-named-http egress[0]"), ingress: open, allowed: true},
		{name: "named port matches nothing for a destination outside the cluster",
			policies: specPols(specPolicy("prod/egress-named-any", "Egress", specSel("app", "web"), nil,
				specRules(specRule(specPorts(specNamed(model.TCP, "http")))))),
			src: "prod/web", dst: "8.8.8.8", port: 8080, egress: specDeny("prod/egress-named-any"), ingress: na},
		{name: "named port matches nothing for a node destination",
			policies: specPols(specPolicy("prod/egress-named-any", "Egress", specSel("app", "web"), nil,
				specRules(specRule(specPorts(specNamed(model.TCP, "http")))))),
			src: "prod/web", dst: "node:n2", port: 8080, egress: specDeny("prod/egress-named-any"), ingress: na},
		{name: "named port with an ipBlock peer resolves on the pod holding the address",
			policies: specPols(specPolicy("prod/egress-named-cidr", "Egress", specSel("app", "web"), nil,
				specRules(specRule(specPorts(specNamed(model.TCP, "http")), specBlock("10.0.0.0/16"))))),
			src: "prod/web", dst: "prod/db", port: 9000,
			egress: specAllow("prod/egress-named-cidr", "prod/egress-named-cidr egress[0]"), ingress: open, allowed: true},
		{name: "named port: the same name with another protocol does not match (dns is UDP on prod/web, TCP asked)",
			policies: specPols(specPolicy("prod/named-dns-tcp", "Ingress", specSel("app", "web"),
				specRules(specRule(specPorts(specNamed(model.TCP, "dns")))), nil)),
			src: "203.0.113.7", dst: "prod/web", port: 5353, egress: na, ingress: specDeny("prod/named-dns-tcp")},
		{name: "named port: a TCP named port does not allow UDP on the number of a UDP port of that name",
			policies: specPols(specPolicy("prod/named-dns-tcp", "Ingress", specSel("app", "web"),
				specRules(specRule(specPorts(specNamed(model.TCP, "dns")))), nil)),
			src: "203.0.113.7", dst: "prod/web", proto: model.UDP, port: 5353, egress: na, ingress: specDeny("prod/named-dns-tcp")},
		{name: "named port: the name with its own protocol matches",
			policies: specPols(specPolicy("prod/named-dns-udp", "Ingress", specSel("app", "web"),
				specRules(specRule(specPorts(specNamed(model.UDP, "dns")))), nil)),
			src: "203.0.113.7", dst: "prod/web", proto: model.UDP, port: 5353,
			egress: na, ingress: specAllow("prod/named-dns-udp", "prod/named-dns-udp ingress[0]"), allowed: true},

		// "For a connection from a source pod to a destination pod to be
		// allowed, both the egress policy on the source pod and the ingress
		// policy on the destination pod need to allow the connection. If
		// either side does not allow the connection, it will not happen."
		{name: "a connection needs both: the source's egress allows but the destination's ingress does not",
			policies: specPols(webEgressDB, specPolicy("prod/db-deny-ingress", "Ingress", specSel("app", "db"), nil, nil)),
			src:      "prod/web", dst: "prod/db",
			egress: specAllow("prod/web-egress-db", "prod/web-egress-db egress[0]"), ingress: specDeny("prod/db-deny-ingress")},
		{name: "a connection needs both: the destination's ingress allows but the source's egress does not",
			policies: specPols(fromWeb, specPolicy("prod/web-deny-egress", "Egress", specSel("app", "web"), nil, nil)),
			src:      "prod/web", dst: "prod/db",
			egress: specDeny("prod/web-deny-egress"), ingress: specAllow("prod/db-from-web", "prod/db-from-web ingress[0]")},
		{name: "a connection needs both: both allow",
			policies: specPols(fromWeb, webEgressDB), src: "prod/web", dst: "prod/db",
			egress:  specAllow("prod/web-egress-db", "prod/web-egress-db egress[0]"),
			ingress: specAllow("prod/db-from-web", "prod/db-from-web ingress[0]"), allowed: true},
		{name: "egress is evaluated for the source pod only: the destination's egress isolation does not apply",
			policies: specPols(specPolicy("prod/db-deny-egress", "Egress", specSel("app", "db"), nil, nil)),
			src:      "prod/web", dst: "prod/db", egress: open, ingress: open, allowed: true},
		{name: "ingress is evaluated for the destination pod only: the source's ingress isolation does not apply",
			policies: specPols(specPolicy("prod/web-deny-ingress", "Ingress", specSel("app", "web"), nil, nil)),
			src:      "prod/web", dst: "prod/db", egress: open, ingress: open, allowed: true},
		{name: "egress rules of the destination's policy do not allow ingress to it",
			policies: specPols(specPolicy("prod/db-both", "Ingress,Egress", specSel("app", "db"), nil,
				specRules(specRule(nil, specPods(specSel("app", "web")))))),
			src: "prod/web", dst: "prod/db", egress: open, ingress: specDeny("prod/db-both")},

		// "IP blocks (exception: traffic to and from the node where a Pod is
		// running is always allowed, regardless of the IP address of the Pod
		// or the node)".
		{name: "traffic from the node where a pod is running is always allowed",
			policies: specPols(denyAll), src: "node:n1", dst: "prod/web", port: 8080,
			egress: na, ingress: specAllow("prod/default-deny-all"), allowed: true, ingressReason: "node"},
		{name: "traffic from another node is not exempt",
			policies: specPols(denyAll), src: "node:n2", dst: "prod/web", port: 8080,
			egress: na, ingress: specDeny("prod/default-deny-all")},
		{name: "traffic from another node is allowed when an ipBlock allows it",
			policies: specPols(denyIngress, specPolicy("prod/web-from-n2", "Ingress", specSel("app", "web"),
				specRules(specRule(nil, specBlock("192.168.0.2/32"))), nil)),
			src: "node:n2", dst: "prod/web", port: 8080,
			egress: na, ingress: specAllow("prod/default-deny-ingress,prod/web-from-n2", "prod/web-from-n2 ingress[0]"), allowed: true},
		// The spec says "to and from": egress to the pod's own node too.
		{name: "traffic to the node where a pod is running is always allowed",
			policies: specPols(denyAll), src: "prod/web", dst: "node:n1", port: 10250,
			egress: specAllow("prod/default-deny-all"), ingress: na, allowed: true},
		{name: "traffic to another node is not exempt",
			policies: specPols(denyAll), src: "prod/web", dst: "node:n2", port: 10250,
			egress: specDeny("prod/default-deny-all"), ingress: na},
		// "Other pods that are allowed (exception: a pod cannot block access
		// to itself)": in both directions.
		{name: "a pod cannot block access to itself",
			policies: specPols(denyAll), src: "prod/web", dst: "prod/web", port: 8080,
			egress: specAllow("prod/default-deny-all"), ingress: specAllow("prod/default-deny-all"), allowed: true},
	}

	seen := map[string]bool{}
	for _, tc := range cases {
		if seen[tc.name] {
			t.Fatalf("duplicate case name %q", tc.name)
		}
		seen[tc.name] = true
		if tc.allowed != (tc.egress.allowed && tc.ingress.allowed) {
			t.Fatalf("%s: table error: allowed=%v but egress=%v ingress=%v", tc.name, tc.allowed, tc.egress.allowed, tc.ingress.allowed)
		}
		t.Run(tc.name, func(t *testing.T) {
			s := specWorld(t)
			if tc.setup != nil {
				tc.setup(s)
			}
			for _, p := range tc.policies {
				s.SetPolicy(p.Key, p)
			}
			proto, port := tc.proto, tc.port
			if proto == 0 {
				proto = model.TCP
			}
			if port == 0 {
				port = 80
			}
			f := Flow{Src: specPeer(t, s, tc.src), Dst: specPeer(t, s, tc.dst), Proto: proto, Port: port}
			v := s.Evaluate(f)
			t.Logf("%s -> %s %s/%d: egress %q, ingress %q", f.Src, f.Dst, proto, port, v.Egress.Reason, v.Ingress.Reason)
			if v.Allowed != tc.allowed {
				t.Errorf("Allowed = %v, want %v", v.Allowed, tc.allowed)
			}
			specCheckDir(t, "egress", v.Egress, tc.egress, tc.egressReason)
			specCheckDir(t, "ingress", v.Ingress, tc.ingress, tc.ingressReason)
			// The addresses alone resolve to the same peers, so to the same verdict.
			if vi := s.EvaluateIPs(f.Src.IP, f.Dst.IP, proto, port); !reflect.DeepEqual(vi, v) {
				t.Errorf("EvaluateIPs(%s, %s) = %+v, Evaluate = %+v", f.Src.IP, f.Dst.IP, vi, v)
			}
		})
	}
	t.Logf("%d cases", len(cases))
}

const specMetaName = "kubernetes.io/metadata.name"

type specCase struct {
	name     string
	setup    func(*Store) // changes to specWorld before the policies
	policies []*model.NetworkPolicy
	// src and dst: "ns/name" a pod of specWorld, "node:NAME" a node's
	// address, anything else an address outside the cluster.
	src, dst                    string
	proto                       model.Protocol // 0: TCP
	port                        uint16         // 0: 80
	allowed                     bool
	egress                      specDir // the source's egress
	ingress                     specDir // the destination's ingress
	egressReason, ingressReason string  // substrings the Reason must hold
}

// specDir is the expected verdict of one direction.
type specDir struct {
	na       bool // the end is not a pod: Applies false
	isolated bool
	allowed  bool
	policies []string // the policies isolating the pod, "ns/name", in order
	by       []string // the rules allowing the flow, RuleRef.String()
}

// specDeny: isolated by the policies, allowed by none of their rules.
func specDeny(policies ...string) specDir {
	return specDir{isolated: true, policies: policies}
}

// specAllow: isolated by the comma-separated policies and allowed (by the
// rules given; none when an exception allows the flow).
func specAllow(policies string, by ...string) specDir {
	return specDir{isolated: true, allowed: true, policies: strings.Split(policies, ","), by: by}
}

func specCheckDir(t *testing.T, dir string, got Direction, want specDir, reason string) {
	t.Helper()
	if got.Applies != !want.na {
		t.Errorf("%s: Applies = %v, want %v", dir, got.Applies, !want.na)
	}
	if got.Isolated != want.isolated {
		t.Errorf("%s: Isolated = %v, want %v", dir, got.Isolated, want.isolated)
	}
	if got.Allowed != want.allowed {
		t.Errorf("%s: Allowed = %v, want %v (reason %q)", dir, got.Allowed, want.allowed, got.Reason)
	}
	var policies []string
	for _, k := range got.Policies {
		policies = append(policies, k.String())
	}
	if !slices.Equal(policies, want.policies) {
		t.Errorf("%s: Policies = %q, want %q", dir, policies, want.policies)
	}
	var by []string
	for _, r := range got.AllowedBy {
		by = append(by, r.String())
	}
	if !slices.Equal(by, want.by) {
		t.Errorf("%s: AllowedBy = %q, want %q", dir, by, want.by)
	}
	if got.Reason == "" {
		t.Errorf("%s: empty Reason", dir)
	}
	if !strings.Contains(got.Reason, reason) {
		t.Errorf("%s: Reason = %q, want it to mention %q", dir, got.Reason, reason)
	}
}

// specWorld builds the cluster described on TestEvaluateSpec.
func specWorld(t *testing.T) *Store {
	t.Helper()
	s := NewStore()
	for _, ns := range []struct {
		name   string
		labels []string
	}{
		{"prod", []string{"env", "prod", "team", "a"}},
		{"dev", []string{"env", "dev", "team", "b"}},
		{"staging", []string{"env", "staging"}},
	} {
		l := specLabels(ns.labels...)
		l[specMetaName] = ns.name
		s.SetNamespace(ns.name, &model.Namespace{Name: ns.name, Labels: l})
	}
	s.SetNode("n1", []netip.Addr{netip.MustParseAddr("192.168.0.1")})
	s.SetNode("n2", []netip.Addr{netip.MustParseAddr("192.168.0.2")})
	for _, p := range []struct {
		key, ip, node string
		labels        []string
		named         []model.NamedPort
	}{
		{"prod/web", "10.0.1.1", "n1", []string{"app", "web", "tier", "front"},
			[]model.NamedPort{{Name: "dns", Protocol: model.UDP, Port: 5353}, {Name: "http", Protocol: model.TCP, Port: 8080}}},
		{"prod/db", "10.0.1.2", "n2", []string{"app", "db", "tier", "back"},
			[]model.NamedPort{{Name: "http", Protocol: model.TCP, Port: 9000}, {Name: "pg", Protocol: model.TCP, Port: 5432}}},
		{"prod/cache", "10.0.1.3", "n1", []string{"app", "cache"}, nil},
		{"prod/batch", "10.0.1.4", "n2", []string{"app", "batch"}, nil},
		{"dev/web", "10.0.2.1", "n1", []string{"app", "web", "tier", "front"},
			[]model.NamedPort{{Name: "http", Protocol: model.TCP, Port: 8081}}},
		{"dev/tool", "10.0.2.2", "n2", []string{"app", "tool"}, nil},
		{"staging/web", "10.0.3.1", "n2", []string{"app", "web"}, nil},
		{"ghost/probe", "10.0.9.1", "n2", []string{"app", "probe"}, nil},
	} {
		ns, name, _ := strings.Cut(p.key, "/")
		k := model.PodKey{Namespace: ns, Name: name}
		s.SetPod(k, &model.Pod{Key: k, Labels: specLabels(p.labels...), IPs: []netip.Addr{netip.MustParseAddr(p.ip)},
			NamedPorts: p.named, NodeName: p.node})
	}
	return s
}

// specPeer resolves a case's endpoint as a caller would.
func specPeer(t *testing.T, s *Store, e string) Peer {
	t.Helper()
	if node, ok := strings.CutPrefix(e, "node:"); ok {
		addrs := s.nodeAddrs[node]
		if len(addrs) == 0 {
			t.Fatalf("no node %q", node)
		}
		return Peer{IP: addrs[0], Node: node}
	}
	if ip, err := netip.ParseAddr(e); err == nil {
		return Peer{IP: ip}
	}
	ns, name, _ := strings.Cut(e, "/")
	p := s.Pod(model.PodKey{Namespace: ns, Name: name})
	if p == nil {
		t.Fatalf("no pod %q", e)
	}
	return Peer{IP: p.IPs[0], Pod: p}
}

func specLabels(kv ...string) map[string]string {
	m := map[string]string{}
	for i := 0; i+1 < len(kv); i += 2 {
		m[kv[i]] = kv[i+1]
	}
	return m
}

// specSel is a selector with matchLabels kv; specSel() is {}.
func specSel(kv ...string) *model.LabelSelector {
	if len(kv) == 0 {
		return &model.LabelSelector{}
	}
	return &model.LabelSelector{MatchLabels: specLabels(kv...)}
}

// specPolicy builds a policy "ns/name" with policyTypes types ("Ingress",
// "Egress" or "Ingress,Egress"), as the converter leaves it.
func specPolicy(key, types string, sel *model.LabelSelector, ingress, egress []model.PolicyRule) *model.NetworkPolicy {
	ns, name, _ := strings.Cut(key, "/")
	return &model.NetworkPolicy{
		Key:           model.PolicyKey{Namespace: ns, Name: name},
		PodSelector:   *sel,
		Ingress:       ingress,
		Egress:        egress,
		PolicyIngress: strings.Contains(types, "Ingress"),
		PolicyEgress:  strings.Contains(types, "Egress"),
	}
}

func specPols(p ...*model.NetworkPolicy) []*model.NetworkPolicy { return p }

func specRules(r ...model.PolicyRule) []model.PolicyRule { return r }

// specRule is a rule with ports (nil: every port) and peers (none: every peer).
func specRule(ports []model.PolicyPort, peers ...model.PolicyPeer) model.PolicyRule {
	return model.PolicyRule{Ports: ports, Peers: peers}
}

func specPorts(p ...model.PolicyPort) []model.PolicyPort { return p }

func specPods(s *model.LabelSelector) model.PolicyPeer { return model.PolicyPeer{PodSelector: s} }

func specNamespaces(s *model.LabelSelector) model.PolicyPeer {
	return model.PolicyPeer{NamespaceSelector: s}
}

func specPodsIn(ns, pods *model.LabelSelector) model.PolicyPeer {
	return model.PolicyPeer{NamespaceSelector: ns, PodSelector: pods}
}

func specBlock(cidr string, except ...string) model.PolicyPeer {
	b := &model.IPBlock{CIDR: netip.MustParsePrefix(cidr)}
	for _, e := range except {
		b.Except = append(b.Except, netip.MustParsePrefix(e))
	}
	return model.PolicyPeer{IPBlock: b}
}

func specPort(proto model.Protocol, port uint16) model.PolicyPort {
	return model.PolicyPort{Protocol: proto, Port: port}
}

func specAllPorts(proto model.Protocol) model.PolicyPort { return model.PolicyPort{Protocol: proto} }

func specRange(proto model.Protocol, lo, hi uint16) model.PolicyPort {
	return model.PolicyPort{Protocol: proto, Port: lo, EndPort: hi}
}

func specNamed(proto model.Protocol, name string) model.PolicyPort {
	return model.PolicyPort{Protocol: proto, Name: name}
}
