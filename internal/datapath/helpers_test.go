package datapath

import (
	"crypto/rand"
	"encoding/hex"
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
