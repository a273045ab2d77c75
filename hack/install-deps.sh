#!/usr/bin/env bash
# Installs what kpath needs on a Debian machine (as root), skipping what is
# already there. Go itself is expected to be installed.
#   runtime (demo, tests): iproute2, etcd-server, iptables, conntrack, nftables,
#     clang-19 (the Cilium peer's cilium-agent), containerd (images), and the
#     programs the e2e suite's images hold (busybox-static, bash, curl,
#     netcat-openbsd, bind9-dnsutils)
#   regenerating the BPF objects (make generate): clang, llvm, libbpf-dev, linux-libc-dev
set -euo pipefail

want=()
need() { dpkg -s "$1" >/dev/null 2>&1 || want+=("$1"); }
need iproute2
need procps     # sysctl, to enable forwarding in lab and test namespaces
need etcd-server # the control plane of tests and the lab (etcd 3.4)
need iptables    # the real kube-proxy, run beside kpath in differential tests and benchmarks
need conntrack
need nftables
need apache2-utils # ab, the load of the E1 latency benchmark
need clang-19    # cilium-agent (the Cilium peer, hack/cilium) compiles its BPF programs at start and needs clang >= 18.1; it execs only clang, not llc
need ipset       # cilium-agent manages ipsets in its node's namespace
need containerd  # imports kpath's images in tests (internal/image), and runs the real nodes' pods
# The upstream e2e suite's images (kpath lab conformance) are built from agnhost's source and
# these programs of the machine with their libraries, as agnhost's Alpine base installs them.
need busybox-static # sh and the small tools (the images' busybox applets)
need bash
need curl
need wget           # the suite's wget -q -O - -T 1 (busybox-static's crashes)
need netcat-openbsd # nc -v -t -w / -u, as the Services tests run it
need bind9-dnsutils # dig, nslookup (DNS tests)
if [[ "${1:-}" == "--bpf" ]]; then
	need clang
	need llvm
	need libbpf-dev
	need linux-libc-dev
fi

if ((${#want[@]})); then
	echo "installing: ${want[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	apt-get install -y -qq --no-install-recommends "${want[@]}" >/dev/null
fi
command -v go >/dev/null || { echo "go is not installed (see https://go.dev/doc/install)" >&2; exit 1; }
