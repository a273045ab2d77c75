package dataplane

import (
	"bufio"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/kpath/kpath/internal/nsutil"
)

// The dataplanes' Prometheus endpoints, each inside its node's network
// namespace.
const (
	// KpathMetrics is kpath-agent's.
	KpathMetrics = "http://127.0.0.1:9964/metrics"
	// KubeProxyMetrics is kube-proxy's.
	KubeProxyMetrics = "http://127.0.0.1:10249/metrics"
	// CiliumMetrics is cilium-agent's.
	CiliumMetrics = "http://127.0.0.1:9962/metrics"
)

// Scrape reads every sample of the Prometheus endpoint url inside the
// network namespace netns, keyed by the name with its labels as exposed
// (name{a="x",b="y"}).
func Scrape(netns, url string) (map[string]float64, error) {
	body, err := getInNetns(netns, url, 5*time.Second)
	if err != nil {
		return nil, err
	}
	defer body.Close()
	out := map[string]float64{}
	s := bufio.NewScanner(body)
	s.Buffer(make([]byte, 64<<10), 1<<20)
	for s.Scan() {
		line := s.Text()
		i := strings.LastIndexByte(line, ' ')
		if i < 0 || strings.HasPrefix(line, "#") {
			continue
		}
		if v, err := strconv.ParseFloat(strings.TrimSpace(line[i+1:]), 64); err == nil {
			out[line[:i]] = v
		}
	}
	if err := s.Err(); err != nil {
		return nil, fmt.Errorf("metrics %s in %s: %w", url, netns, err)
	}
	return out, nil
}

// getInNetns GETs url from inside the named network namespace. No
// keep-alive: a transport per call would otherwise leave its idle
// connection open, and polling every 20 ms through a 15-minute wait ran
// E1 out of file descriptors.
func getInNetns(netns, url string, timeout time.Duration) (io.ReadCloser, error) {
	client := &http.Client{Timeout: timeout, Transport: &http.Transport{DialContext: nsutil.Dialer(netns), DisableKeepAlives: true}}
	resp, err := client.Get(url)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		resp.Body.Close()
		return nil, fmt.Errorf("GET %s in %s: %s", url, netns, resp.Status)
	}
	return resp.Body, nil
}

// TailFile is the last n lines of a log, for errors that point at it.
func TailFile(path string, n int) string {
	data, _ := os.ReadFile(path)
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}
