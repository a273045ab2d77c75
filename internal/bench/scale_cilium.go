package bench

import (
	"context"
	"fmt"
	"io"
	"maps"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/time/rate"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
)

// E2's cilium column: what the simulated nodes' agents and Cilium's
// operator would have written, written by the harness instead, so the
// measured cilium-agent watches what it would watch in a cluster of this
// size:
//
//   - a CiliumNode per simulated node (its agent's), with its address and
//     pod CIDR;
//   - a CiliumIdentity per label set (a namespace's deployment), with the
//     security labels an agent derives from the pod and its namespace;
//   - the CiliumEndpointSlices holding the simulated pods, as the operator
//     batches the agents' CiliumEndpoints (AKS runs with slices): up to 100
//     endpoints of one namespace each, rewritten as pods come, go and
//     change labels;
//   - the slices of the measured agent's own CiliumEndpoints (its pods), as
//     the operator folds them in: with slices on, the agent learns even its
//     own pods' addresses from them.

// Cilium's resources the harness writes.
var (
	ciliumEndpointsGVR  = schema.GroupVersionResource{Group: "cilium.io", Version: "v2", Resource: "ciliumendpoints"}
	ciliumNodesGVR      = schema.GroupVersionResource{Group: "cilium.io", Version: "v2", Resource: "ciliumnodes"}
	ciliumIdentitiesGVR = schema.GroupVersionResource{Group: "cilium.io", Version: "v2", Resource: "ciliumidentities"}
	ciliumSlicesGVR     = schema.GroupVersionResource{Group: "cilium.io", Version: "v2alpha1", Resource: "ciliumendpointslices"}
)

// ciliumClusterName is the lab's --cluster-name, part of every identity.
const ciliumClusterName = "kpath-lab"

// ciliumIdentityBase numbers the plan's identities from here, inside the
// cluster-local range (256-65535) CRD allocation uses; the measured agent
// allocates its own pods' identities, finding these by their labels.
const ciliumIdentityBase = 1000

// cesMaxEndpoints is the operator's default endpoints per slice.
const cesMaxEndpoints = 100

// ciliumPeers writes the Cilium objects of a scenario's simulated nodes
// and pods, and keeps the slices in step with the pods.
type ciliumPeers struct {
	dc       dynamic.Interface
	l        scaleLayout
	progress io.Writer // where a failed write is told, once a minute at most

	writes *rate.Limiter // the operator's rate limit on slice writes

	mu     sync.Mutex
	slices map[string]*cesState
	stop   chan struct{}
	done   chan struct{}
}

// cesState is one CiliumEndpointSlice: its endpoints by pod name, the
// object last written (nil before it exists) and whether it changed since.
type cesState struct {
	ns    string
	eps   map[string]map[string]any
	obj   *unstructured.Unstructured
	dirty bool
}

// identityID is the identity of namespace ns's deployment dep.
func (l scaleLayout) identityID(ns, dep int) int64 {
	return int64(ciliumIdentityBase + ns*l.deployments() + dep)
}

// securityLabels are the labels Cilium derives for deployment dep's pods in
// namespace ns: the pod's labels but pod-template-hash (which Cilium's
// default label filter leaves out), the namespace and its labels, the
// service account and the cluster.
func (l scaleLayout) securityLabels(ns, dep int) map[string]string {
	name := scaleNS(ns)
	m := map[string]string{
		"k8s:io.kubernetes.pod.namespace":                                name,
		"k8s:io.cilium.k8s.policy.cluster":                               ciliumClusterName,
		"k8s:io.cilium.k8s.policy.serviceaccount":                        "default",
		"k8s:io.cilium.k8s.namespace.labels.kubernetes.io/metadata.name": name,
	}
	for k, v := range scaleNSLabels(ns) {
		m["k8s:io.cilium.k8s.namespace.labels."+k] = v
	}
	for k, v := range l.labels(name, dep) {
		if k != "pod-template-hash" {
			m["k8s:"+k] = v
		}
	}
	return m
}

