package kubeproxyrules

import (
	"os"
	"slices"
	"testing"

	"github.com/kpath/kpath/internal/testutil"
)

func findIn(t *testing.T, netns string) []string {
	t.Helper()
	f, err := os.Open("/run/netns/" + netns)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	found, err := Find(int(f.Fd()))
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, x := range found {
		out = append(out, x.String())
	}
	slices.Sort(out)
	return out
}

// TestFind: kube-proxy's nftables table and its iptables chains (made by
// iptables-nft) are found; the kubelet's own chains are not
// kube-proxy's.
func TestFind(t *testing.T) {
	testutil.RequireRoot(t)
	testutil.RequireTool(t, "ip", "nft", "iptables")
	clean := testutil.NewNetns(t, "kpath-test-kprules-clean")
	testutil.Run(t, "ip", "netns", "exec", clean, "iptables", "-t", "filter", "-N", "KUBE-FIREWALL")
	testutil.Run(t, "ip", "netns", "exec", clean, "iptables", "-t", "mangle", "-N", "KUBE-KUBELET-CANARY")
	if got := findIn(t, clean); len(got) != 0 {
		t.Errorf("in a namespace with the kubelet's chains only: %v", got)
	}

	left := testutil.NewNetns(t, "kpath-test-kprules-left")
	testutil.Run(t, "ip", "netns", "exec", left, "iptables", "-t", "nat", "-N", "KUBE-SERVICES")
	testutil.Run(t, "ip", "netns", "exec", left, "iptables", "-t", "nat", "-N", "KUBE-NODEPORTS")
	testutil.Run(t, "ip", "netns", "exec", left, "nft", "add", "table", "ip", "kube-proxy")
	testutil.Run(t, "ip", "netns", "exec", left, "nft", "add", "chain", "ip", "kube-proxy", "services")
	want := []string{
		"iptables-nft: chain ip nat KUBE-NODEPORTS",
		"iptables-nft: chain ip nat KUBE-SERVICES",
		"nftables: table ip kube-proxy",
	}
	if got := findIn(t, left); !slices.Equal(got, want) {
		t.Errorf("found %v, want %v", got, want)
	}
}
