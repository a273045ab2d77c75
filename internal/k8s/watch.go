package k8s

import (
	"context"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"

	"github.com/kpath/kpath/internal/model"
)

// WatchOptions tune the informers.
type WatchOptions struct {
	// ProxyName: with it empty, services labelled with any
	// service.kubernetes.io/service-proxy-name are filtered out by the API
	// server, as kube-proxy does.
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
}

// Watcher runs the informers that fill a Cache.
type Watcher struct {
	factory informers.SharedInformerFactory
	extra   []informers.SharedInformerFactory // with other list options
	synced  []cache.InformerSynced
	metrics *EventMetrics
	client  kubernetes.Interface
	runners []func(context.Context) // started by Start, besides the informers
}

// NewWatcher sets up informers for Services, EndpointSlices and Nodes that
// feed c, and, with opts.Policy set, for Pods, Namespaces and
// NetworkPolicies that feed it. Call Start, then WaitForSync.
func NewWatcher(client kubernetes.Interface, c *Cache, opts WatchOptions) (*Watcher, error) {
	f := informers.NewSharedInformerFactoryWithOptions(client, 0, informers.WithTransform(slimTransform))
	w := &Watcher{factory: f, metrics: opts.Metrics, client: client}

	if !opts.NodesOnly {
		if err := w.watchServices(client, c, opts); err != nil {
			return nil, err
		}
	}
	nodes := f.Core().V1().Nodes().Informer()
	if _, err := nodes.AddEventHandler(w.handler("node", func(obj any) {
		n := obj.(*corev1.Node)
		c.SetNode(n.Name, Node(n))
	}, func(_, name string) {
		c.SetNode(name, nil)
	})); err != nil {
		return nil, err
	}
	w.synced = append(w.synced, nodes.HasSynced)
	if opts.Policy != nil {
		if err := w.watchPolicy(opts.Policy); err != nil {
			return nil, err
		}
	}
	return w, nil
}

// watchPolicy adds the Pod reflector and the Namespace and NetworkPolicy
// informers that feed sink.
func (w *Watcher) watchPolicy(sink PolicySink) error {
	pods := newPodStore(sink, w.metrics)
	w.runners = append(w.runners, func(ctx context.Context) { runPodReflector(ctx, w.client, pods) })

	namespaces := w.factory.Core().V1().Namespaces().Informer()
	if _, err := namespaces.AddEventHandler(w.handler("namespace", func(obj any) {
		n := obj.(*corev1.Namespace)
		sink.SetNamespace(n.Name, Namespace(n))
	}, func(_, name string) {
		sink.SetNamespace(name, nil)
	})); err != nil {
		return fmt.Errorf("namespace informer: %w", err)
	}

	policies := w.factory.Networking().V1().NetworkPolicies().Informer()
	if _, err := policies.AddEventHandler(w.handler("networkpolicy", func(obj any) {
		np := obj.(*networkingv1.NetworkPolicy)
		sink.SetPolicy(model.PolicyKey{Namespace: np.Namespace, Name: np.Name}, NetworkPolicy(np))
	}, func(ns, name string) {
		sink.SetPolicy(model.PolicyKey{Namespace: ns, Name: name}, nil)
	})); err != nil {
		return fmt.Errorf("network policy informer: %w", err)
	}

	w.synced = append(w.synced, pods.hasSynced, namespaces.HasSynced, policies.HasSynced)
	return nil
}

// watchServices adds the Service informer (filtered by the proxy-name
// label on the server) and the EndpointSlice informer.
func (w *Watcher) watchServices(client kubernetes.Interface, c *Cache, opts WatchOptions) error {
	svcSelector := "!" + LabelServiceProxyName
	if opts.ProxyName != "" {
		svcSelector = LabelServiceProxyName + "=" + opts.ProxyName
	}
	svcInf := informers.NewSharedInformerFactoryWithOptions(client, 0, informers.WithTransform(slimTransform),
		informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.LabelSelector = svcSelector }))
	svc := svcInf.Core().V1().Services().Informer()
	w.extra = append(w.extra, svcInf)
	if _, err := svc.AddEventHandler(w.handler("service", func(obj any) {
		s := obj.(*corev1.Service)
		c.SetService(model.ServiceKey{Namespace: s.Namespace, Name: s.Name}, ServiceSpec(s))
	}, func(ns, name string) {
		c.SetService(model.ServiceKey{Namespace: ns, Name: name}, nil)
	})); err != nil {
		return err
	}

	eps := w.factory.Discovery().V1().EndpointSlices().Informer()
	// The service a slice belonged to, so a slice whose label changes or
	// that is deleted leaves the right service.
	owner := map[string]model.ServiceKey{}
	if _, err := eps.AddEventHandler(w.handler("endpointslice", func(obj any) {
		s := obj.(*discoveryv1.EndpointSlice)
		id := s.Namespace + "/" + s.Name
		m := EndpointSlice(s)
		if old, ok := owner[id]; ok && (m == nil || old != m.Service) {
			c.SetEndpointSlice(old, s.Name, nil)
			delete(owner, id)
		}
		if m != nil {
			owner[id] = m.Service
			c.SetEndpointSlice(m.Service, s.Name, m)
		}
	}, func(ns, name string) {
		id := ns + "/" + name
		if old, ok := owner[id]; ok {
			c.SetEndpointSlice(old, name, nil)
			delete(owner, id)
		}
	})); err != nil {
		return err
	}

	w.synced = append(w.synced, svc.HasSynced, eps.HasSynced)
	return nil
}

// handler adapts upsert and delete callbacks of one kind to client-go's
// handler, counted in the watcher's metrics. One informer delivers its
// events in order from one goroutine, so the callbacks need no locking of
// their own.
func (w *Watcher) handler(kind string, upsert func(obj any), del func(ns, name string)) cache.ResourceEventHandler {
	up := func(obj any) { w.metrics.observe(kind, "upsert", func() { upsert(obj) }) }
	return cache.ResourceEventHandlerFuncs{
		AddFunc:    up,
		UpdateFunc: func(_, obj any) { up(obj) },
		DeleteFunc: func(obj any) {
			if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
				obj = t.Obj
			}
			if m, ok := obj.(metav1.Object); ok {
				w.metrics.observe(kind, "delete", func() { del(m.GetNamespace(), m.GetName()) })
			}
		},
	}
}

// Start runs the informers until ctx ends.
func (w *Watcher) Start(ctx context.Context) {
	w.factory.Start(ctx.Done())
	for _, f := range w.extra {
		f.Start(ctx.Done())
	}
	for _, run := range w.runners {
		go run(ctx)
	}
}

// WaitForSync blocks until every informer has listed its objects once.
func (w *Watcher) WaitForSync(ctx context.Context, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if !cache.WaitForCacheSync(ctx.Done(), w.synced...) {
		return fmt.Errorf("informers did not sync within %s: is the API server reachable?", timeout)
	}
	return nil
}
