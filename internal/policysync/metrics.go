package policysync

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the syncer's Prometheus metrics. A nil *Metrics records
// nothing. Policy drops by direction are the datapath's counters
// (kpath_datapath_packets_total{reason="policy denied"}), and the maps'
// fill ratios kpath_map_fill_ratio.
type Metrics struct {
	enforced  prometheus.Histogram
	duration  prometheus.Histogram
	errors    prometheus.Counter
	endpoints prometheus.Gauge
	sets      prometheus.Gauge
	entries   prometheus.Gauge
	cidrs     prometheus.Gauge
	ipcache   prometheus.Gauge
	idents    prometheus.Gauge
}

// NewMetrics registers the metrics with reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		enforced: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "kpath_policy_change_to_enforced_seconds",
			Help:    "Time from a Pod, Namespace or NetworkPolicy change arriving to the datapath enforcing it.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
		}),
		duration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "kpath_policy_sync_duration_seconds",
			Help:    "Duration of one policy sync round.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2, 16),
		}),
		errors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "kpath_policy_endpoint_errors_total",
			Help: "Times an endpoint's policy could not be applied (it kept its last good policy).",
		}),
		endpoints: prometheus.NewGauge(prometheus.GaugeOpts{Name: "kpath_policy_endpoints", Help: "Local endpoints under policy enforcement."}),
		sets:      prometheus.NewGauge(prometheus.GaugeOpts{Name: "kpath_policy_sets", Help: "Distinct policy sets of the local endpoints."}),
		entries:   prometheus.NewGauge(prometheus.GaugeOpts{Name: "kpath_policy_entries", Help: "Allow entries of all policy sets."}),
		cidrs:     prometheus.NewGauge(prometheus.GaugeOpts{Name: "kpath_policy_cidr_prefixes", Help: "ipBlock prefixes of all policy sets."}),
		ipcache:   prometheus.NewGauge(prometheus.GaugeOpts{Name: "kpath_ipcache_entries", Help: "Addresses with an identity in the ipcache."}),
		idents:    prometheus.NewGauge(prometheus.GaugeOpts{Name: "kpath_identities", Help: "Pod identities (distinct namespace, labels and named ports) this node has numbered."}),
	}
	reg.MustRegister(m.enforced, m.duration, m.errors, m.endpoints, m.sets, m.entries, m.cidrs, m.ipcache, m.idents)
	return m
}

func (m *Metrics) observeEnforced(d time.Duration) {
	if m != nil {
		m.enforced.Observe(d.Seconds())
	}
}

func (m *Metrics) endpointError() {
	if m != nil {
		m.errors.Inc()
	}
}

func (m *Metrics) observeSync(d time.Duration, s *Syncer) {
	if m == nil {
		return
	}
	m.duration.Observe(d.Seconds())
	st := s.statsLocked()
	m.endpoints.Set(float64(st.Endpoints))
	m.sets.Set(float64(st.Sets))
	m.entries.Set(float64(st.Entries))
	m.cidrs.Set(float64(st.CIDRs))
	m.ipcache.Set(float64(st.IPCache))
	// Not Counts: it walks every namespace's policies, and this runs on
	// every sync.
	m.idents.Set(float64(s.store.IdentityCount()))
}
