package dataplane

import (
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestNewRejects(t *testing.T) {
	for _, tc := range []struct {
		mode string
		c    Cluster
		want string
	}{
		{"calico", Cluster{}, `service dataplane "calico"`},
		{"cilium", Cluster{Routing: "tunnel", CiliumBin: "/x", Dir: "/tmp/lab"}, "needs native routing"},
		{"cilium", Cluster{Routing: "native", Dir: "/tmp/lab"}, "make cilium-bins"},
		{"cilium", Cluster{Routing: "native", CiliumBin: "/x", Dir: "/run/lab"}, "outside /run"},
	} {
		if _, err := New(tc.mode, tc.c); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("New(%q, %+v) = %v, want an error naming %q", tc.mode, tc.c, err, tc.want)
		}
	}
	for _, m := range Modes {
		c := Cluster{Routing: "native", CiliumBin: "/x", Dir: "/tmp/lab"}
		dp, err := New(m, c)
		if err != nil || dp.Mode() != m {
			t.Errorf("New(%q) = %v, %v", m, dp, err)
		}
	}
}

func TestAgentProcesses(t *testing.T) {
	c := Cluster{Routing: "native", CiliumBin: "/x", Dir: "/tmp/lab", Kubeconfig: "/tmp/lab/kubeconfig"}
	n := Node{Name: "node-1", PinDir: "kpath-node-1"}
	for mode, want := range map[string]Process{
		"kpath":               {Binary: "kpath-agent", Args: []string{"--pin-dir=kpath-node-1"}},
		"none":                {Binary: "kpath-agent", Args: []string{"--pin-dir=kpath-node-1"}},
		"kube-proxy-nftables": {Binary: "kube-proxy", Args: []string{"--kubeconfig=/tmp/lab/kubeconfig", "--hostname-override=node-1"}},
		"cilium":              {Binary: "cilium-agent", Args: []string{"--state-dir=/tmp/lab/node-1/cilium/state"}},
	} {
		dp, _ := New(mode, c)
		if got := dp.Agent(n); got.Binary != want.Binary || strings.Join(got.Args, " ") != strings.Join(want.Args, " ") {
			t.Errorf("%s: agent %+v, want %+v", mode, got, want)
		}
	}
}

// A process is found by its binary's name and every argument named, and
// not by a wrapper (sh) that holds the same arguments.
func TestProcessPid(t *testing.T) {
	dir := t.TempDir()
	sleep, err := exec.LookPath("sleep")
	if err != nil {
		t.Skip("no sleep binary")
	}
	bin := filepath.Join(dir, "fake-agent")
	if err := exec.Command("ln", "-s", sleep, bin).Run(); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "30", "1") // sleep takes only intervals
	if err := cmd.Start(); err != nil {
		t.Skipf("cannot run %s: %v", bin, err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	p := Process{Binary: "fake-agent", Args: []string{"1", "30"}}
	got := p.Pid()
	// Until the child has exec'd, its command line is the test's.
	for deadline := time.Now().Add(5 * time.Second); got == 0 && time.Now().Before(deadline); got = p.Pid() {
		time.Sleep(10 * time.Millisecond)
	}
	if got != cmd.Process.Pid {
		t.Errorf("Pid() = %d, want %d", got, cmd.Process.Pid)
	}
	if got := (Process{Binary: "fake-agent", Args: []string{"2"}}).Pid(); got != 0 {
		t.Errorf("Pid() with another argument = %d, want 0", got)
	}
	if got := (Process{Binary: "sh", Args: []string{"30", "1"}}).Pid(); got != 0 {
		t.Errorf("Pid() of another binary = %d, want 0", got)
	}
}

func TestCiliumDropLabels(t *testing.T) {
	labels := `direction="INGRESS",reason="Policy denied"}`
	if d, r := labelOf(labels, "direction"), labelOf(labels, "reason"); d != "INGRESS" || r != "Policy denied" {
		t.Errorf("labelOf = %q, %q", d, r)
	}
	if got := labelOf(labels, "family"); got != "" {
		t.Errorf("labelOf(missing) = %q", got)
	}
}
