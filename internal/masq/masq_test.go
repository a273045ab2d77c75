package masq

import (
	"net/netip"
	"os/exec"
	"strings"
	"testing"

	"github.com/kpath/kpath/internal/testutil"
)

func TestRuleset(t *testing.T) {
	got := Ruleset(Rules{Devices: []string{"eth0", "eth1"}, Mark: 0x200000,
		PodCIDR: netip.MustParsePrefix("10.244.1.0/24"), ClusterCIDR: netip.MustParsePrefix("10.244.0.0/16")})
	for _, want := range []string{
		`meta mark & 0x00200000 == 0x00200000 oifname { "eth0", "eth1" } masquerade`,
		`ip saddr 10.244.1.0/24 ip daddr != 10.244.0.0/16 oifname { "eth0", "eth1" } masquerade`,
		"delete table ip kpath_masq",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("ruleset lacks %q:\n%s", want, got)
		}
	}
	if err := Ensure(Rules{Devices: []string{`bad"name`}, Mark: 1}); err == nil {
		t.Error("a device name with a quote was accepted")
	}
}

// TestEnsureInNetns programs the rules in a namespace of the test's and
// reads them back with nft: what the kernel holds is the ruleset Ruleset
// describes, replaced as a whole, and removed without a trace.
func TestEnsureInNetns(t *testing.T) {
	testutil.RequireRoot(t)
	testutil.RequireTool(t, "nft")
	ns := testutil.NewNetns(t, "masq")
	list := func() string {
		out, _ := exec.Command("ip", "netns", "exec", ns, "nft", "list", "table", "ip", Table).CombinedOutput()
		return string(out)
	}
	r := Rules{Devices: []string{"eth0", "eth1"}, Mark: 0x200000,
		PodCIDR: netip.MustParsePrefix("10.244.1.0/24"), ClusterCIDR: netip.MustParsePrefix("10.244.0.0/16")}
	inNS := func(f func() error) {
		t.Helper()
		if err := testutil.InNetns(ns, f); err != nil {
			t.Fatal(err)
		}
	}
	for range 2 { // replaced, not stacked
		inNS(func() error { return Ensure(r) })
	}
	got := list()
	for _, want := range []string{
		"type nat hook postrouting priority srcnat; policy accept;",
		`meta mark & 0x00200000 == 0x00200000 oifname "eth0" masquerade`,
		`ip saddr 10.244.1.0/24 ip daddr != 10.244.0.0/16 oifname "eth1" masquerade`,
	} {
		if !strings.Contains(got, want) {
			t.Errorf("table lacks %q:\n%s", want, got)
		}
	}
	if n := strings.Count(got, "masquerade"); n != 4 {
		t.Errorf("%d rules, want 4 (2 devices x 2):\n%s", n, got)
	}
	r.Mark = 0
	inNS(func() error { return Ensure(r) })
	if got := list(); strings.Contains(got, "meta mark") || strings.Count(got, "masquerade") != 2 {
		t.Errorf("after the mark rule went:\n%s", got)
	}
	for range 2 { // absent is no error
		inNS(Remove)
	}
	if got := list(); !strings.Contains(got, "No such file") {
		t.Errorf("table left after Remove:\n%s", got)
	}
}
