package bench

import (
	"fmt"
	"html"
	"math"
	"strings"
)

// latencyChart draws E1 as SVG: one panel per scenario (rows) and target
// (columns), total time against pods on a log axis, one line per mode.
// S=0 has no place on a log axis; it is drawn one decade left of the
// smallest other point and labelled 0.
func latencyChart(run *LatencyRun) []byte {
	const (
		panelW, panelH = 440, 260
		left, top      = 70, 80
		gapX, gapY     = 90, 80
	)
	scenarios := []string{}
	for _, sc := range []string{"loaded", "quiet"} {
		for _, r := range run.Rows {
			if r.Scenario == sc {
				scenarios = append(scenarios, sc)
				break
			}
		}
	}
	targets := []string{"service", "direct"}
	pts := runPoints(run.Rows)
	ix := indexRows(run.Rows)
	width := left + len(targets)*(panelW+gapX)
	height := top + max(len(scenarios), 1)*(panelH+gapY)

	// x: log10(pods); 0 pods sits a decade left of the smallest non-zero.
	minPods, maxPods := math.Inf(1), 1.0
	for _, s := range pts {
		if p := float64(s * simLatency.backends); p > 0 {
			minPods, maxPods = math.Min(minPods, p), math.Max(maxPods, p)
		}
	}
	if math.IsInf(minPods, 1) {
		minPods = 10
	}
	lo, hi := math.Floor(math.Log10(minPods))-1, math.Ceil(math.Log10(maxPods))
	if hi <= lo {
		hi = lo + 1
	}
	xOf := func(pods int) float64 {
		lp := lo
		if pods > 0 {
			lp = math.Log10(float64(pods))
		}
		return (lp - lo) / (hi - lo) * panelW
	}

	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="sans-serif" font-size="12">`+"\n", width, height, width, height)
	fmt.Fprintf(&b, `<rect width="100%%" height="100%%" fill="white"/>`+"\n")
	fmt.Fprintf(&b, `<text x="%d" y="24" font-size="16" font-weight="bold">E1: time for %d requests (ab, new connection each) vs cluster size, median of %d rounds</text>`+"\n", left, run.Requests, run.Rounds)
	// Legend.
	lx := left
	for _, m := range latencyModes {
		if !containsMode(run, m.mode) {
			continue
		}
		fmt.Fprintf(&b, `<line x1="%d" y1="46" x2="%d" y2="46" stroke="%s" stroke-width="3"/><text x="%d" y="50">%s</text>`+"\n", lx, lx+24, m.color, lx+30, html.EscapeString(m.label))
		lx += 40 + 8*len(m.label)
	}
	for si, sc := range scenarios {
		for ti, tg := range targets {
			ox, oy := float64(left+ti*(panelW+gapX)), float64(top+si*(panelH+gapY))
			ymax := 0.0
			for _, r := range run.Rows {
				if r.Scenario == sc && r.Target == tg {
					ymax = math.Max(ymax, r.TotalMs/1000)
				}
			}
			ymax = niceCeil(ymax * 1.05)
			yOf := func(sec float64) float64 { return panelH - sec/ymax*panelH }
			conc := "-c 1, no churn"
			if sc == "loaded" {
				conc = "-c 16, 20 EndpointSlice updates/s"
			}
			fmt.Fprintf(&b, `<g transform="translate(%.0f,%.0f)">`+"\n", ox, oy)
			fmt.Fprintf(&b, `<text x="0" y="-10" font-weight="bold">%s, %s (%s)</text>`+"\n", sc, map[string]string{"service": "via ClusterIP", "direct": "direct to pod IP"}[tg], conc)
			fmt.Fprintf(&b, `<rect width="%d" height="%d" fill="none" stroke="#333"/>`+"\n", panelW, panelH)
			for i := 0; i <= 4; i++ {
				v := ymax * float64(i) / 4
				y := yOf(v)
				fmt.Fprintf(&b, `<line x1="0" y1="%.1f" x2="%d" y2="%.1f" stroke="#ddd"/><text x="-6" y="%.1f" text-anchor="end">%s</text>`+"\n", y, panelW, y, y+4, trimFloat(v))
			}
			for d := lo; d <= hi; d++ {
				x := (d - lo) / (hi - lo) * panelW
				label := "0"
				if d > lo {
					label = shortCount(math.Pow(10, d))
				}
				fmt.Fprintf(&b, `<line x1="%.1f" y1="0" x2="%.1f" y2="%d" stroke="#eee"/><text x="%.1f" y="%d" text-anchor="middle">%s</text>`+"\n", x, x, panelH, x, panelH+16, label)
			}
			fmt.Fprintf(&b, `<text x="%d" y="%d" text-anchor="middle">pods (10 per service, log scale)</text>`+"\n", panelW/2, panelH+34)
			fmt.Fprintf(&b, `<text transform="translate(-48,%d) rotate(-90)" text-anchor="middle">seconds</text>`+"\n", panelH/2)
			for _, m := range latencyModes {
				var path []string
				for _, s := range pts {
					if r, ok := ix.get(m.mode, sc, s, tg); ok {
						x, y := xOf(r.Pods), yOf(r.TotalMs/1000)
						path = append(path, fmt.Sprintf("%.1f,%.1f", x, y))
						fmt.Fprintf(&b, `<circle cx="%.1f" cy="%.1f" r="3" fill="%s"><title>%s S=%d: %.2f s, p50 %.2f ms, p99 %.2f ms</title></circle>`+"\n",
							x, y, m.color, html.EscapeString(m.label), s, r.TotalMs/1000, r.P50Ms, r.P99Ms)
					}
				}
				if len(path) > 1 {
					fmt.Fprintf(&b, `<polyline points="%s" fill="none" stroke="%s" stroke-width="2"/>`+"\n", strings.Join(path, " "), m.color)
				}
			}
			b.WriteString("</g>\n")
		}
	}
	b.WriteString("</svg>\n")
	return []byte(b.String())
}

func containsMode(run *LatencyRun, mode string) bool {
	for _, r := range run.Rows {
		if r.Mode == mode {
			return true
		}
	}
	return false
}

// niceCeil rounds v up to 1, 2 or 5 times a power of ten.
func niceCeil(v float64) float64 {
	if v <= 0 {
		return 1
	}
	p := math.Pow(10, math.Floor(math.Log10(v)))
	for _, m := range []float64{1, 2, 5, 10} {
		if m*p >= v {
			return m * p
		}
	}
	return 10 * p
}

func trimFloat(v float64) string {
	return strings.TrimRight(strings.TrimRight(fmt.Sprintf("%.2f", v), "0"), ".")
}

// shortCount writes 1000 as 1k and 100000 as 100k.
func shortCount(v float64) string {
	switch {
	case v >= 1e6:
		return trimFloat(v/1e6) + "M"
	case v >= 1e3:
		return trimFloat(v/1e3) + "k"
	}
	return trimFloat(v)
}
