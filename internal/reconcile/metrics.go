package reconcile

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the reconciler's Prometheus metrics. A nil *Metrics records
// nothing.
type Metrics struct {
	latency  prometheus.Histogram
	duration prometheus.Histogram
	errors   prometheus.Counter
	pending  prometheus.Gauge
	applied  prometheus.Gauge
	backends prometheus.Gauge
	problems *prometheus.CounterVec
}

// NewMetrics registers the metrics with reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		latency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "kpath_service_event_to_datapath_seconds",
			Help:    "Time from a Service, EndpointSlice or Node change arriving to the datapath holding the result.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
		}),
		duration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "kpath_reconcile_duration_seconds",
			Help:    "Duration of one reconcile round.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2, 16),
		}),
		errors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "kpath_reconcile_errors_total",
			Help: "Services whose datapath update failed in a reconcile round (they are retried).",
		}),
		pending: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "kpath_reconcile_pending_changes",
			Help: "Services changed in the API and not yet applied.",
		}),
		applied: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "kpath_service_frontends",
			Help: "Frontends applied to the datapath.",
		}),
		backends: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "kpath_service_backends",
			Help: "Backends of the frontends applied to the datapath, summed over the frontends.",
		}),
		problems: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kpath_service_input_problems_total",
			Help: "Service input kpath could not use, by reason (unsupported-protocol, invalid-endpoint, frontend-clash).",
		}, []string{"reason"}),
	}
	reg.MustRegister(m.latency, m.duration, m.errors, m.pending, m.applied, m.backends, m.problems)
	return m
}

func (m *Metrics) observeLatency(d time.Duration) {
	if m != nil {
		m.latency.Observe(d.Seconds())
	}
}

func (m *Metrics) observeSync(d time.Duration, failed, pending, applied, backends int) {
	if m == nil {
		return
	}
	m.duration.Observe(d.Seconds())
	m.errors.Add(float64(failed))
	m.pending.Set(float64(pending))
	m.applied.Set(float64(applied))
	m.backends.Set(float64(backends))
}

func (m *Metrics) countProblem(reason string) {
	if m != nil {
		m.problems.WithLabelValues(reason).Inc()
	}
}
