package lab

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"

	"k8s.io/apimachinery/pkg/types"
)

// PodNetns is the name under /run/netns (for `ip netns exec`) of the
// network namespace of a pod of this lab's node. The lab's runtime names
// its pods' namespaces itself. On real nodes the runtime's namespace is
// pinned inside the node's mount namespace, out of the host's reach, so
// it is attached under the lab's name by a process of the pod's sandbox
// (`ip netns attach`), found by the pod's cgroup; a name attached before
// the pod's sandbox was made again is attached anew. Down removes the
// names with the lab's others.
func (s *State) PodNetns(node string, uid types.UID) (string, error) {
	name := PodNetns(s.NetnsPrefix, node, uid)
	if s.Runtime != RuntimeContainerd {
		return name, nil
	}
	pid, err := podProcess(uid)
	if err != nil {
		return "", fmt.Errorf("pod %s on %s: %w", uid, node, err)
	}
	want, err := os.Stat(fmt.Sprintf("/proc/%d/ns/net", pid))
	if err != nil {
		return "", fmt.Errorf("pod %s on %s: %w", uid, node, err)
	}
	path := "/run/netns/" + name
	if have, err := os.Stat(path); err == nil {
		if os.SameFile(have, want) {
			return name, nil
		}
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			return "", fmt.Errorf("ip netns del %s (the pod's sandbox was made again): %v: %s", name, err, bytes.TrimSpace(out))
		}
	}
	if out, err := exec.Command("ip", "netns", "attach", name, strconv.Itoa(pid)).CombinedOutput(); err != nil {
		return "", fmt.Errorf("ip netns attach %s %d (pod %s on %s): %v: %s", name, pid, uid, node, err, bytes.TrimSpace(out))
	}
	return name, nil
}

// podProcess finds a process of the pod with uid: one whose cgroup is the
// pod's (the kubelet names it pod<uid>, with the uid's dashes as
// underscores under the systemd driver). Every container of a pod shares
// its sandbox's network namespace, so any one will do.
func podProcess(uid types.UID) (int, error) {
	marks := [][]byte{[]byte("/pod" + string(uid) + "/"), []byte("/pod" + strings.ReplaceAll(string(uid), "-", "_") + ".slice/")}
	procs, err := filepath.Glob("/proc/[0-9]*/cgroup")
	if err != nil {
		return 0, err
	}
	for _, f := range procs {
		data, err := os.ReadFile(f)
		if err != nil {
			continue // gone meanwhile
		}
		for _, m := range marks {
			if bytes.Contains(data, m) {
				pid, _ := strconv.Atoi(filepath.Base(filepath.Dir(f)))
				return pid, nil
			}
		}
	}
	return 0, errors.New("no process in the pod's cgroup: is its sandbox running?")
}
