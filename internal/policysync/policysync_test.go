package policysync_test

import (
	"fmt"
	"maps"
	"math/rand/v2"
	"net/netip"
	"testing"

	"github.com/kpath/kpath/internal/datapath"
	"github.com/kpath/kpath/internal/model"
	"github.com/kpath/kpath/internal/policy"
	"github.com/kpath/kpath/internal/policy/policytest"
	"github.com/kpath/kpath/internal/policysync"
	"github.com/kpath/kpath/internal/testutil"
)

func openDatapath(t *testing.T) (*datapath.Datapath, datapath.Config) {
	t.Helper()
	testutil.RequireRoot(t)
	cfg := datapath.DefaultConfig()
	cfg.PinDir = "kpath-test-policysync-" + testutil.UniqueID()
	cfg.Sizes = datapath.MapSizes{
		Frontends: 64, Backends: 64, Slots: 64, Maglev: 16, Affinity: 64, Conntrack: 1024, SockRevNat: 64, Fragments: 64,
		IPCache: 1024, Endpoints: 64, PolicyEntries: 4096, PolicyCIDRs: 1024,
	}
	d, err := datapath.Open(cfg)
	if err != nil {
		_ = datapath.Reset(cfg)
		t.Fatalf("open datapath: %v", err)
	}
	t.Cleanup(func() {
		d.Close()
		if err := datapath.Reset(cfg); err != nil {
			t.Errorf("reset: %v", err)
		}
	})
	return d, cfg
}

var (
	ipA  = netip.MustParseAddr("10.0.1.10")
	ipB  = netip.MustParseAddr("10.0.1.11")
	ipC  = netip.MustParseAddr("10.0.1.12")
	ipR  = netip.MustParseAddr("10.0.2.10") // a pod of another node
	node = netip.MustParseAddr("192.168.0.1")
)

func pod(name, app string, ip netip.Addr, node string) *model.Pod {
	return &model.Pod{Key: model.PodKey{Namespace: "x", Name: name}, Labels: map[string]string{"app": app}, IPs: []netip.Addr{ip}, NodeName: node}
}

// allowFrom isolates app=to for ingress and allows TCP 80 from app=from.
func allowFrom(name, to, from string) *model.NetworkPolicy {
	return &model.NetworkPolicy{
		Key:           model.PolicyKey{Namespace: "x", Name: name},
		PodSelector:   model.LabelSelector{MatchLabels: map[string]string{"app": to}},
		PolicyIngress: true,
		Ingress: []model.PolicyRule{{
			Peers: []model.PolicyPeer{{PodSelector: &model.LabelSelector{MatchLabels: map[string]string{"app": from}}}},
			Ports: []model.PolicyPort{{Protocol: model.TCP, Port: 80}},
		}},
	}
}

func newSyncer(t *testing.T, s *policy.Store, d *datapath.Datapath, c policysync.Capacity) *policysync.Syncer {
	t.Helper()
	sy, err := policysync.New(s, d, policysync.Options{Node: "n1", Capacity: c})
	if err != nil {
		t.Fatal(err)
	}
	return sy
}

func decide(t *testing.T, d *datapath.Datapath, local, peer netip.Addr) bool {
	t.Helper()
	r, err := d.DecidePolicy(local, peer, true, model.TCP, 80)
	if err != nil {
		t.Fatal(err)
	}
	return r.Allowed
}

func endpoint(t *testing.T, d *datapath.Datapath, ip netip.Addr) (datapath.Endpoint, bool) {
	t.Helper()
	eps, err := d.Endpoints()
	if err != nil {
		t.Fatal(err)
	}
	e, ok := eps[ip]
	return e, ok
}

