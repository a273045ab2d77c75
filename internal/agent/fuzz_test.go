package agent

import (
	"net"
	"path/filepath"
	"testing"

	"sigs.k8s.io/yaml"
)

// FuzzConfig: any configuration file is refused with an error or gives a
// configuration whose promises hold: absolute socket and state paths, a
// Hubble TCP listener only with a port and either mTLS or plaintext asked
// for by name, and a datapath configuration that validates. Nothing
// panics.
func FuzzConfig(f *testing.F) {
	f.Add([]byte("routing: native\nselection: maglev\nmaglevTableSize: 16381\n"))
	f.Add([]byte("hubbleListenAddress: \":4244\"\nhubbleDisableTLS: true\n"))
	f.Add([]byte("hubbleListenAddress: \":4244\"\nhubbleTLS: {certFile: /a, keyFile: /b, clientCAFiles: [/c]}\n"))
	f.Add([]byte("mapSizes: {conntrack: 0}\nflowExport: {path: /x, allow: [{verdict: [DROPPED]}]}\n"))
	f.Add([]byte("routing: vxlan\ndevices: [eth0]\nclusterCIDR: 10.244.0.0/16\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		c := DefaultConfig()
		if err := yaml.UnmarshalStrict(data, &c); err != nil {
			return
		}
		if err := c.Validate(); err != nil {
			return
		}
		if c.HubbleSocket != "" && !filepath.IsAbs(c.HubbleSocket) {
			t.Fatalf("accepted a relative Hubble socket %q", c.HubbleSocket)
		}
		if c.HubbleListenAddress != "" {
			if _, port, err := net.SplitHostPort(c.HubbleListenAddress); err != nil || port == "" || port == "0" {
				t.Fatalf("accepted a Hubble listener without a port: %q", c.HubbleListenAddress)
			}
			if (c.HubbleTLS == nil) == !c.HubbleDisableTLS {
				t.Fatalf("accepted a Hubble listener neither mTLS nor plaintext by name: %+v", c)
			}
		}
		if err := c.Datapath().Validate(); err != nil {
			t.Fatalf("accepted a configuration whose datapath is invalid: %v", err)
		}
	})
}
