package lab

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/kpath/kpath/internal/cniplugin"
	"github.com/kpath/kpath/internal/dataplane"
	"github.com/kpath/kpath/internal/image"
	"github.com/kpath/kpath/internal/nsutil"
)

// Real nodes (--runtime containerd): each lab node runs a real containerd
// (Debian's, with its runc) and a real kubelet (from the pinned Kubernetes)
// in the node's network namespace and in a mount namespace of the node's
// own, so that what one node's pods, runtime and kubelet see as the
// machine's paths is that node's alone:
//
//   - a fresh tmpfs on /run: containerd's state, the shims' sockets
//     (/run/containerd/s, shared between containerds otherwise), runc's
//     root, the pods' network namespaces (/run/netns);
//   - the node's own directories bound over /opt/cni/bin, /etc/cni/net.d,
//     /var/lib/kubelet, /var/lib/containerd, /var/log/pods,
//     /var/log/containers, /var/lib/kpath and /var/log/kpath (a DaemonSet's
//     hostPath resolves there), and a bpffs of its own on /sys/fs/bpf;
//   - the kernel settings the kubelet insists on (vm.overcommit_memory,
//     kernel.panic, ...) bound read from files holding the values it wants,
//     where the machine's differ: with protectKernelDefaults the kubelet
//     checks them instead of writing them machine-wide.
//
// Mount points the machine lacks are made empty and recorded, and lab down
// removes them. Each node has a cgroup root of its own (the kubelet's
// cgroupRoot) in every hierarchy, so no kubelet takes another's pods for
// orphans. The mount namespace is kept by a bind mount of its file, as for
// Cilium's nodes.

// Node runtimes.
const (
	RuntimeLab        = "lab"        // the lab's own runtime: fast, no kubelet
	RuntimeContainerd = "containerd" // a real kubelet and containerd per node
)

// realNodeDirs are the machine's paths each real node has its own of: the
// runtime's and the kubelet's, and those kpath's DaemonSet mounts from the
// host (its IPAM state, its flow export).
var realNodeDirs = []string{"/opt/cni/bin", "/etc/cni/net.d", "/var/lib/kubelet", "/var/lib/containerd", "/var/log/pods", "/var/log/containers",
	"/var/lib/kpath", "/var/log/kpath"}

// kernelDefaults are the settings the kubelet wants (pkg/kubelet/cm,
// setupKernelTunables), as /proc/sys paths.
var kernelDefaults = map[string]string{
	"vm/overcommit_memory":      "1",
	"vm/panic_on_oom":           "0",
	"kernel/panic":              "10",
	"kernel/panic_on_oops":      "1",
	"kernel/keys/root_maxkeys":  "1000000",
	"kernel/keys/root_maxbytes": "25000000",
}

// hostDirsFile records the mount points a lab made on the machine.
const hostDirsFile = "host-dirs"

// realNode is a real node's paths.
type realNode struct {
	n       NodeInfo
	dir     string // <lab>/<node>/real
	mountNS string // the node's mount namespace, bound here
	// utsNS is its UTS namespace: its host name is the node's, which
	// host-network pods see as their own (the suite's tests compare it
	// with the node's name).
	utsNS  string
	cgroup string // its cgroup root, relative to each hierarchy's root
}

// realNodeDir is where a real node keeps its files in the lab's directory.
func realNodeDir(labDir, node string) string { return filepath.Join(labDir, node, "real") }

func newRealNode(labDir string, nm names, n NodeInfo) realNode {
	dir := realNodeDir(labDir, n.Name)
	return realNode{n: n, dir: dir, mountNS: filepath.Join(dir, "ns", "mnt"), utsNS: filepath.Join(dir, "ns", "uts"), cgroup: "/" + nm.cgroup + "/" + n.Name}
}

// root is where the node's own copy of path lives on the machine.
func (r realNode) root(path string) string { return filepath.Join(r.dir, "root", path) }

// nsenter runs args in the node's network, mount and UTS namespaces.
func (r realNode) nsenter(args ...string) *exec.Cmd {
	return exec.Command("nsenter", append([]string{"--net=/run/netns/" + r.n.Netns, "--mount=" + r.mountNS, "--uts=" + r.utsNS, "--"}, args...)...)
}

