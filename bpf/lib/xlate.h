/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Per-packet service translation, shared by the pod (pod.c) and uplink
 * (host.c) programs. */
#pragma once

#include "common.h"
#include "lb.h"
#include "pkt.h"
#include "ct.h"
#include "events.h"
#include "reject.h"

static __always_inline int pass(struct __sk_buff *skb, __u32 dir)
{
	count(KP_PASS, dir, skb->len);
	return TC_ACT_OK;
}

/* flow_of fills an event's packet fields from p. */
static __always_inline void flow_of(struct flow_event *ev, const struct pkt *p)
{
	ev->saddr = p->saddr;
	ev->daddr = p->daddr;
	ev->sport = p->sport;
	ev->dport = p->dport;
	ev->proto = p->proto;
	ev->tcp_flags = p->tcp_flags;
}

/* Drops the packet, counted but not reported (the caller reported it). */
static __always_inline int drop_counted(struct __sk_buff *skb, __u32 reason, __u32 dir)
{
	count(reason, dir, skb->len);
	return TC_ACT_SHOT;
}

/* Drops the packet: counted, and reported (rate-limited) as a flow event.
 * p may be NULL when nothing could be parsed. */
static __always_inline int drop(struct __sk_buff *skb, const struct pkt *p, __u32 reason, __u32 dir)
{
	count(reason, dir, skb->len);
	if (cfg_flow_events && drop_event_allowed()) {
		struct flow_event ev = { .type = FLOW_DROP, .reason = reason, .dir = dir };

		if (p)
			flow_of(&ev, p);
		flow_send(&ev);
	}
	return TC_ACT_SHOT;
}

/* A Service port without backends: counted and reported as a drop, and
 * refused as kube-proxy refuses it (an ICMP port unreachable). */
static __always_inline int no_backend(struct __sk_buff *skb, const struct pkt *p, __u32 dir)
{
	drop(skb, p, KP_DROP_NO_BACKEND, dir);
	return reject_port_unreachable(skb);
}

#define XLATE_CONTINUE (-128)
#define XLATE_PASS (-129) /* not service traffic */
#define XLATE_DONE (-130) /* translated */

/* Parses skb for translation. Returns XLATE_CONTINUE, or the verdict for a
 * packet that is not a candidate (counted as passed or dropped). */
static __always_inline int xlate_parse(struct __sk_buff *skb, struct pkt *p, __u32 dir)
{
	int r = parse(skb, p);

	if (r == PARSE_PASS)
		return pass(skb, dir);
	if (r < 0)
		return drop(skb, p, -r, dir);
	if (p->portless || (!p->has_l4 && !frag_lookup(p)))
		return pass(skb, dir);
	return XLATE_CONTINUE;
}

/* Parses skb for a pod's programs: like xlate_parse, but portless packets
 * and later fragments without a record continue too, for policy to see. */
static __always_inline int pod_parse(struct __sk_buff *skb, struct pkt *p, __u32 dir)
{
	int r = parse(skb, p);

	if (r == PARSE_PASS)
		return pass(skb, dir);
	if (r < 0)
		return drop(skb, p, -r, dir);
	if (!p->portless && !p->has_l4)
		frag_lookup(p);
	return XLATE_CONTINUE;
}

/* Translates traffic to a frontend of the given scope into traffic to one
 * of its backends, through connection tracking. Returns XLATE_PASS for
 * traffic that is not to a frontend, XLATE_DONE after translating (pp then
 * holds the backend as destination, as the packet does), or a verdict
 * (a drop, counted). For an established connection *svcp (when given) is
 * its service entry, where policy caches its verdict too. */
