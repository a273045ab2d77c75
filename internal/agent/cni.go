package agent

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/vishvananda/netlink"

	"github.com/kpath/kpath/internal/cniapi"
	"github.com/kpath/kpath/internal/ipam"
	"github.com/kpath/kpath/internal/model"
	"github.com/kpath/kpath/internal/routing"
)

// PodGateway is the link-local address pods route through. No interface
// holds it: the CNI plugin gives each pod a permanent neighbour entry for
// it with the MAC of the pod's host-side veth, so no ARP is needed.
const PodGateway = "169.254.1.1"

// endpoints serves the CNI plugin: addresses from IPAM, programs attached
// to the pods' host-side veths.
type endpoints struct {
	a  *Agent
	mu sync.Mutex // serialises IPAM opening
	al ipam.Allocator
	// leakedReleased counts sweepLeaked's releases.
	leakedReleased prometheus.Counter
	// ops serialises putting a pod's address under policy and binding it
	// (attach) with releasing it, so a DEL that overtakes its ADD (the
	// runtime gave up on the ADD) leaves no endpoint for an address that
	// is no longer the pod's.
	ops sync.Mutex
}

// allocatedTo reports whether IPAM holds addr for the container.
func (e *endpoints) allocatedTo(o ipam.Owner, addr netip.Addr) bool {
	al, err := e.allocator()
	if err != nil {
		return false
	}
	return addr.IsValid() && addrOf(al, o) == addr
}

// addrOf is the address IPAM holds for the owner (invalid: none).
func addrOf(al ipam.Allocator, o ipam.Owner) netip.Addr {
	for _, a := range al.Allocations() {
		if a.Owner == o {
			return a.Addr
		}
	}
	return netip.Addr{}
}

// allocator opens IPAM once the pod CIDR is known (configured, or from this
// node's Node.spec.podCIDR).
func (e *endpoints) allocator() (ipam.Allocator, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.al != nil {
		return e.al, nil
	}
	prefix := e.a.cfg.PodCIDR
	if prefix == "" {
		n := e.a.cache.Node(e.a.cfg.NodeName)
		if n == nil || !n.PodCIDR.IsValid() {
			return nil, fmt.Errorf("node %s has no pod CIDR yet (spec.podCIDR is empty and podCIDR is not configured)", e.a.cfg.NodeName)
		}
		prefix = n.PodCIDR.String()
	}
	p, err := netip.ParsePrefix(prefix)
	if err != nil {
		return nil, fmt.Errorf("pod CIDR %q: %w", prefix, err)
	}
	al, err := ipam.NewOverlay(p, e.a.cfg.IPAMDir)
	if err != nil {
		return nil, err
	}
	e.al = al
	e.a.log.Info("IPAM ready", "podCIDR", p, "allocations", len(al.Allocations()))
	return al, nil
}

// mtu is the uplink's, less the encapsulation overhead when tunnelling.
func (e *endpoints) mtu() int {
	mtu := 1500
	for _, d := range e.a.cfg.Devices {
		if l, err := netlink.LinkByName(d); err == nil {
			mtu = l.Attrs().MTU
			break
		}
	}
	if e.a.cfg.Routing == string(routing.VXLAN) {
		mtu -= routing.VXLANOverhead
	}
	return mtu
}

