package cniplugin

import (
	"path/filepath"
	"testing"

	"github.com/containernetworking/cni/pkg/types"
)

// FuzzNetConf: any network configuration and CNI_ARGS a runtime may pass
// is either refused with an error or yields a configuration the plugin can
// use (its type, an absolute agent socket, an MTU in range); the host
// interface name always fits IFNAMSIZ. Nothing panics.
func FuzzNetConf(f *testing.F) {
	f.Add([]byte(`{"cniVersion":"1.0.0","name":"kpath","type":"kpath"}`), "K8S_POD_NAMESPACE=x;K8S_POD_NAME=a;IgnoreUnknown=1", "abc", "eth0")
	f.Add([]byte(`{"cniVersion":"1.1.0","name":"k","type":"kpath","agentSocket":"/run/kpath/agent.sock","mtu":1450}`), "", "c", "net1")
	f.Add([]byte(`{"type":"kpath","cniVersion":"0.3.1","mtu":70000}`), "K8S_POD_NAME", "", "")
	f.Fuzz(func(t *testing.T, conf []byte, args, containerID, ifName string) {
		if n := HostIfName(containerID, ifName); len(n) > 15 || len(n) == 0 {
			t.Fatalf("host interface name %q does not fit IFNAMSIZ", n)
		}
		c, err := parseConf(conf)
		if err == nil {
			if c.Type != PluginType || c.CNIVersion == "" || !filepath.IsAbs(c.AgentSocket) || (c.MTU != 0 && (c.MTU < 576 || c.MTU > 65535)) {
				t.Fatalf("accepted an unusable configuration %+v from %q", c, conf)
			}
		}
		var ka k8sArgs
		ka.IgnoreUnknown = true
		_ = types.LoadArgs(args, &ka)
	})
}
