/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Per-packet service translation on a pod's host-side veth.
 *
 * kp_from_pod (tc ingress: what the pod sends) translates new connections to
 * a service frontend that the socket hook did not translate (it is off, or
 * the traffic does not come from a hooked socket), through connection
 * tracking so every packet of a connection goes to the same backend.
 * kp_to_pod (tc egress: what the pod receives) translates replies back to the
 * frontend address. Everything that is not service traffic passes untouched. */

#include "lib/xlate.h"

SEC("tc")
int kp_from_pod(struct __sk_buff *skb)
{
	return lb4_forward(skb, KP_DIR_FROM_POD, LB_SCOPE_INTERNAL);
}

SEC("tc")
int kp_to_pod(struct __sk_buff *skb)
{
	return lb4_reverse(skb, KP_DIR_TO_POD);
}
