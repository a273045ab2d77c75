package datapath

import (
	"errors"
	"net/netip"
	"testing"
	"time"

	"github.com/kpath/kpath/internal/model"
	"github.com/kpath/kpath/internal/policy"
)

// drain reads every event sent so far.
func drain(t *testing.T, e *Events) []FlowEvent {
	t.Helper()
	var out []FlowEvent
	for {
		var ev FlowEvent
		err := e.Read(&ev, 50*time.Millisecond)
		if errors.Is(err, ErrNoEvent) {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, ev)
	}
}

func ofType(evs []FlowEvent, t FlowType) []FlowEvent {
	var out []FlowEvent
	for _, e := range evs {
		if e.Type == t {
			out = append(out, e)
		}
	}
	return out
}

// TestFlowEvents: a new connection is reported once with its policy
// verdict and translation, not per packet; the first FIN of each direction
// once; a denied connection as a drop naming the policy set; drop events
// are rate-limited per CPU and the rest counted; a full ring buffer loses
// events, counts them, and the packets still pass.
func TestFlowEvents(t *testing.T) {
	cfg := testConfig(t)
	cfg.DropEventsPerSec = 5
	d := openTest(t, cfg)
	ev, err := d.OpenEvents()
	if err != nil {
		t.Fatal(err)
	}
	defer ev.Close()
	mustUpsert(t, d, svcOf("10.96.0.10:80", "10.0.2.5:8080"))
	client, backend := netip.MustParseAddr("10.0.1.2"), netip.MustParseAddr("10.0.2.5")
	if err := d.SetIPCache(backend, 302); err != nil {
		t.Fatal(err)
	}
	if err := d.ApplyPolicy([]PolicyChange{{Set: 4, Add: map[policy.Entry]uint32{{Peer: 302, Proto: model.TCP, Port: 8080, PortBits: 16}: 3}}}); err != nil {
		t.Fatal(err)
	}
	if err := d.SetEndpoint(client, Endpoint{Set: 4, Identity: 301, EgressIsolated: true}); err != nil {
		t.Fatal(err)
	}
	bindTest(t, d, client)
	cp := netip.AddrPortFrom(client, 40000)
	out := func(flags uint8) uint32 {
		r, _ := fromPod(t, d, testPkt{src: cp, dst: ap("10.96.0.10:80"), proto: 6, tcpFlags: flags}.bytes())
		return r
	}
	in := func(flags uint8) uint32 {
		r, _ := runProg(t, d.objs.KpToPod, testPkt{src: ap("10.0.2.5:8080"), dst: cp, proto: 6, tcpFlags: flags}.bytes())
		return r
	}
	for _, f := range []uint8{tcpSYN, tcpACK, tcpACK, tcpACK} {
		if out(f) != tcActOK {
			t.Fatal("allowed packet dropped")
		}
	}
	in(tcpSYN | tcpACK)
	in(tcpACK)
	evs := drain(t, ev)
	xl, news := ofType(evs, FlowXlate), ofType(evs, FlowNew)
	if len(xl) != 1 || xl[0].Service != ap("10.96.0.10:80") || xl[0].Dst != ap("10.0.2.5:8080") || xl[0].Src != cp || xl[0].Dir != "from-pod" {
		t.Errorf("translation events %+v, want one 10.96.0.10:80 -> 10.0.2.5:8080 from the client", xl)
	}
	if len(news) != 1 || news[0].Match != MatchIdentity || news[0].Rule != 3 || news[0].Set != 4 || news[0].PeerIdentity != 302 ||
		news[0].PolicyIngress || news[0].Service != ap("10.96.0.10:80") {
		t.Errorf("new-connection events %+v, want one egress verdict by identity 302, rule 3 of set 4, via the service", news)
	}
	if f := ofType(evs, FlowFlags); len(f) != 1 || f[0].Match != MatchReply || f[0].TCPFlags&tcpSYN == 0 {
		t.Errorf("flag events %+v, want one: the reply's SYN", f)
	}
	out(tcpFIN | tcpACK)
	out(tcpFIN | tcpACK)
	in(tcpFIN | tcpACK)
	if f := ofType(drain(t, ev), FlowFlags); len(f) != 1 || f[0].Match != MatchReply {
		// The forward FIN travels the service entry's cached verdict and
		// is not seen by conntrack's policy stage; the reply's FIN is.
		t.Errorf("flag events after FINs %+v, want the reply's first FIN only", f)
	}

	// Denied: a new connection to a port the set does not allow.
	denied := testPkt{src: netip.AddrPortFrom(client, 40100), dst: ap("10.0.2.5:9999"), proto: 6, tcpFlags: tcpSYN}.bytes()
	if r, _ := fromPod(t, d, denied); r != tcActShot {
		t.Fatal("denied connection passed")
	}
	drops := ofType(drain(t, ev), FlowDrop)
	if len(drops) != 1 || drops[0].Reason != "policy denied" || drops[0].Set != 4 || drops[0].Match != MatchDenied || drops[0].Dir != "from-pod" {
		t.Fatalf("drop events %+v, want one policy denial of set 4", drops)
	}
	// A flood of drops: 5 per second per CPU get through, the rest are counted.
	st0, _ := d.EventStats()
	if _, _, err := d.objs.KpFromPod.Benchmark(denied, 200, nil); err != nil {
		t.Fatal(err)
	}
	drops = ofType(drain(t, ev), FlowDrop)
	st1, _ := d.EventStats()
	if len(drops) > 10 || st1.RateLimited-st0.RateLimited < 190 {
		t.Errorf("flood of 200 drops: %d events, %d rate-limited; want at most the bucket and the rest counted", len(drops), st1.RateLimited-st0.RateLimited)
	}

	// A full ring: more new connections than it holds, none read.
	reopen := testPkt{src: netip.AddrPortFrom(client, 40200), dst: ap("10.0.2.5:8080"), proto: 6, tcpFlags: tcpSYN | tcpFIN}.bytes()
	ret, _, err := d.objs.KpFromPod.Benchmark(reopen, 40000, nil)
	if err != nil {
		t.Fatal(err)
	}
	if ret != tcActOK {
		t.Fatalf("verdict %d with the ring full, want the packet to pass", ret)
	}
	st2, _ := d.EventStats()
	if st2.Lost == 0 {
		t.Errorf("40,000 new connections into a 1 MiB ring lost nothing: %+v", st2)
	}
	t.Logf("event counters: %+v", st2)
	if n := len(drain(t, ev)); n == 0 {
		t.Error("nothing readable after the ring filled")
	}
}

