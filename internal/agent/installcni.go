package agent

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/kpath/kpath/internal/cniplugin"
)

// CNIConfName is the file kpath's network configuration is written to;
// "05-" sorts it before other configurations a node may still have.
const CNIConfName = "05-kpath.conflist"

// InstallCNIPlugin copies the plugin binary to binDir as "kpath" (the
// configuration's type), atomically, so the container runtime never runs
// half a binary. It is the DaemonSet's init step; the network
// configuration comes from the agent once it is ready (WriteCNIConf).
func InstallCNIPlugin(pluginPath, binDir string) error {
	src, err := os.Open(pluginPath)
	if err != nil {
		return fmt.Errorf("cni plugin binary: %w", err)
	}
	defer src.Close()
	if err := writeAtomic(filepath.Join(binDir, "kpath"), 0o755, func(w io.Writer) error {
		_, err := io.Copy(w, src)
		return err
	}); err != nil {
		return fmt.Errorf("install cni plugin: %w", err)
	}
	return nil
}

// WriteCNIConf writes kpath's network configuration to confDir,
// atomically, naming the agent's socket as the plugin reaches it. The
// agent writes it once it can serve pods: the kubelet reports its node
// Ready only when the runtime finds a network configuration, so no pod is
// scheduled to a node kpath cannot yet wire (Cilium's agent does the same).
func WriteCNIConf(confDir, agentSocket string) error {
	conf := map[string]any{
		"cniVersion": cniplugin.ConfVersion,
		"name":       "kpath",
		"plugins":    []map[string]any{{"type": "kpath", "agentSocket": agentSocket}},
	}
	data, err := json.MarshalIndent(conf, "", "  ")
	if err != nil {
		return err
	}
	if err := writeAtomic(filepath.Join(confDir, CNIConfName), 0o644, func(w io.Writer) error {
		_, err := w.Write(append(data, '\n'))
		return err
	}); err != nil {
		return fmt.Errorf("write cni configuration: %w", err)
	}
	return nil
}

func writeAtomic(path string, mode os.FileMode, fill func(io.Writer) error) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".kpath-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if err := fill(tmp); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Chmod(mode); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}

func newInstallCNICommand() *cobra.Command {
	var binDir, plugin string
	cmd := &cobra.Command{
		Use:   "install-cni",
		Short: "Install kpath's CNI plugin on the node (the DaemonSet's init step; the agent writes the network configuration once ready)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if plugin == "" {
				self, err := os.Executable()
				if err != nil {
					return err
				}
				plugin = filepath.Join(filepath.Dir(self), "kpath-cni")
			}
			if err := InstallCNIPlugin(plugin, binDir); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "installed %s\n", filepath.Join(binDir, "kpath"))
			return nil
		},
	}
	cmd.Flags().StringVar(&binDir, "bin-dir", "/opt/cni/bin", "CNI plugin directory")
	cmd.Flags().StringVar(&plugin, "plugin", "", "the kpath-cni binary (default: beside this executable)")
	return cmd
}
