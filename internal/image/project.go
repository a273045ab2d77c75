package image

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// Tag is the tag of the images built from this tree. Manifests name the
// images with it and never pull them (imagePullPolicy: Never).
const Tag = "v0.1.0-dev"

// Binaries are the static programs the project's images are made of, as
// `make image` builds them into one directory.
var Binaries = []string{"kpath", "kpath-agent", "kpath-cni", "kpath-pause"}

// Project lists the project's images, made of the static binaries in
// binDir, for GOOS/GOARCH of this build:
//   - kpath/kpath: kpath-agent (the entrypoint), the kpath CLI, and the CNI
//     plugin at /opt/cni/bin/kpath (its network type), which the chart's
//     init container installs on the node; the BPF objects are inside
//     kpath-agent and kpath (embedded by bpf2go);
//   - kpath/pause: the pod sandbox's process;
//   - kpath/echo and kpath/client: the lab's workloads (`kpath workload
//     echo`, and an idle process that `kpath lab exec` runs probes in).
func Project(binDir, tag string) ([]Spec, error) {
	bins := map[string][]byte{}
	for _, b := range Binaries {
		data, err := os.ReadFile(filepath.Join(binDir, b))
		if err != nil {
			return nil, fmt.Errorf("image binaries: %w (run make image, which builds them static)", err)
		}
		bins[b] = data
	}
	platform := v1.Platform{OS: runtime.GOOS, Architecture: runtime.GOARCH}
	labels := map[string]string{
		"org.opencontainers.image.source":  "https://github.com/kpath/kpath",
		"org.opencontainers.image.version": tag,
	}
	cli := File{Path: "/usr/bin/kpath", Mode: 0o755, Data: bins["kpath"]}
	return []Spec{
		{Ref: "kpath/kpath:" + tag, Platform: platform, Labels: labels,
			Entrypoint: []string{"/usr/bin/kpath-agent"},
			Files: []File{
				{Path: "/usr/bin/kpath-agent", Mode: 0o755, Data: bins["kpath-agent"]},
				cli,
				{Path: "/opt/cni/bin/kpath", Mode: 0o755, Data: bins["kpath-cni"]},
			}},
		{Ref: "kpath/pause:" + tag, Platform: platform, Labels: labels,
			Entrypoint: []string{"/pause"},
			Files:      []File{{Path: "/pause", Mode: 0o755, Data: bins["kpath-pause"]}}},
		{Ref: "kpath/echo:" + tag, Platform: platform, Labels: labels,
			Entrypoint: []string{"/usr/bin/kpath", "workload", "echo"},
			Files:      []File{cli}},
		{Ref: "kpath/client:" + tag, Platform: platform, Labels: labels,
			Entrypoint: []string{"/usr/bin/kpath", "workload", "idle"},
			Files:      []File{cli}},
	}, nil
}

// HubbleRelay is Cilium's hubble-relay (the static binary make
// cilium-bins builds from the pinned Cilium) as the image kpath's chart
// runs relay from: kpath/hubble-relay:VERSION, its entrypoint
// `hubble-relay serve`.
func HubbleRelay(bin, version string) (Spec, error) {
	data, err := os.ReadFile(bin)
	if err != nil {
		return Spec{}, fmt.Errorf("hubble-relay binary: %w (make cilium-bins builds it)", err)
	}
	return Spec{Ref: "kpath/hubble-relay:" + version, Platform: v1.Platform{OS: runtime.GOOS, Architecture: runtime.GOARCH},
		Labels:     map[string]string{"org.opencontainers.image.source": "https://github.com/cilium/cilium", "org.opencontainers.image.version": version},
		Entrypoint: []string{"/usr/bin/hubble-relay", "serve"},
		Files:      []File{{Path: "/usr/bin/hubble-relay", Mode: 0o755, Data: data}}}, nil
}
