package agent

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kpath/kpath/internal/datapath"
	"github.com/kpath/kpath/internal/flows"
	"github.com/kpath/kpath/internal/model"
)

// The agent's flow part: datapath events, enriched with pods, services and
// policies, kept in a ring that `kpath observe` queries and follows.

// flowMetrics use Hubble's metric names where one exists.
type flowMetrics struct {
	processed *prometheus.CounterVec // hubble_flows_processed_total{type,subtype,verdict}
	drops     *prometheus.CounterVec // hubble_drop_total{reason,protocol}
	verdicts  *prometheus.CounterVec // hubble_policy_verdicts_total{direction,match,action}
	// The counters by their labels, so an event costs a map lookup, not a
	// hash of its label values (one goroutine uses them: no lock).
	children map[[4]string]prometheus.Counter
}

func (m *flowMetrics) inc(vec *prometheus.CounterVec, kind string, labels ...string) {
	k := [4]string{kind}
	copy(k[1:], labels)
	c, ok := m.children[k]
	if !ok {
		c = vec.WithLabelValues(labels...)
		m.children[k] = c
	}
	c.Inc()
}

func newFlowMetrics(reg prometheus.Registerer) *flowMetrics {
	m := &flowMetrics{
		processed: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "hubble_flows_processed_total",
			Help: "Flows the agent decoded, by type, subtype and verdict."}, []string{"type", "subtype", "verdict"}),
		drops: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "hubble_drop_total",
			Help: "Drop events by reason and protocol (the datapath's own counters, kpath_datapath_packets_total, count every drop)."}, []string{"reason", "protocol"}),
		verdicts: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "hubble_policy_verdicts_total",
			Help: "Policy verdicts of new connections by direction, what matched and the action."}, []string{"direction", "match", "action"}),
	}
	m.children = map[[4]string]prometheus.Counter{}
	reg.MustRegister(m.processed, m.drops, m.verdicts)
	return m
}

// flowSource turns datapath events into flows.
type flowSource struct {
	a    *Agent
	ring *flows.Ring
	m    *flowMetrics

	mu       sync.Mutex
	services map[model.L4Addr]model.ServiceKey // frontend -> service
	loaded   time.Time
}

func (a *Agent) runFlows(ctx context.Context) {
	ev, err := a.dp.OpenEvents()
	if err != nil {
		a.log.Error("flows: cannot read the datapath's events; flows are off", "error", err)
		return
	}
	go func() { <-ctx.Done(); ev.Close() }()
	var fe datapath.FlowEvent
	for ctx.Err() == nil {
		err := ev.Read(&fe, 200*time.Millisecond)
		if errors.Is(err, datapath.ErrNoEvent) {
			continue
		}
		if err != nil {
			if ctx.Err() == nil {
				a.log.Error("flows: reading events", "error", err)
				time.Sleep(time.Second)
			}
			continue
		}
		a.flows.ring.Add(a.flows.enrich(&fe))
	}
}

// service names the service of a frontend, reloading the reconciler's
// view at most once a second when it does not know it.
func (s *flowSource) service(fe netip.AddrPort, proto model.Protocol) (model.ServiceKey, bool) {
	k := model.L4Addr{Addr: fe.Addr(), Port: fe.Port(), Proto: proto}
	s.mu.Lock()
	defer s.mu.Unlock()
	if svc, ok := s.services[k]; ok {
		return svc, true
	}
	if time.Since(s.loaded) < time.Second {
		return model.ServiceKey{}, false
	}
	s.services = map[model.L4Addr]model.ServiceKey{}
	for _, e := range s.a.rec.Entries() {
		s.services[e.Frontend] = e.Owner
	}
	s.loaded = time.Now()
	svc, ok := s.services[k]
	return svc, ok
}

func (s *flowSource) endpoint(ip netip.Addr, port uint16) flows.Endpoint {
	e := flows.Endpoint{IP: ip, Port: port}
	if s.a.store == nil || !ip.IsValid() || ip.IsUnspecified() {
		return e
	}
	p, id := s.a.store.Describe(ip, s.a.cfg.NodeName)
	switch {
	case p.Pod != nil:
		e.Namespace, e.Pod, e.Labels = p.Pod.Key.Namespace, p.Pod.Key.Name, p.Pod.Labels
	case p.Node != "":
		e.Node = p.Node
	}
	e.Identity = uint32(id)
	return e
}

