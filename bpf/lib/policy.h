/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* NetworkPolicy enforcement on a pod's host-side veth.
 *
 * Every connection of a local endpoint is tracked in kp_ct. A new one is
 * decided from the endpoint's policy set: by the peer's identity (ipcache)
 * and by the peer's address (the set's ipBlock prefixes), each an LPM
 * lookup over (protocol, port). The verdict is cached in the connection's
 * entry with the policy revision, so an established packet costs one
 * conntrack lookup, and any change of policy (a new revision) makes the
 * next packet of every connection be decided again: a connection that is
 * now denied stops. Replies of an allowed connection pass. */
#pragma once

#include "xlate.h"

/* Peer numbers at or above this are CIDR groups of a set, not identities. */
#define POL_CIDR_GROUP (1U << 31)
/* Bits of struct policy_key / policy_cidr_key after prefixlen. */
#define POL_KEY_BITS 96
#define POL_CIDR_KEY_BITS 96

static __always_inline __u32 pol_revision(void)
{
	__u32 zero = 0;
	struct policy_state *st = bpf_map_lookup_elem(&kp_policy_state, &zero);

	return st ? st->revision : 0;
}

static __always_inline __u32 ipcache_identity(__be32 addr)
{
	struct ipcache_entry *e = bpf_map_lookup_elem(&kp_ipcache, &addr);

	return e ? e->identity : KP_ID_WORLD;
}

/* Whether set's entries allow the peer (identity id at addr). */
static __always_inline bool pol_allows(__u32 set, __u8 dir, __u32 id, __be32 addr,
				       __u8 proto, __be16 dport)
{
	struct policy_key k = {
		.prefixlen = POL_KEY_BITS, .set = set, .peer = id,
		.dir = dir, .proto = proto, .dport = dport,
	};

	if (bpf_map_lookup_elem(&kp_policy, &k))
		return true;

	struct policy_cidr_key ck = {
		.prefixlen = POL_CIDR_KEY_BITS, .set = set, .dir = dir, .addr = addr,
	};
	struct policy_cidr *c = bpf_map_lookup_elem(&kp_policy_cidr, &ck);

	if (!c || !c->group)
		return false;
	k.peer = POL_CIDR_GROUP | c->group;
	return bpf_map_lookup_elem(&kp_policy, &k) != NULL;
}

/* Decides a new connection of endpoint ep in direction dir. */
static __always_inline bool pol_decide(const struct endpoint *ep, __u8 dir, const struct pkt *p)
{
	__u8 iso = dir == POL_INGRESS ? EP_F_INGRESS_ISOLATED : EP_F_EGRESS_ISOLATED;
	__be32 peer = dir == POL_INGRESS ? p->saddr : p->daddr;
	__u32 id;

	if (!(ep->flags & iso))
		return true;
	/* "a pod cannot block access to itself" (hairpin through a service) */
	if (p->saddr == p->daddr)
		return true;
	id = ipcache_identity(peer);
	/* "traffic to and from the node where a Pod is running is always
	 * allowed" (kubelet's probes come from there) */
	if (id == KP_ID_HOST)
		return true;
	if (!p->has_l4 && !p->portless && !p->frag_ports)
		return false; /* a later fragment whose first one was never seen */
	return pol_allows(ep->set, dir, id, peer, p->proto, p->portless ? 0 : p->dport);
}

/* Enforces the policy of the local endpoint at the packet's source (egress)
 * or destination (ingress). Returns TC_ACT_OK, or TC_ACT_SHOT counted as
 * KP_DROP_POLICY for cdir. Packets of addresses that are not local
 * endpoints pass untouched. */
/* svc_cache copies an egress verdict into the service entry of the
 * connection (it pins the backend the verdict is about). */
static __always_inline void svc_cache(struct ct_entry *svc, __u32 rev, bool denied)
{
	__u8 pol;

	if (!svc)
		return;
	pol = denied ? svc->pol | CT_POL_EGRESS_DENY : svc->pol & ~CT_POL_EGRESS_DENY;
	if (pol != svc->pol)
		svc->pol = pol;
	if (svc->egress_rev != rev)
		svc->egress_rev = rev;
}

static __always_inline int pol_enforce(struct __sk_buff *skb, const struct pkt *p,
				       const __u8 dir, const __u32 cdir, struct ct_entry *svc)
{
	__be32 self = dir == POL_INGRESS ? p->daddr : p->saddr;
	__u32 rev = pol_revision();

	/* An established service connection's verdict, cached in its service
	 * entry at this revision: no endpoint or connection lookup. */
	if (svc && svc->egress_rev == rev) {
		if (svc->pol & CT_POL_EGRESS_DENY)
			return drop(skb, KP_DROP_POLICY, cdir);
		return TC_ACT_OK;
	}

	struct endpoint *ep = bpf_map_lookup_elem(&kp_endpoint, &self);

	if (!ep) {
		svc_cache(svc, rev, false);
		return TC_ACT_OK;
	}

	__u8 deny = dir == POL_INGRESS ? CT_POL_INGRESS_DENY : CT_POL_EGRESS_DENY;
	__u32 now = now_sec();
	struct ct_key k = {
		.saddr = p->saddr, .daddr = p->daddr,
		.sport = p->sport, .dport = p->dport, .proto = p->proto,
	};
	struct ct_entry *e = bpf_map_lookup_elem(&kp_ct, &k);

	if (e && !ct_expired(e, now) && !ct_is_reopen(e, p)) {
		__u32 erev = dir == POL_INGRESS ? e->ingress_rev : e->egress_rev;

		ct_refresh(e, p, false, now);
		if (erev != rev) {
			__u8 pol = pol_decide(ep, dir, p) ? e->pol & ~deny : e->pol | deny;

			if (pol != e->pol)
				e->pol = pol;
			if (dir == POL_INGRESS)
				e->ingress_rev = rev;
			else
				e->egress_rev = rev;
		}
		svc_cache(svc, rev, e->pol & deny);
		if (e->pol & deny)
			goto denied;
		frag_store(p);
		return TC_ACT_OK;
	}

	/* A reply: the connection was opened the other way. Of the portless
	 * protocols only an ICMP echo reply is one. A packet against the tuple
	 * of a denied connection is no reply: it is decided as a connection of
	 * its own, so it gets nothing that its policy does not allow. */
	struct ct_key rk = {
		.saddr = p->daddr, .daddr = p->saddr,
		.sport = p->dport, .dport = p->sport, .proto = p->proto,
	};
	struct ct_entry *r = (!p->portless || p->echo_reply) ? bpf_map_lookup_elem(&kp_ct, &rk) : NULL;

	if (r && !ct_expired(r, now) && !(r->pol & (CT_POL_EGRESS_DENY | CT_POL_INGRESS_DENY))) {
		ct_refresh(r, p, true, now);
		frag_store(p);
		return TC_ACT_OK;
	}

	if (!pol_decide(ep, dir, p)) {
		svc_cache(svc, rev, true);
		goto denied;
	}
	svc_cache(svc, rev, false);

	struct ct_entry n = { .created = now };

	if (dir == POL_INGRESS)
		n.ingress_rev = rev;
	else
		n.egress_rev = rev;
	ct_refresh(&n, p, false, now);
	/* Untracked, the replies would be decided as new connections of the
	 * peer's and could be refused: refuse now instead. */
	if (bpf_map_update_elem(&kp_ct, &k, &n, BPF_ANY))
		return drop(skb, KP_DROP_CT_CREATE, cdir);
	frag_store(p);
	return TC_ACT_OK;

denied:
	return drop(skb, KP_DROP_POLICY, cdir);
}
