/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Backend selection, shared by the socket hook and the per-packet path. */
#pragma once

#include <stdbool.h>
#include "common.h"

/* What a selection is allowed to depend on. */
struct lb_client {
	__u64 affinity_client; /* address or netns cookie */
	__u8 affinity_netns;
	__u32 hash;            /* flow hash for Maglev */
};

static __always_inline __u32 lb_pick_slot(const struct lb_frontend *fe, __u32 hash)
{
	if (fe->flags & LB_F_MAGLEV) {
		void *table = bpf_map_lookup_elem(&kp_lb_maglev, &fe->id);
		__u32 idx, *id;

		if (!table)
			return 0;
		idx = hash % cfg_maglev_size;
		id = bpf_map_lookup_elem(table, &idx);
		return id ? *id : 0;
	}

	struct lb_slot_key sk = {
		.id = fe->id,
		.slot = bpf_get_prandom_u32() % fe->count,
	};
	__u32 *id = bpf_map_lookup_elem(&kp_lb_slot, &sk);

	return id ? *id : 0;
}

/* Chooses a backend for a new connection to fe (fe->count > 0). Returns the
 * backend ID and fills *be, or 0 when the frontend's tables are inconsistent
 * (treated as "no backend"). */
static __always_inline __u32 lb_select(const struct lb_frontend *fe,
				       const struct lb_client *c,
				       struct lb_backend *be)
{
	struct lb_affinity_key ak = {};
	struct lb_backend *b;
	__u32 id, now = 0;

	if (fe->flags & LB_F_AFFINITY) {
		struct lb_affinity *a;

		ak.client = c->affinity_client;
		ak.id = fe->id;
		ak.netns = c->affinity_netns;
		now = now_sec();
		a = bpf_map_lookup_elem(&kp_lb_affinity, &ak);
		/* User space deletes affinity entries whose backend leaves the
		 * service, so a hit here is still a member. */
		if (a && now - a->last_used <= fe->affinity_timeout) {
			b = bpf_map_lookup_elem(&kp_lb_backend, &a->backend_id);
			if (b) {
				a->last_used = now;
				*be = *b;
				return a->backend_id;
			}
		}
	}

	id = lb_pick_slot(fe, c->hash);
	if (!id)
		return 0;
	b = bpf_map_lookup_elem(&kp_lb_backend, &id);
	if (!b)
		return 0;
	*be = *b;

	if (fe->flags & LB_F_AFFINITY) {
		struct lb_affinity a = { .backend_id = id, .last_used = now };

		bpf_map_update_elem(&kp_lb_affinity, &ak, &a, BPF_ANY);
	}
	return id;
}

/* Whether frontend fe admits a new connection from saddr: always, unless
 * it has loadBalancerSourceRanges, then only from a source in one. */
static __always_inline bool lb_src_admitted(const struct lb_frontend *fe, __be32 saddr)
{
	struct lb_src_range_key k = { .prefixlen = 64, .id = fe->id, .addr = saddr };

	return !(fe->flags & LB_F_SRC_RANGES) || bpf_map_lookup_elem(&kp_lb_src_range, &k);
}
