package workload

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"syscall"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

// ServiceAccountDir is where in-cluster clients (rest.InClusterConfig)
// read the pod's token, CA and namespace.
const ServiceAccountDir = "/var/run/secrets/kubernetes.io/serviceaccount"

// Sandbox gives the calling process what a container gives a pod's
// process, then execs argv: saDir (token, ca.crt, namespace) mounted at
// ServiceAccountDir. It must run in a mount namespace of its own (`ip
// netns exec` makes one), where a tmpfs over /run (the target of
// /var/run) leaves the node's /run untouched: nothing outside the process
// sees the mounts.
func Sandbox(saDir string, argv []string) error {
	if len(argv) == 0 {
		return errors.New("sandbox: no command")
	}
	if saDir != "" {
		if err := mountServiceAccount(saDir); err != nil {
			return err
		}
	}
	bin, err := exec.LookPath(argv[0])
	if err != nil {
		return fmt.Errorf("sandbox: %w", err)
	}
	return syscall.Exec(bin, argv, os.Environ())
}

func mountServiceAccount(saDir string) error {
	self, err := os.Readlink("/proc/self/ns/mnt")
	if err != nil {
		return fmt.Errorf("sandbox: %w", err)
	}
	host, err := os.Readlink("/proc/1/ns/mnt")
	if err == nil && host == self {
		return errors.New("sandbox: refusing to mount in the host's mount namespace (run it under ip netns exec or unshare -m)")
	}
	run, err := filepath.EvalSymlinks(filepath.Dir(filepath.Dir(filepath.Dir(ServiceAccountDir)))) // /var/run -> /run
	if err != nil {
		return fmt.Errorf("sandbox: %w", err)
	}
	if err := syscall.Mount("tmpfs", run, "tmpfs", syscall.MS_NOSUID|syscall.MS_NODEV, "mode=0755"); err != nil {
		return fmt.Errorf("sandbox: tmpfs on %s: %w", run, err)
	}
	target := filepath.Join(run, "secrets", "kubernetes.io", "serviceaccount")
	if err := os.MkdirAll(target, 0o755); err != nil {
		return fmt.Errorf("sandbox: %w", err)
	}
	if err := syscall.Mount(saDir, target, "", syscall.MS_BIND|syscall.MS_RDONLY, ""); err != nil {
		return fmt.Errorf("sandbox: bind %s on %s: %w", saDir, target, err)
	}
	return nil
}

// InClusterPods lists the pods of the pod's own namespace as an
// in-cluster client does: the configuration from the environment
// (KUBERNETES_SERVICE_HOST and _PORT) and ServiceAccountDir, through the
// kubernetes Service.
func InClusterPods(ctx context.Context) (namespace string, pods []string, err error) {
	cfg, err := rest.InClusterConfig()
	if err != nil {
		return "", nil, fmt.Errorf("in-cluster configuration: %w", err)
	}
	ns, err := os.ReadFile(filepath.Join(ServiceAccountDir, "namespace"))
	if err != nil {
		return "", nil, fmt.Errorf("in-cluster namespace: %w", err)
	}
	c, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return "", nil, err
	}
	l, err := c.CoreV1().Pods(string(ns)).List(ctx, metav1.ListOptions{})
	if err != nil {
		return string(ns), nil, fmt.Errorf("list pods through %s: %w", cfg.Host, err)
	}
	for _, p := range l.Items {
		pods = append(pods, p.Name)
	}
	slices.Sort(pods)
	return string(ns), pods, nil
}
