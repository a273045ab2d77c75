package k8s

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/tools/cache"
)

// pagingServer serves a list of pods as the API server pages one: Limit
// objects a page, a continue token naming the next, every page at the
// version of the first, and (once, when expire is set) 410 Expired on a
// continue, as after a compaction.
type pagingServer struct {
	pods    int
	expire  bool
	mu      sync.Mutex
	calls   []metav1.ListOptions
	seen    func() int // models converted so far
	behind  []string   // pages asked for before the previous one was converted
	fullOne bool       // a request without a limit
}

func (s *pagingServer) list(_ context.Context, o metav1.ListOptions) (runtime.Object, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.calls = append(s.calls, o)
	if o.Limit == 0 {
		s.fullOne = true
		o.Limit = int64(s.pods)
	}
	start := 0
	if o.Continue != "" {
		if s.expire {
			s.expire = false
			return nil, apierrors.NewResourceExpired("the continue token is too old")
		}
		start, _ = strconv.Atoi(o.Continue)
	}
	if got := s.seen(); got != start {
		s.behind = append(s.behind, fmt.Sprintf("page at %d asked for with %d converted", start, got))
	}
	l := &corev1.PodList{ListMeta: metav1.ListMeta{ResourceVersion: "42"}}
	end := min(start+int(o.Limit), s.pods)
	for i := start; i < end; i++ {
		l.Items = append(l.Items, corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: fmt.Sprintf("p%05d", i)},
			Status: corev1.PodStatus{PodIPs: []corev1.PodIP{{IP: fmt.Sprintf("10.%d.%d.%d", i>>16, i>>8&255, i&255)}}}})
	}
	if end < s.pods {
		l.Continue = strconv.Itoa(end)
		left := int64(s.pods - end)
		l.RemainingItemCount = &left
	}
	return l, nil
}

// A reflector falling back to a list reads it in pages at the latest
// version and converts each page before it asks for the next; a continue
// that expired starts the list again; the store gets every object once.
func TestPagedListThroughAReflector(t *testing.T) {
	for _, expire := range []bool{false, true} {
		t.Run(fmt.Sprintf("expire=%v", expire), func(t *testing.T) {
			const pods = 3*listPageSize + 17
			var mu sync.Mutex
			converted, got := 0, map[string]string{}
			st := newModelStore("pod", nil, func(obj any) any {
				mu.Lock()
				converted++
				mu.Unlock()
				return obj.(*corev1.Pod).Status.PodIPs[0].IP
			}, func(k objectKey, ip any) {
				mu.Lock()
				got[k.name] = ip.(string)
				mu.Unlock()
			}, func(string, string) {})
			srv := &pagingServer{pods: pods, expire: expire, seen: func() int {
				mu.Lock()
				defer mu.Unlock()
				return converted
			}}
			lw := &cache.ListWatch{
				ListWithContextFunc: srv.list,
				WatchFuncWithContext: func(context.Context, metav1.ListOptions) (watch.Interface, error) {
					return watch.NewFake(), nil
				},
			}
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			// A fake clientset does not stream lists: the reflector lists.
			go runReflector(ctx, fake.NewClientset(), lw, &corev1.Pod{}, st)
			deadline := time.Now().Add(10 * time.Second)
			for !st.hasSynced() {
				if time.Now().After(deadline) {
					t.Fatal("the store never synced")
				}
				time.Sleep(10 * time.Millisecond)
			}
			cancel()
			srv.mu.Lock()
			defer srv.mu.Unlock()
			mu.Lock()
			defer mu.Unlock()
			if len(got) != pods || got["p01500"] != "10.0.5.220" {
				t.Errorf("the store has %d pods (p01500: %q), want %d", len(got), got["p01500"], pods)
			}
			pages := 4
			if expire {
				pages += 2 // the first page, then the expired continue, read again
			}
			if len(srv.calls) != pages {
				t.Errorf("%d requests, want %d: %+v", len(srv.calls), pages, srv.calls)
			}
			for i, o := range srv.calls {
				if o.Limit != listPageSize || o.ResourceVersion != "" || o.ResourceVersionMatch != "" {
					t.Errorf("request %d: limit %d, resourceVersion %q (match %q); want %d at the latest", i, o.Limit, o.ResourceVersion, o.ResourceVersionMatch, listPageSize)
				}
			}
			// After an expired continue, the list starts over: what was
			// converted before it is converted again.
			if len(srv.behind) != 0 && !expire {
				t.Errorf("pages asked for before the one before was converted: %v", srv.behind)
			}
			if srv.fullOne {
				t.Error("a request without a limit")
			}
		})
	}
}

// What the API server refuses reaches the reflector as it came.
func TestPagedListErrors(t *testing.T) {
	calls := 0
	expired := func(context.Context, metav1.ListOptions) (runtime.Object, error) {
		calls++
		return nil, apierrors.NewResourceExpired("too old")
	}
	ident := func(obj any) (any, error) { return obj, nil }
	if _, err := pagedList(expired, ident)(context.Background(), metav1.ListOptions{}); !apierrors.IsResourceExpired(err) || calls != listRestarts+1 {
		t.Errorf("after %d requests: %v, want Expired after %d", calls, err, listRestarts+1)
	}
	forbidden := func(context.Context, metav1.ListOptions) (runtime.Object, error) {
		return nil, apierrors.NewForbidden(corev1.Resource("pods"), "", fmt.Errorf("no"))
	}
	if _, err := pagedList(forbidden, ident)(context.Background(), metav1.ListOptions{}); !apierrors.IsForbidden(err) {
		t.Errorf("forbidden: %v", err)
	}
	notAList := func(context.Context, metav1.ListOptions) (runtime.Object, error) { return &corev1.Pod{}, nil }
	if _, err := pagedList(notAList, ident)(context.Background(), metav1.ListOptions{}); err == nil {
		t.Error("a page that is not a list accepted")
	}
}