// ensureHostDirs makes the mount points of realNodeDirs that the machine
// lacks, recording each one made in the lab's directory.
func ensureHostDirs(labDir string) error {
	f, err := os.OpenFile(filepath.Join(labDir, hostDirsFile), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	defer f.Close()
	for _, d := range realNodeDirs {
		// Every missing ancestor is made (and recorded) on the way down.
		var missing []string
		for p := d; p != "/"; p = filepath.Dir(p) {
			if _, err := os.Stat(p); err == nil {
				break
			}
			missing = append(missing, p)
		}
		for i := len(missing) - 1; i >= 0; i-- {
			if err := os.Mkdir(missing[i], 0o755); err != nil && !os.IsExist(err) {
				return fmt.Errorf("mount point %s: %w", missing[i], err)
			}
			if _, err := fmt.Fprintln(f, missing[i]); err != nil {
				return err
			}
		}
	}
	return nil
}

// removeHostDirs removes the mount points a lab made, deepest first, if
// they are still empty.
func removeHostDirs(labDir string) error {
	data, err := os.ReadFile(filepath.Join(labDir, hostDirsFile))
	if err != nil {
		return nil
	}
	lines := strings.Fields(string(data))
	var errs []string
	for i := len(lines) - 1; i >= 0; i-- {
		if err := os.Remove(lines[i]); err != nil && !os.IsNotExist(err) {
			errs = append(errs, err.Error())
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("remove the lab's mount points: %s", strings.Join(errs, "; "))
	}
	return nil
}

// setupMountNS makes the node's mount namespace and its mounts.
func (r realNode) setupMountNS() error {
	dirs := []string{filepath.Join(r.dir, "sysctl"), r.root("/run/kpath/cgroupv2")}
	for _, d := range realNodeDirs {
		dirs = append(dirs, r.root(d))
	}
	for _, d := range dirs {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	// Slave: the machine's mounts reach the node, the node's stay there.
	if err := nsutil.NewMountNS(r.mountNS); err != nil {
		return fmt.Errorf("mount namespace for %s: %w", r.n.Name, err)
	}
	// Beside it (a private mount, so the binding stays the lab's), the
	// node's UTS namespace, named for the node.
	if err := os.WriteFile(r.utsNS, nil, 0o600); err != nil {
		return err
	}
	if out, err := exec.Command("unshare", "--uts="+r.utsNS, "hostname", r.n.Name).CombinedOutput(); err != nil {
		return fmt.Errorf("UTS namespace for %s: %v: %s", r.n.Name, err, strings.TrimSpace(string(out)))
	}
	script := []string{
		"set -e",
		"mount -t tmpfs -o mode=755 tmpfs /run",
		"mkdir -p /run/netns /run/containerd /run/lock",
		// A bpffs of the node's own: what an agent pins on one node is not
		// another's (the machine's holds a single mount there).
		"while mountpoint -q /sys/fs/bpf; do umount -l /sys/fs/bpf; done",
		"mount -t bpf bpf /sys/fs/bpf",
		// Shared within the node, as a kubelet expects of its root (volume
		// mounts propagate into the containers that use them).
		"mount --make-rshared /",
	}
	for _, d := range realNodeDirs {
		script = append(script, fmt.Sprintf("mount --bind %s %s", r.root(d), d))
	}
	// The DaemonSet's /run/kpath (the agent's sockets) where the lab
	// reaches it, and in it the node's cgroup2 as a machine of its own
	// has it: rooted at the node's cgroup, what kpath's mount-cgroup
	// would mount from the node's cgroup namespace.
	script = append(script, "mkdir -p /run/kpath", fmt.Sprintf("mount --bind %s /run/kpath", r.root("/run/kpath")),
		fmt.Sprintf("mount --bind %s /run/kpath/cgroupv2", r.n.Cgroup))
	for key, want := range kernelDefaults {
		have, err := os.ReadFile(filepath.Join("/proc/sys", key))
		if err != nil || strings.TrimSpace(string(have)) == want {
			continue // absent (keys in another kernel), or already as wanted
		}
		f := filepath.Join(r.dir, "sysctl", strings.ReplaceAll(key, "/", "."))
		if err := os.WriteFile(f, []byte(want+"\n"), 0o444); err != nil {
			return err
		}
		script = append(script, fmt.Sprintf("mount --bind -o ro %s /proc/sys/%s", f, key))
	}
	cmd := exec.Command("nsenter", "--mount="+r.mountNS, "--", "sh", "-c", strings.Join(script, "\n"))
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("mounts of %s's namespace: %w: %s", r.n.Name, err, out)
	}
	return nil
}

// cgroupV1Roots are the machine's cgroup v1 hierarchies (none on a
// cgroup v2 only machine).
func cgroupV1Roots() ([]string, error) {
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	var out []string
	for line := range strings.SplitSeq(string(data), "\n") {
		pre, post, ok := strings.Cut(line, " - ")
		f := strings.Fields(pre)
		if ok && len(f) >= 5 && strings.HasPrefix(post, "cgroup ") {
			out = append(out, f[4])
		}
	}
	return out, nil
}

// setupCgroups makes the node's cgroup root in every v1 hierarchy (the
// v2 one is the lab's node cgroup), cpuset's with its parent's CPUs and
// memory nodes (an empty cpuset takes no process).
func (r realNode) setupCgroups() error {
	roots, err := cgroupV1Roots()
	if err != nil {
		return err
	}
	for _, root := range roots {
		dir := root
		for _, part := range strings.Split(strings.Trim(r.cgroup, "/"), "/") {
			parent := dir
			dir = filepath.Join(dir, part)
			if err := os.Mkdir(dir, 0o755); err != nil && !os.IsExist(err) {
				return fmt.Errorf("cgroup %s: %w", dir, err)
			}
			for _, f := range []string{"cpuset.cpus", "cpuset.mems"} {
				if v, err := os.ReadFile(filepath.Join(parent, f)); err == nil {
					if cur, _ := os.ReadFile(filepath.Join(dir, f)); strings.TrimSpace(string(cur)) == "" {
						if err := os.WriteFile(filepath.Join(dir, f), v, 0o644); err != nil {
							return fmt.Errorf("cgroup %s: %s: %w", dir, f, err)
						}
					}
				}
			}
		}
	}
	return nil
}

// removeCgroupTree kills every process in a cgroup tree and removes it,
// deepest first.
func removeCgroupTree(dir string) error {
	if _, err := os.Stat(dir); err != nil {
		return nil
	}
	var dirs []string
	_ = filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			dirs = append(dirs, p)
		}
		return nil
	})
	for range 3 {
		for _, d := range dirs {
			killCgroup(d)
		}
		time.Sleep(50 * time.Millisecond)
	}
	var err error
	for i := len(dirs) - 1; i >= 0; i-- {
		if e := removeWithRetry(dirs[i]); e != nil && err == nil {
			err = e
		}
	}
	return err
}

