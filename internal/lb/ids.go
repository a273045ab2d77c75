package lb

import "fmt"

// IDAllocator hands out numeric IDs in [1, max]. It moves forward through
// the space instead of reusing the lowest free ID, so an ID freed a moment
// ago (whose connection-tracking entries may still name it) is the last to
// come back. It is not safe for concurrent use.
type IDAllocator struct {
	max   uint32
	next  uint32
	inUse map[uint32]struct{}
}

// NewIDAllocator returns an allocator for IDs 1..max.
func NewIDAllocator(max uint32) *IDAllocator {
	return &IDAllocator{max: max, next: 1, inUse: make(map[uint32]struct{})}
}

// Allocate returns a free ID, or an error when all are taken.
func (a *IDAllocator) Allocate() (uint32, error) {
	if uint32(len(a.inUse)) >= a.max {
		return 0, fmt.Errorf("all %d IDs are in use", a.max)
	}
	for {
		id := a.next
		a.next++
		if a.next > a.max {
			a.next = 1
		}
		if _, taken := a.inUse[id]; !taken {
			a.inUse[id] = struct{}{}
			return id, nil
		}
	}
}

// Reserve marks id as taken, as found in state restored after a restart.
func (a *IDAllocator) Reserve(id uint32) error {
	if id == 0 || id > a.max {
		return fmt.Errorf("id %d outside 1..%d", id, a.max)
	}
	a.inUse[id] = struct{}{}
	if id >= a.next {
		a.next = id + 1
		if a.next > a.max {
			a.next = 1
		}
	}
	return nil
}

// Release frees id.
func (a *IDAllocator) Release(id uint32) {
	delete(a.inUse, id)
}

// InUse reports how many IDs are taken.
func (a *IDAllocator) InUse() int {
	return len(a.inUse)
}
