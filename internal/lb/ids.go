package lb

import "fmt"

// IDAllocator hands out numeric IDs in [1, max]. It moves forward through
// the space instead of reusing the lowest free ID, so an ID freed a moment
// ago (whose connection-tracking entries may still name it) is the last to
// come back. The IDs taken are a bitmap (max/8 bytes: 128 KiB for a
// million), not a set of entries. It is not safe for concurrent use.
type IDAllocator struct {
	max   uint32
	next  uint32
	n     int
	taken []uint64 // bit id-1
}

// NewIDAllocator returns an allocator for IDs 1..max.
func NewIDAllocator(max uint32) *IDAllocator {
	return &IDAllocator{max: max, next: 1, taken: make([]uint64, (uint64(max)+63)/64)}
}

func (a *IDAllocator) isTaken(id uint32) bool { return a.taken[(id-1)/64]&(1<<((id-1)%64)) != 0 }

func (a *IDAllocator) set(id uint32, on bool) {
	w, bit := (id-1)/64, uint64(1)<<((id-1)%64)
	switch was := a.taken[w]&bit != 0; {
	case on && !was:
		a.taken[w] |= bit
		a.n++
	case !on && was:
		a.taken[w] &^= bit
		a.n--
	}
}

// Allocate returns a free ID, or an error when all are taken.
func (a *IDAllocator) Allocate() (uint32, error) {
	if uint32(a.n) >= a.max {
		return 0, fmt.Errorf("all %d IDs are in use", a.max)
	}
	for {
		id := a.next
		a.next++
		if a.next > a.max {
			a.next = 1
		}
		if !a.isTaken(id) {
			a.set(id, true)
			return id, nil
		}
	}
}

// Reserve marks id as taken, as found in state restored after a restart.
func (a *IDAllocator) Reserve(id uint32) error {
	if id == 0 || id > a.max {
		return fmt.Errorf("id %d outside 1..%d", id, a.max)
	}
	a.set(id, true)
	if id >= a.next {
		a.next = id + 1
		if a.next > a.max {
			a.next = 1
		}
	}
	return nil
}

// Release frees id; one outside 1..max was never handed out.
func (a *IDAllocator) Release(id uint32) {
	if id == 0 || id > a.max {
		return
	}
	a.set(id, false)
}

// InUse reports how many IDs are taken.
func (a *IDAllocator) InUse() int {
	return a.n
}
