package cli

import (
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"github.com/vishvananda/netlink"

	"github.com/kpath/kpath/internal/datapath"
	"github.com/kpath/kpath/internal/model"
)

// dpFlags locate the pinned datapath.
type dpFlags struct {
	bpffs, pinDir string
	attachMode    string
	maglevSize    uint32
}

func (f *dpFlags) config() (datapath.Config, error) {
	cfg := datapath.DefaultConfig()
	cfg.BPFFS, cfg.PinDir = f.bpffs, f.pinDir
	cfg.TCAttach = datapath.AttachMode(f.attachMode)
	if f.maglevSize != 0 {
		cfg.MaglevTableSize = f.maglevSize
	}
	cfg, err := datapath.AdoptPinned(cfg)
	if err != nil {
		return cfg, err
	}
	if f.maglevSize != 0 {
		cfg.MaglevTableSize = f.maglevSize
	}
	return cfg, nil
}

func (f *dpFlags) open() (*datapath.Datapath, error) {
	cfg, err := f.config()
	if err != nil {
		return nil, err
	}
	return datapath.Open(cfg)
}

func newDPCommand() *cobra.Command {
	f := &dpFlags{}
	cmd := &cobra.Command{
		Use:   "dp",
		Short: "Drive the eBPF datapath directly, without Kubernetes (development and debugging)",
		Long: `Drive the eBPF datapath directly, without Kubernetes.

The datapath's maps are pinned under BPFFS/PIN-DIR; every command opens them
there (loading and pinning them the first time), so state persists between
commands and across agent restarts. Map sizes are taken from the pinned maps.`,
	}
	def := datapath.DefaultConfig()
	cmd.PersistentFlags().StringVar(&f.bpffs, "bpffs", def.BPFFS, "bpffs mount point")
	cmd.PersistentFlags().StringVar(&f.pinDir, "pin-dir", def.PinDir, "directory under the bpffs for kpath's maps and links")
	cmd.PersistentFlags().StringVar(&f.attachMode, "tc-attach", string(def.TCAttach), "how to attach to interfaces: auto, tcx or legacy")
	cmd.PersistentFlags().Uint32Var(&f.maglevSize, "maglev-table-size", 0, fmt.Sprintf("Maglev table size, a prime (default %d, or the pinned tables' size)", def.MaglevTableSize))
	cmd.AddCommand(dpAttach(f), dpDetach(f), dpPods(f), dpService(f), dpCT(f), dpCounters(f), dpReset(f))
	return cmd
}

func dpAttach(f *dpFlags) *cobra.Command {
	var ifaces, devices []string
	var cgroup string
	cmd := &cobra.Command{
		Use:   "attach",
		Short: "Attach the per-packet programs to pod interfaces and/or the socket hooks to a cgroup",
		Example: `  kpath dp attach --iface veth1a2b3c=10.244.0.5
  kpath dp attach --cgroup auto`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if len(ifaces) == 0 && len(devices) == 0 && cgroup == "" {
				return fmt.Errorf("nothing to attach: give --iface, --device and/or --cgroup")
			}
			d, err := f.open()
			if err != nil {
				return err
			}
			defer d.Close()
			for _, i := range ifaces {
				name, addrs, err := parsePodIface(i)
				if err != nil {
					return err
				}
				if err := d.AttachPod(name, addrs...); err != nil {
					return err
				}
				fmt.Fprintf(cmd.OutOrStdout(), "attached to %s (sources %v)\n", name, addrs)
			}
			for _, dev := range devices {
				if err := d.AttachDevice(dev); err != nil {
					return err
				}
				fmt.Fprintf(cmd.OutOrStdout(), "attached uplink programs to %s\n", dev)
			}
			if cgroup != "" {
				if cgroup == "auto" {
					if cgroup, err = datapath.CgroupV2Root(); err != nil {
						return err
					}
				}
				if err := d.AttachCgroup(cgroup); err != nil {
					return err
				}
				fmt.Fprintf(cmd.OutOrStdout(), "socket hooks attached to cgroup %s\n", cgroup)
			}
			return nil
		},
	}
	cmd.Flags().StringArrayVar(&ifaces, "iface", nil, "host-side veth of a pod and the pod's addresses, NAME=ADDR[,ADDR...]; "+
		"the pod's packets from any other source are dropped (repeatable)")
	cmd.Flags().StringSliceVar(&devices, "device", nil, "node uplink device, for NodePorts from outside (repeatable)")
	cmd.Flags().StringVar(&cgroup, "cgroup", "", `cgroup v2 directory for the socket hooks ("auto": the cgroup v2 root)`)
	return cmd
}

