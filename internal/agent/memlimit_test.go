package agent

import (
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/debug"
	"strconv"
	"strings"
	"testing"

	"github.com/kpath/kpath/internal/testutil"
)

// memlimitChild is the test binary run again inside a memory-limited
// cgroup: it prints the limit setMemoryLimit left in force.
const memlimitChild = "KPATH_TEST_MEMLIMIT_CHILD"

func init() {
	if os.Getenv(memlimitChild) != "" {
		setMemoryLimit(slog.New(slog.DiscardHandler))
		fmt.Println(debug.SetMemoryLimit(-1))
		os.Exit(0)
	}
}

// memoryCgroup makes a cgroup whose memory is limited to limit bytes, in
// the v2 hierarchy where it has the memory controller, else in v1's, and
// returns its cgroup.procs.
func memoryCgroup(t *testing.T, limit int64) string {
	t.Helper()
	name := "kpath-test-memlimit-" + testutil.UniqueID()
	dir, file := filepath.Join("/sys/fs/cgroup/memory", name), "memory.limit_in_bytes"
	if ctl, err := os.ReadFile("/sys/fs/cgroup/cgroup.controllers"); err == nil && strings.Contains(string(ctl), "memory") {
		dir, file = filepath.Join("/sys/fs/cgroup", name), "memory.max"
	}
	if err := os.Mkdir(dir, 0o755); err != nil {
		testutil.SkipOrFail(t, fmt.Sprintf("no memory cgroup to limit: %v", err))
	}
	t.Cleanup(func() { _ = os.Remove(dir) })
	if err := os.WriteFile(filepath.Join(dir, file), []byte(strconv.FormatInt(limit, 10)), 0o644); err != nil {
		t.Fatal(err)
	}
	return filepath.Join(dir, "cgroup.procs")
}

// TestMemoryLimitFromCgroup: in a container limited to 256 MiB the agent
// runs with GOMEMLIMIT at 90% of it; a GOMEMLIMIT given wins.
func TestMemoryLimitFromCgroup(t *testing.T) {
	testutil.RequireRoot(t)
	const limit = 256 << 20
	procs := memoryCgroup(t, limit)
	run := func(env ...string) int64 {
		t.Helper()
		// The shell joins the cgroup, then becomes the child.
		cmd := exec.Command("sh", "-c", fmt.Sprintf("echo $$ > %s && exec %s -test.run=^$", procs, os.Args[0]))
		cmd.Env = append(append(os.Environ(), memlimitChild+"=1"), env...)
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("child: %v", err)
		}
		v, err := strconv.ParseInt(strings.TrimSpace(string(out)), 10, 64)
		if err != nil {
			t.Fatalf("child said %q", out)
		}
		return v
	}
	ratio := memoryLimitRatio // a variable: the product is not a whole number
	if got, want := run(), int64(float64(limit)*ratio); got != want {
		t.Errorf("GOMEMLIMIT %d under a %d-byte limit, want %d", got, limit, want)
	}
	if got := run("GOMEMLIMIT=100MiB"); got != 100<<20 {
		t.Errorf("with GOMEMLIMIT=100MiB given: %d", got)
	}
}

// TestStartupGC: the collector runs at startupGCPercent until the agent is
// ready, then at what it ran at before; a GOGC given is left alone.
func TestStartupGC(t *testing.T) {
	before := debug.SetGCPercent(100)
	defer debug.SetGCPercent(before)
	noEnv := func(string) string { return "" }

	end := startupGC(noEnv)
	if got := debug.SetGCPercent(startupGCPercent); got != startupGCPercent {
		t.Errorf("GOGC during the start %d, want %d", got, startupGCPercent)
	}
	end()
	if got := debug.SetGCPercent(100); got != 100 {
		t.Errorf("GOGC once ready %d, want 100", got)
	}
	debug.SetGCPercent(70)
	end() // called again by the deferred end: no effect
	if got := debug.SetGCPercent(100); got != 70 {
		t.Errorf("a second end set GOGC to %d", got)
	}

	startupGC(func(k string) string { return map[string]string{"GOGC": "300"}[k] })
	if got := debug.SetGCPercent(100); got != 100 {
		t.Errorf("GOGC given, but the start set %d", got)
	}
}
