/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* The whole datapath as one object: the programs share their maps without
 * any pinning dance at load time, and Go gets one set of generated types.
 * Each part stays in its own file. */

#include "sock.c"
#include "pod.c"
#include "host.c"

/* Anchors so that the enums reach BTF and bpf2go can generate Go types. */
const enum kp_dir *kp_unused_dir __attribute__((unused));
const enum kp_reason *kp_unused_reason __attribute__((unused));
const enum lb_flags *kp_unused_lb_flags __attribute__((unused));
const enum lb_scope *kp_unused_lb_scope __attribute__((unused));
const enum ct_state *kp_unused_ct_state __attribute__((unused));
const enum ct_key_flags *kp_unused_ct_key_flags __attribute__((unused));
const enum ct_pol *kp_unused_ct_pol __attribute__((unused));
const enum pol_dir *kp_unused_pol_dir __attribute__((unused));
const enum ep_flags *kp_unused_ep_flags __attribute__((unused));
const enum kp_identity *kp_unused_kp_identity __attribute__((unused));
const enum flow_type *kp_unused_flow_type __attribute__((unused));
const enum flow_match *kp_unused_flow_match __attribute__((unused));
const enum event_stat *kp_unused_event_stat __attribute__((unused));
const struct flow_event *kp_unused_flow_event __attribute__((unused));

char __license[] SEC("license") = "Dual BSD/GPL";
