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

/* What decided a new connection. */
struct pol_result {
	__u32 peer_identity;
	__u32 rule; /* the set's rule that allowed (index + 1) */
	__u8 match; /* enum flow_match */
};

/* Whether set's entries allow the peer (identity id at addr); res names
 * the entry that did. */
static __always_inline bool pol_allows(__u32 set, __u8 dir, __u32 id, __be32 addr,
				       __u8 proto, __be16 dport, struct pol_result *res)
{
	struct policy_key k = {
		.prefixlen = POL_KEY_BITS, .set = set, .peer = id,
		.dir = dir, .proto = proto, .dport = dport,
	};
	struct policy_entry *e = bpf_map_lookup_elem(&kp_policy, &k);

	if (e) {
		res->rule = e->rule;
		res->match = FLOW_MATCH_IDENTITY;
		return true;
	}

	struct policy_cidr_key ck = {
		.prefixlen = POL_CIDR_KEY_BITS, .set = set, .dir = dir, .addr = addr,
	};
	struct policy_cidr *c = bpf_map_lookup_elem(&kp_policy_cidr, &ck);

	if (!c || !c->group)
		return false;
	k.peer = POL_CIDR_GROUP | c->group;
	e = bpf_map_lookup_elem(&kp_policy, &k);
	if (!e)
		return false;
	res->rule = e->rule;
	res->match = FLOW_MATCH_CIDR;
	return true;
}

/* Decides a new connection of endpoint ep in direction dir. */
static __always_inline bool pol_decide(const struct endpoint *ep, __u8 dir, const struct pkt *p,
				       struct pol_result *res)
{
	__u8 iso = dir == POL_INGRESS ? EP_F_INGRESS_ISOLATED : EP_F_EGRESS_ISOLATED;
	__be32 peer = dir == POL_INGRESS ? p->saddr : p->daddr;

	res->peer_identity = ipcache_identity(peer);
	res->rule = 0;
	res->match = FLOW_MATCH_NONE;
	if (!(ep->flags & iso))
		return true;
	/* "a pod cannot block access to itself" (hairpin through a service);
	 * "traffic to and from the node where a Pod is running is always
	 * allowed" (kubelet's probes come from there) */
	if (p->saddr == p->daddr || res->peer_identity == KP_ID_HOST) {
		res->match = FLOW_MATCH_HOST;
		return true;
	}
	res->match = FLOW_MATCH_DENIED;
	if (!p->has_l4 && !p->portless && !p->frag_ports)
		return false; /* a later fragment whose first one was never seen */
	return pol_allows(ep->set, dir, res->peer_identity, peer, p->proto,
			  p->portless ? 0 : p->dport, res);
}

/* Reports a connection's policy verdict (FLOW_NEW) or denial (FLOW_DROP,
 * rate-limited with the other drops). */
static __always_inline void pol_event(const struct pkt *p, const struct endpoint *ep, __u8 dir,
				      __u32 cdir, const struct pol_result *res, bool denied)
{
	if (!cfg_flow_events || (denied && !drop_event_allowed()))
		return;

	struct flow_event ev = {
		.type = denied ? FLOW_DROP : FLOW_NEW, .reason = denied ? KP_DROP_POLICY : 0,
		.dir = cdir, .pol_dir = dir, .set = ep->set, .rule = res->rule,
		.peer_identity = res->peer_identity, .match = res->match,
		.orig_daddr = p->orig_daddr, .orig_dport = p->orig_dport, .svc_id = p->svc_id,
	};

	flow_of(&ev, p);
	flow_send(&ev);
}

/* Reports the first SYN, FIN or RST of a direction of connection e. */
static __always_inline void flags_event(struct ct_entry *e, const struct pkt *p, bool reply, __u32 cdir)
{
	__u8 f = p->tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_FIN | TCP_FLAG_RST);
	__u8 seen = reply ? e->seen_rev : e->seen_fwd;

	if (p->proto != IPPROTO_TCP || (seen | f) == seen)
		return;
	if (reply)
		e->seen_rev = seen | f;
	else
		e->seen_fwd = seen | f;
	if (!cfg_flow_events)
		return;

	struct flow_event ev = { .type = FLOW_FLAGS, .dir = cdir, .match = reply ? FLOW_MATCH_REPLY : 0,
				 .orig_daddr = p->orig_daddr, .orig_dport = p->orig_dport, .svc_id = p->svc_id };

	flow_of(&ev, p);
	flow_send(&ev);
}

/* ct_count adds a packet to a connection's counters (unsynchronised: a
 * connection's packets are nearly always on one CPU, and these are
 * statistics). */
