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
// crashed. No established
// connection may be cut, no denied probe answered, and nothing may be left
// on the nodes for the pods deleted.
func TestChaos(t *testing.T) {
	bin, k8sBin := labPrerequisites(t)
	rep, err := chaos.Run(context.Background(), chaos.Options{
		Lab: klab.Options{Name: "chaos", Dir: filepath.Join(t.TempDir(), "lab"), Nodes: 2, Routing: "native", Services: "kpath",
			BinDir: bin, K8sBin: k8sBin},
		Kpath: filepath.Join(bin, "kpath"), Faults: chaos.Faults, AgentKills: 2, Unreachable: 10 * time.Second,
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
}
