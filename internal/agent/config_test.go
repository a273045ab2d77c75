package agent

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"sigs.k8s.io/yaml"

	"github.com/kpath/kpath/internal/flows"
	"github.com/kpath/kpath/internal/hubble"
)

func TestDeployConfigMapIsAValidConfig(t *testing.T) {
	data, err := os.ReadFile("../../deploy/kpath.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var agentYAML string
	for _, doc := range strings.Split(string(data), "\n---\n") {
		var obj struct {
			Kind string            `json:"kind"`
			Data map[string]string `json:"data"`
		}
		if err := yaml.Unmarshal([]byte(doc), &obj); err != nil {
			t.Fatalf("deploy/kpath.yaml: %v", err)
		}
		if obj.Kind == "ConfigMap" {
			agentYAML = obj.Data["agent.yaml"]
		}
	}
	path := filepath.Join(t.TempDir(), "agent.yaml")
	if err := os.WriteFile(path, []byte(agentYAML), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := DefaultConfig()
	cfg.NodeName = "n1"
	if err := cfg.LoadFile(path); err != nil {
		t.Fatal(err)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	// The ConfigMap spells out the defaults; keep them in step. Two are
	// the DaemonSet's own: where its init container mounts the node's
	// cgroup2, and where the node's CNI configuration directory is mounted.
	def := DefaultConfig()
	def.NodeName = "n1"
	def.CgroupRoot, def.CNIConfDir = "/run/kpath/cgroupv2", "/host/etc/cni/net.d"
	if !reflect.DeepEqual(cfg, def) {
		t.Errorf("deploy ConfigMap differs from DefaultConfig:\n%+v\n%+v", cfg, def)
	}
}

func TestConfigErrors(t *testing.T) {
	path := filepath.Join(t.TempDir(), "agent.yaml")
	if err := os.WriteFile(path, []byte("socketHok: true\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := DefaultConfig()
	if err := cfg.LoadFile(path); err == nil || !strings.Contains(err.Error(), "socketHok") {
		t.Errorf("unknown field: %v", err)
	}
	cfg = DefaultConfig()
	cfg.Selection = "roundrobin"
	cfg.ResyncPeriod.Duration = time.Millisecond
	cfg.MapSizes.Conntrack = 1
	cfg.HubbleListenAddress = "0.0.0.0"
	err := cfg.Validate()
	for _, want := range []string{"roundrobin", "resyncPeriod", "conntrack", "hubbleListenAddress"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Validate: %v; want it to name %s", err, want)
		}
	}
}

func TestFlowExportConfig(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.yaml")
	if err := os.WriteFile(good, []byte("flowExport: {path: /var/log/kpath/flows.json, maxSizeMB: 10, maxBackups: 5, allow: [{verdict: [DROPPED]}]}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := DefaultConfig()
	if err := cfg.LoadFile(good); err != nil {
		t.Fatal(err)
	}
	if cfg.FlowExport == nil || cfg.FlowExport.MaxBackups != 5 || len(cfg.FlowExport.Allow) != 1 {
		t.Fatalf("flowExport %+v", cfg.FlowExport)
	}
	if err := cfg.Validate(); err != nil {
		t.Errorf("valid flowExport refused: %v", err)
	}
	cfg.FlowExport.Allow[0].Verdicts = []flows.Verdict{"MAYBE"}
	if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), "verdict") {
		t.Errorf("a bad export filter: %v", err)
	}
	cfg.FlowExport = &hubble.ExportOptions{Path: "flows.json", MaxSizeMB: 1}
	if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), "absolute") {
		t.Errorf("a relative export path: %v", err)
	}
}

// TestHubbleListenConfig: a port is needed (relay dials every node on it),
// flows must be on to serve any, and the listener speaks mTLS unless
// plaintext is asked for by name.
func TestHubbleListenConfig(t *testing.T) {
	cfg := DefaultConfig()
	cfg.HubbleListenAddress = ":4244"
	if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), "hubbleTLS") {
		t.Errorf(":4244 without TLS nor hubbleDisableTLS: %v", err)
	}
	cfg.HubbleDisableTLS = true
	if err := cfg.Validate(); err != nil {
		t.Errorf(":4244 in plaintext, asked for: %v", err)
	}
	cfg.HubbleTLS = &HubbleTLS{CertFile: "/tls/server.crt", KeyFile: "/tls/server.key", ClientCAFiles: []string{"/tls/ca.crt"}}
	if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), "choose one") {
		t.Errorf("TLS and plaintext both: %v", err)
	}
	cfg.HubbleDisableTLS = false
	if err := cfg.Validate(); err != nil {
		t.Errorf(":4244 with TLS: %v", err)
	}
	cfg.HubbleTLS.ClientCAFiles = nil
	if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), "clientCAFiles") {
		t.Errorf("TLS without client CAs: %v", err)
	}
	cfg.HubbleDisableTLS, cfg.HubbleTLS = true, nil
	cfg.HubbleListenAddress = "10.0.0.1:0"
	if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), "port") {
		t.Errorf("port 0: %v", err)
	}
	cfg.HubbleListenAddress, cfg.Flows = ":4244", false
	if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), "flows") {
		t.Errorf("flows off: %v", err)
	}
}
