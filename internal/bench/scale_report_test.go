package bench

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Merging E2 runs: a later file's scenario replaces the earlier one's, the
// others are kept, and the chart draws every scenario.
func TestLoadScaleRunsMerges(t *testing.T) {
	dir := t.TempDir()
	write := func(name string, r ScaleRun) string {
		b, err := json.Marshal(r)
		if err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	samples := []ScaleSample{{T: 1, Phase: "ramp", Pods: 10, AgentMilli: 5, AgentRSS: 50}, {T: 2, Phase: "steady", Pods: 20, AgentMilli: 7, AgentRSS: 60}}
	a := write("a.json", ScaleRun{Scenarios: []ScaleScenario{{Name: "a", Pods: 1, Samples: samples}, {Name: "b", Pods: 1, Samples: samples}}})
	b := write("b.json", ScaleRun{Scenarios: []ScaleScenario{{Name: "c", Pods: 3, Samples: samples}, {Name: "b", Pods: 2, Samples: samples}}})
	r, err := LoadScaleRuns([]string{a, b})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, s := range r.Scenarios {
		got = append(got, s.Name+":"+string(rune('0'+s.Pods)))
	}
	if strings.Join(got, " ") != "a:1 b:2 c:3" {
		t.Errorf("merged %v, want a:1 b:2 c:3", got)
	}
	svg := string(scaleChart(r))
	for _, want := range []string{"(a) agent CPU", "(b) agent RSS", "(c) agent CPU"} {
		if !strings.Contains(svg, want) {
			t.Errorf("chart has no %q", want)
		}
	}
	if _, err := LoadScaleRuns(nil); err == nil {
		t.Error("no files merged into something")
	}
}
