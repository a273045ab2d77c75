package test

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/kpath/kpath/internal/flows"
	klab "github.com/kpath/kpath/internal/lab"
	"github.com/kpath/kpath/internal/nsutil"
	"github.com/kpath/kpath/internal/procstat"
	"github.com/kpath/kpath/internal/testenv"
	"github.com/kpath/kpath/internal/testutil"
)

// observeFlows runs `kpath observe -o json --last 0 ARGS` against an
// agent's socket and decodes its flows.
func observeFlows(t *testing.T, bin, socket string, args ...string) []flows.Flow {
	t.Helper()
	cmd := exec.Command(filepath.Join(bin, "kpath"), append([]string{"--socket", socket, "observe", "-o", "json", "--last", "0"}, args...)...)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("kpath observe %v: %v", args, err)
	}
	var fs []flows.Flow
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if line == "" {
			continue
		}
		var f flows.Flow
		if err := json.Unmarshal([]byte(line), &f); err != nil {
			t.Fatalf("kpath observe output %q: %v", line, err)
		}
		fs = append(fs, f)
	}
	return fs
}

// flowsShow: the probes just made appear in `kpath observe` on x/a's node:
// denied connections as drops naming the policy that isolates x/a, and the
// Service x/s-a's translations.
func (n *npCluster) flowsShow(bin, services string) {
	t := n.t
	t.Helper()
	node := n.st.Nodes[0] // node-1 runs x/a
	observe := func(args ...string) []flows.Flow {
		t.Helper()
		return observeFlows(t, bin, node.AgentSocket, args...)
	}
	n.nodePortShows(observe)
	drops := observe("--verdict", "DROPPED", "--to-pod", "x/a")
	// named counts the drops naming the policy, as Hubble's readers are
	// checked to (a source not yet in the ipcache has no pod name).
	named := func(fs []flows.Flow) int {
		n := 0
		for _, f := range fs {
			if f.DropReason == "policy denied" && f.Policy != nil && slices.Contains(f.Policy.Policies, "x/deny-ingress") {
				n++
			}
		}
		return n
	}
	fromPods := 0
	for _, f := range drops {
		if f.Destination.Name() != "x/a" || f.Verdict != flows.Dropped {
			t.Errorf("filter --verdict DROPPED --to-pod x/a returned %s", f.Compact())
		}
		if f.Source.Pod != "" && f.Policy != nil && slices.Contains(f.Policy.Policies, "x/deny-ingress") {
			fromPods++
		}
	}
	if fromPods == 0 {
		t.Errorf("no drop from a pod to x/a naming x/deny-ingress among %d drops", len(drops))
	}
	xl := observe("--service", "x/s-a", "--type", "translation")
	if len(xl) == 0 {
		t.Errorf("no translation for Service x/s-a")
	}
	for _, f := range xl {
		if f.Service == nil || f.Service.Name != "s-a" || f.Destination.Name() != "x/a" {
			t.Errorf("translation %s: want the Service x/s-a to x/a", f.Compact())
		}
		// Per packet, pods' translations name their pod (the NodePort
		// request from outside has none).
		if services == "kpath-tc" && f.Source.Pod == "" && f.Service.Frontend.Port() != uint16(n.nodePort) {
			t.Errorf("per-packet translation %s without its source pod", f.Compact())
		}
	}
	// A late SYN retransmission may add a drop after kpath observe was
	// read: Hubble's readers must hold at least what it held, and no more
	// than it holds after them.
	n.hubbleShows(node, named(drops), func() int { return named(observe("--verdict", "DROPPED", "--to-pod", "x/a")) })
	t.Logf("  kpath observe on node-1: %d drops to x/a (%d naming x/deny-ingress, %d of them from pods), %d translations for x/s-a; e.g. %s",
		len(drops), named(drops), fromPods, len(xl), func() string {
			if len(drops) > 0 {
				return drops[0].Compact()
			}
			return "-"
		}())
}

