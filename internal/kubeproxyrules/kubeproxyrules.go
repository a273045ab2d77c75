// Package kubeproxyrules finds what kube-proxy leaves on a node: its
// nftables table (kube-proxy, nftables mode) and its iptables chains
// (KUBE-SERVICES, KUBE-NODEPORTS), whether iptables made them through
// nftables (iptables-nft) or in the legacy tables. With kpath replacing
// kube-proxy they make two service dataplanes on one node: kube-proxy's
// rules translate what they match before kpath sees it, by backends kube-
// proxy no longer updates, and connections break.
package kubeproxyrules

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strings"

	"github.com/google/nftables"
)

// Finding is one thing of kube-proxy's found.
type Finding struct {
	// Kind says where: "nftables" (kube-proxy's nftables mode),
	// "iptables-nft" or "iptables-legacy" (its iptables mode).
	Kind string
	// What names it, e.g. "table ip kube-proxy" or "chain ip nat KUBE-SERVICES".
	What string
}

func (f Finding) String() string { return f.Kind + ": " + f.What }

// Chains are the iptables chains only kube-proxy makes (KUBE-FIREWALL and
// the canaries are the kubelet's too, and say nothing).
var Chains = []string{"KUBE-SERVICES", "KUBE-NODEPORTS", "KUBE-EXTERNAL-SERVICES"}

// Table is kube-proxy's nftables table, in families ip and ip6.
const Table = "kube-proxy"

// Find looks in the network namespace open at netnsFd (-1: the caller's).
// Legacy iptables are read only in the caller's namespace, through
// iptables-legacy-save where it is installed.
func Find(netnsFd int) ([]Finding, error) {
	var opts []nftables.ConnOption
	if netnsFd >= 0 {
		opts = append(opts, nftables.WithNetNSFd(netnsFd))
	}
	conn, err := nftables.New(opts...)
	if err != nil {
		return nil, fmt.Errorf("nftables: %w", err)
	}
	defer conn.CloseLasting()
	var out []Finding
	tables, err := conn.ListTables()
	if err != nil {
		return nil, fmt.Errorf("list nftables tables: %w", err)
	}
	for _, t := range tables {
		if t.Name == Table {
			out = append(out, Finding{Kind: "nftables", What: fmt.Sprintf("table %s %s", family(t.Family), t.Name)})
		}
	}
	chains, err := conn.ListChains()
	if err != nil {
		return nil, fmt.Errorf("list nftables chains: %w", err)
	}
	for _, c := range chains {
		if c.Table != nil && c.Table.Name != Table && slices.Contains(Chains, c.Name) {
			out = append(out, Finding{Kind: "iptables-nft", What: fmt.Sprintf("chain %s %s %s", family(c.Table.Family), c.Table.Name, c.Name)})
		}
	}
	if netnsFd < 0 {
		out = append(out, legacy()...)
	}
	return out, nil
}

func family(f nftables.TableFamily) string {
	switch f {
	case nftables.TableFamilyIPv4:
		return "ip"
	case nftables.TableFamilyIPv6:
		return "ip6"
	case nftables.TableFamilyINet:
		return "inet"
	}
	return fmt.Sprint(f)
}

// legacy lists kube-proxy's chains in the legacy nat tables, if they are
// loaded and iptables-legacy-save can read them.
func legacy() []Finding {
	var out []Finding
	for _, v := range []struct{ names, save, family string }{
		{"/proc/net/ip_tables_names", "iptables-legacy-save", "ip"},
		{"/proc/net/ip6_tables_names", "ip6tables-legacy-save", "ip6"},
	} {
		names, err := os.ReadFile(v.names)
		if err != nil || !slices.Contains(strings.Fields(string(names)), "nat") {
			continue // no legacy nat table: nothing of anyone's
		}
		dump, err := exec.Command(v.save, "-t", "nat").Output()
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(bytes.NewReader(dump))
		for sc.Scan() {
			name, ok := strings.CutPrefix(strings.Fields(sc.Text() + " ")[0], ":")
			if ok && slices.Contains(Chains, name) {
				out = append(out, Finding{Kind: "iptables-legacy", What: fmt.Sprintf("chain %s nat %s", v.family, name)})
			}
		}
	}
	return out
}
