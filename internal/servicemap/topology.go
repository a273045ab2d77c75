package servicemap

import "slices"

// topologyFor decides, as kube-proxy v1.34 does (pkg/proxy/topology.go,
// PreferSameTrafficDistribution on, as it is by default), which of a
// service port's ready endpoints this node uses when it may use any in the
// cluster. kube-proxy does not read the Service's trafficDistribution or
// topology-mode annotation: the EndpointSlice controller turns them into
// hints, and the hints are all a proxy follows.
//
//   - Every ready endpoint has node hints and one is meant for this node:
//     only those meant for this node (PreferSameNode).
//   - Otherwise every ready endpoint has zone hints and one is meant for this
//     node's zone: only those meant for this zone (PreferSameZone,
//     PreferClose, topology-mode Auto).
//   - Otherwise every ready endpoint: a hint missing anywhere means the
//     controller is between two states, and a node or zone no hint names
//     would otherwise have no endpoint at all.
func topologyFor(eps []endpoint, node Node) func(endpoint) bool {
	allNode, allZone := true, true
	forNode, forZone := false, false
	for _, e := range eps {
		if !e.ready {
			continue
		}
		if len(e.forNodes) == 0 {
			allNode = false
		} else if slices.Contains(e.forNodes, node.Name) {
			forNode = true
		}
		if len(e.forZones) == 0 {
			allZone = false
		} else if slices.Contains(e.forZones, node.Zone) {
			forZone = true
		}
	}
	switch {
	case allNode && forNode:
		return func(e endpoint) bool { return slices.Contains(e.forNodes, node.Name) }
	case allZone && forZone:
		return func(e endpoint) bool { return slices.Contains(e.forZones, node.Zone) }
	}
	return func(endpoint) bool { return true }
}
