/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Connection tracking: state transitions and lifetimes. */
#pragma once

#include "pkt.h"

static __always_inline __u32 ct_lifetime(__u8 proto, __u8 state)
{
	if (proto != IPPROTO_TCP)
		return cfg_ct_lifetime_other;
	if (state == CT_ESTABLISHED)
		return cfg_ct_lifetime_tcp;
	if (state == CT_CLOSING)
		return cfg_ct_lifetime_close;
	return cfg_ct_lifetime_syn;
}

/* Advances e for packet p (reply: it travels against the entry's tuple) and
 * pushes its expiry. Fields are only written when they change, so a busy
 * flow does not dirty the entry's cache line on every packet. Returns
 * whether state or expiry changed (at most about once a second). */
static __always_inline bool ct_refresh(struct ct_entry *e, const struct pkt *p,
				       bool reply, __u32 now)
{
	__u8 state = e->state;
	__u32 expires;
	bool changed = false;

	if (p->proto == IPPROTO_TCP) {
		if (p->tcp_flags & (TCP_FLAG_FIN | TCP_FLAG_RST))
			state = CT_CLOSING;
		else if (reply && state == CT_NEW)
			state = CT_ESTABLISHED;
		if ((e->tcp_flags | p->tcp_flags) != e->tcp_flags)
			e->tcp_flags |= p->tcp_flags;
	} else if (reply && state == CT_NEW) {
		state = CT_ESTABLISHED;
	}
	if (state != e->state) {
		e->state = state;
		changed = true;
	}
	expires = now + ct_lifetime(p->proto, state);
	if (expires != e->expires) {
		e->expires = expires;
		changed = true;
	}
	return changed;
}

/* Copies the connection entry's state and expiry to its service entry, so
 * both live as long as the connection does. */
static __always_inline void ct_sync_service(struct ct_entry *svc, const struct ct_entry *conn)
{
	if (svc->state != conn->state)
		svc->state = conn->state;
	if (svc->expires != conn->expires)
		svc->expires = conn->expires;
}

/* Whether e's lifetime has passed. An expired entry is a dead connection
 * whether or not the collector has deleted it yet: the datapath must not
 * behave differently depending on when the collector last ran. Signed
 * difference: the 32-bit seconds clock may wrap. */
static __always_inline bool ct_expired(const struct ct_entry *e, __u32 now)
{
	return (__s32)(e->expires - now) < 0;
}

/* A SYN for a tuple whose connection is closing starts a new connection
 * (port reuse): it gets a fresh backend instead of the old one. */
static __always_inline bool ct_is_reopen(const struct ct_entry *e, const struct pkt *p)
{
	return p->proto == IPPROTO_TCP && e->state == CT_CLOSING &&
	       (p->tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK)) == TCP_FLAG_SYN;
}
