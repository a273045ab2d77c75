package k8s

import (
	"context"
	"fmt"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/tools/cache"
)

// listPageSize is the number of objects asked for in a page of a list
// (client-go's pager asks for as many).
const listPageSize = 500

// listRestarts is how many times a paged list starts again from its first
// page when the API server has compacted the version it was read at
// (410 Expired on a continue) before giving the error to the reflector,
// which backs off and lists again.
const listRestarts = 2

// pagedList wraps list, for a reflector that falls back to a list (the API
// server does not stream, or a relist after a watch failed): it reads the
// list in pages and converts each page's objects with transform before it
// asks for the next. A relist of 100k pods then holds one page of decoded
// objects and the models of the pages before it, where client-go's own
// list holds the whole response (378 MB of protobuf at E2's size) and every
// decoded Pod at once.
//
// Each list is read at the latest version (resourceVersion ""), whatever
// the reflector asks: the API server pages that read (from etcd, or from
// its cache where the cache can serve it consistently), where it serves
// "0" whole from its watch cache whatever the limit; and the latest is at
// least as fresh as any version the reflector could have named.
func pagedList(list cache.ListWithContextFunc, transform cache.TransformFunc) cache.ListWithContextFunc {
	return func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
		for restart := 0; ; restart++ {
			l, err := readPages(ctx, list, o, transform)
			if err != nil && apierrors.IsResourceExpired(err) && restart < listRestarts {
				continue
			}
			return l, err
		}
	}
}

func readPages(ctx context.Context, list cache.ListWithContextFunc, o metav1.ListOptions, transform cache.TransformFunc) (*modelList, error) {
	o.ResourceVersion, o.ResourceVersionMatch = "", ""
	o.Limit, o.Continue = listPageSize, ""
	out := &modelList{}
	for page := 0; ; page++ {
		l, err := list(ctx, o)
		if err != nil {
			return nil, err
		}
		lm, err := meta.ListAccessor(l)
		if err != nil {
			return nil, fmt.Errorf("page %d of a list: %w", page, err)
		}
		if page == 0 {
			// Every page is read at the first one's version, and the first
			// says how many objects follow it.
			out.ResourceVersion = lm.GetResourceVersion()
			n := int64(meta.LenList(l))
			if r := lm.GetRemainingItemCount(); r != nil && *r > 0 {
				n += min(*r, maxPrealloc)
			}
			out.Items = make([]runtime.Object, 0, n)
		}
		err = meta.EachListItem(l, func(obj runtime.Object) error {
			t, err := transform(obj)
			if err != nil {
				return err
			}
			out.Items = append(out.Items, t.(runtime.Object))
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("page %d of a list: %w", page, err)
		}
		if o.Continue = lm.GetContinue(); o.Continue == "" {
			return out, nil
		}
	}
}

// maxPrealloc bounds the room made ahead for a list's objects from what
// its first page says is left.
const maxPrealloc = 1 << 20

// modelList is a list of converted objects (modelObjects), handed to the
// reflector as one list with no continuation.
type modelList struct {
	metav1.ListMeta
	Items []runtime.Object
}

// GetObjectKind and DeepCopyObject make it a runtime.Object; the reflector
// only reads it, and its items are never written after conversion.
func (l *modelList) GetObjectKind() schema.ObjectKind { return schema.EmptyObjectKind }

func (l *modelList) DeepCopyObject() runtime.Object {
	c := *l
	c.Items = append([]runtime.Object(nil), l.Items...)
	return &c
}
