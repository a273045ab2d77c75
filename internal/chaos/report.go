package chaos

import (
	"fmt"
	"io"
)

func (p Phase) summary() string {
	d := p.Denied
	return fmt.Sprintf("%.0f s; requests %d (%d failed), NodePort %d (%d failed), held %d (%d cut), denied probes %d TCP + %d UDP (%d + %d answered); allowed client reached the target %d of %d; Service endpoints ready: fewest %d, none for %.1f s",
		p.Seconds, d.Requests+p.Allowed.Requests, d.RequestsFailed+p.Allowed.RequestsFailed, d.NodePort, d.NodePortFailed,
		d.HeldRequests, d.HeldCut, d.DeniedTCP, d.DeniedUDP, d.DeniedTCPOpen, d.DeniedUDPOpen,
		p.Allowed.DeniedTCPOpen+p.Allowed.DeniedUDPOpen, p.Allowed.DeniedTCP+p.Allowed.DeniedUDP, p.ReadyMin, p.NoneReady)
}

// WriteTable prints the report as Markdown tables: the load through each
// phase, then what was left behind.
func (r *Report) WriteTable(w io.Writer) {
	fmt.Fprintf(w, "| phase | s | ClusterIP requests (failed) | NodePort requests (failed) | held-connection requests (cut) | denied probes TCP / UDP (answered) | control: allowed client answered | Service endpoints ready in the API: fewest of 2 (s with none) | recovery |\n")
	fmt.Fprintf(w, "|---|---|---|---|---|---|---|---|---|\n")
	for _, p := range append(append([]Phase(nil), r.Phases...), r.Total) {
		d, a := p.Denied, p.Allowed
		fmt.Fprintf(w, "| %s | %.0f | %d (%d) | %d (%d) | %d (%d) | %d / %d (%d / %d) | %d of %d | %d (%.0f) | %s |\n",
			p.Name, p.Seconds, d.Requests+a.Requests, d.RequestsFailed+a.RequestsFailed, d.NodePort, d.NodePortFailed,
			d.HeldRequests, d.HeldCut, d.DeniedTCP, d.DeniedUDP, d.DeniedTCPOpen, d.DeniedUDPOpen,
			a.DeniedTCPOpen+a.DeniedUDPOpen, a.DeniedTCP+a.DeniedUDP, p.ReadyMin, p.NoneReady, p.Recovery)
	}
	l := r.Leftovers
	fmt.Fprintf(w, "\nPods churned: %d created, %d deleted (%d API calls refused during the faults).\n\n", r.Churn.Created, r.Churn.Deleted, r.Churn.APIErrors)
	fmt.Fprintf(w, "| left for deleted pods (%d nodes, %d live pods) | count |\n|---|---|\n", l.NodesChecked, l.LivePods)
	for _, row := range []struct {
		name string
		n    int
	}{{"addresses still allocated", l.Addresses}, {"policy endpoints", l.Endpoints}, {"identities", l.Identities},
		{"ipcache entries", l.IPCache}, {"connection-tracking entries", l.Conntrack}, {"service backends", l.Backends},
		{"policy sets no endpoint uses", l.UnusedSets}} {
		fmt.Fprintf(w, "| %s | %d |\n", row.name, row.n)
	}
	for _, d := range l.Details {
		fmt.Fprintf(w, "\n- %s", d)
	}
	if len(l.Details) > 0 {
		fmt.Fprintln(w)
	}
}
