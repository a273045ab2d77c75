package k8s

import (
	"context"
	"fmt"
	"time"
	"unique"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/tools/cache"

	"github.com/kpath/kpath/internal/model"
	"github.com/kpath/kpath/internal/servicemap"
)

// WatchOptions tune the watches.
type WatchOptions struct {
	// ProxyName: with it empty, services labelled with any
	// service.kubernetes.io/service-proxy-name are filtered out by the API
	// server, as kube-proxy does (ServiceSelector).
	ProxyName string
	// NodesOnly watches Nodes alone: with kube-proxy serving services, the
	// agent needs neither Services nor EndpointSlices, and holding them
	// would cost memory and CPU on every change for nothing.
	NodesOnly bool
	// Policy, when set, receives Pods (of every namespace and node),
	// Namespaces and NetworkPolicies; nil: these kinds are not watched.
	Policy PolicySink
	// Metrics, when set, count the events and their handlers' CPU.
	Metrics *EventMetrics
	// HostPortNode, when set, serves the host ports of this node's pods
	// as Services in the cache (servicemap.HostPorts), from the Pod watch
	// of Policy or, without it, from a watch of this node's Pods alone.
	HostPortNode string
}

// Watcher runs the reflectors that fill a Cache (and a PolicySink). Each
// kind is listed and watched by a client-go Reflector into a modelStore,
// which converts objects as they arrive and keeps none of them.
type Watcher struct {
	client  Client
	metrics *EventMetrics
	runs    []func(context.Context)
	synced  []cache.InformerSynced
}

// NewWatcher sets up the watches of Services, EndpointSlices and Nodes
// that feed c, and, with opts.Policy set, of Pods, Namespaces and
// NetworkPolicies that feed it. Call Start, then WaitForSync.
func NewWatcher(client Client, c *Cache, opts WatchOptions) (*Watcher, error) {
	w := &Watcher{client: client, metrics: opts.Metrics}
	if !opts.NodesOnly {
		w.watchServices(c, opts)
	}
	nodes := client.CoreV1().Nodes()
	w.watch("node", listWatch(nodes.List, nodes.Watch, nil), &corev1.Node{}, func(obj any) any { return Node(obj.(*corev1.Node)) }, func(k objectKey, m any) {
		c.SetNode(k.name, m.(*model.Node))
	}, func(_, name string) {
		c.SetNode(name, nil)
	})
	hostPorts := func(p *model.Pod) {
		if opts.HostPortNode != "" && p.NodeName == opts.HostPortNode {
			c.SetPodHostPorts(p.Key, servicemap.HostPorts(p))
		}
	}
	noHostPorts := func(k model.PodKey) {
		if opts.HostPortNode != "" {
			c.SetPodHostPorts(k, nil)
		}
	}
	switch {
	case opts.Policy != nil:
		w.watchPolicy(opts.Policy, hostPorts, noHostPorts)
	case opts.HostPortNode != "":
		pods := client.CoreV1().Pods(metav1.NamespaceAll)
		node := fields.OneTermEqualSelector("spec.nodeName", opts.HostPortNode).String()
		w.watch("pod", listWatch(pods.List, pods.Watch, func(o *metav1.ListOptions) { o.FieldSelector = node }), &corev1.Pod{},
			func(obj any) any { return Pod(obj.(*corev1.Pod)) },
			func(_ objectKey, m any) { hostPorts(m.(*model.Pod)) },
			func(ns, name string) { noHostPorts(model.PodKey{Namespace: ns, Name: name}) })
	}
	return w, nil
}

// watch adds a reflector of one kind: apply gets the model (convert's) of
// each object created, changed or listed, del each one deleted.
func (w *Watcher) watch(kind string, lw *cache.ListWatch, example runtime.Object, convert func(obj any) any, apply func(k objectKey, model any), del func(ns, name string)) {
	s := newModelStore(kind, w.metrics, convert, apply, del)
	w.runs = append(w.runs, func(ctx context.Context) { runReflector(ctx, w.client, lw, example, s) })
	w.synced = append(w.synced, s.hasSynced)
}

