package k8s

import (
	"maps"
	"reflect"
	"slices"
	"sync"
	"time"

	"github.com/kpath/kpath/internal/model"
	"github.com/kpath/kpath/internal/servicemap"
)

// Cache holds the model form of the Services, EndpointSlices and Nodes the
// informers deliver, and tracks which services changed since the consumer
// last looked, with the time of the first unconsumed change (to measure
// event-to-datapath latency). Many changes to one service between two looks
// coalesce into one.
type Cache struct {
	mu       sync.Mutex
	services map[model.ServiceKey]*model.ServiceSpec
	// slices are each service's EndpointSlices (a few: a slice, not a map
	// apiece, at 10k services).
	slices map[model.ServiceKey][]*model.EndpointSlice
	nodes  map[string]*model.Node
	// hostPorts are the Services serving each local pod's host ports.
	hostPorts map[model.PodKey][]model.ServiceKey
	// healthChecked are the services with a health check node port
	// (externalTrafficPolicy Local): few, and looked at every second.
	healthChecked map[model.ServiceKey]bool
	dirty         map[model.ServiceKey]time.Time
	allDirty      time.Time // a node change: every service must be recomputed
	nodeGen       uint64    // bumped on every node change that matters to routing
	notify        chan struct{}
	now           func() time.Time
}

// NewCache returns an empty cache.
func NewCache() *Cache {
	return &Cache{
		services:      map[model.ServiceKey]*model.ServiceSpec{},
		slices:        map[model.ServiceKey][]*model.EndpointSlice{},
		nodes:         map[string]*model.Node{},
		hostPorts:     map[model.PodKey][]model.ServiceKey{},
		dirty:         map[model.ServiceKey]time.Time{},
		healthChecked: map[model.ServiceKey]bool{},
		notify:        make(chan struct{}, 1),
		now:           time.Now,
	}
}

// Changed is signalled (without blocking, coalesced) after every change.
func (c *Cache) Changed() <-chan struct{} { return c.notify }

func (c *Cache) markLocked(k model.ServiceKey) {
	if _, ok := c.dirty[k]; !ok {
		c.dirty[k] = c.now()
	}
	select {
	case c.notify <- struct{}{}:
	default:
	}
}

// MarkDirty asks for a service to be recomputed (a retry after an error).
func (c *Cache) MarkDirty(k model.ServiceKey) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.markLocked(k)
}

// SetService stores or (with spec nil) deletes a service.
func (c *Cache) SetService(k model.ServiceKey, spec *model.ServiceSpec) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if spec == nil {
		delete(c.services, k)
	} else {
		c.services[k] = spec
	}
	if spec != nil && spec.ExternalLocal && spec.HealthCheckNodePort != 0 {
		c.healthChecked[k] = true
	} else {
		delete(c.healthChecked, k)
	}
	c.markLocked(k)
}

// SetPodHostPorts stores the Services of a pod's host ports
// (servicemap.HostPorts), replacing the pod's earlier ones; none deletes
// them.
func (c *Cache) SetPodHostPorts(pod model.PodKey, svcs []servicemap.HostPortService) {
	c.mu.Lock()
	defer c.mu.Unlock()
	old := c.hostPorts[pod]
	keys := make([]model.ServiceKey, 0, len(svcs))
	for _, s := range svcs {
		k := s.Spec.Key
		keys = append(keys, k)
		if prev := c.services[k]; prev != nil && len(c.slices[k]) == 1 && reflect.DeepEqual(prev, s.Spec) && reflect.DeepEqual(c.slices[k][0], s.Slice) {
			continue // a pod's status changes often; its host ports seldom
		}
		c.services[k] = s.Spec
		c.slices[k] = []*model.EndpointSlice{s.Slice}
		c.markLocked(k)
	}
	for _, k := range old {
		if !slices.Contains(keys, k) {
			delete(c.services, k)
			delete(c.slices, k)
			c.markLocked(k)
		}
	}
	if len(keys) == 0 {
		delete(c.hostPorts, pod)
	} else {
		c.hostPorts[pod] = keys
	}
}

// HealthCheckedServices lists the services with a health check node port.
func (c *Cache) HealthCheckedServices() []model.ServiceKey {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Collect(maps.Keys(c.healthChecked))
}

// SetEndpointSlice stores or (with s nil) deletes a slice of service k.
func (c *Cache) SetEndpointSlice(k model.ServiceKey, name string, s *model.EndpointSlice) {
	c.mu.Lock()
	defer c.mu.Unlock()
	list := c.slices[k]
	i := slices.IndexFunc(list, func(s *model.EndpointSlice) bool { return s.Name == name })
	switch {
	case s == nil && i >= 0:
		list = slices.Delete(list, i, i+1)
	case s != nil && i >= 0:
		list[i] = s
	case s != nil:
		list = append(list, s)
	}
	if len(list) == 0 {
		delete(c.slices, k)
	} else {
		c.slices[k] = list
	}
	c.markLocked(k)
}

// SetNode stores or (with n nil) deletes a node. Only a change of the
// addresses of a node (NodePort frontends) or of its zone (topology
// hints) matters to services.
func (c *Cache) SetNode(name string, n *model.Node) {
	c.mu.Lock()
	defer c.mu.Unlock()
	old := c.nodes[name]
	if n == nil {
		delete(c.nodes, name)
	} else {
		c.nodes[name] = n
	}
	if old == nil || n == nil || old.PodCIDR != n.PodCIDR || !slices.Equal(old.Addrs, n.Addrs) {
		c.nodeGen++
	}
	if old == nil || n == nil || !slices.Equal(old.Addrs, n.Addrs) || old.Zone != n.Zone {
		if c.allDirty.IsZero() {
			c.allDirty = c.now()
		}
		select {
		case c.notify <- struct{}{}:
		default:
		}
	}
}

// TakeDirty returns the changed services with the time of their first
// change, and clears them. all is set when every service must be recomputed.
func (c *Cache) TakeDirty() (dirty map[model.ServiceKey]time.Time, all time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	dirty, all = c.dirty, c.allDirty
	c.dirty, c.allDirty = map[model.ServiceKey]time.Time{}, time.Time{}
	return dirty, all
}

// Pending is how many services wait to be recomputed; a pending recompute
// of every service counts as one more.
func (c *Cache) Pending() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := len(c.dirty)
	if !c.allDirty.IsZero() {
		n++
	}
	return n
}

// Service returns a service and its slices (nil spec: no such service).
func (c *Cache) Service(k model.ServiceKey) (*model.ServiceSpec, []*model.EndpointSlice) {
	c.mu.Lock()
	defer c.mu.Unlock()
	// A copy: the cache changes its own as slices come and go.
	return c.services[k], slices.Clone(c.slices[k])
}

// ServiceKeys lists every known service.
func (c *Cache) ServiceKeys() []model.ServiceKey {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Collect(maps.Keys(c.services))
}

// Node returns a node, or nil.
func (c *Cache) Node(name string) *model.Node {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.nodes[name]
}

// Nodes lists every node, with a generation number that changes whenever a
// node's addresses or pod CIDR do (or a node comes or goes).
func (c *Cache) Nodes() ([]*model.Node, uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]*model.Node, 0, len(c.nodes))
	for _, n := range c.nodes {
		out = append(out, n)
	}
	return out, c.nodeGen
}

// Counts reports how many objects the cache holds.
func (c *Cache) Counts() (services, slices, nodes int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, m := range c.slices {
		slices += len(m)
	}
	return len(c.services), slices, len(c.nodes)
}