func (e *endpoints) register(mux *http.ServeMux) {
	mux.HandleFunc("GET /v1/cni/status", func(w http.ResponseWriter, _ *http.Request) {
		if !e.a.ready.Load() {
			apiError(w, http.StatusServiceUnavailable, errors.New("kpath-agent has not synced with the API server yet"))
			return
		}
		if _, err := e.allocator(); err != nil {
			apiError(w, http.StatusServiceUnavailable, err)
			return
		}
		writeJSON(w, map[string]bool{"ready": true})
	})
	mux.HandleFunc("POST /v1/cni/allocate", func(w http.ResponseWriter, r *http.Request) {
		var req cniapi.AllocateRequest
		if !decode(w, r, &req) {
			return
		}
		al, err := e.allocator()
		if err != nil {
			apiError(w, http.StatusServiceUnavailable, err)
			return
		}
		extra := map[string]string{"hostIf": req.HostIf, "netns": req.Netns}
		if req.PodNamespace != "" && req.PodName != "" {
			extra[podExtraKey] = req.PodNamespace + "/" + req.PodName
		}
		a, err := al.Allocate(ipam.Owner{ContainerID: req.ContainerID, IfName: req.IfName}, extra)
		if err != nil {
			code := http.StatusInternalServerError
			if errors.Is(err, ipam.ErrExhausted) {
				code = http.StatusInsufficientStorage
			}
			apiError(w, code, err)
			return
		}
		writeJSON(w, cniapi.AllocateResponse{Addr: a.Addr, PodCIDR: al.Prefix(), Gateway: netip.MustParseAddr(PodGateway), MTU: e.mtu()})
	})
	mux.HandleFunc("POST /v1/cni/attach", func(w http.ResponseWriter, r *http.Request) {
		var req cniapi.AttachRequest
		if !decode(w, r, &req) {
			return
		}
		if !req.Addr.IsValid() {
			// Bound to no address, the pod could send nothing.
			apiError(w, http.StatusBadRequest, fmt.Errorf("attach %s: the request has no pod address (kpath-cni older than kpath-agent?)", req.HostIf))
			return
		}
		pod := model.PodKey{Namespace: req.PodNamespace, Name: req.PodName}
		if pod.Namespace != "" && pod.Name != "" {
			e.a.waitForPod(r.Context(), pod)
		}
		e.ops.Lock()
		defer e.ops.Unlock()
		if !e.allocatedTo(ipam.Owner{ContainerID: req.ContainerID, IfName: req.IfName}, req.Addr) {
			apiError(w, http.StatusConflict, fmt.Errorf("attach %s: %s is no longer allocated to container %s (released by a DEL meanwhile)", req.HostIf, req.Addr, req.ContainerID))
			return
		}
		// Policy first: the pod's programs enforce from their first packet.
		if pod.Namespace != "" && pod.Name != "" {
			if err := e.a.registerEndpoint(req.Addr, pod); err != nil {
				apiError(w, http.StatusInternalServerError, err)
				return
			}
		}
		if err := e.a.dp.AttachPod(req.HostIf, req.Addr); err != nil {
			apiError(w, http.StatusInternalServerError, err)
			return
		}
		writeJSON(w, map[string]bool{"attached": true})
	})
	mux.HandleFunc("POST /v1/cni/release", func(w http.ResponseWriter, r *http.Request) {
		var req cniapi.ReleaseRequest
		if !decode(w, r, &req) {
			return
		}
		al, err := e.allocator()
		if err != nil {
			// Nothing can have been allocated: DEL succeeds.
			writeJSON(w, cniapi.ReleaseResponse{})
			return
		}
		a, found, err := e.release(al, ipam.Owner{ContainerID: req.ContainerID, IfName: req.IfName})
		if err != nil {
			apiError(w, http.StatusInternalServerError, err)
			return
		}
		writeJSON(w, cniapi.ReleaseResponse{Released: found, Addr: a.Addr, HostIf: a.Extra["hostIf"]})
	})
	mux.HandleFunc("POST /v1/cni/check", func(w http.ResponseWriter, r *http.Request) {
		var req cniapi.CheckRequest
		if !decode(w, r, &req) {
			return
		}
		al, err := e.allocator()
		if err != nil {
			apiError(w, http.StatusServiceUnavailable, err)
			return
		}
		resp := cniapi.CheckResponse{Addr: addrOf(al, ipam.Owner{ContainerID: req.ContainerID, IfName: req.IfName})}
		if req.HostIf != "" {
			resp.Attached, _ = e.a.dp.PodAttached(req.HostIf)
			resp.Bound = e.bound(req.HostIf, resp.Addr)
		}
		writeJSON(w, resp)
	})
	mux.HandleFunc("POST /v1/cni/gc", func(w http.ResponseWriter, r *http.Request) {
		var req cniapi.GCRequest
		if !decode(w, r, &req) {
			return
		}
		al, err := e.allocator()
		if err != nil {
			writeJSON(w, cniapi.GCResponse{})
			return
		}
		valid := map[ipam.Owner]bool{}
		for _, v := range req.Valid {
			valid[ipam.Owner{ContainerID: v.ContainerID, IfName: v.IfName}] = true
		}
		var resp cniapi.GCResponse
		for _, a := range al.Allocations() {
			if valid[a.Owner] {
				continue
			}
			if _, _, err := e.release(al, a.Owner); err != nil {
				apiError(w, http.StatusInternalServerError, err)
				return
			}
			resp.Released = append(resp.Released, a.Addr)
		}
		writeJSON(w, resp)
	})
}

