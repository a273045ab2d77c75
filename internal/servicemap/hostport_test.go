package servicemap

import (
	"slices"
	"testing"

	"github.com/kpath/kpath/internal/model"
)

// TestHostPorts: a host port with a host IP is served on that address, one
// without on every node address and 127.0.0.1, each with the pod's
// container port as its only backend, in both scopes; a pod without an
// address, on the host network or finished has none.
func TestHostPorts(t *testing.T) {
	pod := &model.Pod{Key: model.PodKey{Namespace: "ns", Name: "web"}, NodeName: "n1", IPs: ips("10.244.0.7"),
		HostPorts: []model.HostPort{
			{Protocol: model.TCP, Port: 54323, ContainerPort: 8080, HostIP: ips("127.0.0.1")[0]},
			{Protocol: model.TCP, Port: 54323, ContainerPort: 8080, HostIP: ips("192.168.0.1")[0]},
			{Protocol: model.UDP, Port: 5353, ContainerPort: 53},
		}}
	var got []string
	for _, hs := range HostPorts(pod) {
		entries, problems := ForService(node, hs.Spec, []*model.EndpointSlice{hs.Slice}, Options{})
		if len(problems) > 0 {
			t.Errorf("%s: %v", hs.Spec.Key, problems)
		}
		got = append(got, render(entries)...)
	}
	slices.Sort(got)
	want := []string{
		"127.0.0.1:5353/UDP ExternalIP -> 10.244.0.7:53 (external: 10.244.0.7:53)",
		"127.0.0.1:54323/TCP ExternalIP -> 10.244.0.7:8080 (external: 10.244.0.7:8080)",
		"192.168.0.1:5353/UDP NodePort -> 10.244.0.7:53 (external: 10.244.0.7:53)",
		"192.168.0.1:54323/TCP ExternalIP -> 10.244.0.7:8080 (external: 10.244.0.7:8080)",
		"192.168.1.1:5353/UDP NodePort -> 10.244.0.7:53 (external: 10.244.0.7:53)",
	}
	if !slices.Equal(got, want) {
		t.Errorf("host port frontends:\n%s\nwant:\n%s", got, want)
	}
	keys := map[model.ServiceKey]bool{}
	for _, hs := range HostPorts(pod) {
		keys[hs.Spec.Key] = true
	}
	if len(keys) != 3 {
		t.Errorf("service keys %v: want one per host port", keys)
	}
	for _, p := range []*model.Pod{
		{Key: pod.Key, NodeName: "n1", HostPorts: pod.HostPorts},
		{Key: pod.Key, NodeName: "n1", IPs: pod.IPs, HostPorts: pod.HostPorts, HostNetwork: true},
		{Key: pod.Key, NodeName: "n1", IPs: pod.IPs, HostPorts: pod.HostPorts, Terminal: true},
	} {
		if hs := HostPorts(p); hs != nil {
			t.Errorf("pod %+v: host port services %v, want none", p, hs)
		}
	}
}