// watchPolicy adds the Pod, Namespace and NetworkPolicy watches that feed
// sink; every pod also goes to hostPorts, and every deleted one to
// noHostPorts.
func (w *Watcher) watchPolicy(sink PolicySink, hostPorts func(*model.Pod), noHostPorts func(model.PodKey)) {
	pods := w.client.CoreV1().Pods(metav1.NamespaceAll)
	w.watch("pod", listWatch(pods.List, pods.Watch, nil), &corev1.Pod{}, func(obj any) any {
		m := Pod(obj.(*corev1.Pod))
		// 100k pods share a few thousand namespaces and nodes: one string
		// each, not one per pod.
		m.Key.Namespace, m.NodeName = unique.Make(m.Key.Namespace).Value(), unique.Make(m.NodeName).Value()
		return m
	}, func(_ objectKey, m any) {
		p := m.(*model.Pod)
		sink.SetPod(p.Key, p)
		hostPorts(p)
	}, func(ns, name string) {
		sink.SetPod(model.PodKey{Namespace: ns, Name: name}, nil)
		noHostPorts(model.PodKey{Namespace: ns, Name: name})
	})

	namespaces := w.client.CoreV1().Namespaces()
	w.watch("namespace", listWatch(namespaces.List, namespaces.Watch, nil), &corev1.Namespace{}, func(obj any) any {
		return Namespace(obj.(*corev1.Namespace))
	}, func(k objectKey, m any) {
		sink.SetNamespace(k.name, m.(*model.Namespace))
	}, func(_, name string) {
		sink.SetNamespace(name, nil)
	})

	policies := w.client.NetworkingV1().NetworkPolicies(metav1.NamespaceAll)
	w.watch("networkpolicy", listWatch(policies.List, policies.Watch, nil), &networkingv1.NetworkPolicy{}, func(obj any) any {
		return NetworkPolicy(obj.(*networkingv1.NetworkPolicy))
	}, func(k objectKey, m any) {
		sink.SetPolicy(model.PolicyKey{Namespace: k.ns, Name: k.name}, m.(*model.NetworkPolicy))
	}, func(ns, name string) {
		sink.SetPolicy(model.PolicyKey{Namespace: ns, Name: name}, nil)
	})
}

// watchServices adds the Service watch (filtered by the proxy-name label
// on the server) and the EndpointSlice watch.
func (w *Watcher) watchServices(c *Cache, opts WatchOptions) {
	svcSelector := ServiceSelector(opts.ProxyName)
	services := w.client.CoreV1().Services(metav1.NamespaceAll)
	w.watch("service", listWatch(services.List, services.Watch, func(o *metav1.ListOptions) { o.LabelSelector = svcSelector }), &corev1.Service{},
		func(obj any) any { return ServiceSpec(obj.(*corev1.Service)) },
		func(k objectKey, m any) {
			c.SetService(model.ServiceKey{Namespace: k.ns, Name: k.name}, m.(*model.ServiceSpec))
		}, func(ns, name string) {
			c.SetService(model.ServiceKey{Namespace: ns, Name: name}, nil)
		})

	// The service a slice belonged to, so a slice whose label changes or
	// that is deleted leaves the right service.
	owner := map[objectKey]model.ServiceKey{}
	slices := w.client.DiscoveryV1().EndpointSlices(metav1.NamespaceAll)
	w.watch("endpointslice", listWatch(slices.List, slices.Watch, nil), &discoveryv1.EndpointSlice{}, func(obj any) any {
		return EndpointSlice(obj.(*discoveryv1.EndpointSlice))
	}, func(id objectKey, mo any) {
		m := mo.(*model.EndpointSlice) // nil: not a slice kpath serves
		if old, ok := owner[id]; ok && (m == nil || old != m.Service) {
			c.SetEndpointSlice(old, id.name, nil)
			delete(owner, id)
		}
		if m != nil {
			owner[id] = m.Service
			c.SetEndpointSlice(m.Service, id.name, m)
		}
	}, func(ns, name string) {
		id := objectKey{ns, name}
		if old, ok := owner[id]; ok {
			c.SetEndpointSlice(old, name, nil)
			delete(owner, id)
		}
	})
}

// Start runs the reflectors until ctx ends.
func (w *Watcher) Start(ctx context.Context) {
	for _, run := range w.runs {
		go run(ctx)
	}
}

// WaitForSync blocks until every kind has been listed once.
func (w *Watcher) WaitForSync(ctx context.Context, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if !cache.WaitForCacheSync(ctx.Done(), w.synced...) {
		return fmt.Errorf("the API watches did not sync within %s: is the API server reachable?", timeout)
	}
	return nil
}

// ServiceSelector is the label selector of the Services a proxy named
// proxyName serves, kube-proxy's: those labelled for that proxy (for none:
// those not labelled service.kubernetes.io/service-proxy-name at all), and
// never one labelled service.kubernetes.io/headless, which asks every
// proxy to leave it alone.
func ServiceSelector(proxyName string) string {
	if proxyName != "" {
		return LabelServiceProxyName + "=" + proxyName + ",!" + LabelHeadless
	}
	return "!" + LabelServiceProxyName + ",!" + LabelHeadless
}
