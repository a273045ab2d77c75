package policy

import (
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/kpath/kpath/internal/model"
)

// Identity is a node-local number for a distinct (namespace, labels, named
// ports) of the cluster's pods. Every agent numbers them itself and writes
// them nowhere: there is nothing cluster-wide to leak, collect or exhaust.
// Named ports are part of it so that an egress rule's named port resolves
// per destination exactly, even when pods with the same labels declare
// different ports (a rolling update).
type Identity uint32

// Reserved identities, the same on every node.
const (
	IdentityUnknown    Identity = 0
	IdentityHost       Identity = 1 // this node's own addresses
	IdentityWorld      Identity = 2 // anything not in the ipcache
	IdentityRemoteNode Identity = 3 // another node's addresses
	// FirstPodIdentity is the first number given to pods.
	FirstPodIdentity Identity = 256
	// MaxPodIdentity bounds pod identities below the CIDR group space.
	MaxPodIdentity Identity = 1<<24 - 1
)

// String names reserved identities.
func (i Identity) String() string {
	switch i {
	case IdentityHost:
		return "host"
	case IdentityWorld:
		return "world"
	case IdentityRemoteNode:
		return "remote-node"
	}
	return fmt.Sprintf("%d", uint32(i))
}

// identityKey is the canonical form of what an identity stands for.
func identityKey(p *model.Pod) string {
	var b strings.Builder
	b.WriteString(p.Key.Namespace)
	for _, k := range slices.Sorted(maps.Keys(p.Labels)) {
		b.WriteByte(0)
		b.WriteString(k)
		b.WriteByte('=')
		b.WriteString(p.Labels[k])
	}
	b.WriteByte(1)
	for _, np := range p.NamedPorts {
		fmt.Fprintf(&b, "%s/%d=%d,", np.Name, np.Protocol, np.Port)
	}
	return b.String()
}

// IdentityInfo is what an identity stands for.
type IdentityInfo struct {
	ID         Identity
	Namespace  string
	Labels     map[string]string
	NamedPorts []model.NamedPort
	Pods       int // how many pods have it
	key        string
}

// identities allocates identities with reference counts: a number is freed
// when its last pod goes, and reused only after the free list cycles, so a
// stale ipcache entry is unlikely to meet a reused number.
type identities struct {
	byKey map[string]*IdentityInfo
	byID  map[Identity]*IdentityInfo
	next  Identity
	free  []Identity
}

func newIdentities() *identities {
	return &identities{byKey: map[string]*IdentityInfo{}, byID: map[Identity]*IdentityInfo{}, next: FirstPodIdentity}
}

// acquire returns p's identity, allocating it for its first pod.
func (ids *identities) acquire(p *model.Pod) (*IdentityInfo, bool, error) {
	k := identityKey(p)
	if info, ok := ids.byKey[k]; ok {
		info.Pods++
		return info, false, nil
	}
	var id Identity
	switch {
	case ids.next <= MaxPodIdentity:
		id = ids.next
		ids.next++
	case len(ids.free) > 0:
		id, ids.free = ids.free[0], ids.free[1:]
	default:
		return nil, false, fmt.Errorf("all %d pod identities are in use", MaxPodIdentity-FirstPodIdentity+1)
	}
	info := &IdentityInfo{ID: id, Namespace: p.Key.Namespace, Labels: p.Labels, NamedPorts: p.NamedPorts, Pods: 1, key: k}
	ids.byKey[k] = info
	ids.byID[id] = info
	return info, true, nil
}

// release drops one pod's reference; it reports whether the identity is gone.
func (ids *identities) release(info *IdentityInfo) bool {
	info.Pods--
	if info.Pods > 0 {
		return false
	}
	delete(ids.byKey, info.key)
	delete(ids.byID, info.ID)
	ids.free = append(ids.free, info.ID)
	return true
}
