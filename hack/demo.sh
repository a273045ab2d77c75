#!/usr/bin/env bash
# kpath demo (until `kpath lab` exists): one "node" network namespace with a
# client pod and two echo-server pods, wired like kpath's CNI plugin wires
# pods (veth pairs, /32 routes, link-local gateway). kpath's datapath is
# attached to the pods' veths; a ClusterIP-style service is programmed with
# `kpath dp`; the client sends HTTP requests to the service address, first
# through the per-packet (tc) path, then through the socket hook.
# Everything it creates is removed on exit.
set -euo pipefail

KPATH=${KPATH:-bin/kpath}
ID=kpdemo
PIN=kpath-demo
VIP=10.96.0.10
NODE=$ID-node
CG=""

log() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
# nsenter, not `ip netns exec`: the latter remounts /sys, hiding the bpffs
# where the datapath is pinned.
dp() { nsenter --net="/run/netns/$NODE" "$KPATH" dp --pin-dir "$PIN" "$@"; }

cleanup() {
	set +e
	for pid in $(jobs -p); do kill "$pid" 2>/dev/null; done
	wait 2>/dev/null
	for ns in client be1 be2 node; do ip netns del "$ID-$ns" 2>/dev/null; done
	"$KPATH" dp --pin-dir "$PIN" reset 2>/dev/null
	[[ -n "$CG" ]] && rmdir "$CG" 2>/dev/null
	return 0
}
trap cleanup EXIT
cleanup

[[ $(id -u) == 0 ]] || { echo "the demo needs root (network namespaces, BPF)" >&2; exit 1; }

log "node namespace $NODE with three pods"
ip netns add "$NODE"
ip -n "$NODE" link set lo up
ip netns exec "$NODE" sysctl -qw net.ipv4.ip_forward=1
declare -A ADDR=([client]=10.244.0.2 [be1]=10.244.0.3 [be2]=10.244.0.4)
for pod in client be1 be2; do
	ns=$ID-$pod host=kp-$pod addr=${ADDR[$pod]}
	ip netns add "$ns"
	ip -n "$ns" link set lo up
	ip -n "$NODE" link add "$host" type veth peer name eth0 netns "$ns"
	ip -n "$NODE" addr add 169.254.1.1/32 dev "$host"
	ip -n "$NODE" link set "$host" up
	ip -n "$NODE" route add "$addr/32" dev "$host"
	ip -n "$ns" addr add "$addr/32" dev eth0
	ip -n "$ns" link set eth0 up
	ip -n "$ns" route add 169.254.1.1 dev eth0 scope link
	ip -n "$ns" route add default via 169.254.1.1 dev eth0
	echo "  pod $pod: $addr on $host"
done

log "attach kpath's per-packet programs to the pods' veths"
dp attach --iface kp-client --iface kp-be1 --iface kp-be2

log "echo servers in be1 and be2 (each answers with its name)"
for pod in be1 be2; do
	ip netns exec "$ID-$pod" "$KPATH" workload echo --name "$pod (${ADDR[$pod]})" --http :8080 --udp "" >/dev/null &
done
sleep 0.5

log "service $VIP:80/TCP -> be1:8080, be2:8080"
dp service add "$VIP:80/TCP" --backend "${ADDR[be1]}:8080" --backend "${ADDR[be2]}:8080"
dp service add "$VIP:81/TCP"
dp service list

log "200 requests from the client to http://$VIP/ through the per-packet path"
ip netns exec "$ID-client" "$KPATH" workload probe "http://$VIP/" -n 200 --timeout 2s

log "a service port without backends is refused, not forwarded"
if ip netns exec "$ID-client" "$KPATH" workload probe "http://$VIP:81/" -n 1 --timeout 1s >/dev/null 2>&1; then
	echo "unexpected: request to $VIP:81 succeeded" >&2
	exit 1
fi
echo "  request to $VIP:81 failed as it should (dropped: no service backend)"

log "the same with the socket hook: translated once at connect(), nothing per packet"
root=$(awk '$3 == "cgroup2" { print $2; exit }' /proc/mounts)
CG=$(mktemp -d "$root/kpath-demo-XXXX")
"$KPATH" dp --pin-dir "$PIN" attach --cgroup "$CG" >/dev/null
sh -c "echo \$\$ > $CG/cgroup.procs; exec ip netns exec $ID-client $KPATH workload probe http://$VIP/ -n 200 --timeout 2s"

log "datapath counters"
dp counters
log "a few connection-tracking entries (per-packet path)"
dp ct list | head -6

log "done: cleaning up"
