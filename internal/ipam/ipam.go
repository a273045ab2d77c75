// Package ipam hands out pod addresses on a node. The overlay allocator
// takes them from the node's pod CIDR (Node.spec.podCIDR, or configured)
// and keeps every allocation in a file on the node, written atomically, so
// that an agent crash or restart neither loses nor duplicates an address.
package ipam

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sync"
)

// Owner is what an address is allocated to: a container's interface, as
// the CNI plugin names it.
type Owner struct {
	ContainerID string `json:"containerID"`
	IfName      string `json:"ifName"`
}

// Allocation is one address and its owner.
type Allocation struct {
	Owner
	Addr netip.Addr `json:"addr"`
	// Extra is opaque data the caller keeps with the allocation (the pod's
	// host-side interface, its namespace path).
	Extra map[string]string `json:"extra,omitempty"`
}

// Allocator hands out addresses; overlay mode implements it, a vnet mode
// (addresses from a subnet shared with the nodes) can later.
type Allocator interface {
	// Allocate returns owner's address, allocating one if it has none: a
	// repeated ADD for the same container gets the same address.
	Allocate(o Owner, extra map[string]string) (Allocation, error)
	// Release frees owner's address; releasing what is not allocated is fine.
	Release(o Owner) (Allocation, bool, error)
	// Allocations lists every allocation.
	Allocations() []Allocation
	// Prefix is the range addresses come from.
	Prefix() netip.Prefix
}

// ErrExhausted is returned when every address of the range is allocated.
var ErrExhausted = errors.New("no free address")

// Overlay allocates from one IPv4 prefix. The network address, the
// broadcast address and the first host address (kept for the node's own use
// as a router address) are never handed out.
type Overlay struct {
	mu     sync.Mutex
	prefix netip.Prefix
	path   string
	byAddr map[netip.Addr]Allocation
	next   netip.Addr
}

type stateFile struct {
	Prefix      netip.Prefix `json:"prefix"`
	Allocations []Allocation `json:"allocations"`
}

// NewOverlay opens (or creates) the allocation state for prefix in dir.
// State recorded for another prefix is an error: the node's pod CIDR does
// not change under running pods.
func NewOverlay(prefix netip.Prefix, dir string) (*Overlay, error) {
	prefix = prefix.Masked()
	if !prefix.Addr().Is4() || prefix.Bits() > 30 || prefix.Bits() < 8 {
		return nil, fmt.Errorf("pod CIDR %s: want an IPv4 prefix between /8 and /30", prefix)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("ipam state directory: %w", err)
	}
	o := &Overlay{prefix: prefix, path: filepath.Join(dir, "overlay.json"), byAddr: map[netip.Addr]Allocation{}}
	data, err := os.ReadFile(o.path)
	switch {
	case errors.Is(err, os.ErrNotExist):
	case err != nil:
		return nil, fmt.Errorf("read ipam state: %w", err)
	default:
		var st stateFile
		if err := json.Unmarshal(data, &st); err != nil {
			return nil, fmt.Errorf("ipam state %s is corrupt: %w (move it away to start over; running pods keep their addresses but may be given again)", o.path, err)
		}
		if st.Prefix != prefix {
			return nil, fmt.Errorf("ipam state %s is for pod CIDR %s, not %s: the node's pod CIDR changed under its pods", o.path, st.Prefix, prefix)
		}
		for _, a := range st.Allocations {
			o.byAddr[a.Addr] = a
		}
	}
	o.next = o.first()
	return o, nil
}

// Prefix is the pod CIDR.
func (o *Overlay) Prefix() netip.Prefix { return o.prefix }

// RouterAddr is the address kept for the node itself.
func (o *Overlay) RouterAddr() netip.Addr { return o.prefix.Addr().Next() }

func (o *Overlay) first() netip.Addr { return o.RouterAddr().Next() }

func (o *Overlay) last() netip.Addr {
	a := o.prefix.Addr().As4()
	host := uint32(1)<<(32-o.prefix.Bits()) - 1
	v := uint32(a[0])<<24 | uint32(a[1])<<16 | uint32(a[2])<<8 | uint32(a[3])
	v |= host
	v-- // not the broadcast address
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

// Allocate implements Allocator. Addresses are handed out moving forward
// through the range, so a just-freed address is the last to be reused.
func (o *Overlay) Allocate(owner Owner, extra map[string]string) (Allocation, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	for _, a := range o.byAddr {
		if a.Owner == owner {
			return a, nil
		}
	}
	first, last := o.first(), o.last()
	a := o.next
	for range o.size() {
		if a.Compare(last) > 0 || !o.prefix.Contains(a) {
			a = first
		}
		if _, taken := o.byAddr[a]; !taken {
			al := Allocation{Owner: owner, Addr: a, Extra: extra}
			o.byAddr[a] = al
			if err := o.save(); err != nil {
				delete(o.byAddr, a)
				return Allocation{}, err
			}
			o.next = a.Next()
			return al, nil
		}
		a = a.Next()
	}
	return Allocation{}, fmt.Errorf("pod CIDR %s: %w: all %d addresses are allocated (release unused ones with CNI GC, or give the node a larger pod CIDR)", o.prefix, ErrExhausted, o.size())
}

func (o *Overlay) size() int {
	return 1<<(32-o.prefix.Bits()) - 3
}

// Release implements Allocator.
func (o *Overlay) Release(owner Owner) (Allocation, bool, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	for addr, a := range o.byAddr {
		if a.Owner == owner {
			delete(o.byAddr, addr)
			if err := o.save(); err != nil {
				o.byAddr[addr] = a
				return Allocation{}, false, err
			}
			return a, true, nil
		}
	}
	return Allocation{}, false, nil
}

// Allocations implements Allocator, sorted by address.
func (o *Overlay) Allocations() []Allocation {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.sortedLocked()
}

func (o *Overlay) sortedLocked() []Allocation {
	out := make([]Allocation, 0, len(o.byAddr))
	for _, a := range o.byAddr {
		out = append(out, a)
	}
	slices.SortFunc(out, func(a, b Allocation) int { return a.Addr.Compare(b.Addr) })
	return out
}

// save writes the state to a temporary file, syncs it and renames it over
// the old one, so a crash leaves either the old or the new state.
func (o *Overlay) save() error {
	data, err := json.MarshalIndent(stateFile{Prefix: o.prefix, Allocations: o.sortedLocked()}, "", "  ")
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(o.path), ".overlay-*.json")
	if err != nil {
		return fmt.Errorf("write ipam state: %w", err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return fmt.Errorf("write ipam state: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("write ipam state: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write ipam state: %w", err)
	}
	if err := os.Rename(tmp.Name(), o.path); err != nil {
		return fmt.Errorf("write ipam state: %w", err)
	}
	return nil
}
