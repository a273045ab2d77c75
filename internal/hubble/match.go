package hubble

import (
	"fmt"
	"regexp"
	"strings"
	"sync"

	"k8s.io/apimachinery/pkg/labels"
)

// The FlowFilter fields whose syntax is Hubble's own, evaluated as Hubble
// evaluates them (cilium's pkg/hubble/filters, the oracle of
// FuzzFlowFilterAgainstHubble): node name patterns and label selectors.

// Node name patterns (FlowFilter.node_name): "[CLUSTER/]NODE", each element
// an FQDN pattern (lowercase letters, digits, '-', '_', '.', and '*' for any
// run of [-.0-9a-z]; one trailing dot and surrounding space ignored, case
// folded), an empty element matching any name, no cluster element matching
// every cluster. A flow's node name without a cluster is in "default".

// fqdnElement matches one FQDN element, as an empty pattern element does.
const fqdnElement = `(?:[-0-9_a-z]+(?:\.[-0-9_a-z]+)*)`

func fqdnPatternRegexp(sb *strings.Builder, p string) error {
	p = strings.ToLower(strings.TrimSuffix(strings.TrimSpace(p), "."))
	switch {
	case p == "":
		return fmt.Errorf("node name pattern: empty element")
	case strings.HasSuffix(p, "."):
		return fmt.Errorf("node name pattern %q: more than one trailing dot", p)
	}
	for _, r := range p {
		switch {
		case r == '.':
			sb.WriteString(`\.`)
		case r == '*':
			sb.WriteString(`[-.0-9a-z]*`)
		case r == '-', r == '_', '0' <= r && r <= '9', 'a' <= r && r <= 'z':
			sb.WriteRune(r)
		default:
			return fmt.Errorf("node name pattern %q: %q is not allowed", p, r)
		}
	}
	return nil
}

// compileNodeNames is the regular expression of node name patterns.
func compileNodeNames(patterns []string) (*regexp.Regexp, error) {
	var sb strings.Builder
	sb.WriteString(`\A(?:`)
	for i, p := range patterns {
		if i > 0 {
			sb.WriteByte('|')
		}
		if p == "" {
			return nil, fmt.Errorf("node name pattern: empty")
		}
		cluster, node, ok := strings.Cut(p, "/")
		if !ok {
			cluster, node = "", p
		}
		if strings.Contains(node, "/") {
			return nil, fmt.Errorf("node name pattern %q: more than one slash", p)
		}
		for i, el := range []string{cluster, node} {
			if i == 1 {
				sb.WriteByte('/')
			}
			if el == "" {
				sb.WriteString(fqdnElement)
			} else if err := fqdnPatternRegexp(&sb, el); err != nil {
				return nil, err
			}
		}
	}
	sb.WriteString(`)\z`)
	return regexp.Compile(sb.String())
}

// Label selectors (FlowFilter.source_label, destination_label): Kubernetes
// label selectors whose keys may name a label source ("k8s:app=web"); a key
// without one matches a label of any source. As Hubble does, each key is
// rewritten with its source before a dot ("k8s.app", "any.app") and the
// selector parsed by Kubernetes' parser.

func translateSelector(s string) string {
	var out strings.Builder
	in := []rune(s)
	i := 0
	for i < len(in) {
		// Up to the next key.
		for i < len(in) && (isSpace(in[i]) || in[i] == '!') {
			out.WriteRune(in[i])
			i++
		}
		if i == len(in) {
			break
		}
		// The key, up to space, '=', '!' or ','.
		start := i
		for i < len(in) && !isSpace(in[i]) && in[i] != '=' && in[i] != '!' && in[i] != ',' {
			i++
		}
		key := string(in[start:i])
		if !strings.Contains(key, ":") {
			key = "any:" + key
		}
		out.WriteString(strings.Replace(key, ":", ".", 1))
		// Up to the next selector: past a ',' outside parentheses.
		nesting := 0
		for i < len(in) {
			r := in[i]
			i++
			switch r {
			case '(':
				nesting++
			case ')':
				nesting--
			}
			out.WriteRune(r)
			if r == ',' && nesting == 0 {
				break
			}
		}
	}
	return out.String()
}

func isSpace(r rune) bool { return strings.ContainsRune(" \t\n\v\f\r\u0085\u00a0", r) }

// sourcedLabels are a flow endpoint's labels ("source:key=value") as a
// selector reads them: "source.key" names the label of that source,
// "any.key" a label of any source.
type sourcedLabels []string

func (ls sourcedLabels) Lookup(k string) (string, bool) {
	source, key, ok := strings.Cut(k, ".")
	if !ok {
		source, key = "any", k
	}
	for _, l := range ls {
		src, rest, ok := strings.Cut(l, ":")
		if !ok {
			src, rest = "unspec", l
		}
		name, value, _ := strings.Cut(rest, "=")
		if name == key && (source == "any" || source == src) {
			return value, true
		}
	}
	return "", false
}

func (ls sourcedLabels) Has(k string) bool   { _, ok := ls.Lookup(k); return ok }
func (ls sourcedLabels) Get(k string) string { v, _ := ls.Lookup(k); return v }

// compiled caches what filters compile: a follow request evaluates the
// same filter on every flow.
var compiled sync.Map // kind + "\x00" + pattern -> *regexp.Regexp or labels.Selector

func cached[T any](kind, key string, build func() (T, error)) (T, error) {
	k := kind + "\x00" + key
	if v, ok := compiled.Load(k); ok {
		return v.(T), nil
	}
	v, err := build()
	if err != nil {
		return v, err
	}
	compiled.Store(k, v)
	return v, nil
}

func labelSelector(s string) (labels.Selector, error) {
	return cached("label", s, func() (labels.Selector, error) { return labels.Parse(translateSelector(s)) })
}

// nodeNameMatch reports whether node matches one of patterns.
func nodeNameMatch(patterns []string, node string) bool {
	if node == "" {
		return false
	}
	re, err := cached("node", strings.Join(patterns, "\x00"), func() (*regexp.Regexp, error) { return compileNodeNames(patterns) })
	if err != nil {
		return false
	}
	if !strings.Contains(node, "/") {
		node = "default/" + node
	}
	return re.MatchString(node)
}

// labelMatch reports whether the endpoint's labels satisfy the selector.
func labelMatch(selector string, e interface{ GetLabels() []string }) bool {
	sel, err := labelSelector(selector)
	return err == nil && sel.Matches(sourcedLabels(e.GetLabels()))
}
