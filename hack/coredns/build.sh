#!/usr/bin/env bash
# Builds CoreDNS from the version pinned in hack/coredns/go.mod into a cache
# directory and prints that directory: the cluster DNS of kpath lab
# conformance (deployed as the kube-dns addon) and the /coredns of the e2e
# suite's agnhost image. Reused while go.mod and go.sum are unchanged. A
# cold build takes about 4 minutes on 2 cores.
#   KPATH_COREDNS_BIN  output directory (default ~/.cache/kpath/coredns/<version>)
set -euo pipefail
cd "$(dirname "$0")"

version=$(go list -m -f '{{.Version}}' github.com/coredns/coredns)
out=${KPATH_COREDNS_BIN:-${XDG_CACHE_HOME:-$HOME/.cache}/kpath/coredns/$version}
# shellcheck source=../lib/cached-build.sh
. ../lib/cached-build.sh
cached_build "$out" "-s -w" github.com/coredns/coredns
