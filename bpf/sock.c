/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Socket-level service translation (cgroup sock_addr hooks).
 *
 * A connect() or sendmsg() to a service address is rewritten to a backend
 * before the kernel routes anything, so an established connection costs
 * nothing per packet. recvmsg() and getpeername() are rewritten back, so the
 * application only ever sees the service address. */

#include <linux/bpf.h>
#include <linux/in.h>
#include "lib/common.h"
#include "lib/lb.h"
#include "lib/events.h"

static __always_inline __u8 sock_proto(const struct bpf_sock_addr *ctx)
{
	if (ctx->type == SOCK_STREAM)
		return IPPROTO_TCP;
	if (ctx->type == SOCK_DGRAM)
		return IPPROTO_UDP;
	return 0;
}

/* user_port holds the port in network byte order in its low 16 bits. */
static __always_inline __be16 sock_port(const struct bpf_sock_addr *ctx)
{
	return (__be16)ctx->user_port;
}

/* Returns 1 to let the call proceed, 0 to fail it with EPERM (a service port
 * without backends: never connect to the service address untranslated). */
static __always_inline int sock4_forward(struct bpf_sock_addr *ctx)
{
	struct lb_frontend_key key = {
		.addr = ctx->user_ip4,
		.port = sock_port(ctx),
		.proto = sock_proto(ctx),
	};
	struct lb_frontend *fe;
	struct lb_backend be;
	struct lb_client c = {};
	__u32 id;

	if (!key.proto)
		return 1;
	fe = bpf_map_lookup_elem(&kp_lb_frontend, &key);
	if (!fe)
		return 1;
	if (!fe->count)
		goto no_backend;

	__u64 cookie = bpf_get_socket_cookie(ctx);

	c.affinity_client = bpf_get_netns_cookie(ctx);
	c.affinity_netns = 1;
	c.hash = (__u32)cookie ^ (__u32)(cookie >> 32);
	id = lb_select(fe, &c, &be);
	if (!id)
		goto no_backend;

	struct sock_revnat_key rk = {
		.cookie = cookie,
		.addr = be.addr,
		.port = be.port,
	};
	struct sock_revnat rv = {
		.addr = key.addr,
		.port = key.port,
		.id = fe->id,
	};
	/* Without this entry replies would show the backend address; refuse
	 * rather than break the application's view of the service. */
	if (bpf_map_update_elem(&kp_sock_revnat, &rk, &rv, BPF_ANY))
		return 0;

	ctx->user_ip4 = be.addr;
	ctx->user_port = (__u32)be.port;
	count(KP_SVC_XLATE, KP_DIR_SOCK, 0);
	if (cfg_flow_events) {
		/* The source is not bound yet at connect(): the socket cookie
		 * stands for it. */
		struct flow_event ev = {
			.type = FLOW_XLATE, .dir = KP_DIR_SOCK, .cookie = cookie, .proto = key.proto,
			.daddr = be.addr, .dport = be.port, .orig_daddr = key.addr, .orig_dport = key.port,
			.svc_id = fe->id,
		};

		flow_send(&ev);
	}
	return 1;

no_backend:
	count(KP_DROP_NO_BACKEND, KP_DIR_SOCK, 0);
	if (cfg_flow_events && drop_event_allowed()) {
		struct flow_event ev = {
			.type = FLOW_DROP, .reason = KP_DROP_NO_BACKEND, .dir = KP_DIR_SOCK, .proto = key.proto,
			.daddr = key.addr, .dport = key.port, .cookie = bpf_get_socket_cookie(ctx),
		};

		flow_send(&ev);
	}
	return 0;
}

static __always_inline int sock4_reverse(struct bpf_sock_addr *ctx)
{
	struct sock_revnat_key rk = {
		.cookie = bpf_get_socket_cookie(ctx),
		.addr = ctx->user_ip4,
		.port = sock_port(ctx),
	};
	struct sock_revnat *rv = bpf_map_lookup_elem(&kp_sock_revnat, &rk);

	if (!rv)
		return 1;
	ctx->user_ip4 = rv->addr;
	ctx->user_port = (__u32)rv->port;
	count(KP_REV_XLATE, KP_DIR_SOCK, 0);
	return 1;
}

SEC("cgroup/connect4")
int kp_sock_connect4(struct bpf_sock_addr *ctx)
{
	return sock4_forward(ctx);
}

SEC("cgroup/sendmsg4")
int kp_sock_sendmsg4(struct bpf_sock_addr *ctx)
{
	return sock4_forward(ctx);
}

SEC("cgroup/recvmsg4")
int kp_sock_recvmsg4(struct bpf_sock_addr *ctx)
{
	return sock4_reverse(ctx);
}

SEC("cgroup/getpeername4")
int kp_sock_getpeername4(struct bpf_sock_addr *ctx)
{
	return sock4_reverse(ctx);
}
