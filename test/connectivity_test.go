package test

import (
	"context"
	"strings"
	"testing"

	"github.com/kpath/kpath/internal/connectivity"
	klab "github.com/kpath/kpath/internal/lab"
	"github.com/kpath/kpath/internal/testutil"
)

// TestConnectivityMatrix runs the connectivity matrix (internal/
// connectivity: pods, host network and outside clients; TCP and UDP,
// AF_INET and v4-mapped AF_INET6; every kind of Service address) with the
// real kube-proxy (iptables) as the reference, then with each kpath
// service mode: every cell must be served at least as kube-proxy serves
// it, and by the same backend from the same source address. Then on real
// nodes (a kubelet and containerd each), kpath installed by its chart,
// next to kube-proxy on the same real nodes.
func TestConnectivityMatrix(t *testing.T) {
	bin, k8sBin := labPrerequisites(t)
	testutil.RequireTool(t, "iptables")
	o := connectivity.LabOptions{BinDir: bin, K8sBin: k8sBin, Log: t.Logf}
	connectivityMatrix(t, o, []string{"kpath", "kpath-tc"})
	t.Run("containerd-helm", func(t *testing.T) {
		realNodePrerequisites(t, k8sBin)
		helm := helmPrerequisite(t)
		o.Runtime, o.ImageDir, o.Install, o.HelmBin = klab.RuntimeContainerd, buildImages(t), klab.InstallHelm, helm
		connectivityMatrix(t, o, []string{"kpath"})
	})
}

// connectivityMatrix runs the matrix with the reference, then with each
// of modes, each in a lab of its own, and fails on every cell a mode
// serves worse.
func connectivityMatrix(t *testing.T, o connectivity.LabOptions, modes []string) {
	ctx := context.Background()
	got := map[string]map[string]connectivity.Result{}
	for i, m := range append([]string{connectivity.Reference}, modes...) {
		r, err := connectivity.RunInLab(ctx, "conn-"+string(rune('0'+i)), m, o)
		if err != nil {
			t.Fatal(err)
		}
		got[m] = r
	}
	cells := connectivity.LabCells()
	ref := got[connectivity.Reference]
	answered := 0
	for _, c := range cells {
		if ref[c.Key()].Outcome == connectivity.Answered {
			answered++
		}
	}
	if answered < len(cells)/3 {
		t.Fatalf("kube-proxy answered only %d of %d cells: the matrix's setup is broken", answered, len(cells))
	}
	for _, broken := range connectivity.TopologyBroken(cells, ref) {
		t.Logf("%s (the reference): topology-aware routing not kept: %s", connectivity.Reference, broken)
	}
	for _, m := range modes {
		for _, broken := range connectivity.TopologyBroken(cells, got[m]) {
			t.Errorf("%s: topology-aware routing not kept: %s", m, broken)
		}
	}
	var b strings.Builder
	connectivity.Print(&b, cells, ref, modes, got, false)
	t.Logf("the matrix (cells that differ from kube-proxy):\n%s", b.String())
	for _, d := range connectivity.Differences(cells, ref, modes, got) {
		if d.Worse != "" {
			t.Errorf("%s: %s: %s", d.Mode, d.Cell.Key(), d.Worse)
		}
	}
}
