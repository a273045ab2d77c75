// Package testutil holds helpers for kpath's privileged tests: the rule
// that a missing privilege or tool skips a test, except in CI where
// KPATH_REQUIRE_PRIVILEGED=1 makes it fail, and namespaces that clean up.
package testutil

import (
	"os"
	"os/exec"
	"testing"
)

// RequireEnvVar is the variable that turns privilege skips into failures.
const RequireEnvVar = "KPATH_REQUIRE_PRIVILEGED"

// Required reports whether skips for missing privileges are failures.
func Required() bool { return os.Getenv(RequireEnvVar) == "1" }

// SkipOrFail skips the test with reason, or fails it when privileged tests
// are required.
func SkipOrFail(t testing.TB, reason string) {
	t.Helper()
	if Required() {
		t.Fatalf("%s (and %s=1 requires this test to run)", reason, RequireEnvVar)
	}
	t.Skip(reason)
}

// RequireRoot skips (or fails) unless the test runs as root.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		SkipOrFail(t, "needs root (BPF, network namespaces)")
	}
}

// RequireTool skips (or fails) unless every named binary is on PATH.
func RequireTool(t testing.TB, names ...string) {
	t.Helper()
	for _, n := range names {
		if _, err := exec.LookPath(n); err != nil {
			SkipOrFail(t, "needs "+n+" on PATH")
		}
	}
}