// TestConnectionCounts: a connection's packets and bytes are counted in
// both directions (a translated one's forward packets on its service
// entry once its verdict is cached there) and handed over when the
// garbage collector deletes it.
func TestConnectionCounts(t *testing.T) {
	d := openTest(t, testConfig(t))
	mustUpsert(t, d, svcOf("10.96.0.10:80", "10.0.2.5:8080"))
	client := netip.MustParseAddr("10.0.1.2")
	if err := d.SetEndpoint(client, Endpoint{Set: 9, Identity: 301}); err != nil {
		t.Fatal(err)
	}
	plainOut := testPkt{src: ap("10.0.1.2:41000"), dst: ap("10.0.3.3:80"), proto: 6, tcpFlags: tcpACK, payload: make([]byte, 100)}.bytes()
	plainIn := testPkt{src: ap("10.0.3.3:80"), dst: ap("10.0.1.2:41000"), proto: 6, tcpFlags: tcpACK, payload: make([]byte, 10)}.bytes()
	svcOut := testPkt{src: ap("10.0.1.2:41001"), dst: ap("10.96.0.10:80"), proto: 6, tcpFlags: tcpACK, payload: make([]byte, 100)}.bytes()
	svcIn := testPkt{src: ap("10.0.2.5:8080"), dst: ap("10.0.1.2:41001"), proto: 6, tcpFlags: tcpACK, payload: make([]byte, 10)}.bytes()
	for range 3 {
		fromPod(t, d, plainOut)
		fromPod(t, d, svcOut)
	}
	for range 2 {
		runProg(t, d.objs.KpToPod, plainIn)
		runProg(t, d.objs.KpToPod, svcIn)
	}
	ageCT(t, d, 41000)
	ageCT(t, d, 41001)
	_, _, ends, err := d.ConntrackGCEnded()
	if err != nil {
		t.Fatal(err)
	}
	var plain, conn, svc *CTEnd
	for i := range ends {
		switch e := &ends[i]; {
		case e.Service:
			svc = e
		case e.Src.Port() == 41000:
			plain = e
		default:
			conn = e
		}
	}
	if plain == nil || plain.PacketsFwd != 3 || plain.PacketsRev != 2 || plain.BytesFwd != 3*uint64(len(plainOut)) || plain.BytesRev != 2*uint64(len(plainIn)) {
		t.Errorf("plain connection's end %+v, want 3 packets out and 2 back", plain)
	}
	if conn == nil || svc == nil || conn.PacketsFwd+svc.PacketsFwd != 3 || conn.PacketsRev != 2 || svc.Backend != ap("10.0.2.5:8080") {
		t.Errorf("translated connection's ends: conn %+v, service %+v; want 3 out between them and 2 back", conn, svc)
	}
}
