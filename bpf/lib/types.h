/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Types shared by the BPF programs and Go. Go declarations are generated from
 * these by bpf2go -type; never copy them by hand. Addresses and ports are in
 * network byte order everywhere (they are compared with and written into
 * packets unchanged); IDs, counts and times are host order. */
#pragma once

#include <linux/types.h>

/* Who is asking for a translation: the socket hook, or one of the per-packet
 * directions on a pod's host-side veth. */
enum kp_dir {
	KP_DIR_FROM_POD = 0, /* tc ingress of the host-side veth: packets the pod sends */
	KP_DIR_TO_POD = 1,   /* tc egress of the host-side veth: packets delivered to the pod */
	KP_DIR_SOCK = 2,     /* cgroup socket hooks */
	KP_DIR_HOST_IN = 3,  /* tc ingress of the node's uplink: from outside the node */
	KP_DIR_HOST_OUT = 4, /* tc egress of the node's uplink: replies leaving the node */
	KP_DIR_MAX = 5,
};

/* What happened to a packet (or a socket call). Indexes the metrics map
 * together with enum kp_dir. Values are part of the pinned ABI: append only. */
enum kp_reason {
	KP_PASS = 0,             /* not service traffic: passed untouched */
	KP_SVC_XLATE = 1,        /* translated frontend -> backend */
	KP_REV_XLATE = 2,        /* reply translated backend -> frontend */
	KP_DROP_NO_BACKEND = 3,  /* service port with no backend */
	KP_DROP_MALFORMED = 4,   /* truncated or invalid IPv4/L4 header */
	KP_DROP_FRAG_NO_FIRST = 5, /* later fragment of a translated datagram whose connection state is gone */
	KP_DROP_CT_CREATE = 6,   /* connection tracking entry could not be written */
	KP_DROP_REWRITE = 7,     /* header rewrite or checksum update failed */
	KP_DROP_POLICY = 8,      /* denied by NetworkPolicy (egress on FROM_POD, ingress on TO_POD) */
	KP_DROP_INVALID_SOURCE = 9, /* a pod sent from an address that is not its own (lib/srcval.h) */
	KP_DROP_UNSUPPORTED_L3 = 10, /* a pod sent neither IPv4 nor ARP (or a VLAN tag), which policy cannot see */
	KP_DROP_SOURCE_RANGE = 11, /* a new connection to a load-balancer IP from outside its loadBalancerSourceRanges */
	KP_REASON_MAX = 12,
};

/* lb_frontend.flags */
enum lb_flags {
	LB_F_MAGLEV = 1 << 0,   /* backend from the service's Maglev table, not random */
	LB_F_AFFINITY = 1 << 1, /* sessionAffinity ClientIP: sticky per client */
	/* loadBalancerSourceRanges: new connections only from the sources
	 * kp_lb_src_range holds for this frontend. */
	LB_F_SRC_RANGES = 1 << 2,
	/* With LB_F_SRC_RANGES: a range holds the node's own address, so the
	 * node's own sockets are admitted (the socket hooks cannot see a
	 * source that connect() has not chosen yet). */
	LB_F_SRC_NODE = 1 << 3,
};

/* Which traffic a frontend serves. NodePort, external and load-balancer
 * frontends have both: clients on the node reach every endpoint, traffic
 * from outside may be limited to local ones (externalTrafficPolicy Local). */
enum lb_scope {
	LB_SCOPE_INTERNAL = 0, /* pods and processes of this node */
	LB_SCOPE_EXTERNAL = 1, /* arriving on the node's uplink */
};

/* Key of the frontend map: a service address as clients use it. */
struct lb_frontend_key {
	__be32 addr;
	__be16 port;
	__u8 proto; /* IPPROTO_TCP or IPPROTO_UDP */
	__u8 scope; /* enum lb_scope */
};

/* A frontend: which service port it is and how many backend slots it has. */
struct lb_frontend {
	__u32 id;               /* frontend ID; also its reverse-translation ID (never 0) */
	__u16 count;            /* backend slots 0..count-1 in kp_lb_slot are valid */
	__u16 flags;            /* enum lb_flags */
	__u32 affinity_timeout; /* seconds, with LB_F_AFFINITY */
	__u32 pad;
};

/* Key of kp_lb_slot: slot number within a frontend's backend list. */
struct lb_slot_key {
	__u32 id;
	__u32 slot;
};

/* A backend: where translated traffic goes. */
struct lb_backend {
	__be32 addr;
	__be16 port;
	__u8 proto;
	__u8 pad;
};

/* Key of kp_lb_src_range: a source prefix admitted to one frontend. The
 * frontend ID is part of the matched data, so prefixlen is 32 + the
 * prefix's length. */
struct lb_src_range_key {
	__u32 prefixlen;
	__u32 id;    /* frontend ID */
	__be32 addr; /* the prefix's address */
};

/* The original frontend of a translated connection, for replies. */
struct lb_rev_nat {
	__be32 addr;
	__be16 port;
	__u16 pad;
};

/* Key of the session-affinity map. client is an IPv4 address (tc path) or
 * a network-namespace cookie (socket path, where the source address is not
 * known yet at connect()). */
