package k8s

import (
	"runtime"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sys/unix"
)

// EventMetrics count the events the informers deliver and the CPU their
// handlers spend, by kind: the work per event that an agent's steady-state
// CPU is made of (decoding the watch stream and the syncs that follow are
// measured elsewhere). A nil *EventMetrics records nothing.
type EventMetrics struct {
	events *prometheus.CounterVec
	cpu    *prometheus.CounterVec
}

// NewEventMetrics registers the metrics with reg.
func NewEventMetrics(reg prometheus.Registerer) *EventMetrics {
	m := &EventMetrics{
		events: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kpath_k8s_events_total",
			Help: "API events delivered by the informers, by kind and op (upsert, delete).",
		}, []string{"kind", "op"}),
		cpu: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kpath_k8s_event_handler_cpu_seconds_total",
			Help: "CPU time (of the handling thread) the informers' handlers spent, by kind.",
		}, []string{"kind"}),
	}
	reg.MustRegister(m.events, m.cpu)
	return m
}

// observe runs f as one event of kind and counts it with its CPU time.
func (m *EventMetrics) observe(kind, op string, f func()) {
	if m == nil {
		f()
		return
	}
	// The thread's CPU clock measures this goroutine only while it stays
	// on the thread: locked for the handler's few microseconds.
	runtime.LockOSThread()
	start := threadCPU()
	f()
	d := threadCPU() - start
	runtime.UnlockOSThread()
	m.events.WithLabelValues(kind, op).Inc()
	if d > 0 {
		m.cpu.WithLabelValues(kind).Add(d.Seconds())
	}
}

func threadCPU() time.Duration {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_THREAD_CPUTIME_ID, &ts); err != nil {
		return 0
	}
	return time.Duration(ts.Nano())
}
