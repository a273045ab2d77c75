package testutil

import (
	"crypto/rand"
	"encoding/hex"
	"os/exec"
	"strings"
	"testing"

	"github.com/kpath/kpath/internal/nsutil"
)

// Run runs a command and fails the test with its output when it fails.
func Run(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// UniqueID returns a short random hex string for names of test objects.
func UniqueID() string {
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// NewNetns creates a named network namespace (with ip netns add) that is
// deleted, with every link in it, when the test ends.
func NewNetns(t testing.TB, name string) string {
	t.Helper()
	Run(t, "ip", "netns", "add", name)
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v: %s", name, err, out)
		}
	})
	Run(t, "ip", "-n", name, "link", "set", "lo", "up")
	return name
}

// InNetns runs fn on a thread that has entered the named namespace.
func InNetns(name string, fn func() error) error { return nsutil.Do(name, fn) }

// PodSpec is one end of a pod-style veth: eth0 inside netns Pod with Addr/32,
// reaching the node side HostIf through the link-local gateway 169.254.1.1.
type PodSpec struct {
	Node, Pod, HostIf, Addr string
}

// Gateway is the link-local address pods route through, held by every
// host-side veth (as kpath's CNI plugin sets them up).
const Gateway = "169.254.1.1"

// WirePod creates the veth pair and addresses and routes for a pod.
func WirePod(t testing.TB, s PodSpec) {
	t.Helper()
	Run(t, "ip", "-n", s.Node, "link", "add", s.HostIf, "type", "veth", "peer", "name", "eth0", "netns", s.Pod)
	Run(t, "ip", "-n", s.Node, "addr", "add", Gateway+"/32", "dev", s.HostIf)
	Run(t, "ip", "-n", s.Node, "link", "set", s.HostIf, "up")
	Run(t, "ip", "-n", s.Node, "route", "add", s.Addr+"/32", "dev", s.HostIf)
	Run(t, "ip", "-n", s.Pod, "addr", "add", s.Addr+"/32", "dev", "eth0")
	Run(t, "ip", "-n", s.Pod, "link", "set", "eth0", "up")
	Run(t, "ip", "-n", s.Pod, "route", "add", Gateway, "dev", "eth0", "scope", "link")
	Run(t, "ip", "-n", s.Pod, "route", "add", "default", "via", Gateway, "dev", "eth0")
}

// ForwardIntoNetns makes addr (a loopback TCP address of this namespace,
// such as the test API server's) reachable at the same address inside the
// named network namespace until the test ends.
func ForwardIntoNetns(t testing.TB, ns, addr string) {
	t.Helper()
	ln, err := nsutil.Forward(ns, addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
}
