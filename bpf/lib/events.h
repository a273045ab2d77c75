/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Flow events: compact records through a ring buffer to the agent. They
 * are sent where a connection starts (not per packet), when a direction
 * first shows SYN, FIN or RST, when a service is translated and when a
 * packet is dropped (rate-limited per CPU). */
#pragma once

#include <stdbool.h>
#include "common.h"

static __always_inline void event_stat(__u32 idx)
{
	__u64 *v = bpf_map_lookup_elem(&kp_event_stats, &idx);

	if (v)
		(*v)++;
}

/* Copies ev to the ring buffer. The consumer is woken only once enough
 * has gathered (it also polls), so a busy node does not pay a wakeup per
 * event. */
static __always_inline void flow_send(struct flow_event *ev)
{
	__u64 flags = BPF_RB_NO_WAKEUP;

	if (!cfg_flow_events)
		return;
	ev->ts_ns = bpf_ktime_get_ns();
	if (bpf_ringbuf_query(&kp_events, BPF_RB_AVAIL_DATA) > 64 * 1024)
		flags = BPF_RB_FORCE_WAKEUP;
	if (bpf_ringbuf_output(&kp_events, ev, sizeof(*ev), flags))
		event_stat(EVENT_LOST);
	else
		event_stat(EVENT_SENT);
}

/* Whether this CPU may send one more drop event now (token bucket). */
static __always_inline bool drop_event_allowed(void)
{
	__u32 zero = 0;
	struct event_bucket *b = bpf_map_lookup_elem(&kp_event_rl, &zero);
	__u64 now, refill;

	if (!b)
		return false;
	now = bpf_ktime_get_ns();
	/* Capped at a second's worth, so the product cannot overflow. */
	refill = now - b->last_ns >= NSEC_PER_SEC ? cfg_drop_events_per_sec :
		 (now - b->last_ns) * cfg_drop_events_per_sec / NSEC_PER_SEC;
	if (refill) {
		b->tokens = b->tokens + refill > cfg_drop_events_per_sec ? cfg_drop_events_per_sec : b->tokens + refill;
		b->last_ns = now;
	}
	if (!b->tokens) {
		event_stat(EVENT_RATE_LIMITED);
		return false;
	}
	b->tokens--;
	return true;
}