// startCiliumPeers writes the simulated nodes' CiliumNodes and the plan's
// identities, and starts writing slices as pods are added.
func startCiliumPeers(ctx context.Context, dc dynamic.Interface, l scaleLayout, progress io.Writer) (*ciliumPeers, error) {
	p := &ciliumPeers{dc: dc, l: l, progress: progress, writes: rate.NewLimiter(cesWriteQPS, cesWriteBurst),
		slices: map[string]*cesState{}, stop: make(chan struct{}), done: make(chan struct{})}
	err := parallel(ctx, 0, l.nodes-1, 8, func(i int) error {
		obj := &unstructured.Unstructured{Object: map[string]any{
			"apiVersion": "cilium.io/v2", "kind": "CiliumNode",
			"metadata": map[string]any{"name": scaleNodeName(i)},
			"spec": map[string]any{
				"addresses": []any{map[string]any{"type": "InternalIP", "ip": scaleNodeIP(i).String()}},
				"ipam":      map[string]any{"podCIDRs": []any{scaleNodeCIDR(i).String()}},
			},
		}}
		return retryTransient(ctx, func() error {
			_, err := dc.Resource(ciliumNodesGVR).Create(ctx, obj, metav1.CreateOptions{})
			return ignoreExists(err)
		})
	})
	if err != nil {
		return nil, fmt.Errorf("cilium nodes: %w", err)
	}
	deps := l.deployments()
	err = parallel(ctx, 0, l.namespaces()*deps, 8, func(i int) error {
		ns, dep := i/deps, i%deps
		obj := &unstructured.Unstructured{Object: map[string]any{
			"apiVersion": "cilium.io/v2", "kind": "CiliumIdentity",
			"metadata":        map[string]any{"name": strconv.FormatInt(l.identityID(ns, dep), 10)},
			"security-labels": toAny(l.securityLabels(ns, dep)),
		}}
		return retryTransient(ctx, func() error {
			_, err := dc.Resource(ciliumIdentitiesGVR).Create(ctx, obj, metav1.CreateOptions{})
			return ignoreExists(err)
		})
	})
	if err != nil {
		return nil, fmt.Errorf("cilium identities: %w", err)
	}
	go p.run(ctx)
	return p, nil
}

