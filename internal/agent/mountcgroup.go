package agent

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"
)

// MountCgroup2 mounts the node's cgroup v2 hierarchy at target, where the
// agent attaches its socket hooks (cgroupRoot), unless a cgroup2
// hierarchy is mounted there already. A container on a cgroup v2 machine
// usually runs in a cgroup namespace of its own: a cgroup2 mounted from
// there would be rooted at the container's cgroup and the hooks would see
// none of the pods. So the mount is made from the cgroup namespace of the
// node's init process (hostProc/1/ns/cgroup: the node's /proc mounted into
// the container), as Cilium's mount-cgroup init container does. target
// lies on a hostPath mounted with bidirectional propagation, so the mount
// is the node's and outlives the container. It reports whether it
// mounted.
func MountCgroup2(target, hostProc string) (bool, error) {
	if ok, err := isCgroup2Mount(target); err != nil || ok {
		return false, err
	}
	if err := os.MkdirAll(target, 0o755); err != nil {
		return false, fmt.Errorf("cgroup mount point: %w", err)
	}
	nsPath := filepath.Join(hostProc, "1", "ns", "cgroup")
	ns, err := os.Open(nsPath)
	if err != nil {
		return false, fmt.Errorf("the node's cgroup namespace (mount the node's /proc at %s): %w", hostProc, err)
	}
	defer ns.Close()
	errc := make(chan error, 1)
	// Setns changes the calling thread only: the thread entering the
	// node's namespace is locked and never unlocked, so Go ends it with
	// the goroutine instead of reusing it for other work.
	go func() {
		runtime.LockOSThread()
		if err := unix.Setns(int(ns.Fd()), unix.CLONE_NEWCGROUP); err != nil {
			errc <- fmt.Errorf("enter the node's cgroup namespace %s: %w", nsPath, err)
			return
		}
		if err := unix.Mount("cgroup2", target, "cgroup2", 0, ""); err != nil {
			errc <- fmt.Errorf("mount cgroup2 at %s: %w (the kernel needs the unified hierarchy: cgroup v2 or a hybrid setup)", target, err)
			return
		}
		errc <- nil
	}()
	if err := <-errc; err != nil {
		return false, err
	}
	return true, nil
}

// MountBPFFS mounts a bpffs at target unless one is mounted there, as
// Cilium's mount-bpf-fs init container does: the agent's pins must outlive
// its container, on the node's own bpffs (target lies on a hostPath
// mounted with bidirectional propagation). It reports whether it mounted.
func MountBPFFS(target string) (bool, error) {
	if ok, err := isMountOf(target, "bpf"); err != nil || ok {
		return false, err
	}
	if err := os.MkdirAll(target, 0o755); err != nil {
		return false, fmt.Errorf("bpffs mount point: %w", err)
	}
	if err := unix.Mount("bpffs", target, "bpf", 0, "mode=0700"); err != nil {
		return false, fmt.Errorf("mount bpffs at %s: %w", target, err)
	}
	return true, nil
}

// isCgroup2Mount reports whether a cgroup2 hierarchy is mounted at path.
func isCgroup2Mount(path string) (bool, error) { return isMountOf(path, "cgroup2") }

// isMountOf reports whether the mount seen at path is of type fstype.
func isMountOf(path, fstype string) (bool, error) {
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return false, fmt.Errorf("read mountinfo: %w", err)
	}
	clean := filepath.Clean(path)
	found := false
	for line := range strings.SplitSeq(string(data), "\n") {
		pre, post, ok := strings.Cut(line, " - ")
		f := strings.Fields(pre)
		if !ok || len(f) < 5 || f[4] != clean {
			continue
		}
		// The last mount at a point is the one seen there.
		found = strings.HasPrefix(post, fstype+" ")
	}
	return found, nil
}

func newMountBPFFSCommand() *cobra.Command {
	var target string
	cmd := &cobra.Command{
		Use:   "mount-bpffs",
		Short: "Mount a bpffs where the agent pins its maps, unless the node has one there (the DaemonSet's init step)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			mounted, err := MountBPFFS(target)
			if err != nil {
				return err
			}
			if mounted {
				fmt.Fprintf(cmd.OutOrStdout(), "mounted a bpffs at %s\n", target)
			} else {
				fmt.Fprintf(cmd.OutOrStdout(), "bpffs already mounted at %s\n", target)
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&target, "target", "/sys/fs/bpf", "where to mount it (the agent's bpffs)")
	return cmd
}

func newMountCgroupCommand() *cobra.Command {
	var target, hostProc string
	cmd := &cobra.Command{
		Use:   "mount-cgroup",
		Short: "Mount the node's cgroup v2 hierarchy where the socket hooks attach (the DaemonSet's init step)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if target == "" {
				return errors.New("--target is empty: give the cgroupRoot the agent is configured with")
			}
			mounted, err := MountCgroup2(target, hostProc)
			if err != nil {
				return err
			}
			if mounted {
				fmt.Fprintf(cmd.OutOrStdout(), "mounted the node's cgroup2 at %s\n", target)
			} else {
				fmt.Fprintf(cmd.OutOrStdout(), "cgroup2 already mounted at %s\n", target)
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&target, "target", "/run/kpath/cgroupv2", "where to mount it (the agent's cgroupRoot)")
	cmd.Flags().StringVar(&hostProc, "host-proc", "/hostproc", "the node's /proc, mounted into the container")
	return cmd
}
