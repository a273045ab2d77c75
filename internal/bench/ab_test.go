package bench

import (
	"errors"
	"os/exec"
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