// TestSyncerLifecycle: a pod registered before the store knows it allows
// nothing; once known it gets its policy; pods with the same policies share
// one set; a relabel moves a pod and prunes the set nobody uses; a deleted
// policy reopens; unregister removes the endpoint.
func TestSyncerLifecycle(t *testing.T) {
	d, _ := openDatapath(t)
	s := policy.NewStore()
	s.SetNode("n1", []netip.Addr{node})
	sy := newSyncer(t, s, d, policysync.Capacity{})
	if err := sy.Sync(true); err != nil {
		t.Fatal(err)
	}
	s.SetPod(model.PodKey{Namespace: "x", Name: "client"}, pod("client", "client", ipR, "n2"))
	if err := sy.Register(ipA, model.PodKey{Namespace: "x", Name: "a"}); err != nil {
		t.Fatal(err)
	}
	if e, ok := endpoint(t, d, ipA); !ok || e.Set != policysync.DenyAllSet || !e.IngressIsolated || !e.EgressIsolated {
		t.Fatalf("unknown pod's endpoint %+v (%v), want isolated, deny-all", e, ok)
	}
	if decide(t, d, ipA, ipR) {
		t.Fatal("an unknown pod allowed traffic")
	}
	if !decide(t, d, ipA, node) {
		t.Fatal("the node cannot reach an unknown pod")
	}

	s.SetPod(model.PodKey{Namespace: "x", Name: "a"}, pod("a", "web", ipA, "n1"))
	s.SetPolicy(model.PolicyKey{Namespace: "x", Name: "web"}, allowFrom("web", "web", "client"))
	if err := sy.Sync(false); err != nil {
		t.Fatal(err)
	}
	if !decide(t, d, ipA, ipR) {
		t.Fatal("policy allows client -> web:80, datapath denies")
	}
	if err := sy.Register(ipB, model.PodKey{Namespace: "x", Name: "b"}); err != nil {
		t.Fatal(err)
	}
	s.SetPod(model.PodKey{Namespace: "x", Name: "b"}, pod("b", "web", ipB, "n1"))
	if err := sy.Sync(false); err != nil {
		t.Fatal(err)
	}
	ea, _ := endpoint(t, d, ipA)
	eb, _ := endpoint(t, d, ipB)
	if ea.Set != eb.Set || ea.Set == policysync.DenyAllSet {
		t.Fatalf("pods with the same policies in sets %d and %d, want one shared set", ea.Set, eb.Set)
	}
	if st := sy.Stats(); st.Sets != 1 {
		t.Errorf("%d sets, want 1", st.Sets)
	}
	for _, e := range sy.Endpoints() {
		if e.Entries != 1 || !e.IngressIsolated || len(e.Ingress) != 1 {
			t.Errorf("endpoint status %+v, want isolated by x/web with 1 entry", e)
		}
	}
	entries, _, err := d.PolicyEntries()
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 1 {
		t.Errorf("the maps hold %d sets, want 1", len(entries))
	}

	// b is relabelled out of the policy: open, in no set; a keeps its set.
	s.SetPod(model.PodKey{Namespace: "x", Name: "b"}, pod("b", "other", ipB, "n1"))
	if err := sy.Sync(false); err != nil {
		t.Fatal(err)
	}
	if e, _ := endpoint(t, d, ipB); e.IngressIsolated || e.EgressIsolated {
		t.Errorf("relabelled pod still isolated: %+v", e)
	}
	if !decide(t, d, ipB, ipC) {
		t.Error("relabelled pod denies")
	}
	// The client is relabelled: the ipcache moves it to a new identity,
	// which the policy does not select.
	s.SetPod(model.PodKey{Namespace: "x", Name: "client"}, pod("client", "stranger", ipR, "n2"))
	if err := sy.Sync(false); err != nil {
		t.Fatal(err)
	}
	if decide(t, d, ipA, ipR) {
		t.Error("a relabelled client the policy no longer selects is still allowed")
	}

	s.SetPolicy(model.PolicyKey{Namespace: "x", Name: "web"}, nil)
	if err := sy.Sync(false); err != nil {
		t.Fatal(err)
	}
	if !decide(t, d, ipA, ipR) {
		t.Error("deleting the policy did not reopen the pod")
	}
	entries, cidrs, err := d.PolicyEntries()
	if err != nil {
		t.Fatal(err)
	}
	if len(entries)+len(cidrs) != 0 {
		t.Errorf("sets left in the maps after their policy went: %d, %d", len(entries), len(cidrs))
	}
	if err := sy.Unregister(ipA); err != nil {
		t.Fatal(err)
	}
	if _, ok := endpoint(t, d, ipA); ok {
		t.Error("endpoint left after unregister")
	}
}