// nodePortShows: a request from outside the nodes (the vnet) to x/s-a's
// NodePort on node-1 shows as that Service's translation to x/a from the
// outside address, then as x/deny-ingress's drop of it.
func (n *npCluster) nodePortShows(observe func(args ...string) []flows.Flow) {
	t := n.t
	t.Helper()
	node := n.st.Nodes[0]
	outside := startHelper(t, n.st.Vnet, "client", "outside", nil)
	url := fmt.Sprintf("tcp://%s:%d", node.IP, n.nodePort)
	if r := outside.do(t, "matrix 1s "+url); r.Matrix[url] != "" {
		t.Fatalf("NodePort %s answered by %q through x/deny-ingress", url, r.Matrix[url])
	}
	fe := netip.AddrPortFrom(netip.MustParseAddr(node.IP), uint16(n.nodePort))
	var xl, drop *flows.Flow
	for _, f := range observe("--ip", "192.168.200.1", "--to-pod", "x/a") {
		switch {
		case f.Type == "translation" && f.Service != nil && f.Service.Frontend == fe:
			xl = &f
		case f.Verdict == flows.Dropped && f.DropReason == "policy denied" && f.Destination.Name() == "x/a" && f.Destination.Port == 80:
			drop = &f
		}
	}
	if xl == nil || xl.Service.Namespace != "x" || xl.Service.Name != "s-a" || xl.Destination.Name() != "x/a" {
		t.Errorf("no translation of the NodePort %s to x/a naming Service x/s-a (got %+v)", fe, xl)
	}
	if drop == nil || drop.Source.Pod != "" {
		t.Errorf("no policy drop to x/a of the NodePort request from outside (got %+v)", drop)
	}
	if xl != nil && drop != nil {
		t.Logf("  NodePort from outside: %s | %s", xl.Compact(), drop.Compact())
	}
}

// hubbleShows: the stock hubble CLI, reading the agent's Hubble socket,
// prints the policy drops kpath observe does, in Hubble's form: at least
// what it held before, at most what recount finds afterwards.
func (n *npCluster) hubbleShows(node klab.NodeInfo, before int, recount func() int) {
	t := n.t
	t.Helper()
	bin := ciliumBin(t, "hubble")
	if bin == "" {
		return
	}
	got := countPolicyDrops(t, hubbleFlows(t, bin, "unix://"+node.HubbleSocket, "--verdict", "DROPPED", "--to-pod", "x/a"))
	if after := recount(); got < before || got > after {
		t.Errorf("hubble observe printed %d policy drops to x/a denied by x/deny-ingress; kpath observe %d before, %d after", got, before, after)
	}
	if relay := n.st.HubbleRelay; relay != "" {
		n.relayShows(bin, relay, before, recount)
	}
}

// ciliumBin is the path of a binary make cilium-bins builds ("" after a
// skip).
func ciliumBin(t *testing.T, name string) string {
	t.Helper()
	dir, err := testenv.CiliumBinDir()
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, name)
	if _, err := os.Stat(bin); err != nil {
		testutil.SkipOrFail(t, name+" not built: run make cilium-bins")
		return ""
	}
	return bin
}

// hubbleFlow is what the tests read of `hubble observe -o json`.
type hubbleFlow struct {
	NodeName string `json:"node_name"`
	Flow     struct {
		NodeName       string `json:"node_name"`
		Verdict        string `json:"verdict"`
		DropReasonDesc string `json:"drop_reason_desc"`
		Destination    struct {
			Namespace string `json:"namespace"`
			PodName   string `json:"pod_name"`
		} `json:"destination"`
		IngressDeniedBy []struct {
			Name, Namespace string
		} `json:"ingress_denied_by"`
	} `json:"flow"`
}

// hubbleFlows runs the stock hubble CLI's observe against server, for
// every flow held, with extra filters.
func hubbleFlows(t *testing.T, bin, server string, filters ...string) []hubbleFlow {
	t.Helper()
	args := append([]string{"observe", "--server", server, "--last", "100000", "-o", "json"}, filters...)
	out, err := exec.Command(bin, args...).Output()
	if err != nil {
		t.Fatalf("hubble %v: %v", args, err)
	}
	var fs []hubbleFlow
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if line == "" {
			continue
		}
		var r hubbleFlow
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			t.Fatalf("hubble output %q: %v", line, err)
		}
		fs = append(fs, r)
	}
	return fs
}

// countPolicyDrops checks that every flow is a drop to x/a and counts
// those Hubble's way names as denied by x/deny-ingress.
func countPolicyDrops(t *testing.T, fs []hubbleFlow) int {
	t.Helper()
	got := 0
	for _, r := range fs {
		f := r.Flow
		if f.Verdict != "DROPPED" || f.Destination.Namespace != "x" || f.Destination.PodName != "a" {
			t.Errorf("hubble --verdict DROPPED --to-pod x/a printed %+v", r)
		}
		if f.DropReasonDesc == "POLICY_DENIED" && len(f.IngressDeniedBy) > 0 && f.IngressDeniedBy[0].Name == "deny-ingress" {
			got++
		}
	}
	return got
}