// parsePodIface reads NAME=ADDR[,ADDR...].
func parsePodIface(s string) (string, []netip.Addr, error) {
	name, list, ok := strings.Cut(s, "=")
	if !ok || name == "" || list == "" {
		return "", nil, fmt.Errorf("--iface %q: want NAME=ADDR[,ADDR...], the host-side veth and the pod's addresses "+
			"(a pod may send only from its own addresses)", s)
	}
	var addrs []netip.Addr
	for a := range strings.SplitSeq(list, ",") {
		addr, err := netip.ParseAddr(a)
		if err != nil {
			return "", nil, fmt.Errorf("--iface %q: pod address: %w", s, err)
		}
		addrs = append(addrs, addr)
	}
	return name, addrs, nil
}

func dpDetach(f *dpFlags) *cobra.Command {
	var ifaces []string
	var cgroup string
	cmd := &cobra.Command{
		Use:   "detach",
		Short: "Detach kpath's programs from interfaces and/or a cgroup",
		RunE: func(cmd *cobra.Command, _ []string) error {
			d, err := f.open()
			if err != nil {
				return err
			}
			defer d.Close()
			for _, i := range ifaces {
				if err := d.DetachPod(i); err != nil {
					return err
				}
			}
			if cgroup == "auto" {
				if cgroup, err = datapath.CgroupV2Root(); err != nil {
					return err
				}
			}
			if cgroup != "" {
				return d.DetachCgroup(cgroup)
			}
			return nil
		},
	}
	cmd.Flags().StringSliceVar(&ifaces, "iface", nil, "interface to detach from (repeatable)")
	cmd.Flags().StringVar(&cgroup, "cgroup", "", `cgroup v2 directory ("auto": the cgroup v2 root)`)
	return cmd
}

func dpService(f *dpFlags) *cobra.Command {
	cmd := &cobra.Command{Use: "service", Short: "Add, delete and list service frontends"}
	var (
		backends  []string
		selection string
		affinity  time.Duration
		external  bool
	)
	add := &cobra.Command{
		Use:   "add FRONTEND",
		Short: "Create or replace a service frontend and its backends",
		Example: `  kpath dp service add 10.96.0.10:80/TCP --backend 10.244.1.5:8080 --backend 10.244.2.6:8080
  kpath dp service add 10.96.0.10:53/UDP --backend 10.244.1.7:53 --selection maglev
  kpath dp service add 10.96.0.11:80 --backend 10.244.1.5:80 --affinity 3h`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			svc, err := parseService(args[0], backends, selection, affinity)
			if err != nil {
				return err
			}
			svc.External = external
			d, err := f.open()
			if err != nil {
				return err
			}
			defer d.Close()
			return d.UpsertService(svc)
		},
	}
	add.Flags().StringSliceVar(&backends, "backend", nil, "backend ADDR:PORT (repeatable; the frontend's protocol)")
	add.Flags().StringVar(&selection, "selection", "random", "backend selection: random or maglev")
	add.Flags().DurationVar(&affinity, "affinity", 0, "session affinity by client address, with this timeout (0: off)")
	add.Flags().BoolVar(&external, "external", false, "a frontend for traffic arriving on the uplink (NodePort from outside), not from the node's pods")

	del := &cobra.Command{
		Use:   "delete FRONTEND",
		Short: "Delete a service frontend",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			fe, err := model.ParseL4Addr(args[0], model.TCP)
			if err != nil {
				return err
			}
			d, err := f.open()
			if err != nil {
				return err
			}
			defer d.Close()
			return d.DeleteService(model.FrontendKey{L4Addr: fe, External: external})
		},
	}
	del.Flags().BoolVar(&external, "external", false, "the external-scope frontend")

	list := &cobra.Command{
		Use:   "list",
		Short: "List frontends and their backends as the maps hold them",
		Args:  cobra.NoArgs,
	}
	out := outputFlag(list)
	list.RunE = func(cmd *cobra.Command, _ []string) error {
		d, err := f.open()
		if err != nil {
			return err
		}
		defer d.Close()
		svcs, err := d.Services()
		if err != nil {
			return err
		}
		return render(cmd.OutOrStdout(), *out, svcs, func(tw *tabwriter.Writer) { serviceTable(tw, svcs) })
	}
	cmd.AddCommand(add, del, list)
	return cmd
}

// parseService builds a service from command-line arguments.
func parseService(frontend string, backends []string, selection string, affinity time.Duration) (model.Service, error) {
	fe, err := model.ParseL4Addr(frontend, model.TCP)
	if err != nil {
		return model.Service{}, fmt.Errorf("frontend: %w", err)
	}
	svc := model.Service{Frontend: fe, Affinity: affinity}
	if svc.Selection, err = model.ParseSelection(selection); err != nil {
		return model.Service{}, err
	}
	for _, b := range backends {
		a, err := model.ParseL4Addr(b, fe.Proto)
		if err != nil {
			return model.Service{}, fmt.Errorf("backend: %w", err)
		}
		svc.Backends = append(svc.Backends, a)
	}
	if err := svc.Validate(); err != nil {
		return model.Service{}, err
	}
	return svc, nil
}