// TestSyncerRestartAdoptsPinnedState: a new syncer over the maps another
// left (the agent restarted) changes nothing that is still right: same
// set numbers, same entries, no moment without policy.
func TestSyncerRestartAdoptsPinnedState(t *testing.T) {
	d, _ := openDatapath(t)
	build := func() *policy.Store {
		s := policy.NewStore()
		s.SetNode("n1", []netip.Addr{node})
		s.SetPod(model.PodKey{Namespace: "x", Name: "client"}, pod("client", "client", ipR, "n2"))
		s.SetPod(model.PodKey{Namespace: "x", Name: "a"}, pod("a", "web", ipA, "n1"))
		s.SetPolicy(model.PolicyKey{Namespace: "x", Name: "web"}, allowFrom("web", "web", "client"))
		return s
	}
	sy := newSyncer(t, build(), d, policysync.Capacity{})
	sy.Restore(map[netip.Addr]model.PodKey{ipA: {Namespace: "x", Name: "a"}})
	if err := sy.Sync(true); err != nil {
		t.Fatal(err)
	}
	before, _ := endpoint(t, d, ipA)
	entriesBefore, _, _ := d.PolicyEntries()
	rev, _ := d.PolicyRevision()

	// The restarted agent: its store fills, then it restores and syncs.
	sy2 := newSyncer(t, build(), d, policysync.Capacity{})
	if !decide(t, d, ipA, ipR) {
		t.Fatal("allowed flow cut while the new syncer starts")
	}
	sy2.Restore(map[netip.Addr]model.PodKey{ipA: {Namespace: "x", Name: "a"}})
	if err := sy2.Sync(true); err != nil {
		t.Fatal(err)
	}
	after, _ := endpoint(t, d, ipA)
	entriesAfter, _, _ := d.PolicyEntries()
	if before != after {
		t.Errorf("endpoint changed across restart: %+v -> %+v", before, after)
	}
	if len(entriesAfter) != 1 || !maps.Equal(entriesBefore[before.Set], entriesAfter[after.Set]) {
		t.Errorf("entries changed across restart: %v -> %v", entriesBefore, entriesAfter)
	}
	if rev2, _ := d.PolicyRevision(); rev2 != rev {
		t.Errorf("revision moved from %d to %d although nothing changed", rev, rev2)
	}
	if !decide(t, d, ipA, ipR) {
		t.Error("allowed flow cut after restart")
	}
}

