package bench

import (
	"errors"
	"os/exec"
	"slices"
	"testing"
	"time"
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
	// sh names the mark as its $0 and waits in a builtin, without a child
	// (sleep would reject the extra argument and exit).
	cmd := exec.Command("sh", "-c", "read line", mark+"x")
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	defer stdin.Close()
	if err := cmd.Start(); err != nil {
		t.Skipf("no sh to run: %v", err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	// Until the child has exec'd, its command line is still the test's.
	got := processesNaming(mark)
	for deadline := time.Now().Add(5 * time.Second); len(got) == 0 && time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		got = processesNaming(mark)
	}
	if !slices.Equal(got, []int{cmd.Process.Pid}) {
		t.Fatalf("processes naming %s: %v, want only %d", mark, got, cmd.Process.Pid)
	}
	if got := processesNaming(t.TempDir() + "/other/"); len(got) != 0 {
		t.Fatalf("processes naming a fresh directory: %v", got)
	}
}
