# Sourced by hack/*/build.sh: builds binaries of a pinned module into a
# cache directory, reused while go.mod and go.sum are unchanged (the
# directory's .stamp), and prints the directory.
#   cached_build OUT LDFLAGS PKG...   (run from the module's directory;
#   each PKG's last element names its binary)
cached_build() {
	local out=$1 ldflags=$2
	shift 2
	local stamp have=1 pkg b start
	stamp=$(sha256sum go.mod go.sum | sha256sum | cut -c1-16)
	for pkg in "$@"; do [[ -x "$out/${pkg##*/}" ]] || have=0; done
	if ((have)) && [[ "$(cat "$out/.stamp" 2>/dev/null)" == "$stamp" ]]; then
		echo "$out"
		return 0
	fi
	mkdir -p "$out"
	for pkg in "$@"; do
		b=${pkg##*/}
		echo "building $b into $out" >&2
		start=$(date +%s)
		CGO_ENABLED=0 go build -trimpath -ldflags "$ldflags" -o "$out/$b" "$pkg" >&2
		echo "  $b built in $(($(date +%s) - start))s" >&2
	done
	echo "$stamp" >"$out/.stamp"
	echo "$out"
}
