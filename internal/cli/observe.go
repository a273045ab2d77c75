package cli

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/kpath/kpath/internal/flows"
	"github.com/kpath/kpath/internal/lab"
)

// observeFlags are Hubble's `observe` flags, where kpath has the thing.
type observeFlags struct {
	pods, fromPods, toPods, namespaces []string
	verdicts, types, protos, services  []string
	ports                              []uint
	ips                                []string
	last                               int
	since                              string
	follow                             bool
	output                             string
}

func (o *observeFlags) add(cmd *cobra.Command) {
	f := cmd.Flags()
	f.StringSliceVar(&o.pods, "pod", nil, "flows from or to this pod ([namespace/]pod; repeatable)")
	f.StringSliceVar(&o.fromPods, "from-pod", nil, "flows from this pod")
	f.StringSliceVar(&o.toPods, "to-pod", nil, "flows to this pod")
	f.StringSliceVarP(&o.namespaces, "namespace", "n", nil, "flows from or to this namespace")
	f.StringSliceVar(&o.verdicts, "verdict", nil, "FORWARDED, DROPPED or TRANSLATED")
	f.StringSliceVarP(&o.types, "type", "t", nil, "drop, policy-verdict, trace or translation")
	f.StringSliceVar(&o.protos, "protocol", nil, "TCP, UDP, SCTP or ICMP")
	f.UintSliceVar(&o.ports, "port", nil, "either end's port (or the service's)")
	f.StringSliceVar(&o.ips, "ip", nil, "either end's address (or the service's)")
	f.StringSliceVar(&o.services, "service", nil, "flows translated for this service (namespace/name)")
	f.IntVar(&o.last, "last", 20, "the last N matching flows held (0: all)")
	f.StringVar(&o.since, "since", "", "flows since this long ago (5m) or this RFC 3339 time")
	f.BoolVarP(&o.follow, "follow", "f", false, "go on printing flows as they come")
	f.StringVarP(&o.output, "output", "o", "compact", "compact, json or table")
}

func (o *observeFlags) filter(now time.Time) (flows.Filter, error) {
	f := flows.Filter{Pods: o.pods, FromPods: o.fromPods, ToPods: o.toPods, NS: o.namespaces, Types: o.types,
		Protos: o.protos, Services: o.services}
	for _, p := range o.ports {
		if p == 0 || p > 65535 {
			return f, fmt.Errorf("--port %d: want 1-65535", p)
		}
		f.Ports = append(f.Ports, uint16(p))
	}
	for _, v := range o.verdicts {
		f.Verdicts = append(f.Verdicts, flows.Verdict(strings.ToUpper(v)))
	}
	for _, s := range o.ips {
		ip, err := netip.ParseAddr(s)
		if err != nil {
			return f, fmt.Errorf("--ip %q: %w", s, err)
		}
		f.IPs = append(f.IPs, ip)
	}
	if o.since != "" {
		if d, err := time.ParseDuration(o.since); err == nil {
			f.Since = now.Add(-d)
		} else if t, err := time.Parse(time.RFC3339, o.since); err == nil {
			f.Since = t
		} else {
			return f, fmt.Errorf("--since %q: want a duration (5m) or an RFC 3339 time", o.since)
		}
	}
	switch o.output {
	case "compact", "json", "table":
	default:
		return f, fmt.Errorf("output format %q: want compact, json or table", o.output)
	}
	return f, f.Validate()
}

// streamFlows reads the agent's NDJSON flows into fn until the stream ends.
func streamFlows(ctx context.Context, socket string, f flows.Filter, last int, follow bool, fn func(flows.Flow) error) error {
	b, err := json.Marshal(f)
	if err != nil {
		return err
	}
	q := url.Values{"filter": {string(b)}, "last": {strconv.Itoa(last)}, "follow": {strconv.FormatBool(follow)}}
	client := agentClient(socket, 0)
	req, err := http.NewRequestWithContext(ctx, "GET", "http://kpath-agent/v1/flows?"+q.Encode(), nil)
	if err != nil {
		return err
	}
	resp, err := client.Do(req)
	if err != nil {
		return fmt.Errorf("talk to kpath-agent at %s (is it running, and are you root?): %w", socket, err)
	}
	defer resp.Body.Close()
	if err := agentStatus(resp); err != nil {
		return err
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		var fl flows.Flow
		if err := json.Unmarshal(sc.Bytes(), &fl); err != nil {
			return fmt.Errorf("decode flow: %w", err)
		}
		if err := fn(fl); err != nil {
			return err
		}
	}
	if ctx.Err() != nil {
		return nil
	}
	return sc.Err()
}

