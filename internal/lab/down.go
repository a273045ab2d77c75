package lab

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/kpath/kpath/internal/datapath"
)

// Down stops the lab named name whose directory is dir and removes
// everything it made: processes, namespaces, pinned maps, cgroups and its
// directory. It also cleans up after a lab whose setup crashed half way,
// by the names a lab of that name uses; other labs are left alone.
func Down(dir, name string, log func(string, ...any)) error {
	nm, err := namesFor(name)
	if err != nil {
		return err
	}
	var errs []error
	// (A supervisor running in this very process, as in tests, has
	// already been stopped by its caller.)
	if st, err := LoadState(dir); err == nil && st.Pid != os.Getpid() && ProcessAlive(st.Pid) {
		log("stopping the lab supervisor (pid %d)", st.Pid)
		_ = syscall.Kill(st.Pid, syscall.SIGTERM)
		for i := 0; i < 150 && ProcessAlive(st.Pid); i++ {
			time.Sleep(100 * time.Millisecond)
		}
		_ = syscall.Kill(st.Pid, syscall.SIGKILL)
	}
	// Namespaces: pods, nodes, vnet.
	out, _ := exec.Command("ip", "netns", "list").Output()
	for _, line := range strings.Split(string(out), "\n") {
		if f := strings.Fields(line); len(f) > 0 && owns(nm.netns, f[0]) {
			if err := run("ip", "netns", "del", f[0]); err != nil {
				errs = append(errs, err)
			}
		}
	}
	// Pinned datapaths (their links detach with them).
	cfg := datapath.DefaultConfig()
	if ents, err := os.ReadDir(cfg.BPFFS); err == nil {
		for _, e := range ents {
			if owns(nm.pin, e.Name()) {
				c := cfg
				c.PinDir = e.Name()
				if err := datapath.Reset(c); err != nil {
					errs = append(errs, err)
				}
			}
		}
	}
	// Cgroups: kill what is left in them (real nodes' pods in trees of
	// their own), then remove them, in the v2 hierarchy and in every v1
	// one (real nodes' cgroup roots).
	roots, _ := cgroupV1Roots()
	if root, err := datapath.CgroupV2Root(); err == nil {
		roots = append([]string{root}, roots...)
	}
	for _, root := range roots {
		if err := removeCgroupTree(filepath.Join(root, nm.cgroup)); err != nil {
			errs = append(errs, err)
		}
	}
	// Mounts under the lab's directory (Cilium nodes' mount namespaces).
	if err := unmountUnder(dir); err != nil {
		errs = append(errs, err)
	}
	if err := removeHostDirs(dir); err != nil {
		errs = append(errs, err)
	}
	if err := os.RemoveAll(dir); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

func killCgroup(dir string) {
	data, _ := os.ReadFile(filepath.Join(dir, "cgroup.procs"))
	for _, f := range strings.Fields(string(data)) {
		var pid int
		if _, err := fmt.Sscan(f, &pid); err == nil {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

func removeWithRetry(dir string) error {
	var err error
	for range 50 {
		if err = os.Remove(dir); err == nil || errors.Is(err, os.ErrNotExist) {
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("remove cgroup %s: %w", dir, err)
}
