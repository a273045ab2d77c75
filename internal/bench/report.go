package bench

import (
	"encoding/csv"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
)

// WriteLatencyResults writes a run's latency.json (everything, the input
// of --from), latency.csv, latency.svg and latency.md to dir.
func WriteLatencyResults(dir string, run *LatencyRun) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	data, err := json.MarshalIndent(run, "", "  ")
	if err != nil {
		return err
	}
	if err := writeFileAtomic(filepath.Join(dir, "latency.json"), data); err != nil {
		return err
	}
	if err := writeLatencyCSV(filepath.Join(dir, "latency.csv"), run.Rows); err != nil {
		return err
	}
	if err := writeFileAtomic(filepath.Join(dir, "latency.svg"), latencyChart(run)); err != nil {
		return err
	}
	return writeFileAtomic(filepath.Join(dir, "latency.md"), []byte("# E1: service routing latency vs cluster size\n\n"+latencyMarkdown(run, "latency.svg", "latency.csv")))
}

// ReadLatencyRun reads a latency.json written by WriteLatencyResults.
func ReadLatencyRun(path string) (*LatencyRun, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var run LatencyRun
	if err := json.Unmarshal(data, &run); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return &run, nil
}

// MergeLatencyRuns combines runs of the same experiment: each later run's
// rows replace the earlier runs' rows of the modes it measured (a mode
// re-measured after a fix), and a note records which run every mode came
// from. A failure of a mode a later run measured again becomes a note. Runs must share points, requests and rounds.
func MergeLatencyRuns(runs ...*LatencyRun) (*LatencyRun, error) {
	if len(runs) == 0 {
		return nil, fmt.Errorf("no runs to merge")
	}
	if len(runs) == 1 {
		return runs[0], nil
	}
	base := runs[0]
	out := *base
	out.Rows, out.Modes, out.Notes, out.Errors = nil, nil, nil, nil
	var commands []string
	from := map[string]int{}
	out.Interleaved = true
	for _, r := range runs {
		out.Interleaved = out.Interleaved && r.Interleaved
	}
	for i, r := range runs {
		if r.Requests != base.Requests || r.Rounds != base.Rounds || !slices.Equal(r.Points, base.Points) {
			return nil, fmt.Errorf("run %d (%s) differs in points, requests or rounds from run 1; only like runs merge", i+1, r.Command)
		}
		commands = append(commands, r.Command)
		for _, row := range r.Rows {
			from[row.Mode] = i
		}
		if r.Finished.After(out.Finished) {
			out.Finished = r.Finished
		}
		if r.Started.Before(out.Started) {
			out.Started = r.Started
		}
	}
	for i, r := range runs {
		var modes []string
		for _, m := range r.Modes {
			if from[m] == i && !slices.Contains(modes, m) {
				modes = append(modes, m)
			}
		}
		for _, row := range r.Rows {
			if from[row.Mode] == i {
				out.Rows = append(out.Rows, row)
			}
		}
		for _, m := range modes {
			if !slices.Contains(out.Modes, m) {
				out.Modes = append(out.Modes, m)
			}
		}
		for _, e := range r.Errors {
			m, _, _ := strings.Cut(strings.TrimPrefix(e, "mode "), ":")
			if j, ok := from[m]; ok && j != i {
				// A later run measured the mode again: its failure is
				// history, not a result of the merged run.
				out.Notes = append(out.Notes, fmt.Sprintf("run %d, superseded by run %d for %s: %s", i+1, j+1, m, oneLine(e)))
				continue
			}
			out.Errors = append(out.Errors, e)
		}
		out.Notes = append(out.Notes, r.Notes...)
		if len(modes) > 0 {
			out.Notes = append(out.Notes, fmt.Sprintf("%s measured by run %d, started %s, kpath %s: `%s`",
				strings.Join(modes, ", "), i+1, r.Started.UTC().Format("2006-01-02 15:04 MST"), orDash(r.Machine.Kpath), r.Command))
		}
	}
	out.Command = strings.Join(commands, "\n")
	return &out, nil
}

