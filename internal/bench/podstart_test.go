package bench

import (
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestRunPodSandboxTimes reads containerd 1.6's own log lines.
func TestRunPodSandboxTimes(t *testing.T) {
	log := `time="2026-12-07T00:55:20.396077443Z" level=info msg="RunPodSandbox for &PodSandboxMetadata{Name:ps-1,Uid:f5dd416e-3721-4ee9-81c0-cf1b08c4c557,Namespace:podstart,Attempt:0,}"
time="2026-12-07T00:55:20.400000000Z" level=info msg="RunPodSandbox for &PodSandboxMetadata{Name:other,Uid:x,Namespace:default,Attempt:0,}"
time="2026-12-07T00:55:20.447372637Z" level=info msg="starting signal loop" namespace=k8s.io pid=22412 runtime=io.containerd.runc.v2
time="2026-12-07T00:55:20.507587124Z" level=info msg="RunPodSandbox for &PodSandboxMetadata{Name:ps-1,Uid:f5dd416e-3721-4ee9-81c0-cf1b08c4c557,Namespace:podstart,Attempt:0,} returns sandbox id \"1d49878ec97d\""
time="2026-12-07T00:55:20.600000000Z" level=info msg="RunPodSandbox for &PodSandboxMetadata{Name:other,Uid:x,Namespace:default,Attempt:0,} returns sandbox id \"2\""
time="2026-12-07T00:55:21.000000000Z" level=info msg="RunPodSandbox for &PodSandboxMetadata{Name:ps-2,Uid:y,Namespace:podstart,Attempt:0,}"
`
	path := filepath.Join(t.TempDir(), "containerd.log")
	if err := os.WriteFile(path, []byte(log), 0o600); err != nil {
		t.Fatal(err)
	}
	got := runPodSandboxTimes(path, "ps-")
	if len(got) != 1 || got[0] != (507587124-396077443)*time.Nanosecond {
		t.Fatalf("got %v, want [111.509681ms] (ps-1 only; ps-2 never returned)", got)
	}
	d := dist([]time.Duration{3 * time.Millisecond, time.Millisecond, 2 * time.Millisecond})
	if d.N != 3 || d.P50 != 2 || d.Max != 3 {
		t.Fatalf("dist %+v", d)
	}
}