// containerdConfig is the node's containerd configuration: its paths are
// the defaults, which the node's mount namespace makes its own.
func containerdConfig() string {
	return fmt.Sprintf(`version = 2
root = "/var/lib/containerd"
state = "/run/containerd"
[grpc]
  address = "/run/containerd/containerd.sock"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = %q
  # Containers get an OOM score no lower than containerd's own: lowering
  # it needs CAP_SYS_RESOURCE, which a machine that is itself a container
  # may not grant (as kind runs rootless).
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/opt/cni/bin"
    conf_dir = "/etc/cni/net.d"
    max_conf_num = 1
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
`, "docker.io/kpath/pause:"+image.Tag)
}

// kubeletConfig is the node's KubeletConfiguration. One disk and one
// kernel serve every node of the lab: image garbage collection and eviction
// by disk are off, kernel settings are checked, not written. The kubelet's
// API (logs, exec) takes anonymous requests: it is reachable only inside
// the lab's namespaces, and the lab's API server holds no client
// certificate for it.
func (r realNode) kubeletConfig(clusterDNS bool) string {
	dns := ""
	if clusterDNS {
		dns = fmt.Sprintf("clusterDNS: [%s]\nclusterDomain: %s\n", ClusterDNSIP, ClusterDomain)
	}
	return fmt.Sprintf(`apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
cgroupDriver: cgroupfs
cgroupRoot: %s
failSwapOn: false
failCgroupV1: false
protectKernelDefaults: true
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard:
  memory.available: "0%%"
  nodefs.available: "0%%"
  nodefs.inodesFree: "0%%"
  imagefs.available: "0%%"
authentication:
  anonymous:
    enabled: true
  webhook:
    enabled: false
authorization:
  mode: AlwaysAllow
address: %s
healthzBindAddress: 127.0.0.1
readOnlyPort: 0
containerRuntimeEndpoint: unix:///run/containerd/containerd.sock
serializeImagePulls: false
%s`, r.cgroup, r.n.IP, dns)
}

