#!/usr/bin/env bash
# Builds kube-apiserver, kube-controller-manager, kube-scheduler, kube-proxy, kubectl and kubelet from the
# k8s.io/kubernetes version pinned in hack/k8s/go.mod into a cache directory,
# and prints that directory; with the argument e2e, into the same directory,
# the upstream e2e suite (e2e.test, and the ginkgo CLI of the version the
# suite is written for) and agnhost, the suite's workload, for kpath lab
# conformance. Binaries already built for the same go.sum are reused. A cold
# build takes about 10 minutes on 2 cores, the e2e set 7 more.
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
if [[ "${1:-}" == e2e ]]; then
	CACHED_BUILD_STAMP=.stamp-e2e cached_build "$out" "$ldflags" \
		k8s.io/kubernetes/test/e2e=e2e.test github.com/onsi/ginkgo/v2/ginkgo k8s.io/kubernetes/test/images/agnhost >/dev/null
	# agnhost's porter serves TLS with the certificate its image carries.
	porter="$(go list -m -f '{{.Dir}}' k8s.io/kubernetes)/test/images/agnhost/porter"
	install -D -m 0644 -t "$out/agnhost-porter" "$porter/localhost.crt" "$porter/localhost.key"
	echo "$out"
	exit 0
fi
cached_build "$out" "$ldflags" k8s.io/kubernetes/cmd/{kube-apiserver,kube-controller-manager,kube-scheduler,kube-proxy,kubectl,kubelet}
