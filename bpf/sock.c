/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Socket-level service translation (cgroup sock_addr hooks).
 *
 * A connect() or sendmsg() to a service address is rewritten to a backend
 * before the kernel routes anything, so an established connection costs
 * nothing per packet. recvmsg() and getpeername() are rewritten back, so the
 * application only ever sees the service address. */

#include <linux/bpf.h>
#include <linux/in.h>
#include <linux/errno.h>
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

/* A v4-mapped IPv6 address (::ffff:a.b.c.d), as dual-stack AF_INET6
 * sockets (Java's, .NET's) write IPv4 destinations. */
static __always_inline bool sock6_v4mapped(const struct bpf_sock_addr *ctx)
{
	return ctx->user_ip6[0] == 0 && ctx->user_ip6[1] == 0 && ctx->user_ip6[2] == bpf_htonl(0x0000ffff);
}

/* Whether this socket is one the hooks translate: every one, or with
 * cfg_host_netns_cookie only the node namespace's. */
static __always_inline bool sock_hooked(struct bpf_sock_addr *ctx)
{
	return !cfg_host_netns_cookie || bpf_get_netns_cookie(ctx) == cfg_host_netns_cookie;
}

/* The IPv4 destination of the call: user_ip4, or the IPv4 part of a
 * v4-mapped user_ip6. The verifier wants constant context offsets, hence
 * one branch per family. */
static __always_inline __be32 sock_daddr(const struct bpf_sock_addr *ctx, bool v6)
{
	return v6 ? ctx->user_ip6[3] : ctx->user_ip4;
}

static __always_inline void sock_set_daddr(struct bpf_sock_addr *ctx, bool v6, __be32 addr)
{
	if (v6)
		ctx->user_ip6[3] = addr;
	else
		ctx->user_ip4 = addr;
}

/* Refuses the call as kube-proxy's REJECT does for the node's own
 * sockets: a TCP connect() fails with ECONNREFUSED (bpf_set_retval, Linux
 * 5.18), a UDP call with EPERM (what a datagram rejected on its way out
 * gives the sender). Either way at once, not after a timeout. */
static __always_inline int sock_refuse(const struct bpf_sock_addr *ctx)
{
	if (sock_proto(ctx) == IPPROTO_TCP)
		bpf_set_retval(-ECONNREFUSED);
	return 0;
}

/* Returns 1 to let the call proceed, 0 to fail it (a service port without
 * backends: never connect to the service address untranslated). */
static __always_inline int sock_forward(struct bpf_sock_addr *ctx, bool v6)
{
	struct lb_frontend_key key = {
		.addr = sock_daddr(ctx, v6),
		.port = sock_port(ctx),
		.proto = sock_proto(ctx),
	};
	struct lb_frontend *fe;
	struct lb_backend be;
	struct lb_client c = {};
	__u32 id;

	if (!key.proto || !sock_hooked(ctx))
		return 1;
	fe = bpf_map_lookup_elem(&kp_lb_frontend, &key);
	if (!fe)
		return 1;
	if (!fe->count)
		goto no_backend;
	if (fe->flags & LB_F_SRC_RANGES) {
		/* A pod's socket is left to its veth's program, which sees the
		 * source it sends from; the node's own are judged by the node's
		 * address, the source the kernel gives them on the uplink. */
		if (!cfg_node_netns_cookie || bpf_get_netns_cookie(ctx) != cfg_node_netns_cookie)
			return 1;
		if (!(fe->flags & LB_F_SRC_NODE))
			goto not_admitted;
	}

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

	sock_set_daddr(ctx, v6, be.addr);
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

not_admitted:
	count(KP_DROP_SOURCE_RANGE, KP_DIR_SOCK, 0);
	if (cfg_flow_events && drop_event_allowed()) {
		struct flow_event ev = {
			.type = FLOW_DROP, .reason = KP_DROP_SOURCE_RANGE, .dir = KP_DIR_SOCK, .proto = key.proto,
			.daddr = key.addr, .dport = key.port, .cookie = bpf_get_socket_cookie(ctx),
		};

		flow_send(&ev);
	}
	return 0; /* EPERM: the call fails at once, where kube-proxy's DROP times out */

no_backend:
	count(KP_DROP_NO_BACKEND, KP_DIR_SOCK, 0);
	if (cfg_flow_events && drop_event_allowed()) {
		struct flow_event ev = {
			.type = FLOW_DROP, .reason = KP_DROP_NO_BACKEND, .dir = KP_DIR_SOCK, .proto = key.proto,
			.daddr = key.addr, .dport = key.port, .cookie = bpf_get_socket_cookie(ctx),
		};

		flow_send(&ev);
	}
	return sock_refuse(ctx);
}

static __always_inline int sock_reverse(struct bpf_sock_addr *ctx, bool v6)
{
	struct sock_revnat_key rk = {
		.cookie = bpf_get_socket_cookie(ctx),
		.addr = sock_daddr(ctx, v6),
		.port = sock_port(ctx),
	};
	struct sock_revnat *rv = bpf_map_lookup_elem(&kp_sock_revnat, &rk);

	if (!rv)
		return 1;
	sock_set_daddr(ctx, v6, rv->addr);
	ctx->user_port = (__u32)rv->port;
	count(KP_REV_XLATE, KP_DIR_SOCK, 0);
	return 1;
}

SEC("cgroup/connect4")
int kp_sock_connect4(struct bpf_sock_addr *ctx)
{
	return sock_forward(ctx, false);
}

SEC("cgroup/sendmsg4")
int kp_sock_sendmsg4(struct bpf_sock_addr *ctx)
{
	return sock_forward(ctx, false);
}

SEC("cgroup/recvmsg4")
int kp_sock_recvmsg4(struct bpf_sock_addr *ctx)
{
	return sock_reverse(ctx, false);
}

SEC("cgroup/getpeername4")
int kp_sock_getpeername4(struct bpf_sock_addr *ctx)
{
	return sock_reverse(ctx, false);
}

/* Dual-stack AF_INET6 sockets reach IPv4 services through v4-mapped
 * addresses. Their connect() and getpeername() run the IPv6 hooks with the
 * mapped address, and so does recvmsg() of UDP; sendmsg() to a mapped
 * address runs the IPv4 hook (the kernel hands it to udp_sendmsg). Other
 * IPv6 addresses pass: kpath serves IPv4 Services. */
SEC("cgroup/connect6")
int kp_sock_connect6(struct bpf_sock_addr *ctx)
{
	return sock6_v4mapped(ctx) ? sock_forward(ctx, true) : 1;
}

SEC("cgroup/recvmsg6")
int kp_sock_recvmsg6(struct bpf_sock_addr *ctx)
{
	return sock6_v4mapped(ctx) ? sock_reverse(ctx, true) : 1;
}

SEC("cgroup/getpeername6")
int kp_sock_getpeername6(struct bpf_sock_addr *ctx)
{
	return sock6_v4mapped(ctx) ? sock_reverse(ctx, true) : 1;
}
