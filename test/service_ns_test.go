// Package test holds privileged integration tests that span packages: real
// namespaces, veth pairs and traffic through the attached datapath.
package test

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/kpath/kpath/internal/datapath"
	"github.com/kpath/kpath/internal/model"
	"github.com/kpath/kpath/internal/testutil"
)

// lab is a node namespace with a client pod and two backend pods, the
// datapath attached to every pod's host-side veth.
type lab struct {
	d                  *datapath.Datapath
	node               string
	client             *helperProc
	cgroup             *os.File
	clientIP, be1, be2 string
	clientNS, clientIf string
	hostIfs            []string
	podAddrs           []netip.Addr // of hostIfs' pods
}

// openDatapath opens a datapath with small maps under a pin directory of
// its own; tweaks adjust the configuration first.
func openDatapath(t *testing.T, mode datapath.AttachMode, tweaks ...func(*datapath.Config)) *datapath.Datapath {
	t.Helper()
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	cfg := datapath.DefaultConfig()
	cfg.PinDir = "kpath-test-" + hex.EncodeToString(b)
	cfg.Sizes = datapath.MapSizes{Frontends: 1024, Backends: 4096, Slots: 8192, Maglev: 64,
		Affinity: 1024, Conntrack: 16384, SockRevNat: 1024, Fragments: 256,
		IPCache: 1024, Endpoints: 256, PolicyEntries: 65536, PolicyCIDRs: 4096}
	cfg.MaglevTableSize = 251
	cfg.TCAttach = mode
	for _, f := range tweaks {
		f(&cfg)
	}
	d, err := datapath.Open(cfg)
	if err != nil {
		_ = datapath.Reset(cfg)
		t.Fatal(err)
	}
	t.Cleanup(func() {
		d.Close()
		if err := datapath.Reset(cfg); err != nil {
			t.Error(err)
		}
	})
	return d
}

func testCgroup(t *testing.T) *os.File {
	t.Helper()
	root, err := datapath.CgroupV2Root()
	if err != nil {
		testutil.SkipOrFail(t, err.Error())
	}
	dir, err := os.MkdirTemp(root, "kpath-test-")
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		f.Close()
		for range 100 {
			if err := os.Remove(dir); err == nil || errors.Is(err, os.ErrNotExist) {
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
		t.Errorf("cgroup %s not removed", dir)
	})
	return f
}

func newLab(t *testing.T, sockHook bool, mode datapath.AttachMode) *lab {
	t.Helper()
	testutil.RequireRoot(t)
	d := openDatapath(t, mode)
	var cg *os.File
	if sockHook {
		cg = testCgroup(t)
		if err := d.AttachCgroup(cg.Name()); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = d.DetachCgroup(cg.Name()) })
	}
	l := newTopology(t, cg)
	l.attach(t, d)
	return l
}

// newTopology wires a node namespace with a client pod (its helper inside
// cgroup cg, if given) and two backend pods running the backend helper.
// Nothing is attached yet.
func newTopology(t *testing.T, cg *os.File) *lab {
	t.Helper()
	testutil.RequireRoot(t)
	testutil.RequireTool(t, "ip")
	id := testutil.UniqueID()
	l := &lab{clientIP: "10.244.0.2", be1: "10.244.0.3", be2: "10.244.0.4"}
	l.node = testutil.NewNetns(t, "kpt-"+id+"-node")
	testutil.Run(t, "ip", "netns", "exec", l.node, "sysctl", "-qw", "net.ipv4.ip_forward=1")
	pods := []struct{ name, addr string }{{"c", l.clientIP}, {"b1", l.be1}, {"b2", l.be2}}
	for _, p := range pods {
		ns := testutil.NewNetns(t, "kpt-"+id+"-"+p.name)
		hostIf := "kpt" + id + p.name
		testutil.WirePod(t, testutil.PodSpec{Node: l.node, Pod: ns, HostIf: hostIf, Addr: p.addr})
		l.hostIfs = append(l.hostIfs, hostIf)
		l.podAddrs = append(l.podAddrs, netip.MustParseAddr(p.addr))
		switch p.name {
		case "c":
			l.client = startHelper(t, ns, "client", "client", cg)
			l.clientNS, l.clientIf = ns, hostIf
		default:
			startHelper(t, ns, "backend", p.addr, nil)
		}
	}
	return l
}