struct lb_affinity_key {
	__u64 client;
	__u32 id;
	__u8 netns; /* 1 when client is a netns cookie */
	__u8 pad[3];
};

/* The backend a client was last sent to, and when (monotonic seconds). */
struct lb_affinity {
	__u32 backend_id;
	__u32 last_used;
};

/* ct_key.flags */
enum ct_key_flags {
	CT_KEY_SERVICE = 1 << 0, /* keyed by the frontend tuple, holds the chosen backend */
	/* A pod's connection to itself through a Service, masqueraded to the
	 * node's address: keyed by the pod's reply (pod -> node address). */
	CT_KEY_HAIRPIN = 1 << 1,
};

/* TCP connection state as far as lifetimes are concerned. */
enum ct_state {
	CT_NEW = 0,         /* SYN seen, no reply yet (or a non-TCP flow without reply) */
	CT_ESTABLISHED = 1, /* the other side answered */
	CT_CLOSING = 2,     /* FIN or RST seen */
};

/* Connection-tracking key: the 5-tuple as the packet carries it in the
 * direction the entry was created. */
struct ct_key {
	__be32 saddr;
	__be32 daddr;
	__be16 sport;
	__be16 dport;
	__u8 proto;
	__u8 flags; /* enum ct_key_flags */
	__u16 pad;
};

/* Connection-tracking entry. A translated connection has two: the service
 * entry (client -> frontend, CT_KEY_SERVICE) that pins the backend, and the
 * connection entry (client -> backend) whose reverse tuple matches replies
 * and carries the reverse-translation ID. */
struct ct_entry {
	__u32 expires;      /* monotonic seconds (bpf_ktime_get_ns() / 1e9) */
	__u32 rev_nat_id;   /* frontend ID to translate replies back to; 0: none */
	__u32 backend_id;   /* service entries: the chosen backend */
	__be32 backend_addr; /* copied so an established flow survives its backend's removal */
	__be16 backend_port;
	__u8 state;         /* enum ct_state */
	__u8 tcp_flags;     /* union of TCP flags seen, both directions */
	__u32 created;      /* monotonic seconds */
	/* Policy verdicts cached for the connection, each with the policy
	 * revision that made it (0: not evaluated): the source's egress and the
	 * destination's ingress, which may be decided on different nodes. */
	__u32 egress_rev;
	__u32 ingress_rev;
	__u8 pol;           /* enum ct_pol */
	/* SYN, FIN and RST seen in the entry's direction and in the reply
	 * direction, so each is reported once per direction (flow events). */
	__u8 seen_fwd;
	__u8 seen_rev;
	__u8 pad;
	/* Packets and bytes in the entry's direction and in the reply
	 * direction, reported when the connection ends (flows). Counted where
	 * policy sees the connection; a translated connection's forward
	 * packets are counted on its service entry. */
	__u32 packets_fwd;
	__u32 packets_rev;
	__u64 bytes_fwd;
	__u64 bytes_rev;
};

/* ct_entry.pol: the cached verdicts. */
enum ct_pol {
	CT_POL_EGRESS_DENY = 1 << 0,
	CT_POL_INGRESS_DENY = 1 << 1,
};

/* Socket-level reverse translation: (socket, backend) -> frontend. */
struct sock_revnat_key {
	__u64 cookie;
	__be32 addr;
	__be16 port;
	__u16 pad;
};

/* The frontend a socket asked for. */
struct sock_revnat {
	__be32 addr;
	__be16 port;
	__u16 pad;
	__u32 id;
};

/* An IPv4 datagram being fragmented, in the direction it was translated. */
struct frag_key {
	__be32 saddr;
	__be32 daddr;
	__be16 id;
	__u8 proto;
	__u8 pad;
};

/* The L4 ports of a fragmented datagram, read from its first fragment. */
struct frag_ports {
	__be16 sport;
	__be16 dport;
};

/* One counter: packets and bytes (socket calls count as packets of 0 bytes). */
struct kp_counter {
	__u64 packets;
	__u64 bytes;
};

/* Policy directions: the local endpoint's egress (what it sends) or
 * ingress (what it receives). */
enum pol_dir {
	POL_EGRESS = 0,
	POL_INGRESS = 1,
};

/* kp_endpoint.flags */
enum ep_flags {
	EP_F_INGRESS_ISOLATED = 1 << 0, /* a policy selects it for ingress */
	EP_F_EGRESS_ISOLATED = 1 << 1,  /* a policy selects it for egress */
};

/* Reserved identities (internal/policy has the same numbers). */
enum kp_identity {
	KP_ID_HOST = 1,        /* this node's own addresses */
	KP_ID_WORLD = 2,       /* any address not in the ipcache */
	KP_ID_REMOTE_NODE = 3, /* another node's addresses */
};

/* A local endpoint (a pod on this node), keyed by its address. */
struct endpoint {
	__u32 set;      /* policy set whose entries apply */
	__u32 identity; /* the pod's own identity */
	__u8 flags;     /* enum ep_flags */
	__u8 pad[3];
};

