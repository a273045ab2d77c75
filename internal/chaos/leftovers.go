package chaos

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/kpath/kpath/internal/cniapi"
	"github.com/kpath/kpath/internal/datapath"
	"github.com/kpath/kpath/internal/ipam"
	"github.com/kpath/kpath/internal/lab"
	"github.com/kpath/kpath/internal/policy"
	"github.com/kpath/kpath/internal/policysync"
)

// Leftovers are what the nodes still hold for pods that are gone, summed
// over the nodes (target 0 each), and what each is.
type Leftovers struct {
	Addresses    int      `json:"addresses"`   // IPAM allocations of no live pod
	Endpoints    int      `json:"endpoints"`   // policy endpoints of no live pod
	Identities   int      `json:"identities"`  // pod identities no pod has
	IPCache      int      `json:"ipcache"`     // ipcache addresses of no live pod
	Conntrack    int      `json:"conntrack"`   // connection entries to or from an address no pod has
	Backends     int      `json:"backends"`    // service backends at an address no pod has
	UnusedSets   int      `json:"policy_sets"` // policy sets no endpoint uses
	Details      []string `json:"details,omitempty"`
	LivePods     int      `json:"live_pods"`     // the pods counted as live
	NodesChecked int      `json:"nodes_checked"` //
}

// Total is the sum of every kind.
func (l Leftovers) Total() int {
	return l.Addresses + l.Endpoints + l.Identities + l.IPCache + l.Conntrack + l.Backends + l.UnusedSets
}

func (l *Leftovers) add(n *int, format string, args ...any) {
	*n++
	if len(l.Details) < 50 {
		l.Details = append(l.Details, fmt.Sprintf(format, args...))
	}
}

// agentGet reads one of the node agent's local API documents.
func agentGet(socket, path string, v any) error {
	c := cniapi.NewClient(socket)
	c.Timeout = 10 * time.Second
	return c.Do("GET", path, nil, v)
}

// countLeftovers compares what each node's agent and IPAM hold with the
// pods the API has. Addresses are judged within the cluster CIDR, leaving
// out each node's router address (the first of its pod CIDR).
func countLeftovers(ctx context.Context, c kubernetes.Interface, st *lab.State) (Leftovers, error) {
	var l Leftovers
	cluster := netip.MustParsePrefix(lab.ClusterCIDR)
	pods, err := c.CoreV1().Pods(metav1.NamespaceAll).List(ctx, metav1.ListOptions{})
	if err != nil {
		return l, fmt.Errorf("list pods: %w", err)
	}
	live := map[netip.Addr]string{} // pod address -> namespace/name
	names := map[string]bool{}
	for _, p := range pods.Items {
		names[p.Namespace+"/"+p.Name] = true
		for _, ip := range p.Status.PodIPs {
			if a, err := netip.ParseAddr(ip.IP); err == nil {
				live[a] = p.Namespace + "/" + p.Name
			}
		}
	}
	l.LivePods = len(pods.Items)
	nodes, err := c.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return l, fmt.Errorf("list nodes: %w", err)
	}
	routers := map[netip.Addr]bool{}
	for _, n := range nodes.Items {
		if p, err := netip.ParsePrefix(n.Spec.PodCIDR); err == nil {
			routers[p.Masked().Addr().Next()] = true
		}
	}
	gone := func(a netip.Addr) bool { return cluster.Contains(a) && !routers[a] && live[a] == "" }

	for _, n := range st.Nodes {
		l.NodesChecked++
		var allocs struct {
			Allocations []ipam.Allocation `json:"allocations"`
		}
		data, err := os.ReadFile(filepath.Join(st.Dir, n.Name, "ipam", "overlay.json"))
		if err != nil {
			return l, fmt.Errorf("%s: ipam state: %w", n.Name, err)
		}
		if err := json.Unmarshal(data, &allocs); err != nil {
			return l, fmt.Errorf("%s: ipam state: %w", n.Name, err)
		}
		for _, a := range allocs.Allocations {
			if live[a.Addr] == "" {
				l.add(&l.Addresses, "%s: address %s still allocated to %s (container %.12s)", n.Name, a.Addr, a.Extra["pod"], a.ContainerID)
			}
		}

		var eps []policysync.EndpointStatus
		if err := agentGet(n.AgentSocket, "/v1/policy/endpoints", &eps); err != nil {
			return l, fmt.Errorf("%s: %w", n.Name, err)
		}
		sets := map[uint32]bool{}
		for _, e := range eps {
			sets[e.Set] = true
			if live[e.IP] == "" || !names[e.Pod.Namespace+"/"+e.Pod.Name] {
				l.add(&l.Endpoints, "%s: endpoint %s (%s/%s) of no live pod", n.Name, e.IP, e.Pod.Namespace, e.Pod.Name)
			}
		}
		var status struct {
			Policy *policysync.Stats `json:"policy"`
		}
		if err := agentGet(n.AgentSocket, "/v1/status", &status); err != nil {
			return l, fmt.Errorf("%s: %w", n.Name, err)
		}
		if status.Policy != nil && status.Policy.Sets > len(sets) {
			for range status.Policy.Sets - len(sets) {
				l.add(&l.UnusedSets, "%s: %d policy sets, %d used by endpoints", n.Name, status.Policy.Sets, len(sets))
			}
		}

		var ids []struct {
			ID        uint32 `json:"id"`
			Namespace string `json:"namespace"`
			Pods      int    `json:"pods"`
			Reserved  string `json:"reserved"`
		}
		if err := agentGet(n.AgentSocket, "/v1/identities", &ids); err != nil {
			return l, fmt.Errorf("%s: %w", n.Name, err)
		}
		for _, id := range ids {
			if id.Reserved == "" && (id.Pods == 0 || id.Namespace == churnNS) {
				l.add(&l.Identities, "%s: identity %d (%s) with %d pods", n.Name, id.ID, id.Namespace, id.Pods)
			}
		}

		var ipc map[netip.Addr]uint32
		if err := agentGet(n.AgentSocket, "/v1/bpf/ipcache", &ipc); err != nil {
			return l, fmt.Errorf("%s: %w", n.Name, err)
		}
		for a, id := range ipc {
			if policy.Identity(id) >= policy.FirstPodIdentity && gone(a) {
				l.add(&l.IPCache, "%s: ipcache %s -> identity %d, no pod has it", n.Name, a, id)
			}
		}

		var ct []datapath.CTEntry
		if err := agentGet(n.AgentSocket, "/v1/bpf/ct", &ct); err != nil {
			return l, fmt.Errorf("%s: %w", n.Name, err)
		}
		for _, e := range ct {
			if gone(e.Src.Addr()) || gone(e.Dst.Addr()) || (e.Backend.IsValid() && gone(e.Backend.Addr())) {
				l.add(&l.Conntrack, "%s: %s %s -> %s (%s) of an address no pod has", n.Name, e.Proto, e.Src, e.Dst, e.State)
			}
		}

		var lb []datapath.ServiceInfo
		if err := agentGet(n.AgentSocket, "/v1/bpf/lb", &lb); err != nil {
			return l, fmt.Errorf("%s: %w", n.Name, err)
		}
		for _, s := range lb {
			for _, b := range s.Backends {
				ap, err := netip.ParseAddrPort(strings.SplitN(b.Name, "/", 2)[0])
				if err == nil && gone(ap.Addr()) {
					l.add(&l.Backends, "%s: frontend %s still has backend %s", n.Name, s.Name, b.Name)
				}
			}
		}
	}
	return l, nil
}
