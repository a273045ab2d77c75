package datapath

import "testing"

func TestMapUsages(t *testing.T) {
	d := openTest(t, testConfig(t))
	mustUpsert(t, d, svcOf("10.96.0.1:80", "10.244.0.1:80", "10.244.0.2:80"))
	fromPod(t, d, testPkt{src: ap("10.244.0.9:1000"), dst: ap("10.96.0.1:80"), proto: 6, tcpFlags: tcpSYN}.bytes())
	u, err := d.MapUsages()
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]int{"kp_lb_frontend": 1, "kp_lb_slot": 2, "kp_lb_backend": 2, "kp_lb_revnat": 1, "kp_ct": 2, "kp_lb_maglev": 0}
	for _, m := range u {
		if w, ok := want[m.Name]; ok && m.Entries != w {
			t.Errorf("%s: %d entries, want %d", m.Name, m.Entries, w)
		}
		if m.Max == 0 {
			t.Errorf("%s: max 0", m.Name)
		}
	}
}