/* A pod of this node as its host-side interface sees it (kp_local_pod):
 * the interface the pod's address lives behind. */
struct local_pod {
	__u32 ifindex; /* the host-side veth (in the node's namespace) */
	__u32 pad;
};

/* ipcache value: the identity of an address of the cluster. */
struct ipcache_entry {
	__u32 identity;
	__u32 pad;
};

/* Key of kp_policy, a longest-prefix-match trie: set, peer and direction
 * are always matched whole (prefixlen >= 72); then the protocol (80) and
 * the leading bits of the destination port (up to 96). A rule for every
 * protocol is a 72-bit prefix, every port of one protocol an 80-bit one, a
 * port range a few aligned blocks. dport is in network byte order, so its
 * leading bits are its most significant ones, as the trie reads them. */
struct policy_key {
	__u32 prefixlen;
	__u32 set;
	__u32 peer;     /* identity, or POL_CIDR_GROUP | group of the set */
	__u8 dir;       /* enum pol_dir */
	__u8 proto;
	__be16 dport;
};

/* An allow entry: which rule of the set allowed (index + 1), for traces
 * and flows. */
struct policy_entry {
	__u32 rule;
};

/* Key of kp_policy_cidr: a set's ipBlock prefixes for a direction; set and
 * direction always whole (prefixlen >= 64), then the address. */
struct policy_cidr_key {
	__u32 prefixlen;
	__u32 set;
	__u8 dir;
	__u8 pad[3];
	__be32 addr;
};

/* The group of rules that applies where a prefix is the longest match (0:
 * none, the address is excepted). */
struct policy_cidr {
	__u32 group;
};

/* Global policy state, one entry. */
/* What the datapath knows of its node (kp_node). */
struct node_info {
	/* The node's address (its InternalIP), the source a pod sees when it
	 * reaches itself through a Service per packet, as with kube-proxy.
	 * 0 until the agent knows it. */
	__be32 addr;
	__u32 pad;
};

struct policy_state {
	/* Bumped by the agent after every change it writes: a connection whose
	 * cached verdict has another revision is evaluated again. Never 0. */
	__u32 revision;
	__u32 pad;
};

/* What a flow event reports. Values are part of the ABI with the agent:
 * append only, never reuse one. */
enum flow_type {
	FLOW_NEW = 1,   /* a new connection of a local endpoint, with its policy verdict */
	FLOW_FLAGS = 2, /* the first SYN, FIN or RST seen in a direction */
	FLOW_DROP = 3,  /* a dropped packet (or refused socket call), with its reason */
	FLOW_XLATE = 4, /* a service frontend translated to a backend (tc or socket) */
};

/* What decided a policy verdict (flow_event.match). Append only. */
enum flow_match {
	FLOW_MATCH_NONE = 0,     /* the endpoint is not isolated in this direction */
	FLOW_MATCH_IDENTITY = 1, /* an entry for the peer's identity allowed */
	FLOW_MATCH_CIDR = 2,     /* an entry for the peer's address (ipBlock, all peers) allowed */
	FLOW_MATCH_HOST = 3,     /* the node, or the pod itself: always allowed */
	FLOW_MATCH_DENIED = 4,   /* no entry allowed */
	FLOW_MATCH_REPLY = 5,    /* a reply of an allowed connection */
};

/* One flow event, pre-parsed: the agent decodes it without reading a
 * packet. Addresses and ports in network byte order. */
struct flow_event {
	__u64 ts_ns;        /* bpf_ktime_get_ns (CLOCK_MONOTONIC) */
	__u64 cookie;       /* socket cookie (socket path), else 0 */
	__be32 saddr;
	__be32 daddr;
	__be32 orig_daddr;  /* the service frontend, when translated (else 0) */
	__u32 svc_id;       /* the frontend's ID, when translated (else 0) */
	__u32 set;          /* policy set of the endpoint that decided (FLOW_NEW, policy drops) */
	__u32 rule;         /* the set's rule that allowed (index + 1), else 0 */
	__u32 peer_identity;
	__be16 sport;
	__be16 dport;
	__be16 orig_dport;
	__u8 type;          /* enum flow_type */
	__u8 reason;        /* enum kp_reason (FLOW_DROP) */
	__u8 dir;           /* enum kp_dir */
	__u8 proto;
	__u8 tcp_flags;     /* the packet's */
	__u8 match;         /* enum flow_match */
	__u8 pol_dir;       /* enum pol_dir of the verdict */
	__u8 pad[3];
	/* The interface the packet came in on, for drops of packets whose
	 * source cannot be trusted (KP_DROP_INVALID_SOURCE): it names the
	 * sender. 0 otherwise. */
	__u32 ifindex;
};

/* Counters of flow events (kp_event_stats index). */
enum event_stat {
	EVENT_SENT = 0,
	EVENT_LOST = 1,         /* the ring buffer was full */
	EVENT_RATE_LIMITED = 2, /* a drop event over the per-CPU rate */
	EVENT_STAT_MAX = 3,
};

/* A per-CPU token bucket for drop events. */
struct event_bucket {
	__u64 last_ns;
	__u64 tokens;
};
