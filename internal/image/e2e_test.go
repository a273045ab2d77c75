package image

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kpath/kpath/internal/testenv"
	"github.com/kpath/kpath/internal/testutil"
)

// TestHostPrograms: a dynamically linked program comes with its loader
// and every library ldd names, each once, at the path the loader looks
// in; the program sits where it is asked to.
func TestHostPrograms(t *testing.T) {
	testutil.RequireTool(t, "ldd", "bash")
	bash, _ := exec.LookPath("bash")
	files, err := HostPrograms(map[string]string{"/bin/bash": bash, "/usr/bin/bash2": bash})
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	var libc, loader bool
	for _, f := range files {
		if seen[f.Path] {
			t.Errorf("%s listed twice", f.Path)
		}
		seen[f.Path] = true
		libc = libc || strings.HasPrefix(filepath.Base(f.Path), "libc.so")
		loader = loader || strings.HasPrefix(filepath.Base(f.Path), "ld-linux")
	}
	if !seen["/bin/bash"] || !seen["/usr/bin/bash2"] || !libc || !loader {
		t.Errorf("files %v: want bash at both paths, libc and the loader", seen)
	}
	if _, err := HostPrograms(map[string]string{"/bin/x": "/nonexistent/x"}); err == nil || !strings.Contains(err.Error(), "install-deps") {
		t.Errorf("a missing program: %v", err)
	}
}

// TestBusyboxApplets: a link per applet to /bin/busybox, none where the
// image has a program of its own.
func TestBusyboxApplets(t *testing.T) {
	if _, err := os.Stat("/bin/busybox"); err != nil {
		testutil.SkipOrFail(t, "no static busybox: install busybox-static (hack/install-deps.sh)")
	}
	files, err := BusyboxApplets("/bin/busybox", map[string]bool{"/bin/sh": true})
	if err != nil {
		t.Fatal(err)
	}
	links := map[string]string{}
	for _, f := range files {
		links[f.Path] = f.Link
	}
	if links["/bin/ls"] != "/bin/busybox" || links["/bin/cat"] != "/bin/busybox" {
		t.Errorf("ls and cat: %q %q", links["/bin/ls"], links["/bin/cat"])
	}
	if _, ok := links["/bin/sh"]; ok {
		t.Error("/bin/sh was to be skipped")
	}
	if _, err := BusyboxApplets("/bin/bash", nil); err == nil {
		t.Error("a dynamic program taken for a static busybox")
	}
}

// TestE2EImageNames: the images built for the e2e suite carry the names
// the pinned suite asks for (e2e.test --list-images).
func TestE2EImageNames(t *testing.T) {
	dir, err := testenv.BinDir()
	if err != nil {
		t.Fatal(err)
	}
	e2e := filepath.Join(dir, "e2e.test")
	if _, err := os.Stat(e2e); err != nil {
		testutil.SkipOrFail(t, "e2e.test not built: make e2e-bins")
	}
	out, err := exec.Command(e2e, "--list-images").Output()
	if err != nil {
		t.Fatalf("e2e.test --list-images: %v", err)
	}
	listed := map[string]bool{}
	for _, l := range strings.Fields(string(out)) {
		listed[l] = true
	}
	for _, ref := range []string{E2EAgnhost, E2EBusyBox, E2EJessieDnsutils, E2ENginx, E2EPause} {
		if !listed[ref] {
			t.Errorf("%s is not an image of the pinned suite", ref)
		}
	}
}

// TestE2EImages: agnhost's image holds what the suite's tests run in its
// pods, sh being bash (Debian's busybox sh would run its own nc and wget).
func TestE2EImages(t *testing.T) {
	k8sBin, err := testenv.BinDir()
	if err != nil {
		t.Fatal(err)
	}
	coredns, err := testenv.CoreDNSBinDir()
	if err != nil {
		t.Fatal(err)
	}
	in := E2EInputs{Agnhost: filepath.Join(k8sBin, "agnhost"), PorterDir: filepath.Join(k8sBin, "agnhost-porter"),
		CoreDNS: filepath.Join(coredns, "coredns"), Busybox: "/bin/busybox", Pause: "/bin/true"}
	for _, f := range []string{in.Agnhost, in.CoreDNS, in.Busybox} {
		if _, err := os.Stat(f); err != nil {
			testutil.SkipOrFail(t, f+" missing: make e2e-bins coredns-bins, hack/install-deps.sh")
		}
	}
	specs, err := E2E(in, testenv.PinnedCoreDNS)
	if err != nil {
		t.Fatal(err)
	}
	if len(specs) != 6 || specs[0].Ref != E2EAgnhost {
		t.Fatalf("%d images, the first %s", len(specs), specs[0].Ref)
	}
	files := map[string]File{}
	for _, f := range specs[0].Files {
		files[f.Path] = f
	}
	for _, p := range []string{"/agnhost", "/coredns", "/bin/bash", "/usr/bin/nc", "/usr/bin/curl", "/usr/bin/wget", "/usr/bin/dig", "/usr/bin/getent", "/sbin/ip", "/localhost.crt", "/etc/passwd"} {
		if f, ok := files[p]; !ok || len(f.Data) == 0 {
			t.Errorf("agnhost's image has no %s", p)
		}
	}
	if files["/bin/sh"].Link != "bash" || files["/agnhost-2"].Link != "agnhost" || files["/bin/cat"].Link != "/bin/busybox" || !files["/tmp"].Dir {
		t.Errorf("links: sh %q, agnhost-2 %q, cat %q; /tmp a directory: %v", files["/bin/sh"].Link, files["/agnhost-2"].Link, files["/bin/cat"].Link, files["/tmp"].Dir)
	}
	if !strings.Contains(string(files["/etc/passwd"].Data), "user-defined-in-image:x:1000") {
		t.Error("agnhost's image lacks its user-defined-in-image")
	}
}
