package test

import (
	"context"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kpath/kpath/internal/bench"
	"github.com/kpath/kpath/internal/testenv"
	"github.com/kpath/kpath/internal/testutil"
)

// TestLatencyBenchSmoke runs E1's tooling at toy size: every mode (the real
// Cilium among them) is measured, the results (JSON, CSV, chart, markdown)
// are written and the targets evaluated. It asserts the tooling, not
// timings.
func TestLatencyBenchSmoke(t *testing.T) {
	testutil.RequireRoot(t)
	testutil.RequireTool(t, "ab", "ip", "nsenter", "iptables", "nft")
	k8sBin, err := testenv.BinDir()
	if err != nil {
		testutil.SkipOrFail(t, err.Error())
	}
	ciliumBin := ciliumPrerequisites(t)
	out := t.TempDir()
	modes := []string{"none", "kpath", "kpath-tc", "kube-proxy-iptables", "kube-proxy-nftables", "cilium"}
	// 1000 requests: a run must outlast the churner's first 50 ms tick, or
	// a loaded row (none has only its direct run) shows no churn at all.
	run, err := bench.Latency(context.Background(), bench.LatencyOptions{
		Points: []int{0, 20}, Requests: 1000, Rounds: 1, Modes: modes, Scenarios: []string{"loaded", "quiet"},
		OutDir: out, BinDir: buildLabBinaries(t), K8sBin: k8sBin, CiliumBin: ciliumBin, Progress: io.Discard,
		LabPrefix: "e1t", // not a kpath bench latency's labs, which it would sweep
	})
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]int{}
	for _, r := range run.Rows {
		seen[r.Mode]++
		if r.TotalMs <= 0 || r.P50Ms <= 0 {
			t.Errorf("row without figures: %+v", r)
		}
		if r.Scenario == "loaded" && r.Services > 0 && r.ChurnPerSec <= 0 {
			t.Errorf("loaded row without EndpointSlice churn: %+v", r)
		}
		if r.Mode != "none" && r.RSSMiB <= 0 {
			t.Errorf("dataplane process not found: %+v", r)
		}
	}
	for _, m := range modes {
		want := 8 // 2 points x 2 scenarios x (direct, service)
		if m == "none" {
			want = 4 // no service path
		}
		if seen[m] != want {
			t.Errorf("mode %s: %d rows, want %d", m, seen[m], want)
		}
	}
	for _, f := range []string{"latency.json", "latency.csv", "latency.svg", "latency.md"} {
		if st, err := os.Stat(filepath.Join(out, f)); err != nil || st.Size() == 0 {
			t.Errorf("%s: %v", f, err)
		}
	}
	// The dataplanes' logs are kept beside the results.
	for _, f := range []string{"kpath-agent.log", "kube-proxy-iptables-kube-proxy.log", "kube-proxy-nftables-kube-proxy.log", "cilium-cilium-agent.log"} {
		if st, err := os.Stat(filepath.Join(out, "logs", f)); err != nil || st.Size() == 0 {
			t.Errorf("logs/%s: %v", f, err)
		}
	}
	if back, err := bench.ReadLatencyRun(filepath.Join(out, "latency.json")); err != nil || len(back.Rows) != len(run.Rows) {
		t.Errorf("latency.json read back: %v", err)
	}
	if targets := bench.LatencyTargets(run); len(targets) == 0 {
		t.Error("no targets evaluated")
	}
}