// TestSyncerFullMapKeepsLastGoodState: a set that would not fit is not
// written; the endpoint keeps its last good set and reports the error; a
// new endpoint whose set cannot be written allows nothing.
func TestSyncerFullMapKeepsLastGoodState(t *testing.T) {
	d, _ := openDatapath(t)
	s := policy.NewStore()
	s.SetNode("n1", []netip.Addr{node})
	s.SetPod(model.PodKey{Namespace: "x", Name: "client"}, pod("client", "client", ipR, "n2"))
	s.SetPod(model.PodKey{Namespace: "x", Name: "a"}, pod("a", "web", ipA, "n1"))
	s.SetPolicy(model.PolicyKey{Namespace: "x", Name: "web"}, allowFrom("web", "web", "client"))
	reported := map[model.PodKey]int{}
	sy, err := policysync.New(s, d, policysync.Options{Node: "n1", Capacity: policysync.Capacity{Entries: 3},
		OnError: func(pod model.PodKey, _ error) { reported[pod]++ }})
	if err != nil {
		t.Fatal(err)
	}
	sy.Restore(map[netip.Addr]model.PodKey{ipA: {Namespace: "x", Name: "a"}})
	if err := sy.Sync(true); err != nil {
		t.Fatal(err)
	}
	good, _ := endpoint(t, d, ipA)
	// A wide port range: 1-65535 is 16 aligned blocks, more than fit.
	wide := allowFrom("web", "web", "client")
	wide.Ingress[0].Ports = []model.PolicyPort{{Protocol: model.TCP, Port: 1, EndPort: 65535}}
	s.SetPolicy(model.PolicyKey{Namespace: "x", Name: "web"}, wide)
	if err := sy.Sync(false); err == nil {
		t.Fatal("an overflowing set gave no error")
	}
	if e, _ := endpoint(t, d, ipA); e != good {
		t.Errorf("endpoint %+v after overflow, want its last good %+v", e, good)
	}
	if !decide(t, d, ipA, ipR) {
		t.Error("the last good state was lost: the allowed flow is cut")
	}
	var st policysync.EndpointStatus
	for _, e := range sy.Endpoints() {
		if e.IP == ipA {
			st = e
		}
	}
	if st.Error == "" {
		t.Errorf("no error reported on the endpoint: %+v", st)
	}
	if reported[model.PodKey{Namespace: "x", Name: "a"}] == 0 {
		t.Error("the overflow was not reported for an event")
	}
	// A new pod in a set that cannot be written: isolated, nothing allowed.
	s.SetPolicy(model.PolicyKey{Namespace: "x", Name: "web"}, allowFrom("web", "web", "client"))
	s.SetPolicy(model.PolicyKey{Namespace: "x", Name: "wide"}, func() *model.NetworkPolicy {
		p := wide
		p.Key.Name = "wide"
		p.PodSelector = model.LabelSelector{MatchLabels: map[string]string{"app": "db"}}
		return p
	}())
	s.SetPod(model.PodKey{Namespace: "x", Name: "db"}, pod("db", "db", ipC, "n1"))
	if err := sy.Register(ipC, model.PodKey{Namespace: "x", Name: "db"}); err == nil {
		t.Error("registering a pod whose set cannot be written gave no error")
	}
	if e, ok := endpoint(t, d, ipC); !ok || e.Set != policysync.DenyAllSet || !e.IngressIsolated {
		t.Errorf("new pod with an unwritable set: %+v (%v), want isolated, deny-all", e, ok)
	}
}

// TestRegisterBeforeStatus: a pod registered at CNI ADD, whose status does
// not show its address yet, has its identity in the ipcache at once, so
// its first connections to its node's pods are not "world".
func TestRegisterBeforeStatus(t *testing.T) {
	d, _ := openDatapath(t)
	s := policy.NewStore()
	p := pod("a", "web", ipA, "n1")
	p.IPs = nil
	s.SetPod(p.Key, p)
	sy := newSyncer(t, s, d, policysync.Capacity{})
	if err := sy.Register(ipA, p.Key); err != nil {
		t.Fatal(err)
	}
	ic, err := d.IPCache()
	if err != nil {
		t.Fatal(err)
	}
	if id, ok := ic[ipA]; !ok || id < uint32(policy.FirstPodIdentity) {
		t.Fatalf("ipcache %v for a registered pod without status IPs, want its identity", ic)
	}
	// The status arrives with the same address: nothing changes; the pod
	// goes: the address leaves the ipcache.
	s.SetPod(p.Key, pod("a", "web", ipA, "n1"))
	if err := sy.Sync(true); err != nil {
		t.Fatal(err)
	}
	if ic, _ := d.IPCache(); ic[ipA] < uint32(policy.FirstPodIdentity) {
		t.Fatalf("ipcache %v after the status arrived", ic)
	}
	s.SetPod(p.Key, nil)
	if err := sy.Sync(false); err != nil {
		t.Fatal(err)
	}
	if ic, _ := d.IPCache(); len(ic) != 0 {
		t.Fatalf("ipcache %v after the pod went", ic)
	}
}