// startRealNode brings node n's containerd and kubelet up (the kubelet
// registers the Node with the node's credentials) and imports the lab's
// images; the CNI configuration comes later (installCNI), once the node's
// dataplane serves it.
func startRealNode(ctx context.Context, o Options, r realNode, kubeconfig string, k keeper) error {
	if err := r.setupMountNS(); err != nil {
		return err
	}
	if err := r.setupCgroups(); err != nil {
		return err
	}
	files := map[string]string{"containerd.toml": containerdConfig(), "kubelet.yaml": r.kubeletConfig(o.ClusterDNS != "")}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(r.dir, name), []byte(content), 0o600); err != nil {
			return err
		}
	}
	daemon := func(name string, args ...string) (<-chan struct{}, error) {
		logPath := filepath.Join(r.dir, name+".log")
		return k.Keep(name+" on "+r.n.Name, func() (*exec.Cmd, func(), error) {
			logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
			if err != nil {
				return nil, nil, err
			}
			cg, err := os.Open(r.n.Cgroup)
			if err != nil {
				logf.Close()
				return nil, nil, err
			}
			cmd := r.nsenter(args...)
			cmd.Stdout, cmd.Stderr = logf, logf
			cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, UseCgroupFD: true, CgroupFD: int(cg.Fd())}
			return cmd, func() { logf.Close(); cg.Close() }, nil
		})
	}
	if _, err := daemon("containerd", "containerd", "--config", filepath.Join(r.dir, "containerd.toml")); err != nil {
		return err
	}
	if err := r.waitContainerd(ctx); err != nil {
		return err
	}
	for _, dir := range append([]string{o.ImageDir}, o.ImageDirs...) {
		if err := r.importImages(dir); err != nil {
			return err
		}
	}
	_, err := daemon("kubelet", filepath.Join(o.K8sBin, "kubelet"), "--config="+filepath.Join(r.dir, "kubelet.yaml"),
		"--kubeconfig="+kubeconfig, "--hostname-override="+r.n.Name, "--node-ip="+r.n.IP,
		"--node-labels="+corev1.LabelTopologyZone+"="+r.n.Zone, "--v=1")
	return err
}

// checkRuntime validates o.Runtime and what it needs.
func checkRuntime(o *Options) error {
	switch o.Runtime {
	case "", RuntimeLab:
		o.Runtime = RuntimeLab
		if o.Install != InstallLab {
			return fmt.Errorf("install %s needs real nodes: --runtime containerd", o.Install)
		}
		if o.ClusterDNS != "" {
			return fmt.Errorf("a cluster DNS needs real nodes: --runtime containerd")
		}
		return nil
	case RuntimeContainerd:
	default:
		return fmt.Errorf("runtime %q: want %s or %s", o.Runtime, RuntimeLab, RuntimeContainerd)
	}
	if o.Services == "cilium" {
		return fmt.Errorf("runtime containerd with services cilium: not supported yet (Cilium's CNI is wired by the lab's runtime only)")
	}
	for _, tool := range []string{"containerd", "ctr", "runc"} {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("runtime containerd needs %s: install Debian's containerd package (hack/install-deps.sh)", tool)
		}
	}
	for path, what := range map[string]string{
		filepath.Join(o.K8sBin, "kubelet"):  "the kubelet: make k8s-bins",
		filepath.Join(o.BinDir, "loopback"): "the loopback CNI plugin: make build",
	} {
		if _, err := os.Stat(path); err != nil {
			return fmt.Errorf("runtime containerd needs %s (%s)", path, what)
		}
	}
	if o.ImageDir == "" {
		return fmt.Errorf("runtime containerd needs the images to import (make image; --images DIR)")
	}
	switch o.Install {
	case InstallLab:
	case InstallHelm:
		if o.Services != "kpath" && o.Services != "kpath-tc" {
			return fmt.Errorf("install helm with services %s: the chart installs kpath (services kpath or kpath-tc)", o.Services)
		}
		if _, err := os.Stat(o.HelmBin); o.HelmBin == "" || err != nil {
			return fmt.Errorf("install helm needs the helm CLI %q: make helm-bins", o.HelmBin)
		}
	default:
		return fmt.Errorf("install %q: want helm, or nothing (the lab runs the agents)", o.Install)
	}
	return nil
}

