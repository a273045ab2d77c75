package bench

import (
	"errors"
	"os/exec"
	"slices"
	"testing"
)

func TestABFailure(t *testing.T) {
	exit := &exec.ExitError{}
	stalled := "This is ApacheBench, Version 2.3 <$Revision$>\n\nBenchmarking 10.96.179.214 (be patient)...apr_pollset_poll: The timeout specified has expired (70007)\nTotal of 6346 requests completed\n"
	var stall *abStalled
	if err := abFailure(exit, []byte(stalled)); !errors.As(err, &stall) || stall.completed != 6346 {
		t.Fatalf("stalled run: got %v, want abStalled after 6346", err)
	}
	other := "apr_socket_connect(): Connection refused (111)\n"
	err := abFailure(exit, []byte(other))
	if errors.As(err, &stall) || !errors.Is(err, exit) {
		t.Fatalf("refused run: got %v, want the exit error, not a stall", err)
	}
}

func TestProcessesNaming(t *testing.T) {
	mark := t.TempDir() + "/lab/"
	cmd := exec.Command("sleep", "30", mark+"x")
	if err := cmd.Start(); err != nil {
		t.Skipf("no sleep to run: %v", err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	if got := processesNaming(mark); !slices.Equal(got, []int{cmd.Process.Pid}) {
		t.Fatalf("processes naming %s: %v, want only %d", mark, got, cmd.Process.Pid)
	}
	if got := processesNaming(t.TempDir() + "/other/"); len(got) != 0 {
		t.Fatalf("processes naming a fresh directory: %v", got)
	}
}
