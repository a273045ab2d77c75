package chaos

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"
)

// The probe against servers on loopback: an HTTP server that answers and
// then, for a while, cuts its held connections; a UDP echo that stands for
// a denied target answering (a hole) and a closed port that stands for one
// that does not.
func TestProbeCounts(t *testing.T) {
	var mu sync.Mutex
	var conns []net.Conn
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { fmt.Fprint(w, "echo") }))
	srv.Config.ConnState = func(c net.Conn, s http.ConnState) {
		if s == http.StateNew {
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}
	srv.Start()
	defer srv.Close()
	addr := strings.TrimPrefix(srv.URL, "http://")

	udp, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer udp.Close()
	go func() {
		buf := make([]byte, 64)
		for {
			n, from, err := udp.ReadFrom(buf)
			if err != nil {
				return
			}
			_, _ = udp.WriteTo(buf[:n], from)
		}
	}()
	closed, _ := net.Listen("tcp", "127.0.0.1:0")
	closedAddr := closed.Addr().String()
	closed.Close()

	run := func(cfg ProbeConfig, d time.Duration, during func()) Counts {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), d)
		defer cancel()
		var out bytes.Buffer
		if during != nil {
			go func() { time.Sleep(d / 2); during() }()
		}
		if err := Probe(ctx, "", cfg, &out, 50*time.Millisecond); err != nil {
			t.Fatal(err)
		}
		var last Counts
		sc := bufio.NewScanner(&out)
		lines := 0
		for sc.Scan() {
			lines++
			if err := json.Unmarshal(sc.Bytes(), &last); err != nil {
				t.Fatalf("line %q: %v", sc.Text(), err)
			}
		}
		if lines < 3 {
			t.Errorf("%d lines of counts in %s", lines, d)
		}
		return last
	}

	// A UDP echo at the TCP target's port number stands for a target that
	// answers: TCP refused (not answered), UDP answered.
	udpPort := udp.LocalAddr().(*net.UDPAddr).Port
	c := run(ProbeConfig{ClusterIP: addr, NodePort: addr, Held: 2, Denied: fmt.Sprintf("127.0.0.1:%d", udpPort), Interval: 10 * time.Millisecond}, time.Second, nil)
	if c.Requests < 20 || c.RequestsFailed != 0 || c.NodePort < 20 || c.NodePortFailed != 0 {
		t.Errorf("requests: %+v", c)
	}
	if c.HeldRequests < 10 || c.HeldCut != 0 {
		t.Errorf("held: %+v", c)
	}
	if c.DeniedUDP == 0 || c.DeniedUDPOpen == 0 || c.DeniedTCPOpen != 0 {
		t.Errorf("an answering UDP target: %+v", c)
	}

	// The server cuts every connection half way: the held ones count it.
	c = run(ProbeConfig{ClusterIP: addr, Held: 2, Denied: closedAddr}, time.Second, func() {
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	if c.HeldCut < 1 || c.HeldCut > 2 {
		t.Errorf("2 held connections cut once: %+v", c)
	}
	if c.DeniedTCP == 0 || c.DeniedTCPOpen != 0 || c.DeniedUDPOpen != 0 {
		t.Errorf("a closed target answered: %+v", c)
	}

	if err := Probe(context.Background(), "", ProbeConfig{}, io.Discard, time.Second); err == nil {
		t.Error("a probe with nowhere to send ran")
	}
}

func TestCountsArithmeticAndFailures(t *testing.T) {
	a := Counts{Requests: 10, HeldCut: 1, DeniedUDPOpen: 2}
	b := Counts{Requests: 4, HeldCut: 1}
	if got := a.Sub(b); got != (Counts{Requests: 6, DeniedUDPOpen: 2}) {
		t.Errorf("sub: %+v", got)
	}
	if got := a.Sub(b).Add(b); got != a {
		t.Errorf("add: %+v", got)
	}
	r := &Report{Total: Phase{Denied: Counts{HeldCut: 1, DeniedTCPOpen: 1}, Allowed: Counts{DeniedTCP: 5}}, Leftovers: Leftovers{Addresses: 2}}
	f := strings.Join(r.Failures(), "; ")
	for _, want := range []string{"1 established connections cut", "1 probes policy denies were answered", "never reached the target", "2 entries left"} {
		if !strings.Contains(f, want) {
			t.Errorf("failures %q lack %q", f, want)
		}
	}
	if f := (&Report{Total: Phase{Allowed: Counts{DeniedTCP: 5, DeniedTCPOpen: 5}}}).Failures(); len(f) != 0 {
		t.Errorf("a clean run fails: %v", f)
	}
}

// The readiness record: the fewest ready endpoints and the time with none,
// per phase.
func TestReadinessTake(t *testing.T) {
	r := &readiness{min: -1}
	if minReady, _ := r.take(); minReady != -1 {
		t.Fatalf("before any observation: fewest %d, want -1 (unknown)", minReady)
	}
	t0 := time.Now()
	r.observe(2, t0)
	r.observe(0, t0.Add(time.Second))
	r.observe(0, t0.Add(2*time.Second))
	r.observe(1, t0.Add(3*time.Second))
	if minReady, none := r.take(); minReady != 0 || none != 2*time.Second {
		t.Fatalf("first phase: fewest %d, none for %s; want 0 and 2s", minReady, none)
	}
	r.observe(2, t0.Add(4*time.Second))
	if minReady, none := r.take(); minReady != 1 || none != 0 {
		t.Fatalf("second phase: fewest %d, none for %s; want 1 (where it began) and 0", minReady, none)
	}
}
