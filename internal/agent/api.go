package agent

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"path/filepath"
	"time"

	"github.com/kpath/kpath/internal/policysync"
	"github.com/kpath/kpath/internal/reconcile"
)

// Status is what GET /v1/status returns.
type Status struct {
	Node         string `json:"node"`
	Ready        bool   `json:"ready"`
	Uptime       string `json:"uptime"`
	StartToReady string `json:"start_to_ready,omitempty"`
	PinPath      string `json:"pin_path"`
	SocketHook   bool   `json:"socket_hook"`
	Services     int    `json:"services_watched"`
	Slices       int    `json:"endpointslices_watched"`
	Nodes        int    `json:"nodes_watched"`
	// Pending counts services changed in the API and not yet applied; with
	// Reconciler read after it, zero means every change seen so far is in
	// the datapath.
	Pending    int              `json:"pending_changes"`
	Reconciler reconcile.Status `json:"reconciler"`
	// Policy is NetworkPolicy enforcement (absent when it is off).
	Policy *policysync.Stats `json:"policy,omitempty"`
}

// ServiceEntry is one frontend as GET /v1/services returns it.
type ServiceEntry struct {
	Service  string   `json:"service"`
	Port     string   `json:"port"`
	Kind     string   `json:"kind"`
	Frontend string   `json:"frontend"`
	Backends []string `json:"backends"`
	Affinity string   `json:"affinity,omitempty"`
}

// serveAPI serves the local API on a unix socket only root can use.
func (a *Agent) serveAPI(path string) (*http.Server, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("api socket directory: %w", err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("remove stale api socket: %w", err)
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("api socket %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, err
	}
	mux := http.NewServeMux()
	// Go's profiles, on the root-only socket (never on the metrics port):
	// where the agent's memory and CPU go (kpath bench scale keeps them).
	mux.HandleFunc("GET /debug/pprof/", pprof.Index)
	mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("GET /v1/status", func(w http.ResponseWriter, _ *http.Request) { writeJSON(w, a.Status()) })
	mux.HandleFunc("GET /v1/services", func(w http.ResponseWriter, _ *http.Request) { writeJSON(w, a.ServiceEntries()) })
	mux.HandleFunc("GET /v1/bpf/lb", func(w http.ResponseWriter, _ *http.Request) {
		s, err := a.dp.Services()
		writeResult(w, s, err)
	})
	mux.HandleFunc("GET /v1/bpf/ipcache", func(w http.ResponseWriter, _ *http.Request) {
		// Address -> identity, as the datapath holds them (cilium bpf
		// ipcache list's kin).
		m, err := a.dp.IPCache()
		writeResult(w, m, err)
	})
	mux.HandleFunc("GET /v1/bpf/ct", func(w http.ResponseWriter, _ *http.Request) {
		s, err := a.dp.Conntrack()
		writeResult(w, s, err)
	})
	mux.HandleFunc("GET /v1/bpf/usage", func(w http.ResponseWriter, _ *http.Request) {
		// Each sized map's entries and capacity (cilium's map pressure).
		u, err := a.dp.MapUsages()
		writeResult(w, u, err)
	})
	a.cni.register(mux)
	a.registerPolicyAPI(mux)
	a.registerFlowAPI(mux)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	return srv, nil
}

// Status reports the agent's state.
func (a *Agent) Status() Status {
	// Pending before the reconciler: a sync takes the pending changes and
	// holds the reconciler's lock until they are applied, so this order
	// never reports zero pending with a sync half done.
	pending := a.cache.Pending()
	s := Status{
		Node: a.cfg.NodeName, Ready: a.ready.Load(), Uptime: time.Since(a.started).Round(time.Second).String(),
		PinPath: a.dp.PinPath(), SocketHook: a.cfg.SocketHook, Pending: pending, Reconciler: a.rec.Status(),
	}
	if r := a.readyAt.Load(); r != 0 {
		s.StartToReady = time.Unix(0, r).Sub(a.started).Round(time.Millisecond).String()
	}
	s.Services, s.Slices, s.Nodes = a.cache.Counts()
	s.Policy = a.policyStats()
	return s
}

// ServiceEntries lists the frontends the agent derived from the API.
func (a *Agent) ServiceEntries() []ServiceEntry {
	var out []ServiceEntry
	for _, e := range a.rec.Entries() {
		se := ServiceEntry{Service: e.Owner.String(), Port: e.Port, Kind: e.Kind.String(), Frontend: e.Frontend.String(), Backends: []string{}}
		for _, b := range e.Backends {
			se.Backends = append(se.Backends, b.String())
		}
		if e.Affinity > 0 {
			se.Affinity = e.Affinity.String()
		}
		out = append(out, se)
	}
	return out
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(v)
}

func writeResult(w http.ResponseWriter, v any, err error) {
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	writeJSON(w, v)
}
