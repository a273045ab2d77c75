// Package masq installs the node's masquerade rule for traffic that kpath
// translated on the uplink towards a backend on another node: the backend
// must answer through this node, so the packet's source becomes the node's
// address when it leaves through the uplink again. kp_host_in marks such
// packets; one nftables rule (table ip kpath_masq) masquerades marked
// packets leaving through the uplink devices, and netfilter's conntrack
// undoes it for the replies. This is a first step: SNAT in eBPF will
// replace it. The nft command must be installed (Debian package nftables).
package masq

import (
	"bytes"
	"fmt"
	"os/exec"
	"strconv"
	"strings"
)

// Table is the nftables table kpath owns.
const Table = "kpath_masq"

// Ruleset returns the nft script that (re)creates the table atomically.
func Ruleset(devices []string, mark uint32) string {
	quoted := make([]string, len(devices))
	for i, d := range devices {
		quoted[i] = strconv.Quote(d)
	}
	m := fmt.Sprintf("0x%08x", mark)
	return fmt.Sprintf(`table ip %[1]s {}
delete table ip %[1]s
table ip %[1]s {
	chain postrouting {
		type nat hook postrouting priority srcnat; policy accept;
		meta mark & %[2]s == %[2]s oifname { %[3]s } masquerade
	}
}
`, Table, m, strings.Join(quoted, ", "))
}

// Ensure installs the rule for devices, replacing any earlier version in
// one transaction.
func Ensure(devices []string, mark uint32) error {
	if len(devices) == 0 || mark == 0 {
		return Remove()
	}
	for _, d := range devices {
		if d == "" || strings.ContainsAny(d, "\"\n") {
			return fmt.Errorf("device name %q is not valid", d)
		}
	}
	return nft(Ruleset(devices, mark))
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
