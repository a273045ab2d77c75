package conformance

import (
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// TestReadJUnit reads a report ginkgo wrote for the suite (trimmed, with a
// failure and a test that skipped itself added): the selected tests are
// counted, the suite's own nodes and the tests the selection left out are
// not.
func TestReadJUnit(t *testing.T) {
	var s Summary
	if err := ReadJUnit(filepath.Join("testdata", "junit.xml"), &s); err != nil {
		t.Fatal(err)
	}
	if s.Passed != 2 || s.Failed != 1 || s.Skipped != 1 {
		t.Fatalf("passed %d failed %d skipped %d, want 2 1 1", s.Passed, s.Failed, s.Skipped)
	}
	if len(s.Failures) != 1 || !strings.Contains(s.Failures[0].Message, "not reachable") ||
		s.Failures[0].Test != "[sig-network] Services should be able to up and down services [sig-network]" {
		t.Errorf("failures: %+v", s.Failures)
	}
	if len(s.SkippedTests) != 1 || s.SkippedTests[0].Message != "Requires at least 3 nodes (not 2)" {
		t.Errorf("skipped: %+v", s.SkippedTests)
	}
	for _, p := range s.PassedTests {
		if !strings.HasPrefix(p, "[sig-network] Services should serve") {
			t.Errorf("passed: %q", p)
		}
	}
	if err := ReadJUnit(filepath.Join("testdata", "missing.xml"), &s); err == nil {
		t.Error("a missing report is no error")
	}

	// Against a reference that also passed the failed test: that one
	// regressed; a test passed here and not there is none.
	file := filepath.Join(t.TempDir(), "summary.json")
	if err := s.Write(file); err != nil {
		t.Fatal(err)
	}
	back, err := ReadSummary(file)
	if err != nil {
		t.Fatal(err)
	}
	ref := &Summary{PassedTests: []string{s.Failures[0].Test, s.PassedTests[0]}}
	if got := back.Regressions(ref); len(got) != 1 || got[0] != s.Failures[0].Test {
		t.Errorf("regressions %v", got)
	}
	if got := ref.Regressions(back); len(got) != 1 || got[0] != s.PassedTests[1] {
		t.Errorf("the other way round: %v", got)
	}
}

// TestSelection: the default focus and skip select what the issue names
// and leave out every skipped kind, checked on test names of the pinned
// suite.
func TestSelection(t *testing.T) {
	skip := regexp.MustCompile(SkipPattern())
	selected := func(name string) bool {
		for _, f := range Focus {
			if regexp.MustCompile(f).MatchString(name) {
				return !skip.MatchString(name)
			}
		}
		return false
	}
	for name, want := range map[string]bool{
		"[sig-network] Services should serve a basic endpoint from pods [Conformance] [sig-network, Conformance]":                           true,
		"[sig-network] Services should have session affinity timeout work for service with type clusterIP [LinuxOnly] [Slow]":               true,
		"[sig-network] Netpol NetworkPolicy between server and client should allow egress access on one named port [Feature:NetworkPolicy]": true,
		"[sig-network] Networking Granular Checks: Pods should function for intra-pod communication: http [NodeConformance] [Conformance]":  true,
		"[sig-network] DNS should provide DNS for services [Conformance] [sig-network, Conformance]":                                        true,
		"[sig-network] Services should allow creating a basic SCTP service with pod and endpoints [LinuxOnly] [Serial]":                     false,
		"[sig-network] [Feature:IPv6DualStack] should create a single stack service with cluster ip from primary service range":             false,
		"[sig-network] LoadBalancers [Feature:LoadBalancer] should be able to change the type and ports of a TCP service [Slow]":            false,
		"[sig-network] DNS should provide DNS for the cluster [Provider:GCE]":                                                               false,
		"[sig-storage] In-tree Volumes [Driver: nfs3] volumes should store data [sig-storage]":                                              false,
	} {
		if got := selected(name); got != want {
			t.Errorf("%s: selected %v, want %v", name, got, want)
		}
	}
}