func writeFileAtomic(path string, data []byte) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

func writeLatencyCSV(path string, rows []LatencyRow) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	w := csv.NewWriter(f)
	_ = w.Write([]string{"mode", "scenario", "services", "pods", "target", "total_ms", "mean_ms", "p50_ms", "p99_ms",
		"ready_ms", "rss_mib", "cpu_s", "churn_per_s", "failed", "failures", "drops", "drop_reasons", "full_syncs", "full_sync_s"})
	ff := func(v float64) string { return strconv.FormatFloat(v, 'f', 3, 64) }
	for _, r := range rows {
		_ = w.Write([]string{r.Mode, r.Scenario, strconv.Itoa(r.Services), strconv.Itoa(r.Pods), r.Target,
			ff(r.TotalMs), ff(r.MeanMs), ff(r.P50Ms), ff(r.P99Ms), ff(r.ReadyMs), ff(r.RSSMiB), ff(r.CPUSeconds), ff(r.ChurnPerSec),
			strconv.Itoa(r.Failed), r.Failures, strconv.FormatUint(r.Drops, 10), r.DropReasons, strconv.Itoa(r.FullSyncs), ff(r.FullSyncSeconds)})
	}
	w.Flush()
	if err := w.Error(); err != nil {
		return err
	}
	return f.Close()
}

// latencyModes orders and names the modes in tables, chart and targets.
var latencyModes = []struct{ mode, label, color string }{
	{"none", "none (floor)", "#7f7f7f"},
	{"kpath", "kpath", "#d62728"},
	{"kpath-tc", "kpath-tc", "#ff9896"},
	{"kpath-policy", "kpath + NetworkPolicy", "#9467bd"},
	{"kpath-noflows", "kpath, flows off", "#e377c2"},
	{"kube-proxy-iptables", "kube-proxy iptables", "#1f77b4"},
	{"kube-proxy-nftables", "kube-proxy nftables", "#2ca02c"},
	{"cilium", "Cilium 1.20 (KPR, socket LB)", "#ff7f0e"},
}

// rowIndex finds rows by (mode, scenario, services, target).
type rowIndex map[string]LatencyRow

func indexRows(rows []LatencyRow) rowIndex {
	ix := rowIndex{}
	for _, r := range rows {
		ix[fmt.Sprint(r.Mode, "/", r.Scenario, "/", r.Services, "/", r.Target)] = r
	}
	return ix
}

func (ix rowIndex) get(mode, scenario string, services int, target string) (LatencyRow, bool) {
	r, ok := ix[fmt.Sprint(mode, "/", scenario, "/", services, "/", target)]
	return r, ok
}

// runPoints lists the measured numbers of services, ascending.
func runPoints(rows []LatencyRow) []int {
	seen := map[int]bool{}
	var pts []int
	for _, r := range rows {
		if !seen[r.Services] {
			seen[r.Services] = true
			pts = append(pts, r.Services)
		}
	}
	slices.Sort(pts)
	return pts
}

// Target is one of E1's targets, evaluated on a run.
type Target struct {
	Name     string
	Measured string  // the figures compared, in words
	Ratio    float64 // measured ratio (worst case where "every point")
	Limit    float64 // the ratio the target allows
	Missing  bool    // the run lacks the rows to decide
}

// Verdict is "yes", "NO" or "n/a (...)".
func (t Target) Verdict() string {
	switch {
	case t.Missing:
		return "n/a"
	case t.Ratio <= t.Limit:
		return "yes"
	}
	return "NO"
}