// TestScaleBenchSmoke runs E2's tooling at toy size, every scenario: the
// phases are sampled, the agent's and the control plane's processes are
// found, the agent's ipcache reaches every pod (and in (c) its services
// every backend), the steady state makes its changes and times its policy
// changes, the restarted agent keeps the probe's connection and answers
// every request, and the results are written. It asserts the tooling and
// the restart, not the figures.
func TestScaleBenchSmoke(t *testing.T) {
	testutil.RequireRoot(t)
	testutil.RequireTool(t, "ip", "nsenter")
	k8sBin, err := testenv.BinDir()
	if err != nil {
		testutil.SkipOrFail(t, err.Error())
	}
	out := t.TempDir()
	o := bench.ScaleOptions{Scenarios: []string{"a", "b", "c"}, Nodes: 5, Pods: 420, LocalPods: 20, StartPods: 100, Policies: 8,
		Steady: 6 * time.Second, ChangesPerSec: 10, PolicyChanges: 6, BinDir: buildLabBinaries(t), K8sBin: k8sBin, Out: out,
		LabName: "scale-test"} // not a kpath bench scale's lab, which it would sweep
	run, err := bench.Scale(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	if len(run.Scenarios) != 3 {
		t.Fatalf("%d scenarios", len(run.Scenarios))
	}
	for _, s := range run.Scenarios {
		phases := map[string]int{}
		for _, x := range s.Samples {
			phases[x.Phase]++
		}
		if phases["steady"] < 4 {
			t.Errorf("scenario %s: phases sampled %v", s.Name, phases)
		}
		st := s.Steady
		if st.PeakRSS <= 0 || st.LastHeap <= 0 || st.BPFMaps <= 0 || st.MeanAPIMilli <= 0 || st.MeanEtcdMilli <= 0 {
			t.Errorf("scenario %s: a process or figure not found: %+v", s.Name, st)
		}
		if st.IPCache < s.Pods {
			t.Errorf("scenario %s: the agent's ipcache holds %d addresses, want the %d pods at least", s.Name, st.IPCache, s.Pods)
		}
		if s.Changes < 30 {
			t.Errorf("scenario %s: %d changes in the steady state", s.Name, s.Changes)
		}
		if (s.Name != "a") != (s.Policy > 0) || (s.Name != "a") != (s.PolicyChange != nil && s.PolicyChange.N == o.PolicyChanges) {
			t.Errorf("scenario %s: %d policies, changes timed %+v", s.Name, s.Policy, s.PolicyChange)
		}
		if s.Name == "c" && (s.Services != 8 || st.Backends < s.Pods) {
			t.Errorf("scenario c: %d services, %d backends programmed, want 8 and %d", s.Services, st.Backends, s.Pods)
		}
		if e := s.Events; e == nil || len(e.Kinds) == 0 || e.GCMilli <= 0 {
			t.Errorf("scenario %s: no CPU by event kind: %+v", s.Name, e)
		}
		if r := s.Restart; r == nil || r.RestartReadyMs <= 0 || r.ColdReadyMs <= 0 {
			t.Errorf("scenario %s: restart not measured: %+v", s.Name, r)
		} else if p := r.Probe; p.Held < 50 || p.HeldFailed > 0 || p.Dials != 1 || p.NewFailed > 0 {
			t.Errorf("scenario %s: traffic through a Service broke while the agent restarted: %+v", s.Name, p)
		}
		for _, f := range []string{"scale-" + s.Name + ".csv", "heap-" + s.Name + "-ramp.pb.gz", "heap-" + s.Name + "-steady.pb.gz", "scale.svg"} {
			if fi, err := os.Stat(filepath.Join(out, f)); err != nil || fi.Size() == 0 {
				t.Errorf("%s: %v", f, err)
			}
		}
	}
	var b strings.Builder
	run.Print(&b)
	t.Logf("\n%s", b.String())
}

// TestScaleBenchCiliumSmoke runs E2's cilium column at toy size on
// scenario c (services and policies): the real cilium-agent sees the
// simulated nodes' pods through the CiliumEndpointSlices the harness
// writes (its ipcache holds them all), programs every service backend,
// enforces each timed policy change in its own maps, and comes back from
// a restart and a cold start with the probe's connection through a
// Service kept.
func TestScaleBenchCiliumSmoke(t *testing.T) {
	testutil.RequireRoot(t)
	testutil.RequireTool(t, "ip", "nsenter")
	k8sBin, err := testenv.BinDir()
	if err != nil {
		testutil.SkipOrFail(t, err.Error())
	}
	ciliumBin := ciliumPrerequisites(t)
	out := t.TempDir()
	o := bench.ScaleOptions{Scenarios: []string{"c"}, Dataplanes: []string{"cilium"}, Nodes: 5, Pods: 420, LocalPods: 20, StartPods: 100,
		Policies: 8, Steady: 6 * time.Second, ChangesPerSec: 10, PolicyChanges: 6, BinDir: buildLabBinaries(t), K8sBin: k8sBin,
		CiliumBin: ciliumBin, Out: out, LabName: "scale-test"}
	run, err := bench.Scale(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	if len(run.Scenarios) != 1 {
		t.Fatalf("%d scenarios", len(run.Scenarios))
	}
	s := run.Scenarios[0]
	st := s.Steady
	if s.Dataplane != "cilium" || st.PeakRSS <= 0 || st.LastHeap <= 0 || st.BPFMaps <= 0 || s.Changes < 30 {
		t.Errorf("cilium-agent's figures not found: %+v, %d changes", st, s.Changes)
	}
	// Its ipcache holds the pods and the other nodes' addresses.
	if st.IPCache < s.Pods+s.Nodes-1 || st.Backends < s.Pods {
		t.Errorf("cilium-agent holds %d addresses and %d backends, want %d and %d at least", st.IPCache, st.Backends, s.Pods+s.Nodes-1, s.Pods)
	}
	// Each change allows or disallows a source, read in Cilium's own
	// policy map of the local endpoint.
	if s.PolicyChange == nil || s.PolicyChange.N != o.PolicyChanges {
		t.Errorf("%d policies, changes timed %+v", s.Policy, s.PolicyChange)
	}
	if r := s.Restart; r == nil || r.RestartReadyMs <= 0 || r.ColdReadyMs <= 0 {
		t.Errorf("restart not measured: %+v", r)
	} else if p := r.Probe; p.Held < 50 || p.HeldFailed > 0 || p.Dials != 1 || p.NewFailed > 0 {
		t.Errorf("traffic through a Service broke while cilium-agent restarted: %+v", p)
	}
	if fi, err := os.Stat(filepath.Join(out, "scale-c-cilium.csv")); err != nil || fi.Size() == 0 {
		t.Errorf("scale-c-cilium.csv: %v", err)
	}
	var b strings.Builder
	run.Print(&b)
	t.Logf("\n%s", b.String())
}
