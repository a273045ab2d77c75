/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* IPv4 packet parsing and header rewriting for tc programs. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <linux/pkt_cls.h>
#include "common.h"

#define ICMP_ECHOREPLY 0
#define ICMP_ECHO 8
#define IP_MF 0x2000
#define IP_OFFSET 0x1fff
#define IP_CSUM_OFF (ETH_HLEN + offsetof(struct iphdr, check))
#define IP_SRC_OFF (ETH_HLEN + offsetof(struct iphdr, saddr))
#define IP_DST_OFF (ETH_HLEN + offsetof(struct iphdr, daddr))

#define TCP_FLAG_FIN 0x01
#define TCP_FLAG_SYN 0x02
#define TCP_FLAG_RST 0x04
#define TCP_FLAG_ACK 0x10

/* The parts of a packet the datapath decides on. */
struct pkt {
	__be32 saddr;
	__be32 daddr;
	__be16 sport;
	__be16 dport;
	__be16 ip_id;
	__u8 proto;
	__u8 tcp_flags;
	__u8 has_l4;  /* the L4 header is in this packet (not a later fragment) */
	__u8 is_frag; /* MF set or a non-zero fragment offset */
	__u8 portless; /* a protocol without ports (not TCP, UDP or SCTP) */
	__u8 frag_ports; /* a later fragment whose ports kp_frag recorded */
	__u8 echo_reply; /* an ICMP echo reply */
	__u8 pad;
	__u32 l4off;
	/* Set by service translation: the frontend the packet was sent to. */
	__be32 orig_daddr;
	__be16 orig_dport;
	__u16 pad2;
	__u32 svc_id;
};

enum {
	PARSE_OK = 0,   /* IPv4: TCP, UDP and SCTP with ports, others portless */
	PARSE_PASS = 1, /* anything else (not IPv4): not ours to touch */
};

/* Fills p from skb. Returns PARSE_OK, PARSE_PASS, or a negative drop reason.
 * Only TCP and UDP are candidates for service translation; SCTP and the
 * portless protocols matter to policy alone. */
static __always_inline int parse(struct __sk_buff *skb, struct pkt *p)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip;
	__u16 frag;

	if (data + ETH_HLEN > end)
		return PARSE_PASS;
	if (eth->h_proto != bpf_htons(ETH_P_IP))
		return PARSE_PASS;
	if (data + ETH_HLEN + sizeof(*ip) > end) {
		/* Headers not in the linear area: pull them in, then re-read
		 * the pointers, which the pull invalidated. */
		if (bpf_skb_pull_data(skb, ETH_HLEN + sizeof(*ip)))
			return -KP_DROP_MALFORMED;
		data = (void *)(long)skb->data;
		end = (void *)(long)skb->data_end;
		if (data + ETH_HLEN + sizeof(*ip) > end)
			return -KP_DROP_MALFORMED;
	}
	ip = data + ETH_HLEN;
	if (ip->version != 4 || ip->ihl < 5)
		return -KP_DROP_MALFORMED;

	p->saddr = ip->saddr;
	p->daddr = ip->daddr;
	p->proto = ip->protocol;
	p->ip_id = ip->id;
	p->l4off = ETH_HLEN + ip->ihl * 4;
	frag = bpf_ntohs(ip->frag_off);
	p->is_frag = (frag & (IP_MF | IP_OFFSET)) != 0;
	if (ip->protocol != IPPROTO_TCP && ip->protocol != IPPROTO_UDP &&
	    ip->protocol != IPPROTO_SCTP) {
		/* No ports (ICMP and the rest): only policy looks at these. An
		 * ICMP echo's identifier stands in for both ports, so that
		 * conntrack tells pings apart and knows a reply (a request the
		 * other way is a connection of its own). */
		p->portless = 1;
		if (ip->protocol == IPPROTO_ICMP && !(frag & IP_OFFSET)) {
			__u8 icmp[6];

			if (bpf_skb_load_bytes(skb, p->l4off, icmp, sizeof(icmp)))
				return -KP_DROP_MALFORMED;
			if (icmp[0] == ICMP_ECHO || icmp[0] == ICMP_ECHOREPLY) {
				__builtin_memcpy(&p->sport, &icmp[4], 2);
				p->dport = p->sport;
				p->echo_reply = icmp[0] == ICMP_ECHOREPLY;
			}
		}
		return PARSE_OK;
	}
	if (frag & IP_OFFSET)
		return PARSE_OK; /* later fragment: ports come from kp_frag */
	p->has_l4 = 1;

	/* Ports and TCP flags: straight from the packet when the header is in
	 * the linear area (nearly always), through a copy otherwise. */
	__u32 need = p->proto == IPPROTO_TCP ? 14 : 4; /* TCP: flags at offset 13 */
	void *l4 = data + ETH_HLEN + ip->ihl * 4;

	if (l4 + 14 <= end) {
		p->sport = ((__be16 *)l4)[0];
		p->dport = ((__be16 *)l4)[1];
		if (p->proto == IPPROTO_TCP)
			p->tcp_flags = ((__u8 *)l4)[13];
		return PARSE_OK;
	}
	__u8 hdr[14] = {};

	if (need == 14 ? bpf_skb_load_bytes(skb, p->l4off, hdr, 14) :
			 bpf_skb_load_bytes(skb, p->l4off, hdr, 4))
		return -KP_DROP_MALFORMED;
	__builtin_memcpy(&p->sport, &hdr[0], 2);
	__builtin_memcpy(&p->dport, &hdr[2], 2);
	p->tcp_flags = p->proto == IPPROTO_TCP ? hdr[13] : 0;
	return PARSE_OK;
}

