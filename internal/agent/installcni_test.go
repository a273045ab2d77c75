package agent

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/containernetworking/cni/libcni"

	"github.com/kpath/kpath/internal/cniplugin"
)

func TestInstallCNI(t *testing.T) {
	dir := t.TempDir()
	plugin := filepath.Join(dir, "kpath-cni")
	if err := os.WriteFile(plugin, []byte("#!/bin/true\n"), 0o700); err != nil {
		t.Fatal(err)
	}
	bin, conf := filepath.Join(dir, "bin"), filepath.Join(dir, "net.d")
	for range 2 { // idempotent
		if err := InstallCNIPlugin(plugin, bin); err != nil {
			t.Fatal(err)
		}
		if err := WriteCNIConf(conf, "/run/kpath/agent.sock"); err != nil {
			t.Fatal(err)
		}
	}
	st, err := os.Stat(filepath.Join(bin, "kpath"))
	if err != nil || st.Mode().Perm() != 0o755 {
		t.Fatalf("plugin: %v %v", st, err)
	}
	list, err := libcni.ConfListFromFile(filepath.Join(conf, CNIConfName))
	if err != nil {
		t.Fatal(err)
	}
	if list.Name != "kpath" || len(list.Plugins) != 1 || list.Plugins[0].Network.Type != "kpath" || list.CNIVersion != cniplugin.ConfVersion {
		t.Fatalf("configuration %+v", list)
	}
	if err := InstallCNIPlugin(filepath.Join(dir, "missing"), bin); err == nil {
		t.Fatal("missing plugin binary accepted")
	}
}
