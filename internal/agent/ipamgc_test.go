package agent

import (
	"path/filepath"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/kpath/kpath/internal/ipam"
	"github.com/kpath/kpath/internal/testenv"
	ktestutil "github.com/kpath/kpath/internal/testutil"
)

// An address whose pod's interface is gone (its CNI DEL lost) is released
// on the second sweep that finds it so, not the first; a pod whose
// interface is there, and an allocation not yet attached, keep theirs.
func TestSweepLeakedReleasesAfterTwoSweeps(t *testing.T) {
	ktestutil.RequireRoot(t)
	env := testenv.StartForTest(t, testenv.Options{})
	createNodes(t, env.Client)
	a := startAgent(t, env, func(c *Config) {
		c.PodCIDR = "10.244.9.0/24"
		c.IPAMDir = filepath.Join(t.TempDir(), "ipam")
	})
	al, err := a.cni.allocator()
	if err != nil {
		t.Fatal(err)
	}
	gone := ipam.Owner{ContainerID: "gone", IfName: "eth0"}
	live := ipam.Owner{ContainerID: "live", IfName: "eth0"}
	adding := ipam.Owner{ContainerID: "adding", IfName: "eth0"}
	for _, x := range []struct {
		o     ipam.Owner
		extra map[string]string
	}{
		{gone, map[string]string{"hostIf": "kpgone0", podExtraKey: "ns/gone"}},
		{live, map[string]string{"hostIf": "lo", podExtraKey: "ns/live"}},
		{adding, map[string]string{podExtraKey: "ns/adding"}},
	} {
		if _, err := al.Allocate(x.o, x.extra); err != nil {
			t.Fatal(err)
		}
	}
	held := func() map[string]bool {
		out := map[string]bool{}
		for _, a := range al.Allocations() {
			out[a.ContainerID] = true
		}
		return out
	}
	suspects := a.cni.sweepLeaked(nil)
	if h := held(); !h["gone"] || !h["live"] || !h["adding"] || !suspects[gone] || len(suspects) != 1 {
		t.Fatalf("after the first sweep: held %v, suspects %v", h, suspects)
	}
	suspects = a.cni.sweepLeaked(suspects)
	if h := held(); h["gone"] || !h["live"] || !h["adding"] || len(suspects) != 0 {
		t.Fatalf("after the second sweep: held %v, suspects %v", h, suspects)
	}
	released := make(chan prometheus.Metric, 1)
	a.cni.leakedReleased.Collect(released)
	var m dto.Metric
	if err := (<-released).Write(&m); err != nil || m.GetCounter().GetValue() != 1 {
		t.Errorf("kpath_ipam_leaked_released_total = %v (%v), want 1", m.GetCounter().GetValue(), err)
	}
}
