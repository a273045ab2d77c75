package k8s

import (
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/cache"
)

// The store as a reflector drives it: a list, watch events, and a relist
// after which the objects not listed are gone (an informer's Replace),
// with nothing kept but keys.
func TestModelStoreFollowsListsAndWatches(t *testing.T) {
	pod := func(name, ip string) *corev1.Pod {
		return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: name},
			Status: corev1.PodStatus{PodIPs: []corev1.PodIP{{IP: ip}}}}
	}
	got := map[string]string{} // name -> IP
	st := newModelStore("pod", nil, func(obj any) any { return obj.(*corev1.Pod).Status.PodIPs[0].IP }, func(k objectKey, ip any) {
		got[k.name] = ip.(string)
	}, func(ns, name string) {
		if ns != "ns" {
			t.Errorf("delete of %s/%s", ns, name)
		}
		delete(got, name)
	})
	if st.hasSynced() {
		t.Fatal("synced before the first list")
	}
	if err := st.Replace([]any{pod("a", "10.0.0.1"), pod("b", "10.0.0.2")}, "1"); err != nil {
		t.Fatal(err)
	}
	if !st.hasSynced() || len(got) != 2 {
		t.Fatalf("after the list: synced %v, objects %v", st.hasSynced(), got)
	}
	_ = st.Add(pod("c", "10.0.0.3"))
	_ = st.Update(pod("a", "10.0.0.9"))
	_ = st.Delete(cache.DeletedFinalStateUnknown{Key: "ns/b", Obj: pod("b", "10.0.0.2")})
	if got["a"] != "10.0.0.9" || got["b"] != "" || got["c"] != "10.0.0.3" {
		t.Errorf("after the watch events: %v", got)
	}
	// The relist misses c (deleted while the watch was down) and brings d.
	if err := st.Replace([]any{pod("a", "10.0.0.9"), pod("d", "10.0.0.4")}, "9"); err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got["a"] == "" || got["d"] == "" {
		t.Errorf("after the relist: %v, want a and d", got)
	}
	if len(st.keys) != 2 {
		t.Errorf("store keeps %d keys, want 2", len(st.keys))
	}
	if err := st.Add("not an object"); err == nil {
		t.Error("a non-object accepted")
	}

	// A streamed list's objects are converted as they arrive; the store
	// takes them converted (and raw ones from the watch that follows).
	tr := st.Transformer()
	conv, err := tr(pod("e", "10.0.0.5"))
	if err != nil {
		t.Fatal(err)
	}
	if mo, ok := conv.(*modelObject); !ok || mo.key != (objectKey{"ns", "e"}) || mo.model != "10.0.0.5" {
		t.Fatalf("transformed to %#v", conv)
	}
	if again, _ := tr(conv); again != conv {
		t.Error("a converted object converted again")
	}
	if key, err := cache.DeletionHandlingMetaNamespaceKeyFunc(conv); err != nil || key != "ns/e" {
		t.Errorf("a reflector's temporary store keys it %q, %v", key, err)
	}
	if err := st.Replace([]any{conv}, "10"); err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got["e"] != "10.0.0.5" {
		t.Errorf("after a streamed list: %v", got)
	}
}
