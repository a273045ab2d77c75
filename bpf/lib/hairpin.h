/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* A pod reaching itself through a Service on the per-packet path. Sent
 * back as it is, the pod would get a packet from its own address and
 * answer it inside its namespace, never through the translation back. So,
 * as kube-proxy does, the connection is masqueraded to the node's address
 * and turned straight back into the pod's veth; the pod's answer, to the
 * node's address, is turned back into the pod as an answer from the pod's
 * own address, where kp_to_pod translates it back to the Service. */
#pragma once

#include "xlate.h"

static __always_inline const struct node_info *node_info(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&kp_node, &zero);
}

/* Back out of the interface the packet came in on: the pod's veth. */
static __always_inline int bounce(struct __sk_buff *skb)
{
	struct ethhdr eth;
	__u8 mac[ETH_ALEN];

	if (bpf_skb_load_bytes(skb, 0, &eth, sizeof(eth)))
		return TC_ACT_SHOT;
	__builtin_memcpy(mac, eth.h_dest, ETH_ALEN);
	__builtin_memcpy(eth.h_dest, eth.h_source, ETH_ALEN);
	__builtin_memcpy(eth.h_source, mac, ETH_ALEN);
	if (bpf_skb_store_bytes(skb, 0, &eth, sizeof(eth), 0))
		return TC_ACT_SHOT;
	return bpf_redirect(skb->ifindex, 0);
}

/* p was translated to its own source: masquerade it to the node's
 * address, remember the pod's reply, and send it back to the pod. Returns
 * XLATE_PASS when it is no hairpin or the node's address is not known. */
static __always_inline int hairpin(struct __sk_buff *skb, const struct pkt *p)
{
	const struct node_info *n;

	if (p->saddr != p->daddr || !(n = node_info()) || !n->addr)
		return XLATE_PASS;

	__be32 node = n->addr;
	__u32 now = now_sec();
	struct ct_key rk = {
		.saddr = p->daddr, .daddr = node,
		.sport = p->dport, .dport = p->sport,
		.proto = p->proto, .flags = CT_KEY_HAIRPIN,
	};
	struct ct_entry *e = bpf_map_lookup_elem(&kp_ct, &rk);

	if (e) {
		ct_refresh(e, p, false, now);
	} else {
		struct ct_entry ne = { .created = now };

		ct_refresh(&ne, p, false, now);
		if (bpf_map_update_elem(&kp_ct, &rk, &ne, BPF_ANY))
			return drop(skb, p, KP_DROP_CT_CREATE, KP_DIR_FROM_POD);
	}
	if (rewrite(skb, p, true, p->saddr, node, p->sport, p->sport))
		return drop(skb, p, KP_DROP_REWRITE, KP_DIR_FROM_POD);
	return bounce(skb);
}

/* The pod's answer to a hairpinned connection (to the node's address):
 * readdressed to the pod and sent back to it. XLATE_PASS for anything
 * else (one array lookup and a compare for packets not to the node). */
static __always_inline int hairpin_reply(struct __sk_buff *skb, const struct pkt *p)
{
	const struct node_info *n = node_info();

	if (!n || !n->addr || p->daddr != n->addr || (p->proto != IPPROTO_TCP && p->proto != IPPROTO_UDP))
		return XLATE_PASS;

	struct ct_key rk = {
		.saddr = p->saddr, .daddr = p->daddr,
		.sport = p->sport, .dport = p->dport,
		.proto = p->proto, .flags = CT_KEY_HAIRPIN,
	};
	struct ct_entry *e = bpf_map_lookup_elem(&kp_ct, &rk);
	__u32 now = now_sec();

	if (!e || ct_expired(e, now))
		return XLATE_PASS;
	ct_refresh(e, p, true, now);
	if (rewrite(skb, p, false, p->daddr, p->saddr, p->dport, p->dport))
		return drop(skb, p, KP_DROP_REWRITE, KP_DIR_FROM_POD);
	return bounce(skb);
}
