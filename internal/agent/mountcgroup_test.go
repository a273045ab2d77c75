package agent

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/kpath/kpath/internal/datapath"
	"github.com/kpath/kpath/internal/testutil"
)

// TestMountCgroup2 runs mount-cgroup as a container on a cgroup v2 node
// does: in a cgroup namespace of its own (rooted at a cgroup of the
// test's) and a mount namespace of its own. The hierarchy it mounts must
// be the node's (holding the container's cgroup), not the container's.
func TestMountCgroup2(t *testing.T) {
	if os.Getenv("KPATH_TEST_MOUNT_CGROUP") != "" {
		mountCgroupInContainer(t, os.Getenv("KPATH_TEST_MOUNT_CGROUP"), os.Getenv("KPATH_TEST_HOST_PROC"))
		return
	}
	testutil.RequireRoot(t)
	testutil.RequireTool(t, "unshare")
	root, err := datapath.CgroupV2Root()
	if err != nil {
		testutil.SkipOrFail(t, err.Error())
	}
	cg := testutil.NewCgroup(t, root)
	fd, err := os.Open(cg)
	if err != nil {
		t.Fatal(err)
	}
	defer fd.Close()
	cmd := exec.Command("unshare", "--cgroup", "--mount", "--propagation", "private", "--",
		os.Args[0], "-test.run", "^TestMountCgroup2$", "-test.v")
	// The node's /proc as the container sees it: its init is this test
	// process, in the node's cgroup namespace.
	hostProc := t.TempDir()
	if err := os.MkdirAll(filepath.Join(hostProc, "1", "ns"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(fmt.Sprintf("/proc/%d/ns/cgroup", os.Getpid()), filepath.Join(hostProc, "1", "ns", "cgroup")); err != nil {
		t.Fatal(err)
	}
	cmd.Env = append(os.Environ(), "KPATH_TEST_MOUNT_CGROUP="+filepath.Base(cg), "KPATH_TEST_HOST_PROC="+hostProc)
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: int(fd.Fd())}
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "--- PASS: TestMountCgroup2") {
		t.Fatalf("in a container's namespaces: %v\n%s", err, out)
	}
}

// mountCgroupInContainer is the container's side: cgroup names the
// container's cgroup under the node's root.
func mountCgroupInContainer(t *testing.T, cgroup, hostProc string) {
	// What the container itself would mount: rooted at its own cgroup,
	// which it does not see as a child. (Proves the check below can fail.)
	own := t.TempDir()
	if err := unix.Mount("cgroup2", own, "cgroup2", 0, ""); err != nil {
		t.Fatal(err)
	}
	defer unix.Unmount(own, unix.MNT_DETACH)
	if _, err := os.Stat(filepath.Join(own, cgroup)); err == nil {
		t.Fatalf("the container's own cgroup2 mount holds %s: the test's namespaces are not a container's", cgroup)
	}
	target := filepath.Join(t.TempDir(), "cgroupv2")
	mounted, err := MountCgroup2(target, hostProc)
	if err != nil || !mounted {
		t.Fatalf("MountCgroup2: %v, %v", mounted, err)
	}
	defer unix.Unmount(target, unix.MNT_DETACH)
	if _, err := os.Stat(filepath.Join(target, cgroup)); err != nil {
		t.Fatalf("the hierarchy mounted at %s is not the node's: %v", target, err)
	}
	// Again (an agent pod restarted): already there, nothing stacked.
	if mounted, err := MountCgroup2(target, hostProc); err != nil || mounted {
		t.Fatalf("second MountCgroup2: %v, %v", mounted, err)
	}
	if _, err := MountCgroup2(filepath.Join(t.TempDir(), "x"), "/nonexistent"); err == nil || !strings.Contains(err.Error(), "/nonexistent") {
		t.Fatalf("without the node's /proc: %v", err)
	}
	// A bpffs, once: the second call finds it.
	bpffs := filepath.Join(t.TempDir(), "bpf")
	if mounted, err := MountBPFFS(bpffs); err != nil || !mounted {
		t.Fatalf("MountBPFFS: %v, %v", mounted, err)
	}
	defer unix.Unmount(bpffs, unix.MNT_DETACH)
	var st unix.Statfs_t
	if err := unix.Statfs(bpffs, &st); err != nil || st.Type != unix.BPF_FS_MAGIC {
		t.Fatalf("%s is not a bpffs: %v %x", bpffs, err, st.Type)
	}
	if mounted, err := MountBPFFS(bpffs); err != nil || mounted {
		t.Fatalf("second MountBPFFS: %v, %v", mounted, err)
	}
}
