package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/kpath/kpath/internal/agent"
	"github.com/kpath/kpath/internal/datapath"
)

// DefaultAgentSocket is where kpath-agent serves its local API.
const DefaultAgentSocket = "/run/kpath/agent.sock"

// agentClient talks HTTP to the agent's unix socket (timeout 0: none, for
// streams).
func agentClient(socket string, timeout time.Duration) *http.Client {
	return &http.Client{
		Timeout: timeout,
		Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		}},
	}
}

// agentGet fetches path from the agent's API into v.
func agentGet(socket, path string, v any) error {
	resp, err := agentClient(socket, 10*time.Second).Get("http://kpath-agent" + path)
	if err != nil {
		return fmt.Errorf("talk to kpath-agent at %s (is it running, and are you root?): %w", socket, err)
	}
	defer resp.Body.Close()
	if err := agentStatus(resp); err != nil {
		return err
	}
	return json.NewDecoder(resp.Body).Decode(v)
}

// agentStatus is the agent's error answer, or nil for 200 OK.
func agentStatus(resp *http.Response) error {
	if resp.StatusCode == http.StatusOK {
		return nil
	}
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	return fmt.Errorf("kpath-agent: %s: %s", resp.Status, strings.TrimSpace(string(b)))
}

func addAgentCommands(root *cobra.Command) {
	var socket string
	root.PersistentFlags().StringVar(&socket, "socket", DefaultAgentSocket, "kpath-agent's API socket")

	status := &cobra.Command{Use: "status", Short: "Show the agent's state", Args: cobra.NoArgs}
	statusOut := outputFlag(status)
	status.RunE = func(cmd *cobra.Command, _ []string) error {
		var s agent.Status
		if err := agentGet(socket, "/v1/status", &s); err != nil {
			return err
		}
		return render(cmd.OutOrStdout(), *statusOut, s, func(tw *tabwriter.Writer) {
			ready := "no (not synced with the API server)"
			if s.Ready {
				ready = "yes (start to ready " + s.StartToReady + ")"
			}
			fmt.Fprintf(tw, "Node:\t%s\n", s.Node)
			fmt.Fprintf(tw, "Ready:\t%s\n", ready)
			fmt.Fprintf(tw, "Uptime:\t%s\n", s.Uptime)
			fmt.Fprintf(tw, "Datapath:\t%s (socket hook %v)\n", s.PinPath, s.SocketHook)
			fmt.Fprintf(tw, "Watching:\t%d services, %d endpoint slices, %d nodes\n", s.Services, s.Slices, s.Nodes)
			fmt.Fprintf(tw, "Frontends:\t%d applied, %d services pending, %d retrying, %d syncs\n", s.Reconciler.Frontends, s.Pending, s.Reconciler.Retrying, s.Reconciler.Syncs)
			if p := s.Policy; p != nil {
				fmt.Fprintf(tw, "Policy:\t%d endpoints, %d policy sets, %d entries, %d prefixes, %d ipcache addresses\n", p.Endpoints, p.Sets, p.Entries, p.CIDRs, p.IPCache)
			}
			if s.Reconciler.LastError != "" {
				fmt.Fprintf(tw, "Last error:\t%s\n", s.Reconciler.LastError)
			}
		})
	}

	service := &cobra.Command{Use: "service", Short: "Services as the agent derived them from the API"}
	svcList := &cobra.Command{Use: "list", Short: "List frontends with their service, kind and backends", Args: cobra.NoArgs}
	svcOut := outputFlag(svcList)
	svcList.RunE = func(cmd *cobra.Command, _ []string) error {
		var es []agent.ServiceEntry
		if err := agentGet(socket, "/v1/services", &es); err != nil {
			return err
		}
		return render(cmd.OutOrStdout(), *svcOut, es, func(tw *tabwriter.Writer) {
			fmt.Fprintln(tw, "SERVICE\tPORT\tKIND\tFRONTEND\tBACKENDS")
			for _, e := range es {
				bs := strings.Join(e.Backends, ", ")
				if bs == "" {
					bs = "(none: dropped)"
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", e.Service, e.Port, e.Kind, e.Frontend, bs)
			}
		})
	}
	service.AddCommand(svcList)

	bpf := &cobra.Command{Use: "bpf", Short: "The agent's datapath maps"}
	lb := &cobra.Command{Use: "lb", Short: "Load-balancing maps"}
	lbList := &cobra.Command{Use: "list", Short: "List frontends and backends as the maps hold them", Args: cobra.NoArgs}
	lbOut := outputFlag(lbList)
	lbList.RunE = func(cmd *cobra.Command, _ []string) error {
		var svcs []datapath.ServiceInfo
		if err := agentGet(socket, "/v1/bpf/lb", &svcs); err != nil {
			return err
		}
		return render(cmd.OutOrStdout(), *lbOut, svcs, func(tw *tabwriter.Writer) { serviceTable(tw, svcs) })
	}
	lb.AddCommand(lbList)
	ct := &cobra.Command{Use: "ct", Short: "Connection tracking"}
	ctList := &cobra.Command{Use: "list", Short: "List connection-tracking entries", Args: cobra.NoArgs}
	ctOut := outputFlag(ctList)
	ctList.RunE = func(cmd *cobra.Command, _ []string) error {
		var es []datapath.CTEntry
		if err := agentGet(socket, "/v1/bpf/ct", &es); err != nil {
			return err
		}
		return render(cmd.OutOrStdout(), *ctOut, es, func(tw *tabwriter.Writer) { ctTable(tw, es) })
	}
	ct.AddCommand(ctList)
	bpf.AddCommand(lb, ct)
	root.AddCommand(status, service, bpf)
	addPolicyCommands(root, &socket)
	addObserveCommand(root, &socket)
}