static __always_inline int lb4_xlate(struct __sk_buff *skb, struct pkt *pp, const __u32 dir,
				     const __u8 scope, struct ct_entry **svcp)
{
	struct pkt p = *pp;

	if (p.proto != IPPROTO_TCP && p.proto != IPPROTO_UDP)
		return XLATE_PASS;

	struct lb_frontend_key fk = { .addr = p.daddr, .port = p.dport, .proto = p.proto, .scope = scope };
	struct lb_frontend *fe = bpf_map_lookup_elem(&kp_lb_frontend, &fk);

	if (!fe)
		return XLATE_PASS;

	__u32 now = now_sec();
	struct ct_key sk = {
		.saddr = p.saddr, .daddr = p.daddr,
		.sport = p.sport, .dport = p.dport,
		.proto = p.proto, .flags = CT_KEY_SERVICE,
	};
	struct ct_key ck = { .saddr = p.saddr, .sport = p.sport, .proto = p.proto };
	struct ct_entry *svc = bpf_map_lookup_elem(&kp_ct, &sk);
	__be32 baddr;
	__be16 bport;
	__u32 fe_id = fe->id;
	bool new_conn = false;

	if (svc && !ct_expired(svc, now) && !ct_is_reopen(svc, &p)) {
		/* Established: the backend stays the one chosen at the start,
		 * even if it has since left the service. */
		baddr = svc->backend_addr;
		bport = svc->backend_port;
		if (svcp)
			*svcp = svc;
		/* The connection entry is refreshed when the service entry's
		 * state or expiry moves (about once a second), not per packet. */
		if (ct_refresh(svc, &p, false, now)) {
			ck.daddr = baddr;
			ck.dport = bport;

			struct ct_entry *conn = bpf_map_lookup_elem(&kp_ct, &ck);

			if (conn) {
				ct_refresh(conn, &p, false, now);
				ct_sync_service(svc, conn);
			} else {
				/* Evicted or collected while the service entry
				 * lived: recreate it, or replies would not be
				 * translated. */
				struct ct_entry n = *svc;

				if (bpf_map_update_elem(&kp_ct, &ck, &n, BPF_ANY))
					return drop(skb, &p, KP_DROP_CT_CREATE, dir);
			}
		}
	} else {
		struct lb_client c = {
			.affinity_client = p.saddr,
			.hash = jhash_3words(p.saddr, p.daddr,
					     ((__u32)p.sport << 16) | p.dport, p.proto),
		};
		struct lb_backend be;
		__u32 id;

		if (!p.has_l4)
			return drop(skb, &p, KP_DROP_FRAG_NO_FIRST, dir);
		if (!fe->count)
			return no_backend(skb, &p, dir);
		/* After the backend check, as kube-proxy's firewall chain
		 * exists only for a service with endpoints; silent, as its
		 * DROP is. */
		if (!lb_src_admitted(fe, p.saddr))
			return drop(skb, &p, KP_DROP_SOURCE_RANGE, dir);
		id = lb_select(fe, &c, &be);
		if (!id)
			return no_backend(skb, &p, dir);

		struct ct_entry n = {
			.rev_nat_id = fe->id,
			.backend_id = id,
			.backend_addr = be.addr,
			.backend_port = be.port,
			.created = now,
		};

		ct_refresh(&n, &p, false, now);
		if (bpf_map_update_elem(&kp_ct, &sk, &n, BPF_ANY))
			return drop(skb, &p, KP_DROP_CT_CREATE, dir);
		baddr = be.addr;
		bport = be.port;
		new_conn = true;
		ck.daddr = baddr;
		ck.dport = bport;
		if (bpf_map_update_elem(&kp_ct, &ck, &n, BPF_ANY))
			return drop(skb, &p, KP_DROP_CT_CREATE, dir);
	}

	if (rewrite(skb, &p, false, p.daddr, baddr, p.dport, bport))
		return drop(skb, &p, KP_DROP_REWRITE, dir);
	if (scope == LB_SCOPE_EXTERNAL && cfg_masq_mark)
		skb->mark |= cfg_masq_mark;
	frag_store(&p); /* keyed by the headers before translation */
	count(KP_SVC_XLATE, dir, skb->len);
	if (new_conn && cfg_flow_events) {
		struct flow_event ev = { .type = FLOW_XLATE, .dir = dir, .svc_id = fe_id,
					 .orig_daddr = p.daddr, .orig_dport = p.dport };

		flow_of(&ev, &p);
		ev.daddr = baddr;
		ev.dport = bport;
		flow_send(&ev);
	}
	pp->orig_daddr = p.daddr;
	pp->orig_dport = p.dport;
	pp->svc_id = fe_id;
	pp->daddr = baddr;
	pp->dport = bport;
	return XLATE_DONE;
}

/* Parses and translates: the whole of the uplink's ingress program. */
static __always_inline int lb4_forward(struct __sk_buff *skb, const __u32 dir, const __u8 scope)
{
	struct pkt p = {};
	int r = xlate_parse(skb, &p, dir);

	if (r != XLATE_CONTINUE)
		return r;
	r = lb4_xlate(skb, &p, dir, scope, NULL);
	if (r == XLATE_PASS)
		return pass(skb, dir);
	return r == XLATE_DONE ? TC_ACT_OK : r;
}

/* Translates replies of translated connections back to their frontend.
 * Returns XLATE_PASS, XLATE_DONE or a verdict (a drop, counted). */
static __always_inline int lb4_unxlate(struct __sk_buff *skb, const struct pkt *pp, const __u32 dir)
{
	struct pkt p = *pp;

	if (p.proto != IPPROTO_TCP && p.proto != IPPROTO_UDP)
		return XLATE_PASS;

	/* A reply travels against the connection entry's tuple. */
	struct ct_key ck = {
		.saddr = p.daddr, .daddr = p.saddr,
		.sport = p.dport, .dport = p.sport,
		.proto = p.proto,
	};
	struct ct_entry *conn = bpf_map_lookup_elem(&kp_ct, &ck);

	if (!conn || !conn->rev_nat_id)
		return XLATE_PASS;

	struct lb_rev_nat *rn = bpf_map_lookup_elem(&kp_lb_revnat, &conn->rev_nat_id);

	if (!rn)
		return XLATE_PASS; /* the service is gone; nothing to map back to */
	if (ct_refresh(conn, &p, true, now_sec())) {
		/* Replies alone must keep the service entry alive too (a UDP
		 * stream from the backend), and carry it to established. */
		struct ct_key sk = {
			.saddr = p.daddr, .daddr = rn->addr,
			.sport = p.dport, .dport = rn->port,
			.proto = p.proto, .flags = CT_KEY_SERVICE,
		};
		struct ct_entry *svc = bpf_map_lookup_elem(&kp_ct, &sk);

		if (svc)
			ct_sync_service(svc, conn);
	}
	if (rewrite(skb, &p, true, p.saddr, rn->addr, p.sport, rn->port))
		return drop(skb, &p, KP_DROP_REWRITE, dir);
	frag_store(&p);
	count(KP_REV_XLATE, dir, skb->len);
	return XLATE_DONE;
}

/* Parses and translates replies back: the whole of the uplink's egress
 * program. */
static __always_inline int lb4_reverse(struct __sk_buff *skb, const __u32 dir)
{
	struct pkt p = {};
	int r = xlate_parse(skb, &p, dir);

	if (r != XLATE_CONTINUE)
		return r;
	r = lb4_unxlate(skb, &p, dir);
	if (r == XLATE_PASS)
		return pass(skb, dir);
	return r == XLATE_DONE ? TC_ACT_OK : r;
}
