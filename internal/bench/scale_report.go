package bench

import (
	"encoding/csv"
	"encoding/json"
	"fmt"
	"html"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
)

// E2's results: phase summaries, the steady state's CPU by event kind, the
// terminal table, the files (JSON, CSV) and the chart.

func summarize(ss []ScaleSample) ScaleSummary {
	var s ScaleSummary
	if len(ss) == 0 {
		return s
	}
	s.Seconds = len(ss)
	n := float64(len(ss))
	for _, x := range ss {
		s.MeanMilli += x.AgentMilli / n
		s.MeanRxKiBps += x.RxKiBps / n
		s.MeanAPIMilli += x.APIMilli / n
		s.MeanEtcdMilli += x.EtcdMilli / n
		s.MeanKCMMilli += x.KCMMilli / n
		s.PeakMilli = max(s.PeakMilli, x.AgentMilli)
		s.PeakRSS = max(s.PeakRSS, x.AgentRSS)
		s.PeakAnon = max(s.PeakAnon, x.AgentAnon)
	}
	last := ss[len(ss)-1]
	s.LastRSS, s.LastHeap, s.BPFMaps, s.IPCache, s.Identities, s.Backends = last.AgentRSS, last.AgentHeap, last.BPFMaps, last.IPCache, last.Identities, last.Backends
	return s
}

// ScaleEvents is where the steady state's agent CPU went, from the
// agent's own counters at the phase's start and end.
type ScaleEvents struct {
	Kinds []ScaleEventKind `json:"kinds"`
	// HandlersMilli: the informers' handlers (CPU of their threads).
	HandlersMilli float64 `json:"handlers_millicores"`
	// PolicySyncMilli and ServiceSyncMilli: the syncs that turn changes
	// into map updates (their rounds' wall time a second).
	PolicySyncMilli  float64 `json:"policy_sync_millicores"`
	ServiceSyncMilli float64 `json:"service_sync_millicores"`
	// GCMilli is Go's garbage collector; OtherMilli the rest of the
	// agent's CPU (decoding the watch streams, metrics, the runtime).
	GCMilli    float64 `json:"gc_millicores"`
	OtherMilli float64 `json:"other_millicores"`
}

// ScaleEventKind is one kind of API event in the steady state.
type ScaleEventKind struct {
	Kind     string  `json:"kind"`
	PerSec   float64 `json:"events_per_s"`
	Milli    float64 `json:"handler_millicores"`
	MicrosEv float64 `json:"handler_us_per_event"`
}

func eventWork(before, after map[string]float64, d time.Duration, totalMilli float64) *ScaleEvents {
	sec := d.Seconds()
	if sec <= 0 || after == nil {
		return nil
	}
	delta := func(name string) float64 { return after[name] - before[name] }
	per := map[string]*ScaleEventKind{}
	kind := func(k string) *ScaleEventKind {
		if per[k] == nil {
			per[k] = &ScaleEventKind{Kind: k}
		}
		return per[k]
	}
	for name := range after {
		switch {
		case strings.HasPrefix(name, "kpath_k8s_events_total{"):
			kind(labelValue(name, "kind")).PerSec += delta(name) / sec
		case strings.HasPrefix(name, "kpath_k8s_event_handler_cpu_seconds_total{"):
			kind(labelValue(name, "kind")).Milli += delta(name) / sec * 1000
		}
	}
	ev := &ScaleEvents{
		PolicySyncMilli:  delta("kpath_policy_sync_duration_seconds_sum") / sec * 1000,
		ServiceSyncMilli: delta("kpath_reconcile_duration_seconds_sum") / sec * 1000,
		GCMilli:          delta("go_cpu_classes_gc_total_cpu_seconds_total") / sec * 1000,
	}
	for _, k := range per {
		if k.PerSec > 0 {
			k.MicrosEv = k.Milli / 1000 / k.PerSec * 1e6
		}
		ev.HandlersMilli += k.Milli
		ev.Kinds = append(ev.Kinds, *k)
	}
	slices.SortFunc(ev.Kinds, func(a, b ScaleEventKind) int { return strings.Compare(a.Kind, b.Kind) })
	ev.OtherMilli = totalMilli - ev.HandlersMilli - ev.PolicySyncMilli - ev.ServiceSyncMilli - ev.GCMilli
	return ev
}

// labelValue is label l's value in a sample name as the text format
// writes it: name{a="x",l="y"}.
func labelValue(name, l string) string {
	_, rest, ok := strings.Cut(name, l+`="`)
	if !ok {
		return ""
	}
	v, _, _ := strings.Cut(rest, `"`)
	return v
}

