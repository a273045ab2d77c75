package datapath

// The BPF object and its Go bindings are generated from bpf/ and committed,
// so that building kpath needs no clang. `make generate` reruns this; CI
// fails when the committed files are stale. Both multiarch include
// directories are listed so the same command works on amd64 and arm64
// (clang ignores the one that does not exist).
//go:generate go tool bpf2go -tags linux -target bpfel -cflags "-O2 -g -Wall -Werror -I/usr/include/x86_64-linux-gnu -I/usr/include/aarch64-linux-gnu" -type lb_frontend_key -type lb_frontend -type lb_slot_key -type lb_backend -type lb_rev_nat -type lb_affinity_key -type lb_affinity -type lb_src_range_key -type ct_key -type ct_entry -type sock_revnat_key -type sock_revnat -type frag_key -type frag_ports -type kp_counter -type kp_dir -type kp_reason -type lb_flags -type ct_state -type ct_key_flags -type lb_scope -type ct_pol -type pol_dir -type ep_flags -type kp_identity -type endpoint -type local_pod -type ipcache_entry -type policy_key -type policy_entry -type policy_cidr_key -type policy_cidr -type policy_state -type node_info -type flow_type -type flow_match -type flow_event -type event_stat -type event_bucket kpath ../../bpf/kpath.c
