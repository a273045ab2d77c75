package servicemap

import (
	"fmt"
	"net/netip"

	"github.com/kpath/kpath/internal/model"
)

// Loopback is where a host port without a host IP is published besides
// the node's addresses, as the CNI portmap plugin publishes it.
var Loopback = netip.MustParseAddr("127.0.0.1")

// HostPortService is one host port of a pod as the Service that serves it:
// frontends on the node (a host IP's, or every node address and
// 127.0.0.1) whose only backend is the pod's container port. Serving host
// ports as Services puts them in the same maps, both scopes and the socket
// hook included, so a host port is reached from outside the node, from its
// pods and from its own processes alike, without netfilter.
type HostPortService struct {
	Spec  *model.ServiceSpec
	Slice *model.EndpointSlice
}

// HostPortPrefix starts the name of a host port's Service: no Service's name
// has a slash, so it cannot clash with one.
const HostPortPrefix = "hostport/"

// HostPorts returns the Services of pod's host ports: none for a pod
// without an address yet, on the host network (its ports are the node's
// already) or finished.
func HostPorts(pod *model.Pod) []HostPortService {
	if len(pod.HostPorts) == 0 || len(pod.IPs) == 0 || pod.HostNetwork || pod.Terminal {
		return nil
	}
	out := make([]HostPortService, 0, len(pod.HostPorts))
	for _, hp := range pod.HostPorts {
		name := fmt.Sprintf("%s%s/%s/%d", HostPortPrefix, pod.Key.Name, hp.Protocol, hp.Port)
		port := model.ServicePort{Name: "hostport", Protocol: hp.Protocol, Port: hp.Port}
		spec := &model.ServiceSpec{Key: model.ServiceKey{Namespace: pod.Key.Namespace, Name: name}}
		if hp.HostIP.IsValid() {
			spec.Key.Name += "/" + hp.HostIP.String()
			spec.ExternalIPs = []netip.Addr{hp.HostIP}
		} else {
			spec.Type, port.NodePort = model.ServiceTypeNodePort, hp.Port
			spec.ExternalIPs = []netip.Addr{Loopback}
		}
		spec.Ports = []model.ServicePort{port}
		out = append(out, HostPortService{Spec: spec, Slice: &model.EndpointSlice{
			Namespace: pod.Key.Namespace, Name: spec.Key.Name, Service: spec.Key,
			Ports: []model.EndpointPort{{Name: port.Name, Protocol: hp.Protocol, Port: hp.ContainerPort}},
			// A host port forwards whether the pod is ready or not, as
			// portmap's DNAT does.
			Endpoints: []model.Endpoint{{Addr: pod.IPs[0], Ready: true, Serving: true, NodeName: pod.NodeName}},
		}})
	}
	return out
}
