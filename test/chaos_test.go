package test

import (
	"bytes"
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/kpath/kpath/internal/chaos"
	klab "github.com/kpath/kpath/internal/lab"
)

// TestChaos is kpath lab chaos's short version: a 2-node lab under load
// (requests through a ClusterIP and a NodePort, held connections, a
// target policy denies probed over TCP and UDP, pods churned) while every
// fault runs once, shorter: two agent kills, the API server and etcd
// restarted, the API server unreachable for 10 s, each node's runtime
// crashed, a pod flooding a connection table sized 32,768 for 10 s (several
// times what it holds), a pod's policies filling the policy map. No
// established connection may be cut, no denied probe answered, nothing
// opened by the full policy map, and nothing left on the nodes for the
// pods deleted (the flooding pod's entries included).
func TestChaos(t *testing.T) {
	bin, k8sBin := labPrerequisites(t)
	rep, err := chaos.Run(context.Background(), chaos.Options{
		Lab: klab.Options{Name: "chaos", Dir: filepath.Join(t.TempDir(), "lab"), Nodes: 2, Routing: "native", Services: "kpath",
			BinDir: bin, K8sBin: k8sBin},
		Kpath: filepath.Join(bin, "kpath"), Faults: chaos.Faults, AgentKills: 2, Unreachable: 10 * time.Second, FloodFor: 10 * time.Second, FloodCTSize: 32768,
		Churn: 5, Held: 2, Settle: 3 * time.Second, Log: t.Logf,
	})
	if rep != nil {
		var b bytes.Buffer
		rep.WriteTable(&b)
		t.Logf("\n%s", b.String())
	}
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range rep.Failures() {
		t.Error(f)
	}
	if rep.Churn.Created == 0 || rep.Total.Denied.Requests == 0 || rep.Total.Denied.HeldRequests == 0 {
		t.Errorf("no load: %+v, churn %+v", rep.Total, rep.Churn)
	}
	if f := rep.Flood; f == nil || f.UDPSent < 2*int64(f.CTMax) {
		t.Errorf("the flood did not overflow the connection table: %+v", f)
	}
	for _, p := range rep.Phases {
		if p.Name == chaos.FaultCTFlood && p.Denied.RequestsFailed+p.Allowed.RequestsFailed > 0 {
			t.Errorf("during the flood %d of the other pods' new connections failed", p.Denied.RequestsFailed+p.Allowed.RequestsFailed)
		}
	}
}