static __always_inline void ct_count(struct ct_entry *e, bool reply, __u32 len)
{
	if (reply) {
		e->packets_rev++;
		e->bytes_rev += len;
	} else {
		e->packets_fwd++;
		e->bytes_fwd += len;
	}
}

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

/* Enforces the policy of the local endpoint at the packet's source (egress)
 * or destination (ingress). Returns TC_ACT_OK, or TC_ACT_SHOT counted as
 * KP_DROP_POLICY for cdir. Packets of addresses that are not local
 * endpoints pass untouched. */
static __always_inline int pol_enforce(struct __sk_buff *skb, const struct pkt *p,
				       const __u8 dir, const __u32 cdir, struct ct_entry *svc)
{
	__be32 self = dir == POL_INGRESS ? p->daddr : p->saddr;
	__u32 rev = pol_revision();

	/* An established service connection's verdict, cached in its service
	 * entry at this revision: no endpoint or connection lookup. */
	if (svc && svc->egress_rev == rev) {
		if (svc->pol & CT_POL_EGRESS_DENY)
			return drop(skb, p, KP_DROP_POLICY, cdir);
		ct_count(svc, false, skb->len);
		return TC_ACT_OK;
	}

	struct endpoint *ep = bpf_map_lookup_elem(&kp_endpoint, &self);

	if (!ep) {
		svc_cache(svc, rev, false);
		return TC_ACT_OK;
	}

	__u8 deny = dir == POL_INGRESS ? CT_POL_INGRESS_DENY : CT_POL_EGRESS_DENY;
	__u32 now = now_sec();
	struct pol_result res;
	struct ct_key k = {
		.saddr = p->saddr, .daddr = p->daddr,
		.sport = p->sport, .dport = p->dport, .proto = p->proto,
	};
	struct ct_entry *e = bpf_map_lookup_elem(&kp_ct, &k);

	if (e && !ct_expired(e, now) && !ct_is_reopen(e, p)) {
		__u32 erev = dir == POL_INGRESS ? e->ingress_rev : e->egress_rev;
		bool reported = false;

		ct_refresh(e, p, false, now);
		if (erev != rev) {
			bool ok = pol_decide(ep, dir, p, &res);
			__u8 pol = ok ? e->pol & ~deny : e->pol | deny;

			if (pol != e->pol)
				e->pol = pol;
			if (dir == POL_INGRESS)
				e->ingress_rev = rev;
			else
				e->egress_rev = rev;
			/* First decided here (a translated connection's entry, or
			 * the other end's on this node): the connection is new to
			 * this direction's policy. Decided again and denied: a
			 * change cut it. */
			if (!erev || !ok) {
				pol_event(p, ep, dir, cdir, &res, !ok);
				reported = !ok;
			}
			/* The new connection's event carried this packet's flags. */
			if (!erev && p->proto == IPPROTO_TCP)
				e->seen_fwd |= p->tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_FIN | TCP_FLAG_RST);
		}
		svc_cache(svc, rev, e->pol & deny);
		if (e->pol & deny)
			return reported ? drop_counted(skb, KP_DROP_POLICY, cdir) :
					  drop(skb, p, KP_DROP_POLICY, cdir);
		flags_event(e, p, false, cdir);
		ct_count(e, false, skb->len);
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
		flags_event(r, p, true, cdir);
		ct_count(r, true, skb->len);
		frag_store(p);
		return TC_ACT_OK;
	}

	if (!pol_decide(ep, dir, p, &res)) {
		svc_cache(svc, rev, true);
		pol_event(p, ep, dir, cdir, &res, true);
		return drop_counted(skb, KP_DROP_POLICY, cdir);
	}
	svc_cache(svc, rev, false);

	struct ct_entry n = { .created = now, .packets_fwd = 1, .bytes_fwd = skb->len };

	if (dir == POL_INGRESS)
		n.ingress_rev = rev;
	else
		n.egress_rev = rev;
	ct_refresh(&n, p, false, now);
	/* The new connection's event carries its first packet's flags. */
	if (p->proto == IPPROTO_TCP)
		n.seen_fwd = p->tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_FIN | TCP_FLAG_RST);
	/* Untracked, the replies would be decided as new connections of the
	 * peer's and could be refused: refuse now instead. */
	if (bpf_map_update_elem(&kp_ct, &k, &n, BPF_ANY))
		return drop(skb, p, KP_DROP_CT_CREATE, cdir);
	pol_event(p, ep, dir, cdir, &res, false);
	frag_store(p);
	return TC_ACT_OK;
}
