package k8s

import (
	"context"
	"fmt"
	"sync/atomic"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/tools/cache"
)

// modelStore is a reflector's store that keeps no API object, in place of
// an informer's: each object is converted as it arrives and handed on (to
// the Cache or the policy sink, which hold kpath's models), and only the
// keys are kept, to tell after a relist which objects went away. An
// informer keeps every object a second time (slimmed or not) under a
// string key and an index entry, for listers kpath never calls: at 100k
// pods that was more than half of the agent's live heap.
//
// It is also a TransformingStore: a streamed initial list (WatchList, on
// by default since Kubernetes 1.35) is gathered by the reflector before it
// is handed over, and the transform converts each object as it arrives, so
// a restarting agent holds 100k models then, not 100k decoded Pods (1 GiB).
type modelStore struct {
	kind    string
	metrics *EventMetrics
	convert func(obj any) any // the API object to its model (may be nil)
	apply   func(k objectKey, model any)
	del     func(ns, name string)

	// keys holds every stored object's key with the number of the list
	// that last listed it (or 0), so a relist finds what it did not list
	// without a second set of 100k keys. The reflector calls from one
	// goroutine.
	keys   map[objectKey]uint32
	lists  uint32 // lists stored so far
	synced atomic.Bool
}

type objectKey struct{ ns, name string }

// modelObject is an object converted by the transform: its key and its
// model. It carries no ObjectMeta (a quarter of a KiB each, 25 MiB over a
// relist of 100k pods): the metadata a reflector's temporary store keys
// by is made when asked for (GetObjectMeta).
type modelObject struct {
	key   objectKey
	model any
}

// GetObjectMeta makes it an ObjectMetaAccessor, which meta.Accessor (and
// so client-go's key functions) reads.
func (o *modelObject) GetObjectMeta() metav1.Object {
	return &metav1.ObjectMeta{Namespace: o.key.ns, Name: o.key.name}
}

// GetObjectKind and DeepCopyObject make it a runtime.Object. The model is
// never written after conversion, so copies share it.
func (o *modelObject) GetObjectKind() schema.ObjectKind { return schema.EmptyObjectKind }

func (o *modelObject) DeepCopyObject() runtime.Object { c := *o; return &c }

var (
	_ cache.ReflectorStore    = (*modelStore)(nil)
	_ cache.TransformingStore = (*modelStore)(nil)
)

func newModelStore(kind string, m *EventMetrics, convert func(obj any) any, apply func(k objectKey, model any), del func(ns, name string)) *modelStore {
	return &modelStore{kind: kind, metrics: m, convert: convert, apply: apply, del: del, keys: map[objectKey]uint32{}}
}

// Transformer converts objects of a streamed list as they arrive.
func (s *modelStore) Transformer() cache.TransformFunc {
	return func(obj any) (any, error) {
		if _, ok := obj.(*modelObject); ok {
			return obj, nil
		}
		k, err := keyOf(obj)
		if err != nil {
			return nil, fmt.Errorf("%s store: %w", s.kind, err)
		}
		return &modelObject{key: k, model: s.convert(obj)}, nil
	}
}

func keyOf(obj any) (objectKey, error) {
	if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = t.Obj
	}
	if mo, ok := obj.(*modelObject); ok {
		return mo.key, nil
	}
	m, ok := obj.(metav1.Object)
	if !ok {
		return objectKey{}, fmt.Errorf("not an API object: %T", obj)
	}
	return objectKey{m.GetNamespace(), m.GetName()}, nil
}

// Add is an object created (or listed).
func (s *modelStore) Add(obj any) error {
	return s.upsert(obj, 0)
}

// upsert stores obj, marked as listed by list number list (0: an event).
func (s *modelStore) upsert(obj any, list uint32) error {
	k, err := keyOf(obj)
	if err != nil {
		return fmt.Errorf("%s store: %w", s.kind, err)
	}
	s.metrics.observe(s.kind, "upsert", func() {
		s.keys[k] = list
		if mo, ok := obj.(*modelObject); ok {
			s.apply(k, mo.model)
		} else {
			s.apply(k, s.convert(obj))
		}
	})
	return nil
}

// Update is an object changed.
func (s *modelStore) Update(obj any) error { return s.Add(obj) }

// Delete is an object deleted.
func (s *modelStore) Delete(obj any) error {
	k, err := keyOf(obj)
	if err != nil {
		return fmt.Errorf("%s store: %w", s.kind, err)
	}
	s.remove(k)
	return nil
}

func (s *modelStore) remove(k objectKey) {
	s.metrics.observe(s.kind, "delete", func() {
		delete(s.keys, k)
		s.del(k.ns, k.name)
	})
}

// Replace is a (re)list: every listed object is upserted and every object
// not listed deleted.
func (s *modelStore) Replace(list []any, _ string) error {
	s.lists++
	for _, obj := range list {
		if err := s.upsert(obj, s.lists); err != nil {
			return err
		}
	}
	var gone []objectKey
	for k, n := range s.keys {
		if n != s.lists {
			gone = append(gone, k)
		}
	}
	for _, k := range gone {
		s.remove(k)
	}
	s.synced.Store(true)
	return nil
}

// Resync is a no-op: there is no queue to replay.
func (s *modelStore) Resync() error { return nil }

// hasSynced reports whether the first list has been stored.
func (s *modelStore) hasSynced() bool { return s.synced.Load() }

// listWatch adapts a typed client's List and Watch to a reflector's.
func listWatch[L runtime.Object](list func(context.Context, metav1.ListOptions) (L, error),
	watchFn func(context.Context, metav1.ListOptions) (watch.Interface, error), tweak func(*metav1.ListOptions)) *cache.ListWatch {
	if tweak == nil {
		tweak = func(*metav1.ListOptions) {}
	}
	return &cache.ListWatch{
		ListWithContextFunc: func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			tweak(&o)
			return list(ctx, o)
		},
		WatchFuncWithContext: func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			tweak(&o)
			return watchFn(ctx, o)
		},
	}
}

// runReflector lists and watches lw's objects (of example's type) into s
// until ctx ends. Lists (where the API server does not stream them) are
// read in pages, each converted before the next is read (pagedList).
func runReflector(ctx context.Context, client Client, lw *cache.ListWatch, example runtime.Object, s *modelStore) {
	lw.ListWithContextFunc = pagedList(lw.ListWithContextFunc, s.Transformer())
	r := cache.NewReflectorWithOptions(cache.ToListWatcherWithWatchListSemantics(lw, client), example, s,
		cache.ReflectorOptions{Name: "kpath " + s.kind})
	r.RunWithContext(ctx)
}
