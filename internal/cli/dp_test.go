package cli

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"

	"github.com/kpath/kpath/internal/datapath"
	"github.com/kpath/kpath/internal/testutil"
)

func run(t *testing.T, args ...string) (string, error) {
	t.Helper()
	root := NewRoot()
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&out)
	root.SetArgs(args)
	err := root.Execute()
	return out.String(), err
}

func TestDPCommands(t *testing.T) {
	testutil.RequireRoot(t)
	pin := "kpath-test-cli-" + testutil.UniqueID()
	t.Cleanup(func() {
		cfg := datapath.DefaultConfig()
		cfg.PinDir = pin
		_ = datapath.Reset(cfg)
	})
	dp := func(args ...string) (string, error) {
		return run(t, append([]string{"dp", "--pin-dir", pin}, args...)...)
	}
	must := func(args ...string) string {
		t.Helper()
		out, err := dp(args...)
		if err != nil {
			t.Fatalf("kpath dp %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return out
	}
	must("service", "add", "10.96.0.10:80/TCP", "--backend", "10.244.1.5:8080", "--backend", "10.244.2.6:8080")
	must("service", "add", "10.96.0.10:53/UDP", "--backend", "10.244.1.7:53", "--selection", "maglev", "--affinity", "1h")

	var svcs []datapath.ServiceInfo
	if err := json.Unmarshal([]byte(must("service", "list", "-o", "json")), &svcs); err != nil {
		t.Fatal(err)
	}
	if len(svcs) != 2 || svcs[0].Name != "10.96.0.10:53/UDP" || svcs[0].Selection != "maglev" ||
		svcs[0].AffinitySeconds != 3600 || len(svcs[1].Backends) != 2 {
		t.Fatalf("service list = %+v", svcs)
	}
	table := must("service", "list")
	if !strings.Contains(table, "10.244.2.6:8080/TCP") || !strings.HasPrefix(table, "ID") {
		t.Fatalf("table output:\n%s", table)
	}
	must("service", "delete", "10.96.0.10:80/TCP")
	if out := must("service", "list"); strings.Contains(out, "10.96.0.10:80/TCP") {
		t.Fatalf("deleted service still listed:\n%s", out)
	}
	must("ct", "list", "-o", "json")
	if out := must("ct", "gc"); !strings.Contains(out, "deleted 0") {
		t.Fatalf("ct gc: %s", out)
	}
	must("counters", "-o", "json")

	for _, bad := range [][]string{
		{"service", "add", "10.96.0.10:80/SCTP"},
		{"service", "add", "10.96.0.10:80", "--backend", "10.244.1.5"},
		{"service", "add", "10.96.0.10:80", "--selection", "roundrobin"},
		{"service", "list", "-o", "yaml"},
		{"--maglev-table-size", "100", "service", "list"},
		{"attach"},
	} {
		if out, err := dp(bad...); err == nil {
			t.Errorf("kpath dp %s succeeded: %s", strings.Join(bad, " "), out)
		}
	}
}
