# shellcheck shell=bash
# Sourced by hack/*/build.sh: builds binaries of a pinned module into a
# cache directory, reused while go.mod and go.sum (and the tags) are
# unchanged (the directory's .stamp), and prints the directory.
#   [CACHED_BUILD_TAGS=TAGS] [CACHED_BUILD_STAMP=NAME] cached_build OUT LDFLAGS PKG[=NAME]...
#   (run from the module's directory; each PKG's last element names its
#   binary unless =NAME is given; a NAME ending in .test is the package's
#   test binary, go test -c; TAGS, comma-separated, go to every go build
#   as -tags; sets of binaries built apart into one directory each keep
#   a stamp of their own, CACHED_BUILD_STAMP, default .stamp)
cached_build() {
	local out=$1 ldflags=$2
	shift 2
	local tags=${CACHED_BUILD_TAGS:-} stampfile=${CACHED_BUILD_STAMP:-.stamp}
	local stamp have=1 spec pkg b start
	stamp=$({
		sha256sum go.mod go.sum
		[[ -z "$tags" ]] || echo "tags $tags"
	} | sha256sum | cut -c1-16)
	for spec in "$@"; do
		pkg=${spec%%=*}
		b=${spec#"$pkg"}
		b=${b#=}
		[[ -x "$out/${b:-${pkg##*/}}" ]] || have=0
	done
	if ((have)) && [[ "$(cat "$out/$stampfile" 2>/dev/null)" == "$stamp" ]]; then
		echo "$out"
		return 0
	fi
	mkdir -p "$out"
	for spec in "$@"; do
		pkg=${spec%%=*}
		b=${spec#"$pkg"}
		b=${b#=}
		b=${b:-${pkg##*/}}
		echo "building $b into $out" >&2
		start=$(date +%s)
		if [[ "$b" == *.test ]]; then # a package's tests as one binary (e2e.test)
			CGO_ENABLED=0 go test -c -trimpath ${tags:+-tags "$tags"} -ldflags "$ldflags" -o "$out/$b" "$pkg" >&2
		else
			CGO_ENABLED=0 go build -trimpath ${tags:+-tags "$tags"} -ldflags "$ldflags" -o "$out/$b" "$pkg" >&2
		fi
		echo "  $b built in $(($(date +%s) - start))s" >&2
	done
	echo "$stamp" >"$out/$stampfile"
	echo "$out"
}
