package cli

import (
	"fmt"
	"maps"
	"net/url"
	"slices"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/kpath/kpath/internal/agent"
	"github.com/kpath/kpath/internal/model"
	"github.com/kpath/kpath/internal/policy"
	"github.com/kpath/kpath/internal/policysync"
)

// addPolicyCommands adds `kpath policy list|trace` and `kpath identity list`.
func addPolicyCommands(root *cobra.Command, socket *string) {
	pol := &cobra.Command{Use: "policy", Short: "NetworkPolicy as this node's agent enforces it"}

	list := &cobra.Command{Use: "list", Short: "List local endpoints: identity, policy set, the policies selecting them", Args: cobra.NoArgs}
	listOut := outputFlag(list)
	list.RunE = func(cmd *cobra.Command, _ []string) error {
		var eps []policysync.EndpointStatus
		if err := agentGet(*socket, "/v1/policy/endpoints", &eps); err != nil {
			return err
		}
		return render(cmd.OutOrStdout(), *listOut, eps, func(tw *tabwriter.Writer) {
			fmt.Fprintln(tw, "POD\tIP\tIDENTITY\tSET\tINGRESS\tEGRESS\tENTRIES\tERROR")
			for _, e := range eps {
				pod := e.Pod.String()
				if !e.Known {
					pod += " (unknown: nothing allowed)"
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t%s\t%d\t%s\n", pod, e.IP, e.Identity, e.Set,
					isolation(e.IngressIsolated, e.Ingress), isolation(e.EgressIsolated, e.Egress), e.Entries, e.Error)
			}
		})
	}

	var from, to, port string
	trace := &cobra.Command{
		Use:   "trace",
		Short: "Decide a connection with the reference evaluator and from the datapath's maps",
		Long: "Prints the verdict of a new connection from --from to --to on --port, with the policies\n" +
			"and rules that decided it, from the reference evaluator and from this node's datapath maps\n" +
			"(for the ends that are endpoints of this node), and says so when the two disagree.",
		Example: "  kpath policy trace --from x/a --to y/b --port 80/TCP\n  kpath policy trace --from 10.244.1.5 --to x/a --port 53/UDP",
		Args:    cobra.NoArgs,
	}
	trace.Flags().StringVar(&from, "from", "", "source: NAMESPACE/POD or an IPv4 address")
	trace.Flags().StringVar(&to, "to", "", "destination: NAMESPACE/POD or an IPv4 address")
	trace.Flags().StringVar(&port, "port", "80/TCP", "destination PORT/PROTOCOL (TCP, UDP, SCTP) or icmp")
	_ = trace.MarkFlagRequired("from")
	_ = trace.MarkFlagRequired("to")
	traceOut := outputFlag(trace)
	trace.RunE = func(cmd *cobra.Command, _ []string) error {
		q := url.Values{"from": {from}, "to": {to}, "port": {port}}
		var t agent.Trace
		if err := agentGet(*socket, "/v1/policy/trace?"+q.Encode(), &t); err != nil {
			return err
		}
		return render(cmd.OutOrStdout(), *traceOut, t, func(tw *tabwriter.Writer) { traceTable(tw, t) })
	}

	pol.AddCommand(list, trace)

	ident := &cobra.Command{Use: "identity", Short: "This node's identities (local numbers for label sets)"}
	ilist := &cobra.Command{Use: "list", Short: "List identities: reserved ones and one per (namespace, labels, named ports)", Args: cobra.NoArgs}
	ilistOut := outputFlag(ilist)
	ilist.RunE = func(cmd *cobra.Command, _ []string) error {
		var ids []agent.IdentityEntry
		if err := agentGet(*socket, "/v1/identities", &ids); err != nil {
			return err
		}
		return render(cmd.OutOrStdout(), *ilistOut, ids, func(tw *tabwriter.Writer) {
			fmt.Fprintln(tw, "ID\tNAMESPACE\tLABELS\tPODS")
			for _, id := range ids {
				if id.Reserved != "" {
					fmt.Fprintf(tw, "%d\t(reserved: %s)\t\t\n", id.ID, id.Reserved)
					continue
				}
				fmt.Fprintf(tw, "%d\t%s\t%s\t%d\n", id.ID, id.Namespace, labelString(id.Labels), id.Pods)
			}
		})
	}
	ident.AddCommand(ilist)
	root.AddCommand(pol, ident)
}

func isolation(isolated bool, by []model.PolicyKey) string {
	if !isolated {
		return "open"
	}
	names := make([]string, len(by))
	for i, k := range by {
		names[i] = k.String()
	}
	if len(names) == 0 {
		return "isolated"
	}
	return "isolated by " + strings.Join(names, ",")
}

func labelString(l map[string]string) string {
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(l)) {
		parts = append(parts, k+"="+l[k])
	}
	return strings.Join(parts, ",")
}

func verdict(allowed bool) string {
	if allowed {
		return "ALLOWED"
	}
	return "DENIED"
}

func traceTable(tw *tabwriter.Writer, t agent.Trace) {
	fmt.Fprintf(tw, "Connection:\t%s -> %s %s/%d\n", t.From, t.To, t.Proto, t.Port)
	fmt.Fprintf(tw, "Verdict:\t%s (reference evaluator)\n", verdict(t.Evaluator.Allowed))
	dir := func(name string, d policy.Direction, dp *agent.TraceDirection) {
		fmt.Fprintf(tw, "%s:\t%s: %s\n", name, verdict(d.Allowed), d.Reason)
		if len(d.Policies) > 0 {
			var ps []string
			for _, k := range d.Policies {
				ps = append(ps, k.String())
			}
			fmt.Fprintf(tw, "\tselected by: %s\n", strings.Join(ps, ", "))
		}
		for _, r := range d.AllowedBy {
			fmt.Fprintf(tw, "\tallowed by: %s\n", r)
		}
		if dp == nil {
			fmt.Fprintf(tw, "\tdatapath: not an endpoint of this node\n")
			return
		}
		how := dp.Reason
		if dp.RuleName != "" {
			how += " (" + dp.RuleName + ")"
		}
		fmt.Fprintf(tw, "\tdatapath: %s: %s [set %d, peer identity %d]\n", verdict(dp.Allowed), how, dp.Set, dp.Identity)
	}
	dir("Egress", t.Evaluator.Egress, t.Egress)
	dir("Ingress", t.Evaluator.Ingress, t.Ingress)
	if t.Disagreement != "" {
		fmt.Fprintf(tw, "DISAGREEMENT:\t%s (a bug: please report it with this output)\n", t.Disagreement)
	}
}
