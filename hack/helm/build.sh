#!/usr/bin/env bash
# Builds the helm CLI of the Helm release pinned in hack/helm/go.mod into a
# cache directory and prints that directory: what kpath lab up --install
# helm installs kpath's chart with, as a user does (helm install, upgrade,
# uninstall). Reused while go.sum is unchanged; about 2 minutes cold.
#   KPATH_HELM_BIN  output directory (default ~/.cache/kpath/helm/<version>)
set -euo pipefail
cd "$(dirname "$0")"

version=$(go list -m -f '{{.Version}}' helm.sh/helm/v4)
out=${KPATH_HELM_BIN:-${XDG_CACHE_HOME:-$HOME/.cache}/kpath/helm/$version}
# shellcheck source=../lib/cached-build.sh
. ../lib/cached-build.sh
cached_build "$out" "-s -w -X helm.sh/helm/v4/internal/version.version=$version -X helm.sh/helm/v4/internal/version.gitTreeState=clean" helm.sh/helm/v4/cmd/helm
