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

// InstallCNI copies the plugin binary to binDir (as "kpath", the
// configuration's type) and writes the network configuration to confDir,
// each atomically, so the container runtime never sees half a file.
func InstallCNI(pluginPath, binDir, confDir, agentSocket string) error {
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
	var binDir, confDir, socket, plugin string
	cmd := &cobra.Command{
		Use:   "install-cni",
		Short: "Install kpath's CNI plugin and network configuration on the node (the DaemonSet's init step)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if plugin == "" {
				self, err := os.Executable()
				if err != nil {
					return err
				}
				plugin = filepath.Join(filepath.Dir(self), "kpath-cni")
			}
			if err := InstallCNI(plugin, binDir, confDir, socket); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "installed %s and %s\n", filepath.Join(binDir, "kpath"), filepath.Join(confDir, CNIConfName))
			return nil
		},
	}
	cmd.Flags().StringVar(&binDir, "bin-dir", "/opt/cni/bin", "CNI plugin directory")
	cmd.Flags().StringVar(&confDir, "conf-dir", "/etc/cni/net.d", "CNI configuration directory")
	cmd.Flags().StringVar(&socket, "agent-socket", "/run/kpath/agent.sock", "the agent's API socket, as the plugin sees it")
	cmd.Flags().StringVar(&plugin, "plugin", "", "the kpath-cni binary (default: beside this executable)")
	return cmd
}