// sender is the pod behind a host-side interface, with the source it used.
func (s *flowSource) sender(ifindex int, src netip.AddrPort) flows.Endpoint {
	e := flows.Endpoint{IP: src.Addr(), Port: src.Port()}
	k, own, ok := s.a.cni.podOfInterface(ifindex)
	if !ok {
		return e
	}
	if k.Name != "" {
		e.Namespace, e.Pod = k.Namespace, k.Name
	}
	if s.a.store != nil {
		p, id := s.a.store.Describe(own, s.a.cfg.NodeName)
		if p.Pod != nil {
			e.Namespace, e.Pod, e.Labels = p.Pod.Key.Namespace, p.Pod.Key.Name, p.Pod.Labels
		}
		e.Identity = uint32(id)
	}
	return e
}

// flagString names TCP flags as Hubble's printer does ("SYN, ACK").
func flagString(f uint8) string { return strings.Join(datapath.TCPFlagNames(f), ", ") }

func (s *flowSource) enrich(fe *datapath.FlowEvent) flows.Flow {
	f := flows.Flow{
		Time: fe.Time, Node: s.a.cfg.NodeName, Type: fe.Type.String(), Dir: fe.Dir, Proto: fe.Proto.String(),
		Source: s.endpoint(fe.Src.Addr(), fe.Src.Port()), Destination: s.endpoint(fe.Dst.Addr(), fe.Dst.Port()),
		Cookie: fe.Cookie, Verdict: flows.Forwarded,
	}
	if fe.IfIndex != 0 {
		// The source address is forged: the sender is the pod behind the
		// interface, shown with the address it forged.
		f.Source = s.sender(fe.IfIndex, fe.Src)
	}
	if fe.Proto == 1 {
		f.Proto = "ICMP"
	}
	if fe.Proto == model.TCP {
		f.TCPFlags = flagString(fe.TCPFlags)
	}
	switch fe.Type {
	case datapath.FlowDrop:
		f.Verdict, f.DropReason = flows.Dropped, fe.Reason
	case datapath.FlowXlate:
		f.Verdict = flows.Translated
	}
	if fe.Service.IsValid() {
		f.Service = &flows.Service{Frontend: fe.Service}
		if k, ok := s.service(fe.Service, fe.Proto); ok {
			f.Service.Namespace, f.Service.Name = k.Namespace, k.Name
		}
	}
	if fe.Type == datapath.FlowNew || fe.Type == datapath.FlowDrop && fe.Reason == "policy denied" {
		p := &flows.Policy{Ingress: fe.PolicyIngress, Match: fe.Match.String()}
		if s.a.psync != nil {
			if rules := s.a.psync.SetRules(fe.Set); fe.Rule > 0 && int(fe.Rule) <= len(rules) {
				p.Rule = rules[fe.Rule-1].String()
			}
			for _, k := range s.a.psync.SetPolicies(fe.Set, fe.PolicyIngress) {
				p.Policies = append(p.Policies, k.String())
			}
		}
		f.Policy = p
		dir := "egress"
		if p.Ingress {
			dir = "ingress"
		}
		action := "forwarded"
		if fe.Type == datapath.FlowDrop {
			action = "dropped"
		}
		s.m.inc(s.m.verdicts, "v", dir, p.Match, action)
	}
	if fe.Type == datapath.FlowDrop {
		s.m.inc(s.m.drops, "d", fe.Reason, f.Proto)
	}
	s.m.inc(s.m.processed, "p", "L3_L4", f.Type, string(f.Verdict))
	return f
}

// FlowsStatus is GET /v1/flows/status.
type FlowsStatus struct {
	Enabled  bool                `json:"enabled"`
	Seen     uint64              `json:"seen"`
	Held     int                 `json:"held"`
	Capacity int                 `json:"capacity"`
	Kernel   datapath.EventStats `json:"kernel"`
}

// parseFlowQuery reads a flow query: filter (JSON), last, follow.
func parseFlowQuery(r *http.Request) (flows.Filter, int, bool, error) {
	var f flows.Filter
	q := r.URL.Query()
	if s := q.Get("filter"); s != "" {
		if err := json.Unmarshal([]byte(s), &f); err != nil {
			return f, 0, false, err
		}
	}
	last := 0
	if s := q.Get("last"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < -1 {
			return f, 0, false, errors.New("last: want a count (0: every held flow, -1: none)")
		}
		last = n
	}
	return f, last, q.Get("follow") == "true", f.Validate()
}

