package test

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/types"

	klab "github.com/kpath/kpath/internal/lab"
)

// The test binary doubles as the programs that run inside the test's
// namespaces: a backend (HTTP, UDP and line-echo servers that answer with
// their name) and a client that takes commands on stdin.
const helperEnv = "KPATH_TEST_HELPER"

func TestMain(m *testing.M) {
	switch os.Getenv(helperEnv) {
	case "":
		os.Exit(m.Run())
	case "backend":
		backendMain(os.Getenv("KPATH_TEST_NAME"))
	case "client":
		clientMain()
	}
	os.Exit(2)
}

// Ports the backend helper serves.
const (
	httpPort = 8080
	udpPort  = 5353
	linePort = 9000
	peerPort = 9001 // answers with the client address it sees
)

func backendMain(name string) {
	go func() {
		_ = http.ListenAndServe(fmt.Sprintf(":%d", httpPort), http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			_, _ = io.WriteString(w, name)
		}))
	}()
	go func() {
		pc, err := net.ListenPacket("udp4", fmt.Sprintf(":%d", udpPort))
		if err != nil {
			panic(err)
		}
		buf := make([]byte, 2048)
		for {
			_, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			_, _ = pc.WriteTo([]byte(name), from)
		}
	}()
	peer, err := net.Listen("tcp4", fmt.Sprintf(":%d", peerPort))
	if err != nil {
		panic(err)
	}
	go func() {
		for {
			c, err := peer.Accept()
			if err != nil {
				return
			}
			fmt.Fprintf(c, "%s %s\n", name, c.RemoteAddr().(*net.TCPAddr).IP)
			c.Close()
		}
	}()
	ln, err := net.Listen("tcp4", fmt.Sprintf(":%d", linePort))
	if err != nil {
		panic(err)
	}
	fmt.Println("ready")
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			r := bufio.NewReader(c)
			for {
				if _, err := r.ReadString('\n'); err != nil {
					return
				}
				if _, err := fmt.Fprintln(c, name); err != nil {
					return
				}
			}
		}()
	}
}

// clientResult answers one client command.
type clientResult struct {
	Counts map[string]int    `json:"counts,omitempty"`
	Answer string            `json:"answer,omitempty"`
	Matrix map[string]string `json:"matrix,omitempty"`
	Err    string            `json:"err,omitempty"`
}