// LatencyTargets evaluates BENCHMARKS.md's E1 targets for kpath (and, for
// information, kpath-tc): loaded at the largest point, within 10% of the
// none floor and at most 0.6x kube-proxy iptables; never slower than
// kube-proxy nftables or Cilium; quiet service latency within 5% of direct.
func LatencyTargets(run *LatencyRun) []Target {
	ix := indexRows(run.Rows)
	pts := runPoints(run.Rows)
	if len(pts) == 0 {
		return nil
	}
	top := pts[len(pts)-1]
	var out []Target
	ratio := func(name string, a, b LatencyRow, okA, okB bool, limit float64) Target {
		t := Target{Name: name, Limit: limit, Missing: !okA || !okB || b.TotalMs == 0}
		if !t.Missing {
			t.Ratio = a.TotalMs / b.TotalMs
			t.Measured = fmt.Sprintf("%.2fx (%.2f s / %.2f s)", t.Ratio, a.TotalMs/1000, b.TotalMs/1000)
		}
		return t
	}
	// worstVs is the worst ratio of mode to ref over every point, both
	// scenarios and both targets.
	worstVs := func(name, mode, ref string, limit float64) Target {
		worst := Target{Name: name, Limit: limit, Missing: true}
		for _, sc := range run.Scenarios {
			for _, s := range pts {
				for _, tg := range []string{"service", "direct"} {
					r, ok := ix.get(mode, sc, s, tg)
					b, okB := ix.get(ref, sc, s, tg)
					if t := ratio("", r, b, ok, okB, limit); !t.Missing && (worst.Missing || t.Ratio > worst.Ratio) {
						worst.Missing, worst.Ratio = false, t.Ratio
						worst.Measured = fmt.Sprintf("worst %.2fx (%s %s, S=%d)", t.Ratio, sc, tg, s)
					}
				}
			}
		}
		return worst
	}
	for _, m := range []string{"kpath", "kpath-tc"} {
		if !slices.Contains(run.Modes, m) {
			continue
		}
		floor, okF := ix.get("none", "loaded", top, "direct")
		for _, tg := range []string{"service", "direct"} {
			r, ok := ix.get(m, "loaded", top, tg)
			out = append(out, ratio(fmt.Sprintf("%s %s, loaded, S=%d: <= 1.10x none", m, tg, top), r, floor, ok, okF, 1.10))
		}
		for _, tg := range []string{"service", "direct"} {
			r, ok := ix.get(m, "loaded", top, tg)
			ipt, okI := ix.get("kube-proxy-iptables", "loaded", top, tg)
			out = append(out, ratio(fmt.Sprintf("%s %s, loaded, S=%d: <= 0.6x kube-proxy iptables", m, tg, top), r, ipt, ok, okI, 0.6))
		}
		out = append(out, worstVs(m+" vs kube-proxy nftables, every point: never slower", m, "kube-proxy-nftables", 1))
		if slices.Contains(run.Modes, "cilium") {
			out = append(out, worstVs(m+" vs Cilium, every point: never slower", m, "cilium", 1))
		}
		worst := Target{Name: m + " quiet, every point: service <= 1.05x direct", Limit: 1.05, Missing: true}
		for _, s := range pts {
			svc, ok := ix.get(m, "quiet", s, "service")
			dir, okD := ix.get(m, "quiet", s, "direct")
			if t := ratio("", svc, dir, ok, okD, 1.05); !t.Missing && (worst.Missing || t.Ratio > worst.Ratio) {
				worst.Missing, worst.Ratio = false, t.Ratio
				worst.Measured = fmt.Sprintf("worst %.2fx (S=%d)", t.Ratio, s)
			}
		}
		out = append(out, worst)
		failed, rows := 0, 0
		for _, r := range run.Rows {
			if r.Mode == m {
				failed += r.Failed
				rows++
			}
		}
		answered := Target{Name: m + ": every request answered", Limit: 0, Ratio: float64(failed), Missing: rows == 0,
			Measured: fmt.Sprintf("%d failed of %d", failed, rows*run.Rounds*run.Requests)}
		for _, e := range run.Errors {
			if strings.HasPrefix(e, "mode "+m+":") { // the mode stopped: a request went unanswered or ab gave up
				answered.Missing, answered.Ratio = false, 1
				answered.Measured += "; stopped: " + oneLine(strings.TrimPrefix(e, "mode "+m+": "))
			}
		}
		out = append(out, answered)
	}
	// Flows (on by default) cost at most 3% of kpath's loaded totals at the
	// largest point, against kpath with flows off.
	if slices.Contains(run.Modes, NoFlowsMode) && slices.Contains(run.Modes, "kpath") {
		for _, tg := range []string{"service", "direct"} {
			on, ok := ix.get("kpath", "loaded", top, tg)
			off, okO := ix.get(NoFlowsMode, "loaded", top, tg)
			out = append(out, ratio(fmt.Sprintf("kpath %s, loaded, S=%d: flows on <= 1.03x flows off", tg, top), on, off, ok, okO, 1.03))
		}
	}
	// NetworkPolicy in place costs kpath (almost) nothing: every point,
	// both scenarios and targets, within 5% of kpath alone.
	if slices.Contains(run.Modes, PolicyMode) && slices.Contains(run.Modes, "kpath") {
		out = append(out, worstVs(PolicyMode+" vs kpath, every point: <= 1.05x", PolicyMode, "kpath", 1.05))
	}
	return out
}

