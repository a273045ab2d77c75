package k8s

import (
	"context"
	"fmt"
	"sync/atomic"
	"unique"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"

	"github.com/kpath/kpath/internal/model"
)

// podStore is the Pod reflector's store, in place of an informer's: it
// keeps no Pod. Each one is converted to the model as it arrives and
// handed to the policy sink, which holds the only copy; podStore keeps the
// keys alone, to tell after a relist which pods went away. An informer
// would keep every pod (or a stand-in) a second time under a string key,
// which at 100k pods was a third of the agent's live heap, for nothing the
// agent reads. Pods are the one kind big enough for that to matter.
type podStore struct {
	sink    PolicySink
	metrics *EventMetrics

	keys   map[model.PodKey]struct{} // the reflector calls from one goroutine
	synced atomic.Bool
}

var _ cache.ReflectorStore = (*podStore)(nil)

func newPodStore(sink PolicySink, m *EventMetrics) *podStore {
	return &podStore{sink: sink, metrics: m, keys: map[model.PodKey]struct{}{}}
}

// runPodReflector lists and watches every pod into s until ctx ends.
func runPodReflector(ctx context.Context, client kubernetes.Interface, s *podStore) {
	pods := client.CoreV1().Pods(metav1.NamespaceAll)
	lw := &cache.ListWatch{
		ListWithContextFunc: func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) { return pods.List(ctx, o) },
		WatchFuncWithContext: func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			return pods.Watch(ctx, o)
		},
	}
	r := cache.NewReflectorWithOptions(cache.ToListWatcherWithWatchListSemantics(lw, client), &corev1.Pod{}, s,
		cache.ReflectorOptions{Name: "kpath pods", TypeDescription: "*v1.Pod"})
	r.RunWithContext(ctx)
}

func (s *podStore) upsert(obj any) error {
	p, ok := obj.(*corev1.Pod)
	if !ok {
		return fmt.Errorf("pod store: got %T", obj)
	}
	s.metrics.observe("pod", "upsert", func() {
		m := Pod(p)
		// Thousands of pods share a few namespaces and nodes: one string
		// each, not one per pod.
		m.Key.Namespace, m.NodeName = unique.Make(m.Key.Namespace).Value(), unique.Make(m.NodeName).Value()
		s.keys[m.Key] = struct{}{}
		s.sink.SetPod(m.Key, m)
	})
	return nil
}

func (s *podStore) delete(k model.PodKey) {
	s.metrics.observe("pod", "delete", func() {
		delete(s.keys, k)
		s.sink.SetPod(k, nil)
	})
}

// Add is a pod created (or listed).
func (s *podStore) Add(obj any) error { return s.upsert(obj) }

// Update is a pod changed.
func (s *podStore) Update(obj any) error { return s.upsert(obj) }

// Delete is a pod deleted.
func (s *podStore) Delete(obj any) error {
	if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = t.Obj
	}
	m, ok := obj.(metav1.Object)
	if !ok {
		return fmt.Errorf("pod store: delete of %T", obj)
	}
	s.delete(model.PodKey{Namespace: m.GetNamespace(), Name: m.GetName()})
	return nil
}

// Replace is a (re)list: every listed pod is upserted and every pod not
// listed deleted.
func (s *podStore) Replace(list []any, _ string) error {
	listed := make(map[model.PodKey]struct{}, len(list))
	for _, obj := range list {
		if m, ok := obj.(metav1.Object); ok {
			listed[model.PodKey{Namespace: m.GetNamespace(), Name: m.GetName()}] = struct{}{}
		}
		if err := s.upsert(obj); err != nil {
			return err
		}
	}
	var gone []model.PodKey
	for k := range s.keys {
		if _, ok := listed[k]; !ok {
			gone = append(gone, k)
		}
	}
	for _, k := range gone {
		s.delete(k)
	}
	s.synced.Store(true)
	return nil
}

// Resync is a no-op: there is no queue to replay.
func (s *podStore) Resync() error { return nil }

// hasSynced reports whether the first list has been stored.
func (s *podStore) hasSynced() bool { return s.synced.Load() }
