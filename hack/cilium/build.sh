#!/usr/bin/env bash
# Builds, from the github.com/cilium/cilium version pinned in hack/cilium/go.mod,
# the hubble CLI, hubble-relay, cilium-agent (the daemon package), cilium-cni
# and cilium-dbg into a cache directory, and prints that directory (the only
# line on stdout). Binaries already built for the same go.sum are reused.
# Cold: about 5.5 minutes on 2 cores with an empty Go build cache (hubble 2
# min, cilium-dbg 1, cilium-agent 2.3, the rest seconds), plus the module
# download; a cache hit takes well under a second.
#   KPATH_CILIUM_BIN  output directory (default ~/.cache/kpath/cilium/<version>)
#
# Beside the binaries, the directory holds what running cilium-agent needs:
#   bpf/      the agent's BPF C sources (the module's bpf/, made writable).
#             The agent compiles its programs from them at start. It finds
#             them as <--lib-dir>/bpf (option.LibDir "lib-dir", default
#             /var/lib/cilium; BpfDir = LibDir + "/bpf"), so pass
#             --lib-dir=<this directory>, or copy bpf/ into a per-node
#             --lib-dir: the agent writes bpf/include/bpf/features*.h there.
#             Its runtime state goes under --state-dir (option.StateDir
#             "state-dir", default /var/run/cilium; the compiled objects in
#             <state-dir>/state). --bpf-root is the bpffs mount (default
#             /sys/fs/bpf), not the sources.
#   crds/     Cilium's CustomResourceDefinitions (v2, v2alpha1), which the
#             lab applies before the agents start (the operator's job).
#   bin-path/ clang -> /usr/bin/clang-19 (hack/install-deps.sh installs it):
#             the agent execs "clang" from PATH (pkg/datapath/loader, no llc)
#             and needs clang >= 18.1, Debian 12's clang is 14; put this
#             directory first on the agent's PATH.
set -euo pipefail
cd "$(dirname "$0")"

version=$(go list -m -f '{{.Version}}' github.com/cilium/cilium)
out=${KPATH_CILIUM_BIN:-${XDG_CACHE_HOME:-$HOME/.cache}/kpath/cilium/$version}
ldflags="-s -w -X github.com/cilium/cilium/pkg/version.ciliumVersion=${version#v}"
# shellcheck source=../lib/cached-build.sh
. ../lib/cached-build.sh
# osusergo: the tag Cilium's Makefile.defs builds all its binaries with
# (a no-op with CGO_ENABLED=0).
CACHED_BUILD_TAGS=osusergo cached_build "$out" "$ldflags" \
	github.com/cilium/cilium/{hubble,hubble-relay,cilium-dbg,plugins/cilium-cni} \
	github.com/cilium/cilium/daemon=cilium-agent >/dev/null

# The BPF sources and the CRDs (which the lab applies, as Cilium's operator
# would), copied once per module directory (.source names it).
mod=$(go list -m -f '{{.Dir}}' github.com/cilium/cilium)
copy_once() { # SRC DEST
	if [[ "$(cat "$2/.source" 2>/dev/null)" != "$1" ]]; then
		echo "copying $1 into $2" >&2
		rm -rf "$2" "$2.tmp"
		cp -r "$1" "$2.tmp"
		chmod -R u+w "$2.tmp"
		echo "$1" >"$2.tmp/.source"
		mv "$2.tmp" "$2"
	fi
}
copy_once "$mod/bpf" "$out/bpf"
copy_once "$mod/pkg/k8s/apis/cilium.io/client/crds" "$out/crds"

clang=/usr/bin/clang-19
mkdir -p "$out/bin-path"
ln -sfn "$clang" "$out/bin-path/clang"
[[ -x "$clang" ]] || echo "warning: $clang is missing (hack/install-deps.sh installs it); cilium-agent needs it" >&2
echo "$out"
