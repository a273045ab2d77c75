#!/usr/bin/env bash
# Builds the hubble CLI and hubble-relay from the github.com/cilium/cilium
# version pinned in hack/cilium/go.mod into a cache directory, and prints
# that directory. Binaries already built for the same go.sum are reused.
# Cold: about 2.5 minutes on 2 cores (the module download included).
#   KPATH_CILIUM_BIN  output directory (default ~/.cache/kpath/cilium/<version>)
set -euo pipefail
cd "$(dirname "$0")"

version=$(go list -m -f '{{.Version}}' github.com/cilium/cilium)
out=${KPATH_CILIUM_BIN:-${XDG_CACHE_HOME:-$HOME/.cache}/kpath/cilium/$version}
ldflags="-s -w -X github.com/cilium/cilium/pkg/version.ciliumVersion=${version#v}"
# shellcheck source=../lib/cached-build.sh
. ../lib/cached-build.sh
cached_build "$out" "$ldflags" github.com/cilium/cilium/{hubble,hubble-relay}
