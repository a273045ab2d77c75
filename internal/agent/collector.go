package agent

import (
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kpath/kpath/internal/datapath"
)

// datapathCollector exports the datapath's counters and map fill levels.
// Map usage is recounted at most every usageTTL: counting walks the maps.
type datapathCollector struct {
	dp                      *datapath.Datapath
	packets, bytes          *prometheus.Desc
	entries, max, fillRatio *prometheus.Desc
	lost, events            *prometheus.Desc

	mu      sync.Mutex
	usage   []datapath.MapUsage
	counted time.Time
}

const usageTTL = 30 * time.Second

func newDatapathCollector(dp *datapath.Datapath) *datapathCollector {
	return &datapathCollector{
		dp:        dp,
		packets:   prometheus.NewDesc("kpath_datapath_packets_total", "Packets (socket calls for dir=socket) by verdict reason and direction.", []string{"reason", "dir", "verdict"}, nil),
		bytes:     prometheus.NewDesc("kpath_datapath_bytes_total", "Bytes by verdict reason and direction.", []string{"reason", "dir", "verdict"}, nil),
		entries:   prometheus.NewDesc("kpath_map_entries", "Entries in a BPF map.", []string{"map"}, nil),
		max:       prometheus.NewDesc("kpath_map_max_entries", "Capacity of a BPF map.", []string{"map"}, nil),
		fillRatio: prometheus.NewDesc("kpath_map_fill_ratio", "Entries / capacity of a BPF map.", []string{"map"}, nil),
		lost:      prometheus.NewDesc("hubble_lost_events_total", "Flow events lost, by where: the kernel's ring buffer was full, or a drop event was over its per-CPU rate.", []string{"source"}, nil),
		events:    prometheus.NewDesc("kpath_flow_events_sent_total", "Flow events the datapath sent to the agent.", nil, nil),
	}
}

func (c *datapathCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.packets, c.bytes, c.entries, c.max, c.fillRatio, c.lost, c.events} {
		ch <- d
	}
}

func (c *datapathCollector) Collect(ch chan<- prometheus.Metric) {
	if cs, err := c.dp.Counters(); err == nil {
		for _, x := range cs {
			verdict := "forward"
			if x.Drop {
				verdict = "drop"
			}
			ch <- prometheus.MustNewConstMetric(c.packets, prometheus.CounterValue, float64(x.Packets), x.Reason, x.Dir, verdict)
			ch <- prometheus.MustNewConstMetric(c.bytes, prometheus.CounterValue, float64(x.Bytes), x.Reason, x.Dir, verdict)
		}
	}
	if st, err := c.dp.EventStats(); err == nil {
		ch <- prometheus.MustNewConstMetric(c.lost, prometheus.CounterValue, float64(st.Lost), "perf_event_ring_buffer")
		ch <- prometheus.MustNewConstMetric(c.lost, prometheus.CounterValue, float64(st.RateLimited), "drop_rate_limit")
		ch <- prometheus.MustNewConstMetric(c.events, prometheus.CounterValue, float64(st.Sent))
	}
	c.mu.Lock()
	if time.Since(c.counted) > usageTTL {
		if u, err := c.dp.MapUsages(); err == nil {
			c.usage, c.counted = u, time.Now()
		}
	}
	usage := c.usage
	c.mu.Unlock()
	for _, u := range usage {
		ch <- prometheus.MustNewConstMetric(c.entries, prometheus.GaugeValue, float64(u.Entries), u.Name)
		ch <- prometheus.MustNewConstMetric(c.max, prometheus.GaugeValue, float64(u.Max), u.Name)
		ch <- prometheus.MustNewConstMetric(c.fillRatio, prometheus.GaugeValue, float64(u.Entries)/float64(u.Max), u.Name)
	}
}
