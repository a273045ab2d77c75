package datapath

import (
	"fmt"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// TestExplainLoadErrorCapabilities: a loader without CAP_PERFMON (the
// verifier's "prohibited for !root") or without CAP_BPF (EPERM) is told
// which capabilities it needs, not that its kernel is too old.
func TestExplainLoadErrorCapabilities(t *testing.T) {
	ve := &ebpf.VerifierError{Cause: unix.EACCES, Log: []string{"R1 has pointer with unsupported alu operation, pointer arithmetic with it prohibited for !root"}}
	for _, err := range []error{fmt.Errorf("load program: %w", ve), fmt.Errorf("create map: %w", unix.EPERM)} {
		got := explainLoadError(err, "/sys/fs/bpf/kpath").Error()
		if !strings.Contains(got, "CAP_PERFMON") || !strings.Contains(got, "CAP_BPF") {
			t.Errorf("%v explained as %q", err, got)
		}
	}
	other := &ebpf.VerifierError{Cause: unix.EINVAL, Log: []string{"invalid mem access 'scalar'"}}
	if got := explainLoadError(other, "/x").Error(); !strings.Contains(got, "rejected a kpath program") {
		t.Errorf("a real rejection explained as %q", got)
	}
}