// relayShows: the real hubble-relay, finding the nodes through the agents'
// Peer service, connects to every node's Hubble server; through it the
// hubble CLI reads every node's flows, and the same policy drops.
func (n *npCluster) relayShows(bin, relay string, before int, recount func() int) {
	t := n.t
	t.Helper()
	server := "unix://" + relay
	var nodes []struct {
		Name  string `json:"name"`
		State string `json:"state"`
	}
	waitFor(t, 30*time.Second, "relay connected to every node", func() bool {
		out, err := exec.Command(bin, "list", "nodes", "--server", server, "-o", "json").Output()
		if err != nil || json.Unmarshal(out, &nodes) != nil {
			return false
		}
		connected := 0
		for _, nd := range nodes {
			if nd.State == "NODE_CONNECTED" {
				connected++
			}
		}
		return connected == len(n.st.Nodes)
	})
	all := hubbleFlows(t, bin, server)
	perNode := map[string]int{}
	for _, r := range all {
		perNode[r.Flow.NodeName]++
	}
	for _, nd := range n.st.Nodes {
		if perNode[nd.Name] == 0 {
			t.Errorf("hubble-relay returned no flow of %s (flows per node: %v)", nd.Name, perNode)
		}
	}
	drops := hubbleFlows(t, bin, server, "--verdict", "DROPPED", "--to-pod", "x/a", "--drop-reason-desc", "POLICY_DENIED")
	got := countPolicyDrops(t, drops)
	for _, r := range drops {
		if r.Flow.NodeName != n.st.Nodes[0].Name {
			t.Errorf("through hubble-relay: a policy drop to x/a (ingress, enforced on node-1) reported by %s", r.Flow.NodeName)
		}
	}
	// The forged sources (forgedSources) were dropped where they were
	// sent: node-1 (x/c) and node-2 (y/b), under Hubble's own reason.
	forged := map[string]int{}
	for _, r := range hubbleFlows(t, bin, server, "--verdict", "DROPPED", "--drop-reason-desc", "INVALID_SOURCE_IP") {
		forged[r.Flow.NodeName]++
	}
	for _, nd := range n.st.Nodes {
		if forged[nd.Name] == 0 {
			t.Errorf("through hubble-relay: no INVALID_SOURCE_IP drop of %s (per node: %v)", nd.Name, forged)
		}
	}
	if after := recount(); got < before || got > after {
		t.Errorf("through hubble-relay: %d policy drops to x/a denied by x/deny-ingress; node-1 held %d before, %d after", got, before, after)
	}
	t.Logf("  hubble-relay: %d nodes connected, flows per node %v, %d policy drops to x/a", len(nodes), perNode, got)
	n.hubbleTLSShows(bin)
}

// hubbleTLSShows: relay reached every node over mTLS (above); the hubble
// CLI does too, straight to node-1's TCP listener from the vnet, with the
// lab's client certificate, and is refused without one or in plaintext.
func (n *npCluster) hubbleTLSShows(bin string) {
	t := n.t
	t.Helper()
	node, tlsDir := n.st.Nodes[0], n.st.HubbleTLS
	observe := func(args ...string) ([]byte, error) {
		all := append([]string{"netns", "exec", n.st.Vnet, bin, "observe", "--server", node.HubbleAddress, "--last", "5", "-o", "json"}, args...)
		return exec.Command("ip", all...).CombinedOutput()
	}
	ca := "--tls-ca-cert-files=" + filepath.Join(tlsDir, "hubble-ca.crt")
	name := "--tls-server-name=" + node.Name + ".default.hubble-grpc.cilium.io"
	out, err := observe("--tls", ca, name, "--tls-client-cert-file="+filepath.Join(tlsDir, "client.crt"),
		"--tls-client-key-file="+filepath.Join(tlsDir, "client.key"))
	if err != nil || !strings.Contains(string(out), `"node_name":"`+node.Name+`"`) {
		t.Errorf("hubble observe over mTLS to %s: %v\n%s", node.HubbleAddress, err, out)
	}
	for what, args := range map[string][]string{
		"without a client certificate": {"--tls", ca, name},
		"in plaintext":                 nil,
	} {
		if out, err := observe(args...); err == nil {
			t.Errorf("hubble observe %s to %s was served:\n%s", what, node.HubbleAddress, out)
		}
	}
}

