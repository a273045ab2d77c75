package agent

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/kpath/kpath/internal/datapath"
	"github.com/kpath/kpath/internal/masq"
	"github.com/kpath/kpath/internal/routing"
)

// CleanupPaths are where an installed kpath keeps what Cleanup removes:
// the agent's configuration says most (pins, cgroup root, sockets, IPAM,
// CNI configuration); the plugin's directory is the install step's.
type CleanupPaths struct {
	Config    Config
	CNIBinDir string
}

// Cleanup removes everything kpath put on the node, after helm uninstall
// (docs/install.md): its programs and pinned maps (datapath.Uninstall),
// its routes and VXLAN device, its masquerade table, the CNI network
// configuration and plugin, the agent's sockets and IPAM state, and the
// cgroup2 mount the chart's init container made. It reports each step to
// out and goes on after a failure, returning every error.
func Cleanup(p CleanupPaths, out io.Writer) error {
	c := p.Config
	var errs []error
	step := func(what string, err error) {
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", what, err))
			fmt.Fprintf(out, "%s: FAILED: %v\n", what, err)
			return
		}
		fmt.Fprintf(out, "%s: done\n", what)
	}
	step("datapath (programs, pinned maps and links under "+filepath.Join(c.BPFFS, c.PinDir)+")", datapath.Uninstall(c.Datapath()))
	step("routes and VXLAN device", routing.Remove())
	step("masquerade table "+masq.Table, masq.Remove())
	var files []string
	if c.CNIConfDir != "" {
		files = append(files, filepath.Join(c.CNIConfDir, CNIConfName))
	}
	if p.CNIBinDir != "" {
		files = append(files, filepath.Join(p.CNIBinDir, "kpath"))
	}
	files = append(files, c.APISocket, c.HubbleSocket)
	for _, f := range files {
		if f == "" {
			continue
		}
		err := os.Remove(f)
		if errors.Is(err, os.ErrNotExist) {
			err = nil
		}
		step("remove "+f, err)
	}
	step("remove IPAM state "+c.IPAMDir, os.RemoveAll(c.IPAMDir))
	if c.CgroupRoot != "auto" && c.CgroupRoot != "" {
		mounted, err := isCgroup2Mount(c.CgroupRoot)
		if err == nil && mounted {
			err = unix.Unmount(c.CgroupRoot, unix.MNT_DETACH)
		}
		if err == nil {
			if rmErr := os.Remove(c.CgroupRoot); rmErr != nil && !errors.Is(rmErr, os.ErrNotExist) {
				err = rmErr
			}
		}
		step("cgroup2 mount "+c.CgroupRoot, err)
	}
	return errors.Join(errs...)
}

func newCleanupCommand() *cobra.Command {
	var (
		file string
		wait bool
		p    CleanupPaths
	)
	cmd := &cobra.Command{
		Use:   "cleanup",
		Short: "Remove everything kpath put on this node (after helm uninstall; see docs/install.md)",
		Long: `Remove everything kpath put on this node: its eBPF programs and pinned maps,
routes, masquerade table, CNI configuration and plugin, sockets, IPAM state and
cgroup2 mount. Run it after helm uninstall, on every node, in the node's
network and mount namespaces (the chart does so with --set cleanup.enabled=true).
Pods still running lose kpath's service translation and policy.

With --wait it then blocks until stopped, so a DaemonSet running it stays
Ready once it succeeded.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			p.Config = DefaultConfig()
			if file != "" {
				if err := p.Config.LoadFile(file); err != nil {
					return err
				}
			}
			if err := Cleanup(p, cmd.OutOrStdout()); err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), "kpath removed from this node")
			if wait {
				ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGINT, syscall.SIGTERM)
				defer stop()
				<-ctx.Done()
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&file, "config", "", "the agent's configuration file (the paths to clean; default: the defaults)")
	cmd.Flags().StringVar(&p.CNIBinDir, "cni-bin-dir", "/opt/cni/bin", "where install-cni put the plugin")
	cmd.Flags().BoolVar(&wait, "wait", false, "block until stopped after cleaning up")
	return cmd
}