/* Later fragments carry no L4 header: take the ports the first fragment
 * recorded. Returns false when there is no record. */
static __always_inline bool frag_lookup(struct pkt *p)
{
	struct frag_key k = {
		.saddr = p->saddr,
		.daddr = p->daddr,
		.id = p->ip_id,
		.proto = p->proto,
	};
	struct frag_ports *fp = bpf_map_lookup_elem(&kp_frag, &k);

	if (!fp)
		return false;
	p->sport = fp->sport;
	p->dport = fp->dport;
	p->frag_ports = 1;
	return true;
}

/* Records the ports of a translated first fragment, keyed by the headers as
 * they were before translation (later fragments arrive untranslated). */
static __always_inline void frag_store(const struct pkt *p)
{
	struct frag_key k = {
		.saddr = p->saddr,
		.daddr = p->daddr,
		.id = p->ip_id,
		.proto = p->proto,
	};
	struct frag_ports fp = { .sport = p->sport, .dport = p->dport };

	if (p->is_frag && p->has_l4)
		bpf_map_update_elem(&kp_frag, &k, &fp, BPF_ANY);
}

/* One's-complement helpers for incremental checksum updates (RFC 1624):
 * HC' = ~(~HC + ~m + m'). The arithmetic is byte-order independent as long
 * as the field and the data are read the same way, so network-order values
 * are used as they are. */
static __always_inline __u16 csum_fold(__u32 s)
{
	s = (s & 0xffff) + (s >> 16);
	s = (s & 0xffff) + (s >> 16);
	return (__u16)~s;
}

static __always_inline void csum_replace4(__u16 *sum, __be32 from, __be32 to)
{
	__u32 s = (__u16)~*sum;

	s += (__u16)~from + (__u16)~(from >> 16);
	s += (__u16)to + (__u16)(to >> 16);
	*sum = csum_fold(s);
}

/* Rewrites the source (src) or destination address and port. The address,
 * the port and the IPv4 header checksum are written in place; the IPv4
 * header's sum is unchanged by the pair, so skb->csum needs no update. The
 * TCP/UDP checksum goes through bpf_l4_csum_replace, which knows how the
 * skb carries it (CHECKSUM_PARTIAL holds only the pseudo-header sum, so a
 * port change must not touch it; CHECKSUM_COMPLETE needs skb->csum fixed
 * for the pseudo-header change). UDP may carry no checksum (0):
 * BPF_F_MARK_MANGLED_0 leaves it 0 and never produces 0 from a real one.
 * Later fragments only get the IPv4 change; the first one carried the L4
 * checksum for the whole datagram. */
static __always_inline int rewrite(struct __sk_buff *skb, const struct pkt *p, bool src,
				   __be32 old_addr, __be32 new_addr,
				   __be16 old_port, __be16 new_port)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct iphdr *ip = data + ETH_HLEN;

	if ((void *)(ip + 1) > end)
		return -1;
	csum_replace4(&ip->check, old_addr, new_addr);
	if (src)
		ip->saddr = new_addr;
	else
		ip->daddr = new_addr;
	if (!p->has_l4)
		return 0;

	__u32 csum_off = p->l4off + (p->proto == IPPROTO_TCP ?
				     offsetof(struct tcphdr, check) :
				     offsetof(struct udphdr, check));
	__u64 mangled = p->proto == IPPROTO_UDP ? BPF_F_MARK_MANGLED_0 : 0;

	if (old_port != new_port) {
		__be16 *ports = data + ETH_HLEN + ip->ihl * 4;

		if ((void *)(ports + 2) <= end) {
			ports[src ? 0 : 1] = new_port;
		} else if (bpf_skb_store_bytes(skb, p->l4off + (src ? 0 : 2), &new_port,
					       sizeof(new_port), 0)) {
			return -1;
		}
		if (bpf_l4_csum_replace(skb, csum_off, old_port, new_port,
					mangled | sizeof(new_port)))
			return -1;
	}
	if (bpf_l4_csum_replace(skb, csum_off, old_addr, new_addr,
				BPF_F_PSEUDO_HDR | mangled | sizeof(new_addr)))
		return -1;
	return 0;
}
