// Package conformance runs the upstream Kubernetes e2e suite's SIG Network
// tests (e2e.test and ginkgo of the pinned Kubernetes) against a lab of
// real nodes, with kpath or kube-proxy serving Services, and reads the
// suite's JUnit report into a summary.
package conformance

import (
	"strings"
	"syscall"
)

// Focus selects the tests that run (ginkgo --focus; a test runs when one
// matches): SIG Network's Conformance tests, its Services, the
// NetworkPolicy suite (Netpol), the Networking granular checks and the
// trafficDistribution tests (which need 3 zones, the lab's nodes' from 3
// nodes up, and half of them 2 nodes in each: 6 nodes).
var Focus = []string{
	`\[sig-network\] .*\[Conformance\]`,
	`\[sig-network\] Services `,
	`\[sig-network\] Netpol `,
	`\[sig-network\] Networking Granular Checks`,
	`\[sig-network\] Traffic Distribution `,
}

// Skipped are the selected tests left out, each with why (ginkgo --skip).
var Skipped = []Skip{
	{`\[Serial\]`, "needs the whole cluster to itself; the selection runs in parallel"},
	{`\[Disruptive\]`, "restarts or breaks nodes and the control plane (issue 21's chaos runs cover that)"},
	{`\[Flaky\]`, "marked flaky upstream"},
	{`\[Feature:IPv6DualStack\]`, "kpath is IPv4 only (the lab has no IPv6 addresses)"},
	{`\[Feature:Networking-IPv6\]`, "kpath is IPv4 only"},
	{`\[Feature:LoadBalancer\]`, "needs a cloud's load balancer controller; the lab has none"},
	{`\[Feature:Ingress\]`, "an Ingress controller, not a CNI or Service dataplane"},
	{`\[Feature:KubeProxyDaemonSet\w*\]`, "upgrades kube-proxy as a GCE DaemonSet"},
	{`\[Feature:KubeProxyNFAcct\]`, "kube-proxy's own nfacct metrics"},
	{`\[Feature:Networking-Performance\]`, "iperf throughput runs; E1 measures performance"},
	{`\[Feature:PerformanceDNS\]`, "DNS at scale, beyond the lab"},
	{`\[Feature:OffByDefault\]`, "features off by default in Kubernetes"},
	{`\[Provider:GCE\]`, "GCE only"},
}

// Skip is a pattern of tests left out and why.
type Skip struct{ Pattern, Why string }

// MachineSkips are the tests this machine cannot run, for either
// dataplane: SCTP's when the kernel has no SCTP (no sctp module loaded,
// and none can be here), since the tests' pods open SCTP sockets
// themselves.
func MachineSkips() []Skip {
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM, syscall.IPPROTO_SCTP)
	if err != nil {
		return []Skip{{`\[Feature:SCTPConnectivity\]`, "this kernel has no SCTP (socket: " + err.Error() + "): the tests' own pods cannot open SCTP sockets"}}
	}
	syscall.Close(fd)
	return nil
}

// SkipPattern is Skipped and then extra as one ginkgo --skip expression.
func SkipPattern(extra ...Skip) string {
	parts := make([]string, 0, len(Skipped)+len(extra))
	for _, s := range Skipped {
		parts = append(parts, s.Pattern)
	}
	for _, s := range extra {
		parts = append(parts, s.Pattern)
	}
	return strings.Join(parts, "|")
}
