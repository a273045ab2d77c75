/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* The programs on a pod's host-side veth.
 *
 * kp_from_pod (tc ingress: what the pod sends) first drops what the pod
 * sends from an address that is not its own (lib/srcval.h); then it
 * translates new connections to
 * a service frontend that the socket hook did not translate (it is off, or
 * the traffic does not come from a hooked socket), through connection
 * tracking so every packet of a connection goes to the same backend; then
 * enforces the pod's egress policy on the translated packet, so policy sees
 * the backend. kp_to_pod (tc egress: what the pod receives) enforces the
 * pod's ingress policy on the packet as it arrived, then translates replies
 * back to the frontend address (before translation the reply still matches
 * its connection's entry). A pod reaching itself through a Service is
 * masqueraded to the node's address and turned back (lib/hairpin.h).
 * Everything else passes untouched. */

#include "lib/xlate.h"
#include "lib/hairpin.h"
#include "lib/policy.h"
#include "lib/srcval.h"

SEC("tc")
int kp_from_pod(struct __sk_buff *skb)
{
	struct pkt p = {};
	int r = src_check_l2(skb, KP_DIR_FROM_POD);

	if (r != XLATE_CONTINUE)
		return r;
	r = pod_parse(skb, &p, KP_DIR_FROM_POD);
	if (r != XLATE_CONTINUE)
		return r;
	if (!src_bound(skb, p.saddr))
		return drop_invalid_source(skb, &p, KP_DIR_FROM_POD);
	struct ct_entry *svc = NULL;

	r = hairpin_reply(skb, &p);
	if (r != XLATE_PASS)
		return r;
	r = lb4_xlate(skb, &p, KP_DIR_FROM_POD, LB_SCOPE_INTERNAL, &svc);
	if (r != XLATE_PASS && r != XLATE_DONE)
		return r;
	if (pol_enforce(skb, &p, POL_EGRESS, KP_DIR_FROM_POD, svc) != TC_ACT_OK)
		return TC_ACT_SHOT;
	if (r == XLATE_PASS) {
		count(KP_PASS, KP_DIR_FROM_POD, skb->len);
		return TC_ACT_OK;
	}
	r = hairpin(skb, &p);
	return r == XLATE_PASS ? TC_ACT_OK : r;
}

SEC("tc")
int kp_to_pod(struct __sk_buff *skb)
{
	struct pkt p = {};
	int r = pod_parse(skb, &p, KP_DIR_TO_POD);

	if (r != XLATE_CONTINUE)
		return r;
	if (pol_enforce(skb, &p, POL_INGRESS, KP_DIR_TO_POD, NULL) != TC_ACT_OK)
		return TC_ACT_SHOT;
	r = lb4_unxlate(skb, &p, KP_DIR_TO_POD);
	if (r == XLATE_PASS)
		return pass(skb, KP_DIR_TO_POD);
	return r == XLATE_DONE ? TC_ACT_OK : r;
}