func dpCT(f *dpFlags) *cobra.Command {
	cmd := &cobra.Command{Use: "ct", Short: "Inspect and collect the connection-tracking table"}
	list := &cobra.Command{Use: "list", Short: "List connection-tracking entries", Args: cobra.NoArgs}
	out := outputFlag(list)
	list.RunE = func(cmd *cobra.Command, _ []string) error {
		d, err := f.open()
		if err != nil {
			return err
		}
		defer d.Close()
		entries, err := d.Conntrack()
		if err != nil {
			return err
		}
		return render(cmd.OutOrStdout(), *out, entries, func(tw *tabwriter.Writer) { ctTable(tw, entries) })
	}
	gc := &cobra.Command{
		Use:   "gc",
		Short: "Delete expired entries now (the agent does this periodically)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			d, err := f.open()
			if err != nil {
				return err
			}
			defer d.Close()
			deleted, remaining, err := d.ConntrackGC()
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "deleted %d expired entries, %d remain\n", deleted, remaining)
			return nil
		},
	}
	cmd.AddCommand(list, gc)
	return cmd
}

// podBinding is one row of `kpath dp pods`.
type podBinding struct {
	Addr      netip.Addr `json:"addr"`
	Ifindex   int        `json:"ifindex"`
	Interface string     `json:"interface,omitempty"` // "" when the interface is gone
}

func dpPods(f *dpFlags) *cobra.Command {
	cmd := &cobra.Command{Use: "pods", Short: "List pod addresses and the interfaces they are bound to (the only sources each pod may send from)", Args: cobra.NoArgs}
	out := outputFlag(cmd)
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		d, err := f.open()
		if err != nil {
			return err
		}
		defer d.Close()
		pods, err := d.LocalPods()
		if err != nil {
			return err
		}
		rows := make([]podBinding, 0, len(pods))
		for _, a := range slices.SortedFunc(maps.Keys(pods), netip.Addr.Compare) {
			r := podBinding{Addr: a, Ifindex: pods[a]}
			if l, err := netlink.LinkByIndex(r.Ifindex); err == nil {
				r.Interface = l.Attrs().Name
			}
			rows = append(rows, r)
		}
		return render(cmd.OutOrStdout(), *out, rows, func(tw *tabwriter.Writer) {
			fmt.Fprintln(tw, "ADDRESS\tIFINDEX\tINTERFACE")
			for _, r := range rows {
				name := r.Interface
				if name == "" {
					name = "(gone)"
				}
				fmt.Fprintf(tw, "%s\t%d\t%s\n", r.Addr, r.Ifindex, name)
			}
		})
	}
	return cmd
}

func dpCounters(f *dpFlags) *cobra.Command {
	cmd := &cobra.Command{Use: "counters", Short: "Show packet and byte counters by verdict, drop reason and direction", Args: cobra.NoArgs}
	out := outputFlag(cmd)
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		d, err := f.open()
		if err != nil {
			return err
		}
		defer d.Close()
		cs, err := d.Counters()
		if err != nil {
			return err
		}
		return render(cmd.OutOrStdout(), *out, cs, func(tw *tabwriter.Writer) {
			fmt.Fprintln(tw, "DIRECTION\tVERDICT\tREASON\tPACKETS\tBYTES")
			for _, c := range cs {
				verdict := "forward"
				if c.Drop {
					verdict = "drop"
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d\n", c.Dir, verdict, c.Reason, c.Packets, c.Bytes)
			}
		})
	}
	return cmd
}

func dpReset(f *dpFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "reset",
		Short: "Remove every pinned map and link: detaches tcx and cgroup programs and drops all state",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg := datapath.DefaultConfig()
			cfg.BPFFS, cfg.PinDir = f.bpffs, f.pinDir
			return datapath.Reset(cfg)
		},
	}
}

func serviceTable(tw *tabwriter.Writer, svcs []datapath.ServiceInfo) {
	fmt.Fprintln(tw, "ID\tFRONTEND\tSELECTION\tAFFINITY\tBACKENDS")
	for _, s := range svcs {
		names := make([]string, len(s.Backends))
		for i, b := range s.Backends {
			names[i] = fmt.Sprintf("%s (#%d)", b.Name, b.ID)
		}
		aff := "-"
		if s.AffinitySeconds > 0 {
			aff = (time.Duration(s.AffinitySeconds) * time.Second).String()
		}
		if len(names) == 0 {
			names = []string{"(none: traffic is dropped)"}
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\n", s.ID, s.Name, s.Selection, aff, strings.Join(names, ", "))
	}
}

func ctTable(tw *tabwriter.Writer, entries []datapath.CTEntry) {
	fmt.Fprintln(tw, "PROTO\tSOURCE\tDESTINATION\tKIND\tBACKEND\tSTATE\tFLAGS\tEXPIRES")
	for _, e := range entries {
		kind, be := "connection", "-"
		if e.Service {
			kind, be = "service", e.Backend.String()
		}
		flags := e.TCPFlags
		if flags == "" {
			flags = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", e.Proto, e.Src, e.Dst, kind, be, e.State, flags, e.ExpiresIn)
	}
}
