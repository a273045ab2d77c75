package masq

import (
	"net/netip"
	"strings"
	"testing"
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