// release detaches the owner's programs (its veth may be gone already)
// and frees its address.
func (e *endpoints) release(al ipam.Allocator, o ipam.Owner) (ipam.Allocation, bool, error) {
	e.ops.Lock()
	defer e.ops.Unlock()
	for _, a := range al.Allocations() {
		if a.Owner == o {
			e.a.unregisterEndpoint(a.Addr)
			if err := e.a.dp.UnbindPod(a.Addr); err != nil {
				return ipam.Allocation{}, false, err
			}
		}
		if a.Owner == o && a.Extra["hostIf"] != "" {
			if err := e.a.dp.DetachPod(a.Extra["hostIf"]); err != nil {
				e.a.log.Warn("detach pod programs", "hostIf", a.Extra["hostIf"], "error", err)
			}
		}
	}
	a, found, err := al.Release(o)
	if found && err == nil {
		e.a.ctFlush.add(a.Addr)
	}
	return a, found, err
}

// restorePods brings the pods this node already runs (IPAM's allocations)
// up to this agent's datapath at start: each one's address bound to its
// interface and its programs upgraded to this version (an older agent's may
// predate a check, such as source validation). A binding is removed when
// its interface is gone, or when IPAM holds its address for another
// interface (a pod whose DEL never came, its interface index reused), so no
// interface can send from an address that is not its pod's. Bindings of
// addresses IPAM does not know on live interfaces (`kpath dp attach` by
// hand) stay.
func (e *endpoints) restorePods() {
	al, err := e.allocator()
	if err != nil {
		e.a.log.Warn("no IPAM yet: existing pods keep their programs until their next CNI call", "error", err)
		return
	}
	allocated := map[netip.Addr]int{} // address -> its interface's index; 0: gone
	for _, a := range al.Allocations() {
		hostIf := a.Extra["hostIf"]
		if hostIf == "" {
			continue
		}
		allocated[a.Addr] = 0
		l, err := netlink.LinkByName(hostIf)
		if err != nil {
			continue // the pod's veth is gone; CNI DEL or GC releases it
		}
		if err := e.a.dp.AttachPod(hostIf, a.Addr); err != nil {
			e.a.log.Error("restore pod programs", "hostIf", hostIf, "addr", a.Addr, "error", err)
			continue
		}
		allocated[a.Addr] = l.Attrs().Index
	}
	bound, err := e.a.dp.LocalPods()
	if err != nil {
		e.a.log.Error("read local pod bindings", "error", err)
		return
	}
	stale := 0
	for addr, ifindex := range bound {
		want, known := allocated[addr]
		if _, err := netlink.LinkByIndex(ifindex); err == nil && (!known || want == ifindex) {
			continue
		}
		stale++
		if err := e.a.dp.UnbindPod(addr); err != nil {
			e.a.log.Error("remove a stale pod binding", "addr", addr, "error", err)
		}
	}
	e.a.log.Info("pods restored", "pods", len(allocated), "staleBindings", stale)
}

// bound reports whether addr is bound to the interface hostIf.
func (e *endpoints) bound(hostIf string, addr netip.Addr) bool {
	l, err := netlink.LinkByName(hostIf)
	if err != nil || !addr.IsValid() {
		return false
	}
	pods, err := e.a.dp.LocalPods()
	return err == nil && pods[addr] == l.Attrs().Index
}

// podOfInterface names the pod behind a host-side interface (from IPAM's
// allocations), for flows whose source address cannot be trusted.
func (e *endpoints) podOfInterface(ifindex int) (model.PodKey, netip.Addr, bool) {
	l, err := netlink.LinkByIndex(ifindex)
	if err != nil {
		return model.PodKey{}, netip.Addr{}, false
	}
	al, err := e.allocator()
	if err != nil {
		return model.PodKey{}, netip.Addr{}, false
	}
	for _, a := range al.Allocations() {
		if a.Extra["hostIf"] == l.Attrs().Name {
			k, _ := parsePodKey(a.Extra[podExtraKey])
			return k, a.Addr, true
		}
	}
	return model.PodKey{}, netip.Addr{}, false
}

func decode(w http.ResponseWriter, r *http.Request, v any) bool {
	if err := json.NewDecoder(r.Body).Decode(v); err != nil {
		apiError(w, http.StatusBadRequest, fmt.Errorf("bad request: %w", err))
		return false
	}
	return true
}

func apiError(w http.ResponseWriter, code int, err error) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(cniapi.Error{Error: err.Error()})
}