// attach attaches d to every pod's host-side veth (twice: it is idempotent).
func (l *lab) attach(t *testing.T, d *datapath.Datapath) {
	t.Helper()
	l.d = d
	for i, hostIf := range l.hostIfs {
		err := testutil.InNetns(l.node, func() error {
			for range 2 {
				if err := d.AttachPod(hostIf, l.podAddrs[i]); err != nil {
					return err
				}
			}
			if ok, err := d.PodAttached(hostIf); err != nil || !ok {
				return fmt.Errorf("attached = %v after attach: %v", ok, err)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
}

func svc(fe string, port uint16, backends ...string) model.Service {
	s := model.Service{}
	var err error
	if s.Frontend, err = model.ParseL4Addr(fe, model.TCP); err != nil {
		panic(err)
	}
	for _, b := range backends {
		a, err := model.ParseL4Addr(fmt.Sprintf("%s:%d", b, port), s.Frontend.Proto)
		if err != nil {
			panic(err)
		}
		s.Backends = append(s.Backends, a)
	}
	return s
}

func TestServiceTrafficThroughNamespaces(t *testing.T) {
	for _, tc := range []struct {
		name     string
		sockHook bool
		mode     datapath.AttachMode
	}{
		{"socket-hook", true, datapath.AttachAuto},
		{"tc-only", false, datapath.AttachAuto},
		{"tc-only-legacy-attach", false, datapath.AttachLegacy},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := newLab(t, tc.sockHook, tc.mode)
			for _, s := range []model.Service{
				svc("10.96.0.10:80/TCP", httpPort, l.be1, l.be2),
				svc("10.96.0.10:53/UDP", udpPort, l.be1, l.be2),
				svc("10.96.0.10:9000/TCP", linePort, l.be1, l.be2),
			} {
				if err := l.d.UpsertService(s); err != nil {
					t.Fatal(err)
				}
			}

			httpCounts := l.client.do(t, "http 10.96.0.10:80 200").Counts
			udpCounts := l.client.do(t, "udp 10.96.0.10:53 100").Counts
			t.Logf("%s: HTTP requests per backend %v; UDP requests per backend %v", tc.name, httpCounts, udpCounts)
			for _, c := range []map[string]int{httpCounts, udpCounts} {
				if len(c) != 2 || c[l.be1] == 0 || c[l.be2] == 0 {
					t.Errorf("requests not spread over both backends: %v", c)
				}
			}

			// An established connection outlives its backend's removal;
			// new connections no longer reach it.
			first := l.client.do(t, "hold 10.96.0.10:9000").Answer
			other := l.be1
			if first == l.be1 {
				other = l.be2
			}
			if err := l.d.UpsertService(svc("10.96.0.10:9000/TCP", linePort, other)); err != nil {
				t.Fatal(err)
			}
			after := l.client.do(t, "lines 10.96.0.10:9000 30").Counts
			if after[first] != 0 || after[other] != 30 {
				t.Errorf("after removing %s, new connections went to %v", first, after)
			}
			if got := l.client.do(t, "held").Answer; got != first {
				t.Errorf("established connection now answered by %q, want %q", got, first)
			}

			cs, err := l.d.Counters()
			if err != nil {
				t.Fatal(err)
			}
			sock := datapath.CounterPackets(cs, "service translated", "socket")
			tcx := datapath.CounterPackets(cs, "service translated", "from-pod")
			t.Logf("%s: translations by socket hook %d, by tc %d", tc.name, sock, tcx)
			if tc.sockHook && (sock < 300 || tcx != 0) {
				t.Errorf("socket hook on: %d socket and %d tc translations, want all by the socket hook", sock, tcx)
			}
			if !tc.sockHook && (sock != 0 || tcx < 300) {
				t.Errorf("socket hook off: %d socket and %d tc translations, want all by tc", sock, tcx)
			}
			if n := datapath.CounterPackets(cs, "reply translated", "to-pod"); !tc.sockHook && n < 300 {
				t.Errorf("reply translations = %d", n)
			}

			// Detaching removes the programs, once or twice.
			for range 2 {
				err := testutil.InNetns(l.node, func() error {
					if err := l.d.DetachPod(l.clientIf); err != nil {
						return err
					}
					attached, err := l.d.PodAttached(l.clientIf)
					if err == nil && attached {
						err = fmt.Errorf("still attached after detach")
					}
					return err
				})
				if err != nil {
					t.Fatal(err)
				}
			}
			// Plain pod-to-pod traffic still flows.
			direct := l.client.do(t, fmt.Sprintf("lines %s:%d 3", l.be1, linePort)).Counts
			if direct[l.be1] != 3 {
				t.Errorf("direct traffic after detach: %v", direct)
			}
		})
	}
}

// A client that opens many short connections reuses its source ports
// seconds apart (ab does, so do busy HTTP clients). A reused port finds its
// previous connection's entries expired but not yet collected, and the
// per-packet path reopens them while the collector may be deleting what it
// saw expired a moment before. The new connection's entries must survive:
// without them the server's answer goes back untranslated, the client
// resets it, and the request waits for an answer that never comes.
func TestTCServicePortReuseWhileCollecting(t *testing.T) {
	d := openDatapath(t, datapath.AttachAuto, func(c *datapath.Config) {
		c.CT.Closing = time.Second
		c.Sizes.Conntrack = 131072 // every port's two entries, no eviction
	})
	l := newTopology(t, nil)
	l.attach(t, d)
	if err := d.UpsertService(svc("10.96.0.10:80/TCP", peerPort, l.be1)); err != nil {
		t.Fatal(err)
	}
	// Ports come back about every second at this range and rate: after
	// the closing lifetime, so reopened entries are expired ones.
	testutil.Run(t, "ip", "netns", "exec", l.clientNS, "sysctl", "-qw", "net.ipv4.ip_local_port_range=40000 59999")

	// The collector runs every so often, as the agent's does: expired
	// entries pile up between passes, and a pass deletes many of them
	// while the client keeps reopening theirs.
	stop := make(chan struct{})
	collected := make(chan int)
	go func() {
		total := 0
		defer func() { collected <- total }()
		tick := time.NewTicker(700 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			n, _, err := d.ConntrackGC()
			if err != nil {
				t.Error(err)
				return
			}
			total += n
		}
	}()
	const requests = 40000
	start := time.Now()
	r := l.client.try(t, fmt.Sprintf("peers 10.96.0.10:80 %d", requests))
	close(stop)
	deleted := <-collected
	got := r.Counts[l.be1]
	t.Logf("%d requests in %s; the collector deleted %d expired entries meanwhile", got, time.Since(start).Round(time.Millisecond), deleted)
	if r.Err != "" {
		t.Fatalf("request %d of %d failed: %s", got+1, requests, r.Err)
	}
	if deleted == 0 {
		t.Fatalf("the collector deleted nothing: ports were not reused after their entries expired, the test proves nothing")
	}
}
