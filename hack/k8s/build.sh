#!/usr/bin/env bash
# Builds kube-apiserver, kube-controller-manager, kube-scheduler, kube-proxy, kubectl and kubelet from the
# k8s.io/kubernetes version pinned in hack/k8s/go.mod into a cache directory,
# and prints that directory. Binaries already built for the same go.sum are
# reused. A cold build takes about 10 minutes on 2 cores.
#   KPATH_K8S_BIN  output directory (default ~/.cache/kpath/k8s/<version>)
set -euo pipefail
cd "$(dirname "$0")"

version=$(go list -m -f '{{.Version}}' k8s.io/kubernetes)
out=${KPATH_K8S_BIN:-${XDG_CACHE_HOME:-$HOME/.cache}/kpath/k8s/$version}
minor=${version#v1.}
minor=${minor%%.*}
ldflags="-s -w -X k8s.io/component-base/version.gitVersion=$version -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor -X k8s.io/component-base/version.gitTreeState=clean"
# shellcheck source=../lib/cached-build.sh
. ../lib/cached-build.sh
cached_build "$out" "$ldflags" k8s.io/kubernetes/cmd/{kube-apiserver,kube-controller-manager,kube-scheduler,kube-proxy,kubectl,kubelet}
