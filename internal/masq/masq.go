// Package masq installs the node's masquerade rules (nftables table ip
// kpath_masq; netfilter's conntrack undoes them for replies):
//
//   - traffic kpath translated on the uplink towards a backend on another
//     node: the backend must answer through this node, so the source
//     becomes the node's address when the packet leaves through the uplink
//     again (kp_host_in marks such packets);
//   - traffic from this node's pods to destinations outside the cluster
//     CIDR, which the network outside does not route back to pod addresses.
//
// This is a first step: SNAT in eBPF will replace it. The nft command must
// be installed (Debian package nftables).
package masq

import (
	"bytes"
	"fmt"
	"net/netip"
	"os/exec"
	"strconv"
	"strings"
)

// Table is the nftables table kpath owns.
const Table = "kpath_masq"

// Rules say what to masquerade.
type Rules struct {
	// Devices are the uplinks; only traffic leaving through them is touched.
	Devices []string
	// Mark is the skb->mark bit kp_host_in sets (0: no such rule).
	Mark uint32
	// PodCIDR and ClusterCIDR: traffic from PodCIDR to outside ClusterCIDR
	// is masqueraded (either invalid: no such rule).
	PodCIDR, ClusterCIDR netip.Prefix
}

// Ruleset returns the nft script that (re)creates the table atomically.
func Ruleset(r Rules) string {
	quoted := make([]string, len(r.Devices))
	for i, d := range r.Devices {
		quoted[i] = strconv.Quote(d)
	}
	devs := strings.Join(quoted, ", ")
	var rules []string
	if r.Mark != 0 {
		m := fmt.Sprintf("0x%08x", r.Mark)
		rules = append(rules, fmt.Sprintf("meta mark & %s == %s oifname { %s } masquerade", m, m, devs))
	}
	if r.PodCIDR.IsValid() && r.ClusterCIDR.IsValid() {
		rules = append(rules, fmt.Sprintf("ip saddr %s ip daddr != %s oifname { %s } masquerade", r.PodCIDR.Masked(), r.ClusterCIDR.Masked(), devs))
	}
	return fmt.Sprintf(`table ip %[1]s {}
delete table ip %[1]s
table ip %[1]s {
	chain postrouting {
		type nat hook postrouting priority srcnat; policy accept;
		%[2]s
	}
}
`, Table, strings.Join(rules, "\n\t\t"))
}

// Ensure installs the rules, replacing any earlier version in one
// transaction.
func Ensure(r Rules) error {
	if len(r.Devices) == 0 || (r.Mark == 0 && !r.PodCIDR.IsValid()) {
		return Remove()
	}
	for _, d := range r.Devices {
		if d == "" || strings.ContainsAny(d, "\"\n") {
			return fmt.Errorf("device name %q is not valid", d)
		}
	}
	return nft(Ruleset(r))
}

// Remove deletes kpath's table; it is not an error when it is absent.
func Remove() error {
	return nft(fmt.Sprintf("table ip %[1]s {}\ndelete table ip %[1]s\n", Table))
}

func nft(script string) error {
	path, err := exec.LookPath("nft")
	if err != nil {
		return fmt.Errorf("masquerade rule: nft not found (install nftables): %w", err)
	}
	cmd := exec.Command(path, "-f", "-")
	cmd.Stdin = strings.NewReader(script)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("masquerade rule: nft: %w: %s", err, strings.TrimSpace(out.String()))
	}
	return nil
}