// TestIncrementalSyncMatchesEvaluator: after every one of a random
// sequence of changes (relabels onto new and existing identities, pods
// coming and going, namespace relabels, policies added and deleted), each
// applied by an incremental Sync, the maps decide every (local endpoint,
// peer, protocol, port) as the reference evaluator does.
func TestIncrementalSyncMatchesEvaluator(t *testing.T) {
	d, _ := openDatapath(t)
	r := rand.New(rand.NewPCG(11, 3))
	s, addrs := policytest.RandomCluster(r, 4)
	sy := newSyncer(t, s, d, policysync.Capacity{})
	local := map[netip.Addr]model.PodKey{}
	for _, ip := range addrs {
		if p := s.Peer(ip).Pod; p != nil && p.NodeName == "n1" {
			local[ip] = p.Key
		}
	}
	sy.Restore(local)
	if err := sy.Sync(true); err != nil {
		t.Fatal(err)
	}
	check := func(step string) {
		t.Helper()
		for ip := range local {
			for _, peer := range addrs {
				if peer == ip {
					continue
				}
				for _, c := range []struct {
					proto model.Protocol
					port  uint16
				}{{model.TCP, 80}, {model.TCP, 81}, {model.UDP, 81}, {model.SCTP, 1080}} {
					for _, ingress := range []bool{true, false} {
						src, dst := peer, ip
						if !ingress {
							src, dst = ip, peer
						}
						want := s.EvaluateIPs(src, dst, c.proto, c.port)
						wd := want.Egress
						if ingress {
							wd = want.Ingress
						}
						got, err := d.DecidePolicy(ip, peer, ingress, c.proto, c.port)
						if err != nil {
							t.Fatal(err)
						}
						if got.Allowed != wd.Allowed {
							t.Fatalf("after %s: %s -> %s %s/%d (ingress %v): maps %v (%s), evaluator %v (%s)",
								step, src, dst, c.proto, c.port, ingress, got.Allowed, got.Reason, wd.Allowed, wd.Reason)
						}
					}
				}
			}
		}
	}
	check("the first sync")
	pods := func() []*model.Pod {
		var out []*model.Pod
		for _, ip := range addrs {
			if p := s.Peer(ip).Pod; p != nil {
				out = append(out, p)
			}
		}
		return out
	}
	vals := []string{"a", "b", "c", "d"}
	var gone []*model.Pod
	for step := range 60 {
		var what string
		switch r.IntN(5) {
		case 0, 1: // relabel a pod: onto an existing identity or a new one
			ps := pods()
			p := *ps[r.IntN(len(ps))]
			p.Labels = map[string]string{"pod": p.Labels["pod"], "app": vals[r.IntN(len(vals))]}
			s.SetPod(p.Key, &p)
			what = "relabel " + p.Key.String()
		case 2: // a pod goes, or one that went comes back
			if len(gone) > 0 && r.IntN(2) == 0 {
				p := gone[len(gone)-1]
				gone = gone[:len(gone)-1]
				s.SetPod(p.Key, p)
				what = "recreate " + p.Key.String()
			} else {
				ps := pods()
				p := ps[r.IntN(len(ps))]
				if p.NodeName == "n1" {
					continue // local pods stay: the syncer's endpoints are fixed here
				}
				gone = append(gone, p)
				s.SetPod(p.Key, nil)
				what = "delete " + p.Key.String()
			}
		case 3:
			ns := []string{"x", "y", "z"}[r.IntN(3)]
			s.SetNamespace(ns, &model.Namespace{Name: ns, Labels: map[string]string{
				"kubernetes.io/metadata.name": ns, "team": vals[r.IntN(2)], "env": vals[r.IntN(3)]}})
			what = "relabel namespace " + ns
		case 4:
			k := model.PolicyKey{Namespace: []string{"x", "y", "z"}[r.IntN(3)], Name: fmt.Sprint("p", r.IntN(8))}
			if r.IntN(3) == 0 {
				s.SetPolicy(k, nil)
				what = "delete policy " + k.String()
			} else {
				s.SetPolicy(k, policytest.RandomPolicy(r))
				what = "set policy " + k.String()
			}
		}
		if err := sy.Sync(false); err != nil {
			t.Fatalf("step %d (%s): %v", step, what, err)
		}
		check(fmt.Sprintf("step %d (%s)", step, what))
	}
}
