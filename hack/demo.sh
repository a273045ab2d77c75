#!/usr/bin/env bash
# kpath demo: a two-node lab cluster (real etcd, kube-apiserver,
# kube-controller-manager; a real kpath-agent and CNI plugin on each node),
# echo pods behind a Service, requests through the ClusterIP from a pod on
# the other node and to a NodePort from outside the nodes; then a
# NetworkPolicy: a denied request, why (kpath policy trace), the same
# request allowed once the client carries the allowed label; the flows
# (kpath lab observe, the hubble CLI on kpath's Hubble API and through the
# real hubble-relay); and the
# lab removed again. DEMO_REAL=1 (make demo-real) runs it on real nodes:
# a real kubelet and containerd on each, kpath installed by helm.
set -euo pipefail
cd "$(dirname "$0")/.."
KPATH=$(realpath "${KPATH:-bin/kpath}")
export KPATH_LAB_DIR=${KPATH_LAB_DIR:-/var/lib/kpath-lab-demo}
DIR=$KPATH_LAB_DIR
lab() { "$KPATH" lab "$@"; }
log() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

[[ $(id -u) == 0 ]] || { echo "the demo needs root (network namespaces, BPF)" >&2; exit 1; }
trap 'log "lab down"; lab down' EXIT

# Where each node's agent and Hubble sockets are, and the kpath binary
# inside the pods (the lab's runtime runs the host's; real pods their
# image's).
PK=$KPATH
sock() { echo "$DIR/$1/$2.sock"; }
if [[ -n ${DEMO_REAL:-} ]]; then
	log "lab up: 2 real nodes (kubelet, containerd), native routing, kpath installed by helm"
	lab up --nodes 2 --routing native --runtime containerd --install helm
	PK=/usr/bin/kpath
	sock() { echo "$DIR/$1/real/root/run/kpath/$2.sock"; }
	lab kubectl -n kube-system get ds,deploy,pods -o wide
else
	log "lab up: 2 nodes, native routing"
	lab up --nodes 2 --routing native
fi

log "pods and a Service"
lab kubectl apply -f hack/demo.yaml
lab kubectl wait --for=condition=Ready pod --all --timeout=90s >/dev/null
lab kubectl get pods -o wide
VIP=$(lab kubectl get svc echo -o jsonpath='{.spec.clusterIP}')
NP=$(lab kubectl get svc echo -o jsonpath='{.spec.ports[0].nodePort}')
NODE1=$(lab kubectl get node node-1 -o jsonpath='{.status.addresses[0].address}')
lab kubectl get endpointslices -l kubernetes.io/service-name=echo

log "what node-2's agent made of it (kpath service list)"
"$KPATH" --socket "$(sock node-2 agent)" service list

log "200 requests from the client pod (node-2) to the ClusterIP http://$VIP/ (socket hook)"
lab exec client -- "$PK" workload probe "http://$VIP/" -n 200

log "100 requests from outside the nodes (the vnet) to the NodePort on node-1, $NODE1:$NP"
ip netns exec kplab-vnet "$KPATH" workload probe "http://$NODE1:$NP/" -n 100

log "datapath counters on node-1 (uplink and pods)"
if [[ -n ${DEMO_REAL:-} ]]; then
	AGENT1=$(lab kubectl -n kube-system get pod -l app.kubernetes.io/name=kpath-agent --field-selector spec.nodeName=node-1 -o name)
	lab kubectl -n kube-system exec "$AGENT1" -c agent -- kpath dp counters
else
	nsenter --net=/run/netns/kplab-node-1 "$KPATH" dp --pin-dir kpath-lab-node-1 counters
fi

log "NetworkPolicy: the echo pods accept only role=frontend, on 8080/TCP (hack/demo-policy.yaml)"
lab kubectl apply -f hack/demo-policy.yaml
ECHO_A=$(lab kubectl get pod echo-a -o jsonpath='{.status.podIP}')
sleep 1

log "the client pod (no role label) -> echo-a http://$ECHO_A:8080/: denied"
lab exec client -- "$PK" workload probe "http://$ECHO_A:8080/" -n 3 --timeout 1s || true

log "why (kpath policy trace, asked of node-1's agent, where echo-a runs)"
"$KPATH" --socket "$(sock node-1 agent)" policy trace --from default/client --to default/echo-a --port 8080/TCP

log "label the client role=frontend: the same request is allowed"
lab kubectl label pod client role=frontend >/dev/null
sleep 1
lab exec client -- "$PK" workload probe "http://$ECHO_A:8080/" -n 5 --timeout 2s

log "node-1's endpoints under policy (kpath policy list)"
"$KPATH" --socket "$(sock node-1 agent)" policy list

log "flows of every node (kpath lab observe): the policy drops, with the policy that isolates the pod"
lab observe --verdict DROPPED --to-pod default/echo-a --last 3

log "... and the last Service translations (here the NodePort requests from outside the nodes)"
lab observe --service default/echo --type translation --last 3

log "the same drops through Hubble's API, read by the stock hubble CLI (if make cilium-bins built it)"
HUBBLE=$(hack/cilium/build.sh 2>/dev/null)/hubble || true
if [[ -x "$HUBBLE" ]]; then
	"$HUBBLE" observe --server "unix://$(sock node-1 hubble)" --verdict DROPPED --last 3
	if [[ -S "$DIR/hubble-relay.sock" ]]; then
		log "every node through the real hubble-relay (it finds the agents through their Peer service)"
		"$HUBBLE" list nodes --server "unix://$DIR/hubble-relay.sock"
		"$HUBBLE" observe --server "unix://$DIR/hubble-relay.sock" --to-pod default/echo-a --last 2
	fi
fi
