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
// This is a first step: SNAT in eBPF will replace it. The rules are
// programmed over netlink; no nft command is needed.
package masq

import (
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
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
// transaction. It speaks netlink to nf_tables itself (google/nftables):
// the agent's image has no nft command.
func Ensure(r Rules) error {
	if len(r.Devices) == 0 || (r.Mark == 0 && !r.PodCIDR.IsValid()) {
		return Remove()
	}
	for _, d := range r.Devices {
		if d == "" || len(d) >= unix.IFNAMSIZ || strings.ContainsAny(d, "\"\n") {
			return fmt.Errorf("device name %q is not valid", d)
		}
	}
	return apply(func(c *nftables.Conn, t *nftables.Table) bool {
		// (Re)created in the batch that removes the old one: no moment
		// without the rules, none with both versions.
		chain := c.AddChain(&nftables.Chain{Name: "postrouting", Table: t, Type: nftables.ChainTypeNAT,
			Hooknum: nftables.ChainHookPostrouting, Priority: nftables.ChainPriorityNATSource})
		for _, dev := range r.Devices {
			oif := []expr.Any{
				&expr.Meta{Key: expr.MetaKeyOIFNAME, Register: 1},
				&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ifname(dev)},
			}
			if r.Mark != 0 {
				// The mark is host order in the kernel's register.
				m := binaryutil.NativeEndian.PutUint32(r.Mark)
				c.AddRule(&nftables.Rule{Table: t, Chain: chain, Exprs: slices.Concat([]expr.Any{
					&expr.Meta{Key: expr.MetaKeyMARK, Register: 1},
					&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: m, Xor: make([]byte, 4)},
					&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: m},
				}, oif, []expr.Any{&expr.Masq{}})})
			}
			if r.PodCIDR.IsValid() && r.ClusterCIDR.IsValid() {
				c.AddRule(&nftables.Rule{Table: t, Chain: chain, Exprs: slices.Concat(
					prefixMatch(12, r.PodCIDR, expr.CmpOpEq),      // ip saddr
					prefixMatch(16, r.ClusterCIDR, expr.CmpOpNeq), // ip daddr
					oif, []expr.Any{&expr.Masq{}})})
			}
		}
		return true
	})
}

// Remove deletes kpath's table; it is not an error when it is absent.
func Remove() error {
	return apply(func(*nftables.Conn, *nftables.Table) bool { return false })
}

// apply replaces kpath's table by what fill adds to it in one
// transaction; fill returning false leaves no table.
func apply(fill func(*nftables.Conn, *nftables.Table) bool) error {
	c, err := nftables.New()
	if err != nil {
		return fmt.Errorf("masquerade rules: nftables: %w", err)
	}
	defer c.CloseLasting()
	t := &nftables.Table{Name: Table, Family: nftables.TableFamilyIPv4}
	// Adding an existing table is no error: the delete that follows then
	// always has a table to remove.
	c.AddTable(t)
	c.DelTable(t)
	if filled := fill(c, c.AddTable(&nftables.Table{Name: Table, Family: nftables.TableFamilyIPv4})); !filled {
		c.DelTable(t)
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("masquerade rules: nftables: %w (does the kernel have nf_tables and nft_masq?)", err)
	}
	return nil
}

// ifname is an interface name as nf_tables compares it: NUL-padded to
// IFNAMSIZ.
func ifname(n string) []byte {
	b := make([]byte, unix.IFNAMSIZ)
	copy(b, n)
	return b
}

// prefixMatch compares the IPv4 address at offset of the network header
// (12: source, 16: destination) with prefix.
func prefixMatch(offset uint32, p netip.Prefix, op expr.CmpOp) []expr.Any {
	p = p.Masked()
	mask := net.CIDRMask(p.Bits(), 32)
	addr := p.Addr().As4()
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: offset, Len: 4},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: mask, Xor: make([]byte, 4)},
		&expr.Cmp{Op: op, Register: 1, Data: addr[:]},
	}
}
