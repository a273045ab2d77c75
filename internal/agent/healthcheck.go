package agent

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/kpath/kpath/internal/k8s"
	"github.com/kpath/kpath/internal/model"
	"github.com/kpath/kpath/internal/servicemap"
)

// healthChecks serves the health check node ports of services with
// externalTrafficPolicy Local, as kube-proxy does: a load balancer asks each
// node whether it has local endpoints (200) or not (503), and sends traffic
// only to nodes that do.
type healthChecks struct {
	bind    string
	node    string
	log     *slog.Logger
	mu      sync.Mutex
	servers map[uint16]*hcServer
}

type hcServer struct {
	key   atomic.Pointer[model.ServiceKey]
	local atomic.Int64
	srv   *http.Server
}

// hcResponse is kube-proxy's health check body.
type hcResponse struct {
	Service struct {
		Namespace string `json:"namespace"`
		Name      string `json:"name"`
	} `json:"service"`
	LocalEndpoints      int  `json:"localEndpoints"`
	ServiceProxyHealthy bool `json:"serviceProxyHealthy"`
}

func (s *hcServer) ServeHTTP(w http.ResponseWriter, _ *http.Request) {
	var r hcResponse
	k := s.key.Load()
	r.Service.Namespace, r.Service.Name = k.Namespace, k.Name
	r.LocalEndpoints = int(s.local.Load())
	r.ServiceProxyHealthy = true
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	if r.LocalEndpoints == 0 {
		w.WriteHeader(http.StatusServiceUnavailable)
	}
	_ = json.NewEncoder(w).Encode(r)
}

// sync opens, updates and closes health check ports to match the cache.
func (h *healthChecks) sync(c *k8s.Cache) {
	want := map[uint16]struct {
		key   model.ServiceKey
		local int
	}{}
	for _, k := range c.HealthCheckedServices() {
		spec, slices := c.Service(k)
		if spec == nil || !spec.ExternalLocal || spec.HealthCheckNodePort == 0 {
			continue
		}
		want[spec.HealthCheckNodePort] = struct {
			key   model.ServiceKey
			local int
		}{k, servicemap.LocalEndpoints(h.node, spec, slices)}
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	for port, s := range h.servers {
		if _, ok := want[port]; !ok {
			_ = s.srv.Close()
			delete(h.servers, port)
		}
	}
	for port, w := range want {
		s := h.servers[port]
		if s == nil {
			var err error
			if s, err = h.listen(port); err != nil {
				h.log.Error("health check node port", "service", w.key, "port", port, "error", err)
				continue
			}
			h.servers[port] = s
		}
		key := w.key
		s.key.Store(&key)
		s.local.Store(int64(w.local))
	}
}

func (h *healthChecks) listen(port uint16) (*hcServer, error) {
	ln, err := net.Listen("tcp", net.JoinHostPort(h.bind, strconv.Itoa(int(port))))
	if err != nil {
		return nil, fmt.Errorf("listen: %w", err)
	}
	s := &hcServer{}
	s.srv = &http.Server{Handler: s, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		if err := s.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			h.log.Error("health check server", "port", port, "error", err)
		}
	}()
	return s, nil
}

func (h *healthChecks) closeAll() {
	h.mu.Lock()
	defer h.mu.Unlock()
	for port, s := range h.servers {
		_ = s.srv.Close()
		delete(h.servers, port)
	}
}
