package image

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/kpath/kpath/internal/testutil"
)

// TestContainerdImportsAndUnpacks: a real containerd (its own root, state
// and socket in the test's directory, the CRI plugin off) imports the
// tarball under the image's name with the digest built here, and unpacks
// it for this machine's platform.
func TestContainerdImportsAndUnpacks(t *testing.T) {
	testutil.RequireRoot(t)
	testutil.RequireTool(t, "containerd", "ctr")
	dir, err := os.MkdirTemp("", "kpath-containerd-") // short: the socket path has a length limit
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "c.sock")
	conf := fmt.Sprintf(`version = 2
root = %q
state = %q
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = %q
`, filepath.Join(dir, "root"), filepath.Join(dir, "state"), sock)
	if err := os.WriteFile(filepath.Join(dir, "config.toml"), []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	logf, err := os.Create(filepath.Join(dir, "containerd.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("containerd", "--config", filepath.Join(dir, "config.toml"))
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		_ = cmd.Wait()
		logf.Close()
		if t.Failed() {
			b, _ := os.ReadFile(logf.Name())
			t.Logf("containerd log:\n%s", b)
		}
		// Snapshots are mounts of containerd's own; none stay after it stops.
		_ = exec.Command("umount", "-R", filepath.Join(dir, "root")).Run()
		_ = os.RemoveAll(dir)
	})
	ctr := func(args ...string) (string, error) {
		out, err := exec.Command("ctr", append([]string{"-a", sock, "-n", "k8s.io"}, args...)...).CombinedOutput()
		return string(out), err
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		if _, err := ctr("version"); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("containerd did not start")
		}
		time.Sleep(100 * time.Millisecond)
	}

	s := testSpec("#!/bin/true\n")
	img, err := Build(s)
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(dir, "img.tar")
	if err := WriteLayout(file, s.Ref, img); err != nil {
		t.Fatal(err)
	}
	digest, _ := img.Digest()
	if out, err := ctr("images", "import", file); err != nil {
		t.Fatalf("ctr images import: %v: %s", err, out)
	}
	out, err := ctr("images", "ls")
	if err != nil {
		t.Fatalf("ctr images ls: %v: %s", err, out)
	}
	var line string
	for l := range strings.SplitSeq(out, "\n") {
		if strings.HasPrefix(l, "docker.io/kpath/test:v1 ") {
			line = l
		}
	}
	if !strings.Contains(line, digest.String()) || !strings.Contains(line, "linux/"+runtime.GOARCH) {
		t.Fatalf("ctr images ls has no docker.io/kpath/test:v1 with %s for linux/%s:\n%s", digest, runtime.GOARCH, out)
	}
	if out, err := ctr("images", "check", "name==docker.io/kpath/test:v1"); err != nil || !strings.Contains(out, "complete") {
		t.Fatalf("ctr images check: %v: %s", err, out)
	}
	// Unpacked: a snapshot holds the image's files.
	if out, err := ctr("snapshots", "ls"); err != nil || !strings.Contains(out, "Committed") {
		t.Fatalf("no committed snapshot after import: %v: %s", err, out)
	}
}
