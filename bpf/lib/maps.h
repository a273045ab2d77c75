/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Every map of the datapath, in one place. Sizes here are defaults that the
 * loader overrides from configuration (internal/datapath.MapSizes); they are
 * chosen for 100k backends. All maps are pinned by name under the kpath bpffs
 * directory, so their contents outlive the agent. */
#pragma once

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "types.h"

/* Frontends: service (address, port, protocol) -> frontend ID, slot count, flags. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct lb_frontend_key);
	__type(value, struct lb_frontend);
	__uint(max_entries, 65536);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} kp_lb_frontend SEC(".maps");

/* Backend slots: (frontend ID, slot) -> backend ID, for random selection. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct lb_slot_key);
	__type(value, __u32);
	__uint(max_entries, 262144);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} kp_lb_slot SEC(".maps");

/* Backends: backend ID -> address and port. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);
	__type(value, struct lb_backend);
	__uint(max_entries, 131072);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} kp_lb_backend SEC(".maps");

/* Reverse translation: frontend ID -> the frontend's address and port. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);
	__type(value, struct lb_rev_nat);
	__uint(max_entries, 65536);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} kp_lb_revnat SEC(".maps");

/* loadBalancerSourceRanges: (frontend ID, source prefix) of every frontend
 * with LB_F_SRC_RANGES (struct lb_src_range_key; the value is unused). */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct lb_src_range_key);
	__type(value, __u8);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} kp_lb_src_range SEC(".maps");

/* Maglev lookup table of one frontend: slot -> backend ID. The loader sets
 * max_entries to the configured table size M (a prime). */
struct kp_maglev_inner {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, __u32);
	__uint(max_entries, 16381);
};

/* Maglev tables: frontend ID -> its lookup table. User space builds a new
 * inner table and swaps it in with one update, so a packet sees either the
 * old table or the new one, never a half-written one. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH_OF_MAPS);
	__type(key, __u32);
	__uint(max_entries, 8192);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__array(values, struct kp_maglev_inner);
} kp_lb_maglev SEC(".maps");

/* Session affinity: (client, frontend ID) -> last backend and when it was used. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct lb_affinity_key);
	__type(value, struct lb_affinity);
	__uint(max_entries, 65536);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} kp_lb_affinity SEC(".maps");

/* Connection tracking: 5-tuple -> state, backend, reverse-translation ID,
 * expiry. LRU so a flood cannot fill it; expired entries are deleted by
 * the user-space garbage collector, not left for eviction. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct ct_key);
	__type(value, struct ct_entry);
	__uint(max_entries, 524288);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} kp_ct SEC(".maps");

/* Socket-hook reverse translation: (socket cookie, backend) -> frontend, for
 * recvmsg() and getpeername() to show the service address. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct sock_revnat_key);
	__type(value, struct sock_revnat);
	__uint(max_entries, 131072);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} kp_sock_revnat SEC(".maps");

/* Fragments of translated datagrams: (saddr, daddr, IP ID, proto) -> L4
 * ports, so fragments after the first follow the first one's translation. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct frag_key);
	__type(value, struct frag_ports);
	__uint(max_entries, 8192);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} kp_frag SEC(".maps");

/* Counters: reason * KP_DIR_MAX + dir -> packets and bytes, per CPU. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct kp_counter);
	__uint(max_entries, KP_REASON_MAX * KP_DIR_MAX);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} kp_metrics SEC(".maps");

/* ipcache: every pod address of the cluster and every node address ->
 * identity (node-local numbers). A miss is KP_ID_WORLD. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __be32);
	__type(value, struct ipcache_entry);
	__uint(max_entries, 262144);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} kp_ipcache SEC(".maps");

/* Local endpoints: pod address -> policy set and isolation. A pod of this
 * node that is not here is not under policy (kpath did not create it). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __be32);
	__type(value, struct endpoint);
	__uint(max_entries, 16384);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} kp_endpoint SEC(".maps");

/* Local pods: pod address -> the host-side interface it lives behind
 * (struct local_pod). Written when the CNI plugin attaches a pod and
 * deleted when it releases it; a pod's packets must carry a source bound
 * to the interface they arrive on (lib/srcval.h). Independent of policy:
 * source validation holds with policy enforcement off. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __be32);
	__type(value, struct local_pod);
	__uint(max_entries, 16384);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} kp_local_pod SEC(".maps");

/* Policy allow entries of every policy set (struct policy_key). Allocated
 * on demand (an LPM trie is never preallocated). */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct policy_key);
	__type(value, struct policy_entry);
	__uint(max_entries, 1048576);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} kp_policy SEC(".maps");

/* ipBlock prefixes of every policy set -> rule group (struct policy_cidr_key). */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct policy_cidr_key);
	__type(value, struct policy_cidr);
	__uint(max_entries, 262144);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} kp_policy_cidr SEC(".maps");

/* Global policy state: the revision (one entry). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct policy_state);
	__uint(max_entries, 1);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} kp_policy_state SEC(".maps");

/* The node itself (one struct node_info), written by the agent. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct node_info);
	__uint(max_entries, 1);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} kp_node SEC(".maps");

/* Flow events for the agent (struct flow_event records). A full buffer
 * loses the event (counted in kp_event_stats), never slows the packet. */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 20);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} kp_events SEC(".maps");

/* Flow event counters (enum event_stat), per CPU. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, EVENT_STAT_MAX);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} kp_event_stats SEC(".maps");

/* Token bucket per CPU limiting drop events, so a flood of dropped
 * packets cannot flood the agent. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct event_bucket);
	__uint(max_entries, 1);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} kp_event_rl SEC(".maps");
