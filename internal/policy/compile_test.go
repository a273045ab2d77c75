package policy_test

import (
	"math/rand/v2"
	"net/netip"
	"testing"

	"github.com/kpath/kpath/internal/model"
	"github.com/kpath/kpath/internal/policy"
	"github.com/kpath/kpath/internal/policy/policytest"
)

// TestCompilerMatchesEvaluator: for random clusters, every (source,
// destination, protocol, port) the compiled entries answer as the reference
// evaluator does, in both directions.
func TestCompilerMatchesEvaluator(t *testing.T) {
	for seed := range uint64(60) {
		compilerMatchesEvaluator(t, seed, 7, 0)
	}
}

// FuzzCompilerMatchesEvaluator: the same, for clusters and policies the
// fuzzer's seeds make (random pods, namespaces, labels and policies of every
// field), with ports it chooses besides the usual ones.
func FuzzCompilerMatchesEvaluator(f *testing.F) {
	for seed := range uint64(8) {
		f.Add(seed, uint64(7), uint16(0))
	}
	f.Add(uint64(99), uint64(3), uint16(8080))
	f.Fuzz(compilerMatchesEvaluator)
}

func compilerMatchesEvaluator(t *testing.T, seed, stream uint64, extraPort uint16) {
	ports := []uint16{79, 80, 81, 82, 1080, 65535}
	if extraPort != 0 {
		ports = append(ports, extraPort)
	}
	r := rand.New(rand.NewPCG(seed, stream))
	s, addrs := policytest.RandomCluster(r, 1+r.IntN(6))
	sets := map[string]*policy.SetEntries{}
	compiledFor := func(ip netip.Addr) (*policy.SetEntries, *model.Pod) {
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
						id := s.IdentityOf(dst, p.NodeName)
						got, _ := e.Allows(false, id, dst, proto, port)
						got = got || id == policy.IdentityHost || src == dst // as the datapath decides
						if got != want.Egress.Allowed {
							t.Fatalf("seed %d/%d: egress %s -> %s %s/%d: compiled %v, evaluator %v (%s)", seed, stream, src, dst, proto, port, got, want.Egress.Allowed, want.Egress.Reason)
						}
					}
					if e, p := compiledFor(dst); e != nil {
						id := s.IdentityOf(src, p.NodeName)
						got, _ := e.Allows(true, id, src, proto, port)
						got = got || id == policy.IdentityHost || src == dst
						if got != want.Ingress.Allowed {
							t.Fatalf("seed %d/%d: ingress %s -> %s %s/%d: compiled %v, evaluator %v (%s)", seed, stream, src, dst, proto, port, got, want.Ingress.Allowed, want.Ingress.Reason)
						}
					}
				}
			}
		}
	}
}