// dataplane is the scenario's measured dataplane (kpath in runs before
// the cilium column).
func (s ScaleScenario) dataplane() string {
	if s.Dataplane == "" {
		return "kpath"
	}
	return s.Dataplane
}

// key names a scenario's run: a, b, c for kpath's, a-cilium for Cilium's.
func (s ScaleScenario) key() string {
	if s.dataplane() == "kpath" {
		return s.Name
	}
	return s.Name + "-" + s.dataplane()
}

// scaleTargets are E2's steady-state targets: millicores and MiB.
var scaleTargets = map[string][2]float64{"a": {50, 150}, "b": {75, 200}, "c": {100, 250}}

// Print writes the run's tables.
func (r *ScaleRun) Print(w io.Writer) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SCENARIO\tDATAPLANE\tNODES\tPODS\tPOLICIES\tSERVICES\tSTEADY CPU\tSTEADY RSS (ANON)\tHEAP\tBPF MAPS\tRX\tRAMP PEAK CPU\tRAMP PEAK RSS\tAPISERVER / ETCD / KCM CPU\tTARGET CPU / RSS")
	for _, s := range r.Scenarios {
		t := scaleTargets[s.Name]
		fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%d\t%d\t%.0fm\t%.0f MiB (%.0f)\t%.0f MiB\t%.0f MiB\t%.0f KiB/s\t%.0fm\t%.0f MiB\t%.0fm / %.0fm / %.0fm\t<= %.0fm / <= %.0f MiB\n",
			s.Name, s.dataplane(), s.Nodes, s.Pods, s.Policy, s.Services, s.Steady.MeanMilli, s.Steady.PeakRSS, s.Steady.PeakAnon, s.Steady.LastHeap, s.Steady.BPFMaps,
			s.Steady.MeanRxKiBps, s.Ramp.PeakMilli, s.Ramp.PeakRSS, s.Steady.MeanAPIMilli, s.Steady.MeanEtcdMilli, s.Steady.MeanKCMMilli, t[0], t[1])
	}
	tw.Flush()
	fmt.Fprintln(w)
	tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SCENARIO\tDATAPLANE\tPOLICY CHANGE P50 / P99\tRESTART -> READY\tKILL -> READY\tCOLD START -> READY\tPROBE HELD (FAILED, DIALS)\tPROBE NEW (FAILED)\tRESTARTS' PEAK RSS (ANON)")
	for _, s := range r.Scenarios {
		pc := "-"
		if p := s.PolicyChange; p != nil {
			pc = fmt.Sprintf("%.1f / %.1f ms (%d)", p.P50, p.P99, p.N)
			if s.PolicyPhase != nil {
				pc += fmt.Sprintf(", CPU %.0fm", s.PolicyPhase.MeanMilli)
			}
		}
		if x := s.Restart; x != nil {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%.0f ms\t%.0f ms\t%.0f ms\t%d (%d, %d)\t%d (%d)\t%.0f MiB (%.0f)\n", s.Name, s.dataplane(), pc, x.RestartReadyMs, x.KillToReadyMs, x.ColdReadyMs,
				x.Probe.Held, x.Probe.HeldFailed, x.Probe.Dials, x.Probe.New, x.Probe.NewFailed, x.PeakRSS, x.PeakAnon)
		}
	}
	tw.Flush()
	for _, s := range r.Scenarios {
		if e := s.Events; e != nil {
			fmt.Fprintf(w, "\n(%s) steady-state CPU %.1fm: handlers %.1fm, policy sync %.1fm, service sync %.1fm, GC %.1fm, other %.1fm\n",
				s.Name, s.Steady.MeanMilli, e.HandlersMilli, e.PolicySyncMilli, e.ServiceSyncMilli, e.GCMilli, e.OtherMilli)
			for _, k := range e.Kinds {
				fmt.Fprintf(w, "    %-14s %7.1f events/s  %6.2fm  %6.1f us/event\n", k.Kind, k.PerSec, k.Milli, k.MicrosEv)
			}
		}
	}
}

// write saves scale.json, a CSV of each scenario's samples and the chart.
func (r *ScaleRun) write(dir string) error {
	if dir == "" {
		return nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "scale.json"), b, 0o644); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "scale.svg"), scaleChart(r), 0o644); err != nil {
		return err
	}
	for _, s := range r.Scenarios {
		if err := writeScaleCSV(filepath.Join(dir, "scale-"+s.key()+".csv"), s.Samples); err != nil {
			return err
		}
	}
	return nil
}

