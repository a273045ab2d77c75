package bench

import (
	"context"
	"encoding/csv"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Running ApacheBench for E1 and reading its results.

type abResult struct {
	total, mean, p50, p99 float64
	failed                int    // requests ab counted as failed, and non-2xx answers
	failures              string // ab's breakdown: (Connect: 0, Receive: 0, Length: 0, Exceptions: 0)
}

// abStalled is ab stopping a run because one request went unanswered for
// its timeout (30 s).
type abStalled struct{ completed int }

func (e *abStalled) Error() string {
	return fmt.Sprintf("ab stopped: a request unanswered for 30 s after %d completed", e.completed)
}

// abStallRE matches ab's words when its timeout ends a run.
var abStallRE = regexp.MustCompile(`(?s)The timeout specified has expired.*Total of (\d+) requests completed`)

// abFailure is the error for an ab that exited with err and printed out.
func abFailure(err error, out []byte) error {
	if m := abStallRE.FindSubmatch(out); m != nil {
		n, _ := strconv.Atoi(string(m[1]))
		return &abStalled{completed: n}
	}
	return fmt.Errorf("%w: %s", err, out)
}

// runAB runs ApacheBench from the client pod (in the node's cgroup, where
// the socket hook applies) with a client port range of its own.
func runAB(ctx context.Context, netns string, cg *os.File, url, ports string, n, conc int) (abResult, error) {
	if out, err := exec.Command("ip", "netns", "exec", netns, "sysctl", "-qw", "net.ipv4.ip_local_port_range="+ports).CombinedOutput(); err != nil {
		return abResult{}, fmt.Errorf("port range: %v: %s", err, out)
	}
	csvPath := filepath.Join(os.TempDir(), fmt.Sprintf("kpath-ab-%d.csv", time.Now().UnixNano()))
	defer os.Remove(csvPath)
	cmd := exec.CommandContext(ctx, "ip", "netns", "exec", netns, "ab", "-q", "-r", "-n", strconv.Itoa(n), "-c", strconv.Itoa(conc), "-e", csvPath, url)
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: int(cg.Fd())}
	out, err := cmd.CombinedOutput()
	if err != nil {
		return abResult{}, abFailure(err, out)
	}
	var r abResult
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		switch {
		case strings.HasPrefix(line, "Time taken for tests:") && len(f) >= 5:
			v, _ := strconv.ParseFloat(f[4], 64)
			r.total = v * 1000
		case strings.HasPrefix(line, "Time per request:") && strings.Contains(line, "(mean)") && !strings.Contains(line, "across") && len(f) >= 4:
			r.mean, _ = strconv.ParseFloat(f[3], 64)
		case strings.HasPrefix(line, "Failed requests:") && len(f) >= 3:
			n, _ := strconv.Atoi(f[2])
			r.failed += n
		case strings.HasPrefix(strings.TrimSpace(line), "(Connect:"):
			r.failures = strings.TrimSpace(line)
		case strings.HasPrefix(line, "Non-2xx responses:") && len(f) >= 3:
			n, _ := strconv.Atoi(f[2])
			r.failed += n
			r.failures = strings.TrimSpace(r.failures + " non-2xx: " + f[2])
		}
	}
	data, err := os.ReadFile(csvPath)
	if err != nil {
		return r, err
	}
	recs, _ := csv.NewReader(strings.NewReader(string(data))).ReadAll()
	for _, rec := range recs {
		if len(rec) != 2 {
			continue
		}
		v, err := strconv.ParseFloat(rec[1], 64)
		if err != nil {
			continue
		}
		switch rec[0] {
		case "50":
			r.p50 = v
		case "99":
			r.p99 = v
		}
	}
	return r, nil
}

func medianRow(rs []abResult) LatencyRow {
	sorted := func(get func(abResult) float64) []float64 {
		v := make([]float64, len(rs))
		for i, r := range rs {
			v[i] = get(r)
		}
		sort.Float64s(v)
		return v
	}
	med := func(get func(abResult) float64) float64 {
		v := sorted(get)
		if len(v)%2 == 0 {
			return (v[len(v)/2-1] + v[len(v)/2]) / 2
		}
		return v[len(v)/2]
	}
	totals := sorted(func(r abResult) float64 { return r.total })
	row := LatencyRow{
		TotalMs: med(func(r abResult) float64 { return r.total }), MeanMs: med(func(r abResult) float64 { return r.mean }),
		P50Ms: med(func(r abResult) float64 { return r.p50 }), P99Ms: med(func(r abResult) float64 { return r.p99 }),
		TotalMinMs: totals[0], TotalMaxMs: totals[len(totals)-1],
	}
	for _, r := range rs {
		row.Failed += r.failed
		if r.failed > 0 {
			row.Failures = r.failures
		}
	}
	return row
}
