package datapath

import (
	"os"
	"testing"
)

// TestMain lets the test binary double as a helper process that tests start
// inside a cgroup and network namespace of their own (see sock_test.go).
func TestMain(m *testing.M) {
	if mode := os.Getenv(helperEnv); mode != "" {
		os.Exit(runHelper(mode))
	}
	os.Exit(m.Run())
}