// clientMain reads commands, one per line, and answers each with a JSON line:
//
//	http ADDR N   N GET requests, each on a new connection
//	udp ADDR N    N request/response exchanges, each from a new unconnected socket
//	hold ADDR     open a connection to the line server and ask once
//	held          ask again on the held connection
//	lines ADDR N  N new connections to the line server, asking once each
//	peer ADDR     which backend answered and which client address it saw
//	peers ADDR N  N new connections to the peer server, each read until the
//	              server closes it (as ab's are: the server closes first, so
//	              the client's ports are free again at once)
//	flood ADDR D  UDP datagrams to ADDR for duration D, as fast as they go
//	forge SRC ADDR PROTO N  N TCP SYNs or UDP datagrams to ADDR with source
//	              address SRC (raw socket; forge_helper_test.go)
//	capture       start queueing every IPv4 packet of the namespace
//	captured PORT D  what arrived from the forger's port to PORT, by
//	              "proto source", once nothing came for D
func clientMain() {
	var capt *capture
	var held net.Conn
	var heldR *bufio.Reader
	var keep *http.Client
	in := bufio.NewScanner(os.Stdin)
	in.Buffer(make([]byte, 1<<16), 1<<20)
	out := json.NewEncoder(os.Stdout)
	for in.Scan() {
		f := strings.Fields(in.Text())
		res := clientResult{Counts: map[string]int{}}
		var err error
		switch f[0] {
		case "http":
			n, _ := strconv.Atoi(f[2])
			client := &http.Client{Timeout: 3 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
			for range n {
				var resp *http.Response
				if resp, err = client.Get("http://" + f[1] + "/"); err != nil {
					break
				}
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				res.Counts[string(b)]++
			}
		case "udp":
			n, _ := strconv.Atoi(f[2])
			err = udpRequests(f[1], n, res.Counts)
		case "matrix":
			// matrix TIMEOUT URL...: one new connection (TCP: an HTTP GET;
			// UDP: a datagram from a new socket) to each target at once;
			// the answer maps each target to who replied ("" for nothing).
			timeout, _ := time.ParseDuration(f[1])
			res.Matrix = matrix(timeout, f[2:])
		case "keepalive":
			// keepalive URL: a GET on the client's one kept-alive
			// connection (opened by the first), so later requests travel an
			// established connection.
			if keep == nil {
				keep = &http.Client{Timeout: 500 * time.Millisecond, Transport: &http.Transport{MaxConnsPerHost: 1, MaxIdleConnsPerHost: 1}}
			}
			var resp *http.Response
			if resp, err = keep.Get(f[1]); err == nil {
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				res.Answer = string(b)
			}
		case "hold":
			if held, err = net.DialTimeout("tcp4", f[1], 3*time.Second); err == nil {
				heldR = bufio.NewReader(held)
				res.Answer, err = ask(held, heldR)
			}
		case "held":
			res.Answer, err = ask(held, heldR)
		case "peer":
			var c net.Conn
			if c, err = net.DialTimeout("tcp4", f[1], 3*time.Second); err == nil {
				_ = c.SetDeadline(time.Now().Add(3 * time.Second))
				res.Answer, err = bufio.NewReader(c).ReadString('\n')
				res.Answer = strings.TrimSpace(res.Answer)
				c.Close()
			}
		case "peers":
			n, _ := strconv.Atoi(f[2])
			for range n {
				var c net.Conn
				if c, err = net.DialTimeout("tcp4", f[1], 3*time.Second); err != nil {
					break
				}
				_ = c.SetDeadline(time.Now().Add(3 * time.Second))
				var b []byte
				b, err = io.ReadAll(c)
				c.Close()
				if err != nil {
					break
				}
				name, _, _ := strings.Cut(string(b), " ")
				res.Counts[name]++
			}
		case "flood":
			// flood ADDR DURATION: datagrams to ADDR from one connected
			// UDP socket as fast as it sends them; Counts["sent"] is how
			// many the kernel took.
			d, _ := time.ParseDuration(f[2])
			var c net.Conn
			if c, err = net.Dial("udp4", f[1]); err == nil {
				buf, sent := make([]byte, 32), 0
				for end := time.Now().Add(d); time.Now().Before(end); {
					for range 256 {
						if _, werr := c.Write(buf); werr == nil {
							sent++
						}
					}
				}
				c.Close()
				res.Counts["sent"] = sent
			}
		case "forge":
			err = forgeCommand(f, &res)
		case "capture":
			capt, err = startCapture()
		case "captured":
			port, _ := strconv.Atoi(f[1])
			d, _ := time.ParseDuration(f[2])
			if capt == nil {
				err = fmt.Errorf("captured: no capture started")
				break
			}
			res.Counts, err = capt.count(uint16(port), d)
			capt = nil
		case "lines":
			n, _ := strconv.Atoi(f[2])
			for range n {
				var c net.Conn
				if c, err = net.DialTimeout("tcp4", f[1], 3*time.Second); err != nil {
					break
				}
				var a string
				a, err = ask(c, bufio.NewReader(c))
				c.Close()
				if err != nil {
					break
				}
				res.Counts[a]++
			}
		}
		if err != nil {
			res.Err = err.Error()
		}
		_ = out.Encode(res)
	}
}

// matrix probes every target (tcp://IP:PORT or udp://IP:PORT) at once.
func matrix(timeout time.Duration, targets []string) map[string]string {
	out := make(map[string]string, len(targets))
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, target := range targets {
		wg.Go(func() {
			answer := ""
			switch {
			case strings.HasPrefix(target, "tcp://"):
				client := &http.Client{Timeout: timeout, Transport: &http.Transport{DisableKeepAlives: true}}
				if resp, err := client.Get("http://" + strings.TrimPrefix(target, "tcp://") + "/"); err == nil {
					b, _ := io.ReadAll(resp.Body)
					resp.Body.Close()
					answer = string(b)
				}
			case strings.HasPrefix(target, "udp://"):
				if c, err := net.Dial("udp4", strings.TrimPrefix(target, "udp://")); err == nil {
					_ = c.SetDeadline(time.Now().Add(timeout))
					buf := make([]byte, 512)
					if _, err := c.Write([]byte("q")); err == nil {
						if n, err := c.Read(buf); err == nil {
							answer = string(buf[:n])
						}
					}
					c.Close()
				}
			}
			mu.Lock()
			out[target] = answer
			mu.Unlock()
		})
	}
	wg.Wait()
	return out
}

func ask(c net.Conn, r *bufio.Reader) (string, error) {
	_ = c.SetDeadline(time.Now().Add(3 * time.Second))
	if _, err := fmt.Fprintln(c, "who"); err != nil {
		return "", err
	}
	s, err := r.ReadString('\n')
	return strings.TrimSpace(s), err
}

// udpRequests sends n requests, each from a new socket (a new source port,
// as DNS resolvers do), so each is a flow of its own.
func udpRequests(addr string, n int, counts map[string]int) error {
	ua, err := net.ResolveUDPAddr("udp4", addr)
	if err != nil {
		return err
	}
	buf := make([]byte, 2048)
	for range n {
		pc, err := net.ListenPacket("udp4", ":0")
		if err != nil {
			return err
		}
		if _, err := pc.WriteTo([]byte("q"), ua); err != nil {
			pc.Close()
			return err
		}
		_ = pc.SetReadDeadline(time.Now().Add(3 * time.Second))
		m, from, err := pc.ReadFrom(buf)
		pc.Close()
		if err != nil {
			return err
		}
		if from.String() != addr {
			return fmt.Errorf("reply from %s, want %s", from, addr)
		}
		counts[string(buf[:m])]++
	}
	return nil
}

// helperProc is a running helper.
type helperProc struct {
	cmd *exec.Cmd
	in  io.WriteCloser
	out *bufio.Scanner
}

// startHelper starts the test binary in netns as a helper of the given
// kind, optionally inside cgroup (an open cgroup directory; nil for none).
func startHelper(t *testing.T, netns, kind, name string, cgroup *os.File) *helperProc {
	t.Helper()
	cmd := exec.Command("ip", "netns", "exec", netns, os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), helperEnv+"="+kind, "KPATH_TEST_NAME="+name)
	if cgroup != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: int(cgroup.Fd())}
	}
	cmd.Stderr = os.Stderr
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s helper: %v", kind, err)
	}
	t.Cleanup(func() {
		in.Close()
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	h := &helperProc{cmd: cmd, in: in, out: bufio.NewScanner(stdout)}
	if kind == "backend" {
		if !h.out.Scan() || h.out.Text() != "ready" {
			t.Fatalf("backend %s did not start", name)
		}
	}
	return h
}

// do sends one command to a client helper and returns its answer; an
// error answer fails the test.
func (h *helperProc) do(t *testing.T, cmd string) clientResult {
	t.Helper()
	r := h.try(t, cmd)
	if r.Err != "" {
		t.Fatalf("client %q: %s", cmd, r.Err)
	}
	return r
}

// try is do for commands that may fail.
func (h *helperProc) try(t *testing.T, cmd string) clientResult {
	t.Helper()
	if _, err := fmt.Fprintln(h.in, cmd); err != nil {
		t.Fatalf("client %q: %v", cmd, err)
	}
	if !h.out.Scan() {
		t.Fatalf("client %q: no answer", cmd)
	}
	var r clientResult
	if err := json.Unmarshal(h.out.Bytes(), &r); err != nil {
		t.Fatalf("client %q: %v", cmd, err)
	}
	return r
}

// podNetns is the name of a lab pod's network namespace (attached under
// /run/netns on real nodes).
func podNetns(t *testing.T, st *klab.State, node string, uid types.UID) string {
	t.Helper()
	ns, err := st.PodNetns(node, uid)
	if err != nil {
		t.Fatal(err)
	}
	return ns
}
