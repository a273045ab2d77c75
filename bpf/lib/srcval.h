/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Source validation: a pod sends only from its own addresses.
 *
 * NetworkPolicy decides by source address (the ipcache turns it into an
 * identity), so a pod that could send as another pod would get whatever
 * that pod is allowed, one way at least. The nodes do not filter by
 * reverse path (rp_filter is off, and redirects would skip it anyway), so
 * the pod's own program checks every packet it sends, before anything
 * else looks at it: the source must be an address kp_local_pod binds to
 * the very interface the packet came in on. An address of another pod of
 * this node is bound to that pod's interface; an address of another node's
 * pod, or of nothing, is bound to none. ARP is held to the same rule (its
 * sender address), so a pod cannot claim another pod's address on its link
 * either; everything else (IPv6, VLAN tags, other ethertypes) is dropped,
 * since neither translation nor policy would see it. */
#pragma once

#include "xlate.h"

/* From <linux/if_arp.h>, which drags in libc headers. */
#define ARPHRD_ETHER 1

/* Whether addr is bound to the interface skb arrived on. */
static __always_inline bool src_bound(const struct __sk_buff *skb, __be32 addr)
{
	struct local_pod *lp = bpf_map_lookup_elem(&kp_local_pod, &addr);

	return lp && lp->ifindex == skb->ifindex;
}

/* Drops a packet of the pod behind skb->ifindex whose source is not its
 * own, reporting the interface so the flow names the real sender. */
static __always_inline int drop_invalid_source(struct __sk_buff *skb, const struct pkt *p, __u32 dir)
{
	count(KP_DROP_INVALID_SOURCE, dir, skb->len);
	if (cfg_flow_events && drop_event_allowed()) {
		struct flow_event ev = { .type = FLOW_DROP, .reason = KP_DROP_INVALID_SOURCE,
					 .dir = dir, .ifindex = skb->ifindex };

		flow_of(&ev, p);
		flow_send(&ev);
	}
	return TC_ACT_SHOT;
}

/* An ARP packet for IPv4 over Ethernet, after the Ethernet header. */
struct arp_ipv4 {
	__be16 ar_hrd; /* hardware type */
	__be16 ar_pro; /* protocol type */
	__u8 ar_hln;
	__u8 ar_pln;
	__be16 ar_op;
	__u8 sha[ETH_ALEN];
	__be32 sip;
	__u8 tha[ETH_ALEN];
	__be32 tip;
} __attribute__((packed));

/* Checks the frame a pod sent before it is parsed as IPv4. Returns
 * XLATE_CONTINUE for IPv4, else the verdict: ARP passes when its sender is
 * the pod's own address (or 0.0.0.0, a probe for a duplicate address), and
 * the rest is dropped. */
static __always_inline int src_check_l2(struct __sk_buff *skb, __u32 dir)
{
	if (skb->vlan_present)
		return drop(skb, NULL, KP_DROP_UNSUPPORTED_L3, dir);
	if (skb->protocol == bpf_htons(ETH_P_IP))
		return XLATE_CONTINUE;
	if (skb->protocol != bpf_htons(ETH_P_ARP))
		return drop(skb, NULL, KP_DROP_UNSUPPORTED_L3, dir);

	struct arp_ipv4 arp;

	if (bpf_skb_load_bytes(skb, ETH_HLEN, &arp, sizeof(arp)) ||
	    arp.ar_hrd != bpf_htons(ARPHRD_ETHER) || arp.ar_pro != bpf_htons(ETH_P_IP) ||
	    arp.ar_hln != ETH_ALEN || arp.ar_pln != 4)
		return drop(skb, NULL, KP_DROP_MALFORMED, dir);

	struct pkt p = { .saddr = arp.sip, .daddr = arp.tip };

	if (arp.sip && !src_bound(skb, arp.sip))
		return drop_invalid_source(skb, &p, dir);
	return pass(skb, dir);
}
