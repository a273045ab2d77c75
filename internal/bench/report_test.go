package bench

import (
	"encoding/xml"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// fakeRun builds a run in which kube-proxy iptables grows with S and kpath
// stays on the floor, except for one quiet point where kpath's service
// path is 10% slower than direct.
func fakeRun() *LatencyRun {
	run := &LatencyRun{Command: "kpath bench latency", Requests: 100, Rounds: 3,
		Modes: []string{"none", "kpath", "kube-proxy-iptables", "kube-proxy-nftables"}, Scenarios: []string{"loaded", "quiet"}}
	for _, s := range []int{0, 100, 10000} {
		for _, sc := range run.Scenarios {
			for _, m := range run.Modes {
				for _, tg := range []string{"direct", "service"} {
					if m == "none" && tg == "service" {
						continue
					}
					total := 1000.0
					switch {
					case m == "kube-proxy-iptables" && sc == "loaded":
						total += float64(s) / 5 // 3000 at 10k
					case m == "kube-proxy-nftables":
						total += float64(s) / 20
					case m == "kpath" && sc == "quiet" && s == 100 && tg == "service":
						total = 1100
					}
					run.Rows = append(run.Rows, LatencyRow{Mode: m, Scenario: sc, Services: s, Pods: 10 * s, Target: tg,
						TotalMs: total, MeanMs: total / 100, P50Ms: 0.2, P99Ms: 0.5})
				}
			}
		}
	}
	return run
}

func TestLatencyTargets(t *testing.T) {
	got := map[string]string{}
	run := fakeRun()
	run.Rows[len(run.Rows)-1].Failed = 1 // a kube-proxy-nftables row: not kpath's
	for i := range run.Rows {
		if run.Rows[i].Mode == "kpath" {
			run.Rows[i].Failed = 1
			break
		}
	}
	for _, tg := range LatencyTargets(run) {
		got[tg.Name] = tg.Verdict()
	}
	want := map[string]string{
		"kpath service, loaded, S=10000: <= 1.10x none":               "yes",
		"kpath direct, loaded, S=10000: <= 1.10x none":                "yes",
		"kpath service, loaded, S=10000: <= 0.6x kube-proxy iptables": "yes",
		"kpath direct, loaded, S=10000: <= 0.6x kube-proxy iptables":  "yes",
		"kpath vs kube-proxy nftables, every point: never slower":     "NO", // the quiet S=100 service point: 1100 vs 1005
		"kpath quiet, every point: service <= 1.05x direct":           "NO",
		"kpath: every request answered":                               "NO", // the one failed kpath request
	}
	if len(got) != len(want) {
		t.Fatalf("targets %v, want %v", got, want)
	}
	for name, v := range want {
		if got[name] != v {
			t.Errorf("%s: %q, want %q", name, got[name], v)
		}
	}
}

func TestLatencyChartIsSVGWithALinePerModeAndPanel(t *testing.T) {
	svg := latencyChart(fakeRun())
	if err := xml.Unmarshal(svg, new(struct{})); err != nil {
		t.Fatalf("chart is not well-formed XML: %v", err)
	}
	// 4 panels (2 scenarios x 2 targets); none has no service line.
	if n, want := strings.Count(string(svg), "<polyline"), 2*(4+3); n != want {
		t.Errorf("%d lines, want %d", n, want)
	}
	for _, label := range []string{"loaded, via ClusterIP", "quiet, direct to pod IP", "kube-proxy iptables", ">100k<"} {
		if !strings.Contains(string(svg), label) {
			t.Errorf("chart lacks %q", label)
		}
	}
}

func TestWriteLatencyDocsReplacesOnlyItsSection(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "benchmarks.md")
	before := "# Benchmarks\n\nhand-written\n\n" + docsBegin + "\nold\n" + docsEnd + "\n\n## E3\nkept\n"
	if err := os.WriteFile(path, []byte(before), 0o644); err != nil {
		t.Fatal(err)
	}
	for range 2 { // idempotent
		if err := WriteLatencyDocs(path, fakeRun()); err != nil {
			t.Fatal(err)
		}
	}
	doc, _ := os.ReadFile(path)
	s := string(doc)
	if strings.Contains(s, "\nold\n") || !strings.Contains(s, "hand-written") || !strings.Contains(s, "## E3\nkept") ||
		strings.Count(s, docsBegin) != 1 || !strings.Contains(s, "| 10000 | 100000 |") {
		t.Errorf("docs after rewrite:\n%s", s)
	}
	for _, f := range []string{"e1-latency.svg", "e1-latency.csv"} {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			t.Error(err)
		}
	}
	if err := os.WriteFile(path, []byte(docsBegin+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := WriteLatencyDocs(path, fakeRun()); err == nil || !strings.Contains(err.Error(), "markers") {
		t.Errorf("one marker: %v, want an error naming the markers", err)
	}
}

func TestMergeLatencyRunsReplacesRemeasuredModes(t *testing.T) {
	first, second := fakeRun(), fakeRun()
	second.Command, second.Modes = "kpath bench latency --modes kpath", []string{"kpath"}
	second.Rows = slices.DeleteFunc(second.Rows, func(r LatencyRow) bool { return r.Mode != "kpath" })
	for i := range second.Rows {
		second.Rows[i].TotalMs = 1
	}
	first.Errors = []string{"mode kpath: S=100 quiet ab service round 1: ab stopped", "mode none: S=0 boom"}
	m, err := MergeLatencyRuns(first, second)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(m.Errors, []string{"mode none: S=0 boom"}) {
		t.Errorf("errors %q, want only the failure of the mode not measured again", m.Errors)
	}
	if !slices.ContainsFunc(m.Notes, func(n string) bool {
		return strings.HasPrefix(n, "run 1, superseded by run 2 for kpath: mode kpath: S=100")
	}) {
		t.Errorf("notes %q lack the superseded failure", m.Notes)
	}
	if len(m.Rows) != len(first.Rows) {
		t.Fatalf("%d rows, want %d", len(m.Rows), len(first.Rows))
	}
	for _, r := range m.Rows {
		if (r.Mode == "kpath") != (r.TotalMs == 1) {
			t.Errorf("row from the wrong run: %+v", r)
		}
	}
	if len(m.Notes) != 3 || !strings.Contains(m.Notes[2], "kpath measured by run 2") {
		t.Errorf("notes %q", m.Notes)
	}
	second.Rounds = 1
	if _, err := MergeLatencyRuns(first, second); err == nil {
		t.Error("runs with different rounds merged")
	}
}

func TestLatencyNoise(t *testing.T) {
	run := fakeRun()
	run.Points = []int{0, 100, 10000}
	for i, r := range run.Rows {
		if r.Mode == "kpath" && r.Scenario == "quiet" && r.Services == 0 && r.Target == "direct" {
			run.Rows[i].TotalMs = 1200
		}
	}
	got := latencyNoise(run)
	for _, want := range []string{
		"at S=0 (quiet), where direct traffic costs every dataplane the same, the 4 modes' direct totals spread 20% (1.00-1.20 s)",
		"at S=0 (loaded), where direct traffic costs every dataplane the same, the 4 modes' direct totals spread 0%",
		"Modes ran one after another",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("noise report lacks %q:\n%s", want, got)
		}
	}
	run.Interleaved = true
	if got := latencyNoise(run); !strings.Contains(got, "Modes ran interleaved") {
		t.Errorf("interleaved run reported as %q", got)
	}
}

func TestCostTableNamesFullResyncsAndNotReady(t *testing.T) {
	run := fakeRun()
	for i, r := range run.Rows {
		if r.Mode == "kube-proxy-iptables" && r.Services == 10000 {
			run.Rows[i].ReadyMs, run.Rows[i].FullSyncs, run.Rows[i].FullSyncSeconds = 360000, 1, 352
		}
	}
	md := latencyMarkdown(run, "chart.svg", "rows.csv")
	if !strings.Contains(md, "360000 ms, 0 MiB, 0.0 s (1 full resync, 352 s)") {
		t.Errorf("cost table does not name the full resync:\n%s", md)
	}
	if strings.Count(md, "full resync") != 1 {
		t.Errorf("full resync named for rows without one:\n%s", md)
	}
	for i, r := range run.Rows {
		if r.Mode == "kube-proxy-nftables" && r.Services == 10000 {
			run.Rows[i].ReadyMs = -1
		}
	}
	if md := latencyMarkdown(run, "chart.svg", "rows.csv"); !strings.Contains(md, "not ready after 15m0s, 0 MiB") {
		t.Errorf("cost table does not say the dataplane was not ready:\n%s", md)
	}
}