// Markers delimiting the generated E1 section in a docs file.
const (
	docsBegin = "<!-- e1-latency:begin (generated by kpath bench latency --docs; edit outside the markers) -->"
	docsEnd   = "<!-- e1-latency:end -->"
)

// WriteLatencyDocs rewrites the E1 section of the markdown file at path
// (appending one when the markers are missing) and writes the chart and
// CSV beside it as e1-latency.svg and e1-latency.csv.
func WriteLatencyDocs(path string, run *LatencyRun) error {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	if err := writeFileAtomic(filepath.Join(dir, "e1-latency.svg"), latencyChart(run)); err != nil {
		return err
	}
	if err := writeLatencyCSV(filepath.Join(dir, "e1-latency.csv"), run.Rows); err != nil {
		return err
	}
	old, err := os.ReadFile(path)
	if err != nil && !os.IsNotExist(err) {
		return err
	}
	section := docsBegin + "\n" + latencyMarkdown(run, "e1-latency.svg", "e1-latency.csv") + docsEnd
	doc := string(old)
	b, e := strings.Index(doc, docsBegin), strings.Index(doc, docsEnd)
	switch {
	case b >= 0 && e > b:
		doc = doc[:b] + section + doc[e+len(docsEnd):]
	case b >= 0 || e >= 0:
		return fmt.Errorf("%s: only one of the e1-latency markers is present; restore both or remove both", path)
	default:
		if doc != "" && !strings.HasSuffix(doc, "\n\n") {
			doc = strings.TrimRight(doc, "\n") + "\n\n"
		}
		doc += section + "\n"
	}
	return writeFileAtomic(path, []byte(doc))
}

