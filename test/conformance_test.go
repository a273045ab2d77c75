package test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kpath/kpath/internal/conformance"
	"github.com/kpath/kpath/internal/testenv"
	"github.com/kpath/kpath/internal/testutil"
)

// conformanceSubset is what make test runs of the upstream suite (kpath
// lab conformance runs the whole selection): SIG Network's Conformance
// tests of Services and of host ports, and NetworkPolicy tests over TCP
// and UDP.
var conformanceSubset = []string{
	`\[sig-network\] Services .*\[Conformance\]`,
	`\[sig-network\] HostPort .*\[Conformance\]`,
	`\[sig-network\] Netpol .*(should support a 'default-deny-ingress' policy|should enforce policy based on Ports|should allow egress access to server in CIDR block|should deny egress from all pods in a namespace|should enforce updated policy)`,
}

// TestConformanceSubset runs a subset of the upstream Kubernetes e2e
// suite (e2e.test of the pinned Kubernetes, its images built here) on two
// real nodes with kpath serving Services and enforcing NetworkPolicy: no
// test may fail, and every selected test must have run.
func TestConformanceSubset(t *testing.T) {
	bin, k8sBin := labPrerequisites(t)
	realNodePrerequisites(t, k8sBin)
	testutil.RequireTool(t, "ldd")
	for _, b := range []string{"e2e.test", "ginkgo", "agnhost"} {
		if _, err := os.Stat(filepath.Join(k8sBin, b)); err != nil {
			testutil.SkipOrFail(t, b+" not built: run make e2e-bins")
		}
	}
	coredns, err := testenv.CoreDNSBinDir()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(coredns, "coredns")); err != nil {
		testutil.SkipOrFail(t, "coredns not built: run make coredns-bins")
	}
	if _, err := os.Stat("/bin/busybox"); err != nil {
		testutil.SkipOrFail(t, "no static busybox: install busybox-static (hack/install-deps.sh)")
	}
	images := buildImages(t)
	out := t.TempDir()
	s, err := conformance.Run(context.Background(), conformance.Options{Services: "kpath", Focus: conformanceSubset, Nodes: 2, Procs: 4,
		Out: out, BinDir: bin, ImageDir: images, Pause: filepath.Join(filepath.Dir(images), "static", "kpath-pause"),
		K8sBin: k8sBin, CoreDNSBin: coredns, Busybox: "/bin/busybox", Timeout: 20 * time.Minute, Log: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	s.Print(&b)
	t.Logf("%s", b.String())
	if s.Failed > 0 {
		log, _ := os.ReadFile(filepath.Join(out, "e2e.log"))
		t.Errorf("%d upstream tests failed; the suite's log ends:\n%s", s.Failed, tailLines(string(log), 80))
	}
	// 17 Conformance tests of Services, 1 of host ports, 5 NetworkPolicy
	// tests over TCP and 2 over UDP (and 2 over SCTP where the kernel has
	// SCTP).
	want := 25
	if len(conformance.MachineSkips()) == 0 {
		want += 2
	}
	if s.Passed+s.Failed+s.Skipped != want || s.Skipped > 0 {
		t.Errorf("%d tests passed, %d failed, %d skipped: the selection is %d tests, none to skip (%+v)", s.Passed, s.Failed, s.Skipped, want, s.SkippedTests)
	}
}

// tailLines is the last n lines of s.
func tailLines(s string, n int) string {
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