func writeScaleCSV(path string, samples []ScaleSample) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	cw := csv.NewWriter(f)
	_ = cw.Write([]string{"t_s", "phase", "pods", "agent_millicores", "agent_rss_mib", "agent_anon_rss_mib", "agent_heap_mib", "bpf_maps_mib",
		"agent_rx_kib_per_s", "ipcache_entries", "identities", "service_backends", "apiserver_millicores", "etcd_millicores",
		"controller_manager_millicores", "apiserver_rss_mib"})
	ff := func(v float64) string { return strconv.FormatFloat(v, 'f', 1, 64) }
	for _, x := range samples {
		_ = cw.Write([]string{ff(x.T), x.Phase, strconv.Itoa(x.Pods), ff(x.AgentMilli), ff(x.AgentRSS), ff(x.AgentAnon), ff(x.AgentHeap), ff(x.BPFMaps),
			ff(x.RxKiBps), strconv.Itoa(x.IPCache), strconv.Itoa(x.Identities), strconv.Itoa(x.Backends), ff(x.APIMilli), ff(x.EtcdMilli),
			ff(x.KCMMilli), ff(x.ControlMiBs)})
	}
	cw.Flush()
	if err := f.Close(); err != nil {
		return err
	}
	return cw.Error()
}

// scaleChart draws E2 as SVG, a column per scenario: the agent's CPU
// (top) and RSS (bottom) over the run, with the pods written (grey, right
// axis) and the phases marked, from the ramp on.
func scaleChart(r *ScaleRun) []byte {
	const (
		panelW, panelH = 360, 200
		left, top      = 70, 70
		gapX, gapY     = 110, 70
	)
	rows := []struct {
		label, unit string
		v, part     func(ScaleSample) float64 // part: drawn thin under v, when set
		target      int
	}{
		{"agent CPU", "millicores", func(s ScaleSample) float64 { return s.AgentMilli }, nil, 0},
		{"agent RSS", "MiB", func(s ScaleSample) float64 { return s.AgentRSS }, func(s ScaleSample) float64 { return s.AgentAnon }, 1},
	}
	width := left + max(len(r.Scenarios), 1)*(panelW+gapX)
	height := top + len(rows)*(panelH+gapY)
	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="sans-serif" font-size="12">`+"\n", width, height, width, height)
	b.WriteString(`<rect width="100%" height="100%" fill="white"/>` + "\n")
	fmt.Fprintf(&b, `<text x="%d" y="24" font-size="16" font-weight="bold">E2: the measured node's agent at %d nodes, one sample a second (ramp, steady state with %d pod changes/s, restart)</text>`+"\n",
		left, r.Options.Nodes, r.Options.ChangesPerSec)
	fmt.Fprintf(&b, `<text x="%d" y="44">blue: kpath-agent, orange: cilium-agent (thin: its anonymous RSS, without the executable's file pages); dashed red: the target; grey: pods in the API (right axis)</text>`+"\n", left)
	for si, s := range r.Scenarios {
		var ss []ScaleSample
		for _, x := range s.Samples {
			if x.Phase != "setup" {
				ss = append(ss, x)
			}
		}
		if len(ss) < 2 {
			continue
		}
		color := "#1f77b4"
		if s.dataplane() == "cilium" {
			color = "#ff7f0e"
		}
		t0, t1 := ss[0].T, ss[len(ss)-1].T
		xOf := func(t float64) float64 { return (t - t0) / max(t1-t0, 1) * panelW }
		maxPods := 0
		for _, x := range ss {
			maxPods = max(maxPods, x.Pods)
		}
		for ri, row := range rows {
			ox, oy := left+si*(panelW+gapX), top+ri*(panelH+gapY)
			target := scaleTargets[s.Name][row.target]
			// The axis fits the ramp, steady and policy phases; the restarts'
			// peaks (their initial lists) are clipped and labelled.
			ymax, peak := target, 0.0
			for _, x := range ss {
				if x.Phase == "restart" {
					peak = max(peak, row.v(x))
				} else {
					ymax = max(ymax, row.v(x))
				}
			}
			ymax = niceCeil(ymax * 1.05)
			yOf := func(v float64) float64 { return panelH - min(v, ymax)/ymax*panelH }
			fmt.Fprintf(&b, `<g transform="translate(%d,%d)">`+"\n", ox, oy)
			fmt.Fprintf(&b, `<text x="0" y="-10" font-weight="bold">(%s) %s: %d pods, %d policies, %d services</text>`+"\n", html.EscapeString(s.key()), row.label, s.Pods, s.Policy, s.Services)
			fmt.Fprintf(&b, `<rect width="%d" height="%d" fill="none" stroke="#333"/>`+"\n", panelW, panelH)
			for i := 0; i <= 4; i++ {
				v := ymax * float64(i) / 4
				y := yOf(v)
				fmt.Fprintf(&b, `<line x1="0" y1="%.1f" x2="%d" y2="%.1f" stroke="#eee"/><text x="-6" y="%.1f" text-anchor="end">%s</text>`+"\n", y, panelW, y, y+4, trimFloat(v))
				fmt.Fprintf(&b, `<text x="%d" y="%.1f" fill="#888">%s</text>`+"\n", panelW+6, y+4, shortCount(float64(maxPods)*float64(i)/4))
			}
			fmt.Fprintf(&b, `<text transform="translate(-48,%d) rotate(-90)" text-anchor="middle">%s</text>`+"\n", panelH/2, row.unit)
			fmt.Fprintf(&b, `<text x="%d" y="%d" text-anchor="middle">seconds since the ramp began</text>`+"\n", panelW/2, panelH+32)
			for t := 0.0; t <= t1-t0; t += niceCeil((t1 - t0) / 5) {
				fmt.Fprintf(&b, `<text x="%.1f" y="%d" text-anchor="middle">%.0f</text>`+"\n", xOf(t0+t), panelH+16, t)
			}
			// Phase boundaries.
			for i, n := 1, 0; i < len(ss); i++ {
				if ss[i].Phase != ss[i-1].Phase {
					x := xOf(ss[i].T)
					fmt.Fprintf(&b, `<line x1="%.1f" y1="0" x2="%.1f" y2="%d" stroke="#999" stroke-dasharray="2,3"/><text x="%.1f" y="%d" fill="#666">%s</text>`+"\n", x, x, panelH, x+3, 12+14*(n%2), ss[i].Phase)
					n++
				}
			}
			if peak > ymax {
				fmt.Fprintf(&b, `<text x="%d" y="%d" text-anchor="end" fill="%s">restarts' peak %.0f (clipped)</text>`+"\n", panelW-4, 40, color, peak)
			}
			var pods, vals, parts []string
			for _, x := range ss {
				pods = append(pods, fmt.Sprintf("%.1f,%.1f", xOf(x.T), panelH-float64(x.Pods)/float64(max(maxPods, 1))*panelH))
				vals = append(vals, fmt.Sprintf("%.1f,%.1f", xOf(x.T), yOf(row.v(x))))
				if row.part != nil {
					parts = append(parts, fmt.Sprintf("%.1f,%.1f", xOf(x.T), yOf(row.part(x))))
				}
			}
			fmt.Fprintf(&b, `<polyline points="%s" fill="none" stroke="#bbb" stroke-width="2"/>`+"\n", strings.Join(pods, " "))
			if len(parts) > 0 {
				fmt.Fprintf(&b, `<polyline points="%s" fill="none" stroke="%s" stroke-width="0.7"/>`+"\n", strings.Join(parts, " "), color)
			}
			fmt.Fprintf(&b, `<polyline points="%s" fill="none" stroke="%s" stroke-width="1.5"/>`+"\n", strings.Join(vals, " "), color)
			fmt.Fprintf(&b, `<line x1="0" y1="%.1f" x2="%d" y2="%.1f" stroke="#d62728" stroke-dasharray="6,4"/>`+"\n", yOf(target), panelW, yOf(target))
			b.WriteString("</g>\n")
		}
	}
	b.WriteString("</svg>\n")
	return []byte(b.String())
}

// LoadScaleRuns reads scale.json files and merges them, a later file's
// scenarios replacing an earlier one's of the same name and dataplane (to
// put the runs of a scenario that was measured again beside the others).
func LoadScaleRuns(paths []string) (*ScaleRun, error) {
	var run *ScaleRun
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			return nil, err
		}
		var r ScaleRun
		if err := json.Unmarshal(b, &r); err != nil {
			return nil, fmt.Errorf("%s: %w", p, err)
		}
		if run == nil {
			run = &r
			continue
		}
		for _, s := range r.Scenarios {
			i := slices.IndexFunc(run.Scenarios, func(o ScaleScenario) bool { return o.key() == s.key() })
			if i < 0 {
				run.Scenarios = append(run.Scenarios, s)
			} else {
				run.Scenarios[i] = s
			}
		}
	}
	if run == nil {
		return nil, fmt.Errorf("no scale.json given")
	}
	slices.SortFunc(run.Scenarios, func(a, b ScaleScenario) int { return strings.Compare(a.key(), b.key()) })
	return run, nil
}

// Write saves the run's files (scale.json, the CSVs, scale.svg) to dir.
func (r *ScaleRun) Write(dir string) error { return r.write(dir) }