// ctr runs containerd's client on the node.
func (r realNode) ctr(args ...string) (string, error) {
	out, err := r.nsenter(append([]string{"ctr", "-a", "/run/containerd/containerd.sock", "-n", "k8s.io"}, args...)...).CombinedOutput()
	return string(out), err
}

func (r realNode) waitContainerd(ctx context.Context) error {
	deadline := time.Now().Add(30 * time.Second)
	for {
		_, err := r.ctr("version")
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("containerd on %s did not start (log: %s):\n%s", r.n.Name,
				filepath.Join(r.dir, "containerd.log"), dataplane.TailFile(filepath.Join(r.dir, "containerd.log"), 15))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// importImages imports every image tarball of dir (make image's output)
// into the node's containerd, where the kubelet finds them without a
// registry.
func (r realNode) importImages(dir string) error {
	tars, _ := filepath.Glob(filepath.Join(dir, "*.tar"))
	if len(tars) == 0 {
		return fmt.Errorf("no images in %s: run make image (real nodes run the project's images, never pulled)", dir)
	}
	for _, t := range tars {
		if out, err := r.ctr("images", "import", t); err != nil {
			return fmt.Errorf("import %s on %s: %w: %s", t, r.n.Name, err, out)
		}
	}
	return nil
}

// installCNI installs the node's CNI plugins and then its network
// configuration, as a CNI DaemonSet does: the configuration is written
// aside and renamed into place (containerd ignores a file moved in from
// another directory, and would read a half-written one).
func (r realNode) installCNI(w dataplane.CNI, loopback string) error {
	bin := r.root("/opt/cni/bin")
	plugins, err := os.ReadDir(w.BinDir)
	if err != nil {
		return err
	}
	copies := map[string]string{filepath.Join(bin, "loopback"): loopback}
	for _, p := range plugins {
		copies[filepath.Join(bin, p.Name())] = filepath.Join(w.BinDir, p.Name())
	}
	for dst, src := range copies {
		if err := copyFile(src, dst, 0o755); err != nil {
			return err
		}
	}
	// As kpath installs it on any node (cniplugin.ConfVersion): the lab's
	// own runtime is given 1.1.0, which containerd 1.6 cannot read.
	var list map[string]any
	if err := json.Unmarshal(w.Conf, &list); err != nil {
		return fmt.Errorf("CNI configuration: %w", err)
	}
	list["cniVersion"] = cniplugin.ConfVersion
	data, err := json.Marshal(list)
	if err != nil {
		return err
	}
	conf := r.root("/etc/cni/net.d")
	tmp := filepath.Join(conf, ".10-kpath.conflist.tmp")
	if err := os.WriteFile(tmp, data, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, filepath.Join(conf, "10-kpath.conflist"))
}

func copyFile(src, dst string, mode os.FileMode) error {
	data, err := os.ReadFile(src) // follows the lab's symlinks to the binaries
	if err != nil {
		return err
	}
	tmp := dst + ".tmp"
	if err := os.WriteFile(tmp, data, mode); err != nil {
		return err
	}
	return os.Rename(tmp, dst)
}

// RuntimeProcesses are real node n's runtime processes, containerd and
// its kubelet, each found by its command line (the lab restarts either
// when it exits); none on the lab's own runtime.
func (s *State) RuntimeProcesses(n NodeInfo) []dataplane.Process {
	if s.Runtime != RuntimeContainerd {
		return nil
	}
	dir := realNodeDir(s.Dir, n.Name)
	return []dataplane.Process{
		{Binary: "containerd", Args: []string{"--config", filepath.Join(dir, "containerd.toml")}},
		{Binary: "kubelet", Args: []string{"--hostname-override=" + n.Name}},
	}
}