func toAny(m map[string]string) map[string]any {
	out := make(map[string]any, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

// upsert puts pod sp in its slice, as its agent's CiliumEndpoint.
func (p *ciliumPeers) upsert(sp scalePod) {
	p.mu.Lock()
	defer p.mu.Unlock()
	s := p.slices[sp.slice]
	if s == nil {
		s = &cesState{ns: sp.ns, eps: map[string]map[string]any{}}
		p.slices[sp.slice] = s
	}
	s.eps[sp.name] = map[string]any{
		"name": sp.name, "id": p.l.identityID(sp.nsIdx, sp.dep),
		"networking": map[string]any{
			"addressing": []any{map[string]any{"ipv4": sp.ip.String()}},
			"node":       scaleNodeIP(sp.node).String(),
		},
		"encryption":  map[string]any{},
		"named-ports": []any{map[string]any{"name": "http", "port": int64(8080), "protocol": "TCP"}},
	}
	s.dirty = true
}

// remove takes pod sp out of its slice.
func (p *ciliumPeers) remove(sp scalePod) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if s := p.slices[sp.slice]; s != nil {
		if _, ok := s.eps[sp.name]; ok {
			delete(s.eps, sp.name)
			s.dirty = true
		}
	}
}

// ciliumFlushEvery is how often changed slices are written: the operator
// coalesces its endpoints' changes the same way.
const ciliumFlushEvery = 200 * time.Millisecond

// The operator's default rate of slice writes (ces-rate-limits,
// [{"nodes":0,"limit":10,"burst":20}]): changes wait, and coalesce,
// behind it.
const (
	cesWriteQPS   = 10
	cesWriteBurst = 20
)

// run writes the changed slices every ciliumFlushEvery until close.
func (p *ciliumPeers) run(ctx context.Context) {
	defer close(p.done)
	t := time.NewTicker(ciliumFlushEvery)
	defer t.Stop()
	var told time.Time
	for tick := 0; ; tick++ {
		select {
		case <-p.stop:
			return
		case <-ctx.Done():
			return
		case <-t.C:
		}
		err := p.flush(ctx)
		if tick%5 == 0 { // every second, as the operator's informer would see them
			if lerr := p.syncLocal(ctx); err == nil {
				err = lerr
			}
		}
		if err != nil && time.Since(told) > time.Minute {
			fmt.Fprintf(p.progress, "cilium peers: %v (retried)\n", err)
			told = time.Now()
		}
	}
}

// flush writes every changed slice (created the first time); a slice that
// failed stays changed for the next flush.
func (p *ciliumPeers) flush(ctx context.Context) error {
	p.mu.Lock()
	var names []string
	for name, s := range p.slices {
		if s.dirty {
			names = append(names, name)
		}
	}
	p.mu.Unlock()
	slices.Sort(names)
	return parallel(ctx, 0, len(names), 8, func(i int) error {
		if p.writes != nil {
			if err := p.writes.Wait(ctx); err != nil {
				return err
			}
		}
		p.mu.Lock()
		s := p.slices[names[i]]
		s.dirty = false
		eps := make([]any, 0, len(s.eps))
		for _, name := range slices.Sorted(maps.Keys(s.eps)) {
			eps = append(eps, s.eps[name])
		}
		var obj *unstructured.Unstructured
		if s.obj == nil {
			obj = &unstructured.Unstructured{Object: map[string]any{
				"apiVersion": "cilium.io/v2alpha1", "kind": "CiliumEndpointSlice",
				"metadata": map[string]any{"name": names[i]}, "namespace": s.ns}}
		} else {
			obj = s.obj.DeepCopy()
		}
		p.mu.Unlock()
		obj.Object["endpoints"] = eps
		var (
			out *unstructured.Unstructured
			err error
		)
		r := p.dc.Resource(ciliumSlicesGVR)
		if obj.GetResourceVersion() == "" {
			out, err = r.Create(ctx, obj, metav1.CreateOptions{})
			if apierrors.IsAlreadyExists(err) {
				// An earlier create timed out but was written: take its
				// version and write this one over it.
				if cur, gerr := r.Get(ctx, names[i], metav1.GetOptions{}); gerr == nil {
					obj.SetResourceVersion(cur.GetResourceVersion())
					out, err = r.Update(ctx, obj, metav1.UpdateOptions{})
				}
			}
		} else {
			out, err = r.Update(ctx, obj, metav1.UpdateOptions{})
		}
		p.mu.Lock()
		defer p.mu.Unlock()
		if err != nil {
			s.dirty = true
			return fmt.Errorf("cilium endpoint slice %s: %w", names[i], err)
		}
		s.obj = out
		return nil
	})
}

// syncLocal folds the measured agent's CiliumEndpoints (the only ones in
// the cluster: the simulated nodes have none) into slices of their own,
// ces-local-<namespace>-<k>.
func (p *ciliumPeers) syncLocal(ctx context.Context) error {
	l, err := p.dc.Resource(ciliumEndpointsGVR).List(ctx, metav1.ListOptions{})
	if err != nil {
		return fmt.Errorf("cilium endpoints: %w", err)
	}
	byNS := map[string][]unstructured.Unstructured{}
	for _, cep := range l.Items {
		byNS[cep.GetNamespace()] = append(byNS[cep.GetNamespace()], cep)
	}
	want := map[string]map[string]map[string]any{} // slice -> pod -> endpoint
	nsOf := map[string]string{}
	for ns, ceps := range byNS {
		slices.SortFunc(ceps, func(a, b unstructured.Unstructured) int { return strings.Compare(a.GetName(), b.GetName()) })
		for i, cep := range ceps {
			id, _, _ := unstructured.NestedInt64(cep.Object, "status", "identity", "id")
			networking, ok, _ := unstructured.NestedMap(cep.Object, "status", "networking")
			if !ok || id == 0 {
				continue // not yet identified and addressed
			}
			ep := map[string]any{"name": cep.GetName(), "id": id, "networking": networking, "encryption": map[string]any{}}
			if ports, ok, _ := unstructured.NestedSlice(cep.Object, "status", "named-ports"); ok {
				ep["named-ports"] = ports
			}
			name := fmt.Sprintf("ces-local-%s-%d", ns, i/cesMaxEndpoints)
			if want[name] == nil {
				want[name] = map[string]map[string]any{}
			}
			want[name][cep.GetName()] = ep
			nsOf[name] = ns
		}
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	for name, eps := range want {
		s := p.slices[name]
		if s == nil {
			s = &cesState{ns: nsOf[name], eps: map[string]map[string]any{}}
			p.slices[name] = s
		}
		if !reflect.DeepEqual(s.eps, eps) {
			s.eps, s.dirty = eps, true
		}
	}
	for name, s := range p.slices {
		if strings.HasPrefix(name, "ces-local-") && want[name] == nil && len(s.eps) > 0 {
			s.eps, s.dirty = map[string]map[string]any{}, true
		}
	}
	return nil
}

// pending counts the slices not written since they changed.
func (p *ciliumPeers) pending() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for _, s := range p.slices {
		if s.dirty {
			n++
		}
	}
	return n
}

// close stops the writer.
func (p *ciliumPeers) close() {
	close(p.stop)
	<-p.done
}
