package image

import (
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"runtime"
	"slices"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// The images the upstream e2e suite of the pinned Kubernetes runs in the
// tests kpath lab conformance selects, by the exact names the suite asks
// for (test/utils/image/manifest.go; a test checks them against
// e2e.test --list-images). None is ever pulled: every node imports them.
const (
	E2EAgnhost        = "registry.k8s.io/e2e-test-images/agnhost:2.56"
	E2EBusyBox        = "registry.k8s.io/e2e-test-images/busybox:1.37.0-1"
	E2EJessieDnsutils = "registry.k8s.io/e2e-test-images/jessie-dnsutils:1.7"
	E2ENginx          = "registry.k8s.io/e2e-test-images/nginx:1.14-4"
	E2EPause          = "registry.k8s.io/pause:3.10.1"
)

// E2EInputs are the programs the e2e images are made of.
type E2EInputs struct {
	// Agnhost is the agnhost binary built from the pinned Kubernetes
	// module (make e2e-bins); PorterDir, where its porter's localhost.crt
	// and localhost.key are (the module's test/images/agnhost/porter).
	Agnhost, PorterDir string
	// Pause is kpath's static pause (make image's bin/static/kpath-pause).
	Pause string
	// CoreDNS is the pinned CoreDNS (make coredns-bins): /coredns in
	// agnhost, as its image carries one for DNS tests, and the cluster
	// DNS's image, CoreDNSRef.
	CoreDNS string
	// Busybox is a static busybox (Debian's busybox-static).
	Busybox string
}

// CoreDNSRef names the cluster DNS's image: kpath's build of the pinned
// CoreDNS, under a name of its own (it is not the upstream image).
func CoreDNSRef(version string) string { return "kpath/coredns:" + version }

// E2E lists the e2e suite's images. agnhost's Dockerfile puts the agnhost
// binary at / on Alpine with bind-tools, curl, netcat-openbsd, iproute2 and
// bash added; here the binary is built from the pinned module's source and
// the tools are this machine's Debian programs with their libraries, on
// busybox's applets as Alpine's base has them (the tests run sh, nc -v -t
// -w, curl, wget, dig, getent, ip, ss and the like in its pods); sh is bash,
// as Debian's busybox sh would run its applets before those programs.
// busybox and jessie-dnsutils are busybox's applets with bash and wget,
// and dig, nslookup, host and getent for the latter. nginx is a stand-in:
// agnhost's test-webserver on port 80 (the suite's nginx pods, in the
// EndpointSlice tests, only have to run and listen there). pause is kpath's.
func E2E(in E2EInputs, coreDNSVersion string) ([]Spec, error) {
	platform := v1.Platform{OS: runtime.GOOS, Architecture: runtime.GOARCH}
	read := func(what, p string) ([]byte, error) {
		data, err := os.ReadFile(p)
		if err != nil {
			return nil, fmt.Errorf("e2e images: %s: %w", what, err)
		}
		return data, nil
	}
	agnhost, err := read("agnhost (make e2e-bins)", in.Agnhost)
	if err != nil {
		return nil, err
	}
	pause, err := read("pause (make image)", in.Pause)
	if err != nil {
		return nil, err
	}
	coredns, err := read("coredns (make coredns-bins)", in.CoreDNS)
	if err != nil {
		return nil, err
	}
	tools := map[string]string{
		"/bin/bash":         "/bin/bash",
		"/usr/bin/curl":     "/usr/bin/curl",
		"/usr/bin/wget":     "/usr/bin/wget",
		"/usr/bin/nc":       "/usr/bin/nc.openbsd",
		"/usr/bin/dig":      "/usr/bin/dig",
		"/usr/bin/nslookup": "/usr/bin/nslookup",
		"/usr/bin/host":     "/usr/bin/host",
		"/usr/bin/getent":   "/usr/bin/getent", // the DNS tests' getent hosts (busybox has none)
		"/sbin/ip":          "/usr/sbin/ip",
		"/usr/sbin/ss":      "/usr/bin/ss",
	}
	// Debian's busybox sh runs its own applets before any program on the
	// PATH (nc, wget, ...), Alpine's does not: sh is bash.
	applets, err := BusyboxApplets(in.Busybox, map[string]bool{"/bin/sh": true})
	if err != nil {
		return nil, fmt.Errorf("e2e images: %w", err)
	}
	// base is bash as sh, the programs (image paths of tools), busybox's
	// applets where no program is, /tmp, and the users and groups: root,
	// nobody and those given.
	base := func(programs []string, users, groups string) ([]File, error) {
		progs := map[string]string{"/bin/bash": tools["/bin/bash"]}
		for _, p := range programs {
			progs[p] = tools[p]
		}
		files, err := HostPrograms(progs)
		if err != nil {
			return nil, fmt.Errorf("e2e images: %w", err)
		}
		files = append(files, File{Path: "/bin/sh", Link: "bash"})
		for _, a := range applets {
			if _, ok := progs[a.Path]; !ok {
				files = append(files, a)
			}
		}
		return append(files,
			File{Path: "/tmp", Mode: 0o1777, Dir: true},
			File{Path: "/etc/passwd", Mode: 0o644, Data: []byte("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n" + users)},
			File{Path: "/etc/group", Mode: 0o644, Data: []byte("root:x:0:\nnogroup:x:65534:\n" + groups)},
		), nil
	}
	// With the user and group agnhost's image defines (a
	// SupplementalGroups test reads them).
	agnFiles, err := base(slices.Collect(maps.Keys(tools)),
		"user-defined-in-image:x:1000:1000::/home/user-defined-in-image:/bin/sh\n",
		"user-defined-in-image:x:1000:\ngroup-defined-in-image:x:50000:user-defined-in-image\n")
	if err != nil {
		return nil, err
	}
	agnFiles = append(agnFiles,
		File{Path: "/agnhost", Mode: 0o755, Data: agnhost},
		File{Path: "/agnhost-2", Link: "agnhost"},
		File{Path: "/coredns", Mode: 0o755, Data: coredns},
		File{Path: "/uploads", Mode: 0o755, Dir: true},
	)
	if in.PorterDir != "" {
		for _, name := range []string{"localhost.crt", "localhost.key"} {
			data, err := read("agnhost's porter", filepath.Join(in.PorterDir, name))
			if err != nil {
				return nil, err
			}
			agnFiles = append(agnFiles, File{Path: "/" + name, Mode: 0o644, Data: data})
		}
	}
	// Debian's static busybox crashes in its wget: the suite's wget is
	// GNU wget everywhere.
	bbFiles, err := base([]string{"/usr/bin/wget"}, "", "")
	if err != nil {
		return nil, err
	}
	dnsFiles, err := base([]string{"/usr/bin/dig", "/usr/bin/nslookup", "/usr/bin/host", "/usr/bin/getent", "/usr/bin/wget"}, "", "")
	if err != nil {
		return nil, err
	}
	path := []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
	labels := map[string]string{"org.opencontainers.image.source": "https://github.com/kpath/kpath (built by kpath for the e2e suite)"}
	return []Spec{
		{Ref: E2EAgnhost, Platform: platform, Env: path, Labels: labels, Entrypoint: []string{"/agnhost"}, Cmd: []string{"pause"}, Files: agnFiles},
		{Ref: E2EBusyBox, Platform: platform, Env: path, Labels: labels, Cmd: []string{"sh"}, Files: bbFiles},
		{Ref: E2EJessieDnsutils, Platform: platform, Env: path, Labels: labels, Cmd: []string{"/bin/bash"}, Files: dnsFiles},
		{Ref: E2ENginx, Platform: platform, Env: path, Labels: labels,
			Entrypoint: []string{"/agnhost", "test-webserver", "--port", "80"}, Files: []File{{Path: "/agnhost", Mode: 0o755, Data: agnhost}}},
		{Ref: E2EPause, Platform: platform, Labels: labels, Entrypoint: []string{"/pause"}, Files: []File{{Path: "/pause", Mode: 0o755, Data: pause}}},
		{Ref: CoreDNSRef(coreDNSVersion), Platform: platform, Labels: map[string]string{"org.opencontainers.image.source": "https://github.com/coredns/coredns",
			"org.opencontainers.image.version": coreDNSVersion}, Entrypoint: []string{"/coredns"}, Files: []File{{Path: "/coredns", Mode: 0o755, Data: coredns}}},
	}, nil
}
