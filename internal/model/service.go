package model

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"time"
)

// Selection is how a frontend picks a backend for a new connection.
type Selection uint8

// Backend selection algorithms.
const (
	SelectRandom Selection = iota // uniform random per connection
	SelectMaglev                  // Maglev consistent hashing of the 5-tuple
)

// String names the algorithm as the CLI and configuration spell it.
func (s Selection) String() string {
	if s == SelectMaglev {
		return "maglev"
	}
	return "random"
}

// ParseSelection accepts "random" or "maglev".
func ParseSelection(s string) (Selection, error) {
	switch s {
	case "random", "":
		return SelectRandom, nil
	case "maglev":
		return SelectMaglev, nil
	}
	return 0, fmt.Errorf("backend selection %q: want random or maglev", s)
}

// MaxAffinityTimeout is the longest session-affinity timeout, as Kubernetes
// allows (sessionAffinityConfig.clientIP.timeoutSeconds <= 86400).
const MaxAffinityTimeout = 86400 * time.Second

// FrontendKey identifies a frontend in the datapath: its address, and
// whether it serves traffic arriving from outside the node (on the uplink)
// or from the node's own pods and processes. NodePort, external and
// load-balancer addresses have both, with different backends when the
// external traffic policy is Local.
type FrontendKey struct {
	L4Addr
	External bool
}

// String formats k as "10.96.0.10:80/TCP", with " external" for the
// external scope.
func (k FrontendKey) String() string {
	if k.External {
		return k.L4Addr.String() + " external"
	}
	return k.L4Addr.String()
}

// Service is one frontend and the backends its new connections may reach.
type Service struct {
	Frontend L4Addr
	// External: the frontend serves traffic arriving on the uplink.
	External bool
	Backends []L4Addr
	// Selection picks the algorithm for new connections.
	Selection Selection
	// Affinity, when non-zero, keeps a client on the backend it last used
	// for this long after its last new connection (sessionAffinity ClientIP).
	Affinity time.Duration
	// SourceRanges, when set, are the only sources new connections are
	// admitted from (a load-balancer IP's loadBalancerSourceRanges), in
	// canonical order (sorted, masked, no duplicates).
	SourceRanges []netip.Prefix
	// SourceNode: with SourceRanges, the node's own sockets are admitted
	// (a range holds the node's address).
	SourceNode bool
}

// MaxSourceRanges bounds a frontend's SourceRanges.
const MaxSourceRanges = 1024

// Equal reports whether s and o program the same frontend identically
// (backends compared in order).
func (s Service) Equal(o Service) bool {
	return s.Frontend == o.Frontend && s.External == o.External && s.Selection == o.Selection &&
		s.Affinity == o.Affinity && slices.Equal(s.Backends, o.Backends) &&
		slices.Equal(s.SourceRanges, o.SourceRanges) && s.SourceNode == o.SourceNode
}

// Key identifies s's frontend.
func (s Service) Key() FrontendKey { return FrontendKey{L4Addr: s.Frontend, External: s.External} }

// Validate reports what makes s unusable, naming the offending field.
func (s Service) Validate() error {
	if err := s.Frontend.Validate(); err != nil {
		return fmt.Errorf("frontend: %w", err)
	}
	seen := make(map[L4Addr]bool, len(s.Backends))
	for _, b := range s.Backends {
		if err := b.Validate(); err != nil {
			return fmt.Errorf("service %s: backend: %w", s.Frontend, err)
		}
		if b.Proto != s.Frontend.Proto {
			return fmt.Errorf("service %s: backend %s has another protocol", s.Frontend, b)
		}
		if seen[b] {
			return fmt.Errorf("service %s: backend %s listed twice", s.Frontend, b)
		}
		seen[b] = true
	}
	if len(s.Backends) > 65535 {
		return fmt.Errorf("service %s: %d backends, at most 65535", s.Frontend, len(s.Backends))
	}
	if s.Affinity < 0 || s.Affinity > MaxAffinityTimeout {
		return fmt.Errorf("service %s: affinity timeout %s outside 0..%s", s.Frontend, s.Affinity, MaxAffinityTimeout)
	}
	if len(s.SourceRanges) > MaxSourceRanges {
		return fmt.Errorf("service %s: %d source ranges, at most %d", s.Frontend, len(s.SourceRanges), MaxSourceRanges)
	}
	for i, p := range s.SourceRanges {
		if !p.IsValid() || !p.Addr().Is4() || p.Masked() != p {
			return fmt.Errorf("service %s: source range %s: want a masked IPv4 prefix", s.Frontend, p)
		}
		if i > 0 && ComparePrefix(s.SourceRanges[i-1], p) >= 0 {
			return fmt.Errorf("service %s: source ranges not sorted or repeated at %s", s.Frontend, p)
		}
	}
	if s.SourceNode && len(s.SourceRanges) == 0 {
		return fmt.Errorf("service %s: the node admitted without source ranges", s.Frontend)
	}
	if s.Affinity > 0 && s.Affinity < time.Second {
		return fmt.Errorf("service %s: affinity timeout %s: the datapath counts whole seconds", s.Frontend, s.Affinity)
	}
	return nil
}

// ComparePrefix orders prefixes by address, then length.
func ComparePrefix(a, b netip.Prefix) int {
	return cmp.Or(a.Addr().Compare(b.Addr()), cmp.Compare(a.Bits(), b.Bits()))
}

// CanonicalPrefixes returns ps masked, sorted and without duplicates.
func CanonicalPrefixes(ps []netip.Prefix) []netip.Prefix {
	out := make([]netip.Prefix, 0, len(ps))
	for _, p := range ps {
		out = append(out, p.Masked())
	}
	slices.SortFunc(out, ComparePrefix)
	return slices.Compact(out)
}