func (a *Agent) registerFlowAPI(mux *http.ServeMux) {
	mux.HandleFunc("GET /v1/flows/status", func(w http.ResponseWriter, _ *http.Request) {
		st := FlowsStatus{Enabled: a.flows != nil}
		if a.flows != nil {
			st.Seen, st.Held = a.flows.ring.Stats()
			st.Capacity = a.flows.ring.Capacity()
			st.Kernel, _ = a.dp.EventStats()
		}
		writeJSON(w, st)
	})
	// GET /v1/flows: newline-delimited JSON flows, the held ones that match
	// (the last N with last=N, none with last=-1), then, with follow=true,
	// new ones as they come.
	mux.HandleFunc("GET /v1/flows", func(w http.ResponseWriter, r *http.Request) {
		if a.flows == nil {
			apiError(w, http.StatusServiceUnavailable, errors.New("flows are off (flows: false in the agent's configuration)"))
			return
		}
		f, last, follow, err := parseFlowQuery(r)
		if err != nil {
			apiError(w, http.StatusBadRequest, err)
			return
		}
		w.Header().Set("Content-Type", "application/x-ndjson")
		enc := json.NewEncoder(w)
		fl, _ := w.(http.Flusher)
		if last >= 0 {
			for _, x := range a.flows.ring.Snapshot(f.Match, last) {
				if enc.Encode(x) != nil {
					return
				}
			}
		}
		if fl != nil {
			fl.Flush()
		}
		if !follow {
			return
		}
		a.flows.ring.Follow(r.Context(), f.Match, func(x flows.Flow) bool {
			if enc.Encode(x) != nil {
				return false
			}
			if fl != nil {
				fl.Flush()
			}
			return true
		})
	})
}

// ended turns the connections the garbage collector deleted into end
// flows. A translated connection has two entries: its service entry (the
// forward packets the service path counted, and the frontend) and its
// connection entry (client -> backend); they make one flow.
func (s *flowSource) ended(ends []datapath.CTEnd, now time.Time) {
	type tuple struct {
		src, dst netip.AddrPort
		proto    model.Protocol
	}
	svc := map[tuple]*datapath.CTEnd{}
	for i := range ends {
		if e := &ends[i]; e.Service {
			svc[tuple{e.Src, e.Backend, e.Proto}] = e
		}
	}
	emit := func(e *datapath.CTEnd, frontend netip.AddrPort, pf, bf uint64) {
		if e.PacketsFwd+pf+e.PacketsRev == 0 {
			return // never counted: not a connection policy saw
		}
		f := flows.Flow{
			Time: now, Node: s.a.cfg.NodeName, Type: "end", Verdict: flows.Forwarded, Proto: e.Proto.String(),
			Source: s.endpoint(e.Src.Addr(), e.Src.Port()), Destination: s.endpoint(e.Dst.Addr(), e.Dst.Port()),
			PacketsToDst: e.PacketsFwd + pf, BytesToDst: e.BytesFwd + bf, PacketsToSrc: e.PacketsRev, BytesToSrc: e.BytesRev,
			Duration: e.Age,
		}
		if e.Proto == model.TCP {
			f.TCPFlags = flagString(e.TCPFlags)
		}
		if frontend.IsValid() {
			f.Service = &flows.Service{Frontend: frontend}
			if k, ok := s.service(frontend, e.Proto); ok {
				f.Service.Namespace, f.Service.Name = k.Namespace, k.Name
			}
		}
		s.m.inc(s.m.processed, "p", "L3_L4", f.Type, string(f.Verdict))
		s.ring.Add(f)
	}
	for i := range ends {
		e := &ends[i]
		if e.Service {
			continue
		}
		if sv, ok := svc[tuple{e.Src, e.Dst, e.Proto}]; ok {
			emit(e, sv.Dst, sv.PacketsFwd, sv.BytesFwd)
			delete(svc, tuple{e.Src, e.Dst, e.Proto})
			continue
		}
		emit(e, netip.AddrPort{}, 0, 0)
	}
	for _, sv := range svc { // the connection entry went first (evicted)
		cp := *sv
		cp.Dst = sv.Backend
		emit(&cp, sv.Dst, 0, 0)
	}
}
