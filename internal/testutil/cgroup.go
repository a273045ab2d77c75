package testutil

import (
	"os"
	"path/filepath"
	"testing"
	"time"
)

// NewCgroup creates an empty cgroup directory of the test's own under the
// cgroup v2 root (datapath.CgroupV2Root: this package cannot import it),
// for socket hooks that must not reach the machine's processes, and
// removes it when the test ends.
func NewCgroup(t testing.TB, root string) string {
	t.Helper()
	dir := filepath.Join(root, "kpath-test-"+UniqueID())
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatalf("cgroup: %v", err)
	}
	t.Cleanup(func() {
		// Detached hooks go with their last reference; the directory can
		// be removed once no process is left in it.
		for i := 0; i < 50; i++ {
			if err := os.Remove(dir); err == nil || os.IsNotExist(err) {
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
		t.Errorf("cgroup %s left behind", dir)
	})
	return dir
}