// flowPrinter prints flows in the chosen format.
type flowPrinter struct {
	w      io.Writer
	format string
	tw     *tabwriter.Writer
	header bool
}

func (p *flowPrinter) print(f flows.Flow) error {
	switch p.format {
	case "json":
		return json.NewEncoder(p.w).Encode(f)
	case "table":
		if p.tw == nil {
			p.tw = tabwriter.NewWriter(p.w, 0, 4, 2, ' ', 0)
		}
		if !p.header {
			fmt.Fprintln(p.tw, "TIME\tNODE\tSOURCE\tDESTINATION\tSERVICE\tTYPE\tVERDICT\tSUMMARY")
			p.header = true
		}
		svc := ""
		if f.Service != nil {
			svc = f.Service.Namespace + "/" + f.Service.Name
		}
		sum := f.Proto + " " + f.TCPFlags
		if f.DropReason != "" {
			sum += " " + f.DropReason
		}
		fmt.Fprintf(p.tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", f.Time.Format("15:04:05.000"), f.Node,
			endpointString(f.Source), endpointString(f.Destination), svc, f.Type, f.Verdict, strings.TrimSpace(sum))
		return p.tw.Flush()
	}
	_, err := fmt.Fprintln(p.w, f.Compact())
	return err
}

func endpointString(e flows.Endpoint) string {
	if e.Port == 0 {
		return e.Name()
	}
	return fmt.Sprintf("%s:%d", e.Name(), e.Port)
}

func addObserveCommand(root *cobra.Command, socket *string) {
	var o observeFlags
	cmd := &cobra.Command{
		Use:   "observe",
		Short: "Show this node's flows: connections, translations, policy verdicts and drops",
		Long: "Prints the flows this node's agent holds (its ring of recent flows), filtered with\n" +
			"Hubble's flag names, and with -f the new ones as they come. Every line names both ends\n" +
			"(namespace/pod, a node, or an address), the service when one was translated, the verdict\n" +
			"and, for a drop, its reason and the policies that isolate the pod.",
		Example: "  kpath observe --verdict DROPPED\n  kpath observe --pod x/a -f\n  kpath observe --type policy-verdict -o json",
		Args:    cobra.NoArgs,
	}
	o.add(cmd)
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		f, err := o.filter(time.Now())
		if err != nil {
			return err
		}
		p := &flowPrinter{w: cmd.OutOrStdout(), format: o.output}
		return streamFlows(cmd.Context(), *socket, f, o.last, o.follow, p.print)
	}
	root.AddCommand(cmd)
}

// labObserve prints the held flows of every node merged by time (the last
// N over all nodes), then, following, each node's new flows as they come.
func labObserve(ctx context.Context, st *lab.State, f flows.Filter, o *observeFlags, p *flowPrinter) error {
	var all []flows.Flow
	for _, n := range st.Nodes {
		err := streamFlows(ctx, n.AgentSocket, f, o.last, false, func(fl flows.Flow) error {
			all = append(all, fl)
			return nil
		})
		if err != nil {
			return fmt.Errorf("%s: %w", n.Name, err)
		}
	}
	slices.SortStableFunc(all, func(a, b flows.Flow) int { return a.Time.Compare(b.Time) })
	if o.last > 0 && len(all) > o.last {
		all = all[len(all)-o.last:]
	}
	for _, fl := range all {
		if err := p.print(fl); err != nil {
			return err
		}
	}
	if !o.follow {
		return nil
	}
	// New flows from every node, printed as they arrive; the agents stamp
	// them with the datapath's clock, the same machine's here.
	var mu sync.Mutex
	errc := make(chan error, len(st.Nodes))
	for _, n := range st.Nodes {
		go func() {
			errc <- streamFlows(ctx, n.AgentSocket, f, -1, true, func(fl flows.Flow) error {
				mu.Lock()
				defer mu.Unlock()
				return p.print(fl)
			})
		}()
	}
	for range st.Nodes {
		if err := <-errc; err != nil {
			return err
		}
	}
	return nil
}
