package datapath

import (
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/kpath/kpath/internal/testutil"
)

func prefixes(ss ...string) []netip.Prefix {
	out := make([]netip.Prefix, len(ss))
	for i, s := range ss {
		out[i] = netip.MustParsePrefix(s)
	}
	return out
}

// srcRangeEntries counts kp_lb_src_range's entries.
func srcRangeEntries(t *testing.T, d *Datapath) int {
	t.Helper()
	all, err := d.sourceRanges()
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, ps := range all {
		n += len(ps)
	}
	return n
}

// TestTCSourceRanges: a load-balancer frontend with loadBalancerSourceRanges
// admits new connections only from sources in a range, per packet from a
// pod and on the uplink, with a counted drop of its own; an established
// connection keeps going when the ranges change (kube-proxy checks only
// new connections), and the ranges' entries follow the service.
func TestTCSourceRanges(t *testing.T) {
	d := openTest(t, testConfig(t))
	svc := svcOf("198.51.100.30:80", "10.244.1.5:8080")
	svc.SourceRanges = prefixes("10.244.0.0/25", "203.0.113.0/24")
	mustUpsert(t, d, svc)
	ext := svc
	ext.External = true
	mustUpsert(t, d, ext)

	const reason = "denied by load-balancer source range"
	send := func(src string, sport uint16) (uint32, parsedPkt) {
		p := testPkt{src: netip.AddrPortFrom(netip.MustParseAddr(src), sport), dst: ap("198.51.100.30:80"), proto: 6, tcpFlags: tcpSYN}
		ret, out := fromPod(t, d, p.bytes())
		return ret, parsePkt(t, out)
	}
	if ret, p := send("10.244.0.2", 40000); ret != tcActOK || p.dst != ap("10.244.1.5:8080") {
		t.Fatalf("a source in range: verdict %d, destination %s; want translated to the backend", ret, p.dst)
	}
	if ret, _ := send("10.244.0.200", 40000); ret != tcActShot {
		t.Fatalf("a source outside the ranges: verdict %d, want TC_ACT_SHOT", ret)
	}
	if n := d.counter(t, reason, "from-pod"); n != 1 {
		t.Errorf("%q from-pod = %d, want 1", reason, n)
	}
	hostIn := func(src string) uint32 {
		p := testPkt{src: netip.AddrPortFrom(netip.MustParseAddr(src), 41000), dst: ap("198.51.100.30:80"), proto: 6, tcpFlags: tcpSYN}
		ret, _ := runProg(t, d.objs.KpHostIn, p.bytes())
		return ret
	}
	if ret := hostIn("203.0.113.9"); ret != tcActOK {
		t.Errorf("from outside, in range: verdict %d, want translated", ret)
	}
	if ret := hostIn("192.0.2.9"); ret != tcActShot {
		t.Errorf("from outside, not in range: verdict %d, want dropped", ret)
	}
	if n := d.counter(t, reason, "host-in"); n != 1 {
		t.Errorf("%q host-in = %d, want 1", reason, n)
	}

	// The ranges shrink: the established connection keeps its backend,
	// a new one from the same source is dropped.
	svc.SourceRanges = prefixes("203.0.113.0/24")
	mustUpsert(t, d, svc)
	if ret, p := send("10.244.0.2", 40000); ret != tcActOK || p.dst != ap("10.244.1.5:8080") {
		t.Errorf("established connection after the ranges changed: verdict %d, destination %s", ret, p.dst)
	}
	if ret, _ := send("10.244.0.2", 40001); ret != tcActShot {
		t.Errorf("a new connection from a source no longer in range: verdict %d, want dropped", ret)
	}
	infos, err := d.Services()
	if err != nil {
		t.Fatal(err)
	}
	for _, si := range infos {
		want := prefixes("203.0.113.0/24")
		if si.External {
			want = prefixes("10.244.0.0/25", "203.0.113.0/24")
		}
		if !slices.Equal(si.SourceRanges, want) || si.SourceNode {
			t.Errorf("%s: source ranges %v (node %v), want %v", si.Name, si.SourceRanges, si.SourceNode, want)
		}
	}
	if n := srcRangeEntries(t, d); n != 3 {
		t.Errorf("%d source range entries, want 3", n)
	}

	// No ranges: every source; the entries go.
	svc.SourceRanges = nil
	mustUpsert(t, d, svc)
	if ret, _ := send("10.244.0.200", 40002); ret != tcActOK {
		t.Errorf("without ranges: verdict %d, want translated", ret)
	}
	if err := d.DeleteService(ext.Key()); err != nil {
		t.Fatal(err)
	}
	if n := srcRangeEntries(t, d); n != 0 {
		t.Errorf("%d source range entries left after the ranges and the frontend went", n)
	}
	bad := svcOf("198.51.100.31:80", "10.244.1.5:8080")
	bad.SourceRanges = prefixes("10.0.0.1/8")
	if err := d.UpsertService(bad); err == nil || !strings.Contains(err.Error(), "masked") {
		t.Errorf("an unmasked range: %v, want refused", err)
	}
}

// TestSocketHookSourceRanges: the socket hooks judge the node's own
// sockets by SourceNode (refused at once when the node is not admitted)
// and leave a pod's sockets untranslated, to its veth's program.
func TestSocketHookSourceRanges(t *testing.T) {
	cfg := testConfig(t)
	cookie, err := NetnsCookie()
	if err != nil {
		testutil.SkipOrFail(t, err.Error())
		return
	}
	cfg.NodeNetnsCookie = cookie
	d := openTest(t, cfg)
	dir, cg := testCgroup(t)
	if err := d.AttachCgroup(dir); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = d.DetachCgroup(dir) })
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			_, _ = c.Write([]byte("backend"))
			c.Close()
		}
	}()
	svc := svcOf("198.51.100.30:80", ln.Addr().String())
	svc.SourceRanges = prefixes("192.0.2.0/24")
	mustUpsert(t, d, svc)
	dial := "KPATH_TEST_DIAL=198.51.100.30:80"

	var rep sockReport
	runInCgroupNetns(t, cg, false, "dial", &rep, dial)
	if !strings.Contains(rep.NoBackendErr, "operation not permitted") {
		t.Errorf("the node's socket, the node not in range: %q, want refused (EPERM)", rep.NoBackendErr)
	}
	if n := d.counter(t, "denied by load-balancer source range", "socket"); n != 1 {
		t.Errorf("socket source-range drops = %d, want 1", n)
	}
	svc.SourceNode = true
	mustUpsert(t, d, svc)
	rep = sockReport{}
	runInCgroupNetns(t, cg, false, "dial", &rep, dial)
	if rep.TCPPeer != "backend" {
		t.Errorf("the node's socket, the node in range: %q (%s), want the backend's answer", rep.TCPPeer, rep.NoBackendErr)
	}
	rep = sockReport{}
	runInCgroup(t, cg, "dial", &rep, dial)
	if !strings.Contains(rep.NoBackendErr, "network is unreachable") {
		t.Errorf("a pod namespace's socket: %q, want it left untranslated (network is unreachable)", rep.NoBackendErr)
	}
}