// latencyMarkdown renders a run: where and how it ran, the targets, and
// the tables behind the chart.
func latencyMarkdown(run *LatencyRun, chart, csvName string) string {
	var b strings.Builder
	m := run.Machine
	fmt.Fprintf(&b, "Run %s", run.Started.UTC().Format("2006-01-02 15:04 MST"))
	if len(run.Notes) > 0 && !run.Finished.IsZero() {
		fmt.Fprintf(&b, " to %s (merged runs)", run.Finished.UTC().Format("15:04 MST"))
	} else if !run.Finished.IsZero() {
		fmt.Fprintf(&b, ", took %s", run.Finished.Sub(run.Started).Round(time.Minute))
	} else {
		b.WriteString(" (unfinished: results so far)")
	}
	fmt.Fprintf(&b, ", kpath %s.\n\n", orDash(m.Kpath))
	fmt.Fprintf(&b, "Machine: %s, %d CPUs, %d GiB, %s, kernel %s, %s; %s.\n\n", orDash(m.CPU), m.CPUs, m.MemoryGiB, orDash(m.OS), orDash(m.Kernel), m.Go, orDash(m.KubeProxy))
	fmt.Fprintf(&b, "Command:\n\n```\n%s\n```\n\n", orDash(run.Command))
	fmt.Fprintf(&b, "Each figure is the median over %d rounds of `ab -n %d` (a new connection per request) from the client pod, direct to the echo pod and through its ClusterIP, alternating. Raw rows: [%s](%s).\n\n", run.Rounds, run.Requests, csvName, csvName)
	fmt.Fprintf(&b, "![E1 chart](%s)\n\n", chart)
	for _, e := range run.Errors {
		fmt.Fprintf(&b, "**Failed:** %s\n\n", oneLine(e))
	}
	for _, n := range run.Notes {
		fmt.Fprintf(&b, "Note: %s\n\n", n)
	}

	b.WriteString("#### Targets\n\n| target | measured | met |\n|---|---|---|\n")
	for _, t := range LatencyTargets(run) {
		fmt.Fprintf(&b, "| %s | %s | %s |\n", t.Name, orDash(t.Measured), t.Verdict())
	}
	b.WriteString("\n")
	for _, r := range run.Rows {
		if r.Failed > 0 {
			fmt.Fprintf(&b, "**Failed requests:** %s %s S=%d %s: %d over %d rounds %s; kpath drops during the scenario: %d %s\n\n",
				r.Mode, r.Scenario, r.Services, r.Target, r.Failed, run.Rounds, r.Failures, r.Drops, r.DropReasons)
		}
	}
	if n := latencyNoise(run); n != "" {
		b.WriteString(n + "\n\n")
	}

	pts := runPoints(run.Rows)
	ix := indexRows(run.Rows)
	var modes []struct{ mode, label, color string }
	for _, lm := range latencyModes {
		if containsMode(run, lm.mode) {
			modes = append(modes, lm)
		}
	}
	for _, sc := range []string{"loaded", "quiet"} {
		if !slices.Contains(run.Scenarios, sc) {
			continue
		}
		desc := map[string]string{"loaded": "`-c 16`, 20 EndpointSlice updates/s", "quiet": "`-c 1`, no churn"}[sc]
		for _, f := range []struct {
			title string
			get   func(LatencyRow) string
		}{
			{"total seconds", func(r LatencyRow) string { return fmt.Sprintf("%.2f", r.TotalMs/1000) }},
			{"p50 / p99 ms", func(r LatencyRow) string { return fmt.Sprintf("%.2f / %.2f", r.P50Ms, r.P99Ms) }},
		} {
			fmt.Fprintf(&b, "#### %s (%s): %s, direct | service\n\n| services | pods |", sc, desc, f.title)
			for _, lm := range modes {
				fmt.Fprintf(&b, " %s |", lm.label)
			}
			b.WriteString("\n|---:|---:|")
			for range modes {
				b.WriteString("---|")
			}
			b.WriteString("\n")
			for _, s := range pts {
				fmt.Fprintf(&b, "| %d | %d |", s, s*simLatency.backends)
				for _, lm := range modes {
					var cells []string
					for _, tg := range []string{"direct", "service"} {
						if r, ok := ix.get(lm.mode, sc, s, tg); ok {
							cells = append(cells, f.get(r))
						}
					}
					fmt.Fprintf(&b, " %s |", orDash(strings.Join(cells, " \\| ")))
				}
				b.WriteString("\n")
			}
			b.WriteString("\n")
		}
	}

	// none has no service dataplane to cost.
	costModes := slices.DeleteFunc(slices.Clone(modes), func(lm struct{ mode, label, color string }) bool { return lm.mode == "none" })
	b.WriteString("#### Dataplane cost: ready after the last object (ms), RSS (MiB), CPU seconds during the loaded runs\n\n| services |")
	for _, lm := range costModes {
		fmt.Fprintf(&b, " %s |", lm.label)
	}
	b.WriteString("\n|---:|")
	for range costModes {
		b.WriteString("---|")
	}
	b.WriteString("\n")
	for _, s := range pts {
		fmt.Fprintf(&b, "| %d |", s)
		for _, lm := range costModes {
			r, ok := ix.get(lm.mode, "loaded", s, "service")
			if !ok {
				r, ok = ix.get(lm.mode, "quiet", s, "service")
			}
			if !ok {
				b.WriteString(" - |")
				continue
			}
			ready := fmt.Sprintf("%.0f ms", r.ReadyMs)
			if r.ReadyMs < 0 {
				ready = fmt.Sprintf("not ready after %s", readyWait)
			}
			fmt.Fprintf(&b, " %s, %.0f MiB, %.1f s%s |", ready, r.RSSMiB, r.CPUSeconds, fullSyncNote(r))
		}
		b.WriteString("\n")
	}
	b.WriteString("\n")
	return b.String()
}

