package datapath

import (
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"

	"github.com/kpath/kpath/internal/model"
	"github.com/kpath/kpath/internal/policy"
)

// Per-packet cost of each program path, measured with BPF_PROG_TEST_RUN
// repeat. The kernel runs the program over the same skb every repetition,
// so a translated packet would be non-service traffic from the second run
// on. Two frontends that translate into each other (A -> B's address, B ->
// A's) keep every repetition a real translation; cyclePair sets that up,
// and TestBenchmarkCycles proves each repetition translates.
//
// The reference is a program that only returns TC_ACT_OK: the harness's own
// cost per run, measured in the same run.

var (
	cycleA = "10.96.0.10:80"
	cycleB = "10.244.1.5:8080"
)

func cyclePair(t testing.TB, d *Datapath) {
	t.Helper()
	mustUpsert(t, d, svcOf(cycleA, cycleB))
	mustUpsert(t, d, svcOf(cycleB, cycleA))
}

func referenceProg(t testing.TB) *ebpf.Program {
	t.Helper()
	p, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Type:         ebpf.SchedCLS,
		License:      "GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 0), asm.Return()},
	})
	if err != nil {
		t.Fatalf("load reference program: %v", err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

type benchCase struct {
	name  string
	prog  func(d *Datapath) *ebpf.Program
	pkt   []byte
	setup func(t testing.TB, d *Datapath)
	// reason and dir each repetition must be counted under ("" for none).
	reason, dir string
}

func benchCases() []benchCase {
	client := ap(benchClient)
	return []benchCase{
		{
			name: "non-service", prog: func(d *Datapath) *ebpf.Program { return d.objs.KpFromPod },
			pkt:    testPkt{src: client, dst: ap("10.244.3.3:80"), proto: 6, tcpFlags: tcpACK, payload: make([]byte, 64)}.bytes(),
			reason: "pass", dir: "from-pod",
		},
		{
			name: "service-ct-hit", prog: func(d *Datapath) *ebpf.Program { return d.objs.KpFromPod },
			pkt:    testPkt{src: client, dst: ap(cycleA), proto: 6, tcpFlags: tcpACK, payload: make([]byte, 64)}.bytes(),
			setup:  cyclePair,
			reason: "service translated", dir: "from-pod",
		},
		{
			// SYN|FIN: every repetition closes the connection it opens,
			// so the next one is a reopen: backend selection and two new
			// conntrack entries each time.
			name: "service-new-connection", prog: func(d *Datapath) *ebpf.Program { return d.objs.KpFromPod },
			pkt:    testPkt{src: client, dst: ap(cycleA), proto: 6, tcpFlags: tcpSYN | tcpFIN, payload: make([]byte, 64)}.bytes(),
			setup:  cyclePair,
			reason: "service translated", dir: "from-pod",
		},
		{
			name: "reply-ct-hit", prog: func(d *Datapath) *ebpf.Program { return d.objs.KpToPod },
			pkt: testPkt{src: ap(cycleB), dst: client, proto: 6, tcpFlags: tcpACK, payload: make([]byte, 64)}.bytes(),
			setup: func(t testing.TB, d *Datapath) {
				cyclePair(t, d)
				// Create both connections' entries: client->A (to B) and client->B (to A).
				fwd := testPkt{src: client, dst: ap(cycleA), proto: 6, tcpFlags: tcpACK}.bytes()
				fromPod(t, d, fwd)
				fromPod(t, d, testPkt{src: client, dst: ap(cycleB), proto: 6, tcpFlags: tcpACK}.bytes())
			},
			reason: "reply translated", dir: "to-pod",
		},
	}
}

// underEgressPolicy makes the client an endpoint isolated for egress whose
// set allows TCP to identity 300, which the peers have.
func underEgressPolicy(t testing.TB, d *Datapath, peers ...string) {
	t.Helper()
	for _, p := range peers {
		if err := d.SetIPCache(ap(p).Addr(), 300); err != nil {
			t.Fatal(err)
		}
	}
	if err := d.ApplyPolicy([]PolicyChange{{Set: 1, Add: map[policy.Entry]uint32{
		{Peer: 300, Proto: model.TCP}: 1}}}); err != nil {
		t.Fatal(err)
	}
	if err := d.SetEndpoint(ap(benchClient).Addr(), Endpoint{Set: 1, Identity: 301, EgressIsolated: true, IngressIsolated: true}); err != nil {
		t.Fatal(err)
	}
}

const benchClient = "10.244.0.2:40000"

// policyCases are the paths with the client under policy.
func policyCases() []benchCase {
	client := ap(benchClient)
	plain := testPkt{src: client, dst: ap("10.244.3.3:80"), proto: 6, tcpFlags: tcpACK, payload: make([]byte, 64)}.bytes()
	return []benchCase{
		{
			name: "policy-ct-hit", prog: func(d *Datapath) *ebpf.Program { return d.objs.KpFromPod },
			pkt: plain,
			setup: func(t testing.TB, d *Datapath) {
				underEgressPolicy(t, d, "10.244.3.3:80")
				fromPod(t, d, plain) // the connection's entry, verdict cached
			},
			reason: "pass", dir: "from-pod",
		},
		{
			// The full pod egress path: service translation (conntrack
			// hit) and policy (conntrack hit, verdict cached).
			name: "service-policy-ct-hit", prog: func(d *Datapath) *ebpf.Program { return d.objs.KpFromPod },
			pkt: testPkt{src: client, dst: ap(cycleA), proto: 6, tcpFlags: tcpACK, payload: make([]byte, 64)}.bytes(),
			setup: func(t testing.TB, d *Datapath) {
				cyclePair(t, d)
				underEgressPolicy(t, d, cycleA, cycleB)
				fromPod(t, d, testPkt{src: client, dst: ap(cycleA), proto: 6, tcpFlags: tcpACK}.bytes())
				fromPod(t, d, testPkt{src: client, dst: ap(cycleB), proto: 6, tcpFlags: tcpACK}.bytes())
			},
			reason: "service translated", dir: "from-pod",
		},
		{
			// SYN|FIN: every repetition reopens the closing connection, so
			// policy is decided anew (two LPM lookups) and the entry rewritten.
			name: "policy-new-connection", prog: func(d *Datapath) *ebpf.Program { return d.objs.KpFromPod },
			pkt:    testPkt{src: client, dst: ap("10.244.3.3:80"), proto: 6, tcpFlags: tcpSYN | tcpFIN, payload: make([]byte, 64)}.bytes(),
			setup:  func(t testing.TB, d *Datapath) { underEgressPolicy(t, d, "10.244.3.3:80") },
			reason: "pass", dir: "from-pod",
		},
	}
}

func TestBenchmarkCycles(t *testing.T) {
	for _, bc := range append(benchCases(), policyCases()...) {
		t.Run(bc.name, func(t *testing.T) {
			d := openTest(t, testConfig(t))
			bindTest(t, d, ap(benchClient).Addr())
			if bc.setup != nil {
				bc.setup(t, d)
			}
			before := d.counter(t, bc.reason, bc.dir)
			const n = 1000
			ret, _, err := bc.prog(d).Benchmark(bc.pkt, n, nil)
			if err != nil {
				t.Fatal(err)
			}
			if ret != tcActOK {
				t.Fatalf("verdict %d", ret)
			}
			if got := d.counter(t, bc.reason, bc.dir) - before; got != n {
				t.Fatalf("%d of %d repetitions counted as %q", got, n, bc.reason)
			}
		})
	}
}

// BenchmarkDatapath reports ns/packet per path; compare with "reference".
func BenchmarkDatapath(b *testing.B) {
	b.Run("reference", func(b *testing.B) {
		openTest(b, testConfig(b)) // same privilege checks as the rest
		p := referenceProg(b)
		benchProg(b, p, testPkt{src: ap("10.0.0.1:1"), dst: ap("10.0.0.2:2"), proto: 6, payload: make([]byte, 64)}.bytes())
	})
	for _, bc := range append(benchCases(), policyCases()...) {
		b.Run(bc.name, func(b *testing.B) {
			d := openTest(b, testConfig(b))
			bindTest(b, d, ap(benchClient).Addr())
			if bc.setup != nil {
				bc.setup(b, d)
			}
			benchProg(b, bc.prog(d), bc.pkt)
		})
		// New connections send a flow event; the same path without them.
		if !strings.Contains(bc.name, "new-connection") {
			continue
		}
		b.Run(bc.name+"-no-events", func(b *testing.B) {
			cfg := testConfig(b)
			cfg.FlowEvents = false
			d := openTest(b, cfg)
			bindTest(b, d, ap(benchClient).Addr())
			if bc.setup != nil {
				bc.setup(b, d)
			}
			benchProg(b, bc.prog(d), bc.pkt)
		})
	}
}

func benchProg(b *testing.B, p *ebpf.Program, pkt []byte) {
	b.ResetTimer()
	_, per, err := p.Benchmark(pkt, b.N, b.ResetTimer)
	if err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64(per.Nanoseconds()), "ns/packet")
}