// dropFlood: y/a floods x/a, which x/deny-ingress isolates, with UDP for
// a few seconds. Every packet is dropped and counted, drop events stay
// within the per-CPU rate (the rest counted as rate-limited, none lost
// unseen), and node-1's agent spends a bounded share of a CPU on them.
func (n *npCluster) dropFlood() {
	t := n.t
	t.Helper()
	node := n.st.Nodes[0]
	pid := findProcess(t, "kpath-agent", "--pin-dir="+node.PinDir)
	const seconds = 3
	before, cpu0, t0 := agentMetrics(t, node), processCPU(t, pid), time.Now()
	r := n.clients["y/a"].do(t, fmt.Sprintf("flood %s:80 %ds", n.ips["x/a"], seconds))
	time.Sleep(time.Second) // the agent reads what the ring still holds
	after, cpu1, elapsed := agentMetrics(t, node), processCPU(t, pid), time.Since(t0)
	delta := func(name string, labels ...string) float64 {
		return after.sum(name, labels...) - before.sum(name, labels...)
	}
	sent := float64(r.Counts["sent"])
	dropped := delta("kpath_datapath_packets_total", `reason="policy denied"`)
	events := delta("hubble_drop_total")
	limited := delta("hubble_lost_events_total", `source="drop_rate_limit"`)
	lost := delta("hubble_lost_events_total", `source="perf_event_ring_buffer"`)
	cores := (cpu1 - cpu0).Seconds() / elapsed.Seconds()
	t.Logf("  drop flood y/a -> x/a UDP/80, %ds: %.0f sent (%.0f/s), %.0f dropped by policy, %.0f drop events, %.0f rate-limited, %.0f lost; node-1's agent %.1f%% of a CPU",
		seconds, sent, sent/seconds, dropped, events, limited, lost, 100*cores)
	if sent < 20000 {
		t.Fatalf("the flood sent only %.0f datagrams", sent)
	}
	if dropped < sent*0.99 || dropped > sent*1.01+100 {
		t.Errorf("%.0f of %.0f flood datagrams counted as policy drops", dropped, sent)
	}
	// Each CPU starts with a full bucket (a second's worth) and refills
	// at the rate.
	ncpu := float64(runtime.NumCPU())
	if limit := ncpu * 1000 * (elapsed.Seconds() + 1); events > limit {
		t.Errorf("%.0f drop events in %s: over the rate limit's %.0f", events, elapsed.Round(time.Millisecond), limit)
	}
	if events+limited+lost < dropped*0.99 {
		t.Errorf("drops unaccounted for: %.0f events + %.0f rate-limited + %.0f lost of %.0f drops", events, limited, lost, dropped)
	}
	if cores > 0.10 {
		t.Errorf("node-1's agent used %.1f%% of a CPU during the flood, want at most 10%%", 100*cores)
	}
}

// metricsText is a Prometheus text exposition.
type metricsText string

// sum adds the samples of metric name whose labels contain every one of
// labels (`key="value"`).
func (m metricsText) sum(name string, labels ...string) float64 {
	var total float64
	for _, line := range strings.Split(string(m), "\n") {
		// Label values may hold spaces ("policy denied"); the value is
		// the last field (kpath writes no timestamps).
		i := strings.LastIndexByte(line, ' ')
		if i < 0 || strings.HasPrefix(line, "#") {
			continue
		}
		series := line[:i]
		if series != name && !strings.HasPrefix(series, name+"{") {
			continue
		}
		if !slices.ContainsFunc(labels, func(l string) bool { return !strings.Contains(series, l) }) {
			v, _ := strconv.ParseFloat(line[i+1:], 64)
			total += v
		}
	}
	return total
}

// agentMetrics reads a lab node's agent metrics, served in the node's
// namespace.
func agentMetrics(t *testing.T, node klab.NodeInfo) metricsText {
	t.Helper()
	m, err := tryAgentMetrics(node)
	if err != nil {
		t.Fatalf("metrics of %s's agent: %v", node.Name, err)
	}
	return m
}

// tryAgentMetrics is agentMetrics for an agent that may not serve yet.
func tryAgentMetrics(node klab.NodeInfo) (metricsText, error) {
	c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DialContext: nsutil.Dialer(node.Netns), DisableKeepAlives: true}}
	resp, err := c.Get("http://127.0.0.1:9964/metrics")
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return metricsText(b), err
}

// processCPU is a process's user and system time so far.
func processCPU(t *testing.T, pid int) time.Duration {
	t.Helper()
	st, err := procstat.Read(pid)
	if err != nil {
		t.Fatal(err)
	}
	return st.CPU
}
