package datapath

import (
	"crypto/rand"
	"encoding/hex"
	"net/netip"
	"testing"

	"github.com/kpath/kpath/internal/testutil"
)

// testConfig is a small datapath pinned in a directory of the test's own.
func testConfig(t testing.TB) Config {
	t.Helper()
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	cfg := DefaultConfig()
	cfg.PinDir = "kpath-test-" + hex.EncodeToString(b)
	cfg.Sizes = MapSizes{
		Frontends: 1024, Backends: 4096, Slots: 8192, Maglev: 64,
		Affinity: 1024, Conntrack: 16384, SockRevNat: 1024, Fragments: 256,
		IPCache: 1024, Endpoints: 256, PolicyEntries: 65536, PolicyCIDRs: 4096,
	}
	cfg.MaglevTableSize = 251
	return cfg
}

// openTest opens a datapath that is closed and unpinned when the test ends.
func openTest(t testing.TB, cfg Config) *Datapath {
	t.Helper()
	testutil.RequireRoot(t)
	d, err := Open(cfg)
	if err != nil {
		_ = Reset(cfg)
		t.Fatalf("open datapath: %v", err)
	}
	t.Cleanup(func() {
		d.Close()
		if err := Reset(cfg); err != nil {
			t.Errorf("reset: %v", err)
		}
	})
	return d
}

func TestOpenLoadsAndVerifies(t *testing.T) {
	d := openTest(t, testConfig(t))
	if d.objs.KpFromPod == nil || d.objs.KpSockConnect4 == nil {
		t.Fatal("programs not loaded")
	}
}

// testIfindex is the interface BPF_PROG_TEST_RUN's packets arrive on
// (loopback, unless the run's context names another).
const testIfindex = 1

// bindTest binds addrs to testIfindex, as the agent binds a pod's address
// to its veth, so that kp_from_pod accepts them as sources.
func bindTest(t testing.TB, d *Datapath, addrs ...netip.Addr) {
	t.Helper()
	for _, a := range addrs {
		if err := d.BindPod(testIfindex, a); err != nil {
			t.Fatal(err)
		}
	}
}

// pktSource is the IPv4 source of an Ethernet frame built by testPkt
// (Ethernet header 14 bytes, then the source at offset 12 of IPv4).
func pktSource(pkt []byte) netip.Addr {
	return netip.AddrFrom4([4]byte(pkt[26:30]))
}

// fromPod runs kp_from_pod on pkt as the pod whose address is the packet's
// source sends it.
func fromPod(t testing.TB, d *Datapath, pkt []byte) (uint32, []byte) {
	t.Helper()
	bindTest(t, d, pktSource(pkt))
	return runProg(t, d.objs.KpFromPod, pkt)
}
