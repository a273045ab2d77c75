/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Service translation on the node's uplink, for traffic from outside the
 * node: NodePorts, external IPs and load-balancer IPs.
 *
 * kp_host_in (tc ingress) translates traffic to an external-scope frontend
 * to a backend (for externalTrafficPolicy Local, only this node's). When the
 * backend is on another node, the packet leaves through the uplink again and
 * the node masquerades it (cfg_masq_mark), so the reply comes back here.
 * kp_host_out (tc egress) translates replies leaving the node back to the
 * frontend. */

#include "lib/xlate.h"

SEC("tc")
int kp_host_in(struct __sk_buff *skb)
{
	return lb4_forward(skb, KP_DIR_HOST_IN, LB_SCOPE_EXTERNAL);
}

SEC("tc")
int kp_host_out(struct __sk_buff *skb)
{
	return lb4_reverse(skb, KP_DIR_HOST_OUT);
}
