/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Helpers shared by all programs: configuration, time, counters, hashing. */
#pragma once

#include <linux/bpf.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "types.h"
#include "maps.h"

/* Load-time configuration. The loader rewrites these in .rodata before the
 * programs are verified, so the verifier sees them as constants. */
volatile const __u32 cfg_maglev_size = 16381;  /* entries per Maglev table (prime) */
volatile const __u32 cfg_ct_lifetime_syn = 60;    /* s, TCP before the reply */
volatile const __u32 cfg_ct_lifetime_tcp = 21600; /* s, established TCP */
volatile const __u32 cfg_ct_lifetime_close = 10;  /* s, after FIN or RST */
volatile const __u32 cfg_ct_lifetime_other = 60;  /* s, UDP */
/* skb->mark bits set on traffic from outside translated to a backend, so
 * that the node masquerades it if it leaves through the uplink again
 * (a backend on another node must answer through this one). 0: none. */
volatile const __u32 cfg_masq_mark = 0;
/* Flow events on (1) or off (0). */
volatile const __u32 cfg_flow_events = 1;
/* Drop events each CPU may send per second (and in a burst). */
volatile const __u32 cfg_drop_events_per_sec = 1000;
/* Nonzero: the socket hooks translate only sockets of the network
 * namespace with this cookie (the node's own: host-network clients), and
 * pods' traffic is translated per packet on their veths. */
volatile const __u64 cfg_host_netns_cookie = 0;
/* The cookie of the node's own network namespace (0: unknown). The socket
 * hooks judge its sockets' loadBalancerSourceRanges by LB_F_SRC_NODE. */
volatile const __u64 cfg_node_netns_cookie = 0;

#define NSEC_PER_SEC 1000000000ULL

/* From <sys/socket.h>, which is not usable when compiling for BPF. */
#define SOCK_STREAM 1
#define SOCK_DGRAM 2

/* Monotonic seconds, the clock of every expiry in the maps. User space
 * reads the same clock (CLOCK_MONOTONIC) for garbage collection. */
static __always_inline __u32 now_sec(void)
{
	return (__u32)(bpf_ktime_get_ns() / NSEC_PER_SEC);
}

static __always_inline void count(__u32 reason, __u32 dir, __u64 bytes)
{
	__u32 idx = reason * KP_DIR_MAX + dir;
	struct kp_counter *m = bpf_map_lookup_elem(&kp_metrics, &idx);

	if (m) {
		m->packets++;
		m->bytes += bytes;
	}
}

/* Bob Jenkins' lookup3 final mix, as the kernel's jhash_3words. Used for
 * Maglev so that every node picks the same backend for the same flow (the
 * skb hash is seeded per boot and would differ between nodes). */
static __always_inline __u32 rol32(__u32 w, __u32 s)
{
	return (w << s) | (w >> (32 - s));
}

static __always_inline __u32 jhash_3words(__u32 a, __u32 b, __u32 c, __u32 initval)
{
	a += 0xdeadbeef + (3 << 2) + initval;
	b += 0xdeadbeef + (3 << 2) + initval;
	c += 0xdeadbeef + (3 << 2) + initval;
	c ^= b; c -= rol32(b, 14);
	a ^= c; a -= rol32(c, 11);
	b ^= a; b -= rol32(a, 25);
	c ^= b; c -= rol32(b, 16);
	a ^= c; a -= rol32(c, 4);
	b ^= a; b -= rol32(a, 14);
	c ^= b; c -= rol32(b, 24);
	return c;
}