// fullSyncNote names kube-proxy's full resyncs during a point, which
// explain a ready time far above its neighbours'.
func fullSyncNote(r LatencyRow) string {
	if r.FullSyncs == 0 {
		return ""
	}
	return fmt.Sprintf(" (%d full resync, %.0f s)", r.FullSyncs, r.FullSyncSeconds)
}

// latencyNoise says how much the machine itself moved: the spread between
// rounds of one row, and the drift of the none floor (which no dataplane
// touches) from point to point. Ratios smaller than these are not
// findings.
func latencyNoise(run *LatencyRun) string {
	var spreads []float64
	for _, r := range run.Rows {
		if r.TotalMinMs > 0 && r.TotalMaxMs > 0 {
			spreads = append(spreads, r.TotalMaxMs/r.TotalMinMs-1)
		}
	}
	var parts []string
	if len(spreads) > 0 {
		slices.Sort(spreads)
		parts = append(parts, fmt.Sprintf("the slowest of a row's %d rounds was %.0f%% above its fastest (median over rows; worst %.0f%%)",
			run.Rounds, 100*spreads[len(spreads)/2], 100*spreads[len(spreads)-1]))
	}
	for _, sc := range run.Scenarios {
		lo, hi := 0.0, 0.0
		for _, r := range run.Rows {
			if r.Mode == "none" && r.Scenario == sc && r.Target == "direct" {
				if lo == 0 || r.TotalMs < lo {
					lo = r.TotalMs
				}
				hi = max(hi, r.TotalMs)
			}
		}
		if lo > 0 {
			parts = append(parts, fmt.Sprintf("the none floor (%s) moved between %.2f and %.2f s across points (%.0f%%) with nothing but time changing for its path",
				sc, lo/1000, hi/1000, 100*(hi/lo-1)))
		}
	}
	// With no services, direct traffic costs every dataplane the same
	// (nothing to translate): how far the modes' direct totals still spread
	// there is the noise between modes at one point.
	if len(run.Points) > 0 && run.Points[0] == 0 {
		for _, sc := range run.Scenarios {
			lo, hi := 0.0, 0.0
			n := 0
			for _, r := range run.Rows {
				if r.Services == 0 && r.Scenario == sc && r.Target == "direct" {
					if lo == 0 || r.TotalMs < lo {
						lo = r.TotalMs
					}
					hi = max(hi, r.TotalMs)
					n++
				}
			}
			if n > 1 {
				parts = append(parts, fmt.Sprintf("at S=0 (%s), where direct traffic costs every dataplane the same, the %d modes' direct totals spread %.0f%% (%.2f-%.2f s)",
					sc, n, 100*(hi/lo-1), lo/1000, hi/1000))
			}
		}
	}
	if len(parts) == 0 {
		return ""
	}
	how := "Modes ran one after another, so differences between modes smaller than this drift are not findings."
	if run.Interleaved {
		how = "Modes ran interleaved, each round measuring every mode in turn with the other labs frozen, so the drift between points falls on all modes alike; compare modes within a point, and read changes across points against the floor's drift."
	}
	return "Noise on this machine: " + strings.Join(parts, "; ") + ". " + how
}

// oneLine folds an error (ab's output included) into one line for a table,
// leaving out ab's banner.
func oneLine(e string) string {
	var keep []string
	for _, l := range strings.Split(e, "\n") {
		l = strings.TrimSpace(l)
		if l == "" || strings.HasPrefix(l, "This is ApacheBench") || strings.HasPrefix(l, "Copyright") || strings.HasPrefix(l, "Licensed to") {
			continue
		}
		keep = append(keep, strings.Join(strings.Fields(l), " "))
	}
	return strings.Join(keep, " / ")
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
