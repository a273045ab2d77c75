/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Refusing a connection to a Service port without backends the way
 * kube-proxy's REJECT does: an ICMP port unreachable back to the client,
 * which a TCP connect() reports as ECONNREFUSED and a connected UDP socket
 * as an error on its next call, instead of a silent drop and a hang. */
#pragma once

#include "pkt.h"

/* From <linux/icmp.h>, which pulls in libc headers that do not build for
 * BPF. */
#define ICMP_DEST_UNREACH 3
#define ICMP_PORT_UNREACH 3

struct kp_icmphdr {
	__u8 type;
	__u8 code;
	__sum16 checksum;
	__be32 unused;
};

/* The ICMP error: its IP header, the ICMP header, and the offending
 * packet's IP header with the first 8 bytes of its payload (RFC 792). */
struct icmp_reject {
	struct iphdr ip;
	struct kp_icmphdr icmp;
	struct iphdr orig;
	__u8 orig_l4[8];
};

/* Every part is a multiple of 4 bytes: no padding, and 4-byte aligned for
 * bpf_csum_diff. */
_Static_assert(sizeof(struct icmp_reject) == 56, "icmp_reject has padding");

/* Turns skb (an IPv4 packet without options, starting with its Ethernet
 * header) into an ICMP port unreachable from its destination to its
 * source, and sends it back out of the interface it arrived on. Returns
 * the tc verdict; the packet is dropped when it cannot be answered. */
static __always_inline int reject_port_unreachable(struct __sk_buff *skb)
{
	struct ethhdr eth;
	struct icmp_reject r = {};
	__u8 mac[ETH_ALEN];

	if (bpf_skb_load_bytes(skb, 0, &eth, sizeof(eth)) ||
	    bpf_skb_load_bytes(skb, ETH_HLEN, &r.orig, sizeof(r.orig)) || r.orig.ihl != 5 ||
	    bpf_skb_load_bytes(skb, ETH_HLEN + sizeof(r.orig), r.orig_l4, sizeof(r.orig_l4)))
		return TC_ACT_SHOT;
	__builtin_memcpy(mac, eth.h_dest, ETH_ALEN);
	__builtin_memcpy(eth.h_dest, eth.h_source, ETH_ALEN);
	__builtin_memcpy(eth.h_source, mac, ETH_ALEN);

	r.ip.version = 4;
	r.ip.ihl = 5;
	r.ip.ttl = 64;
	r.ip.protocol = IPPROTO_ICMP;
	r.ip.tot_len = bpf_htons(sizeof(r));
	r.ip.saddr = r.orig.daddr;
	r.ip.daddr = r.orig.saddr;
	r.ip.check = csum_fold(bpf_csum_diff(NULL, 0, (__be32 *)&r.ip, sizeof(r.ip), 0));
	r.icmp.type = ICMP_DEST_UNREACH;
	r.icmp.code = ICMP_PORT_UNREACH;
	/* The ICMP checksum covers its header and payload: 36 bytes, a
	 * multiple of 4 as bpf_csum_diff wants. */
	r.icmp.checksum = csum_fold(bpf_csum_diff(NULL, 0, (__be32 *)&r.icmp, sizeof(r) - sizeof(r.ip), 0));

	if (bpf_skb_change_tail(skb, ETH_HLEN + sizeof(r), 0) ||
	    bpf_skb_store_bytes(skb, 0, &eth, sizeof(eth), 0) ||
	    bpf_skb_store_bytes(skb, ETH_HLEN, &r, sizeof(r), BPF_F_INVALIDATE_HASH))
		return TC_ACT_SHOT;
	return bpf_redirect(skb->ifindex, 0);
}
