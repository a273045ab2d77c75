package flows

import (
	"context"
	"sync"
)

// DefaultCapacity is Hubble's default ring size.
const DefaultCapacity = 4095

// Ring holds the last Capacity flows. Writers never block on readers: a
// follower that falls a whole ring behind skips ahead and is told how many
// flows it missed.
type Ring struct {
	mu    sync.Mutex
	buf   []Flow
	next  uint64 // sequence number of the next flow
	total uint64
	// wake is closed (and replaced) by the next Add when a follower waits
	// on it; without followers Add allocates nothing.
	wake    chan struct{}
	waiting bool
}

// NewRing returns an empty ring of capacity n (DefaultCapacity if n <= 0).
func NewRing(n int) *Ring {
	if n <= 0 {
		n = DefaultCapacity
	}
	return &Ring{buf: make([]Flow, n), wake: make(chan struct{})}
}

// Capacity is the number of flows the ring keeps.
func (r *Ring) Capacity() int { return len(r.buf) }

// Add appends f, overwriting the oldest flow when full.
func (r *Ring) Add(f Flow) {
	r.mu.Lock()
	r.buf[r.next%uint64(len(r.buf))] = f
	r.next++
	r.total++
	var w chan struct{}
	if r.waiting {
		w, r.wake, r.waiting = r.wake, make(chan struct{}), false
	}
	r.mu.Unlock()
	if w != nil {
		close(w)
	}
}

// Stats reports flows seen since start and flows held now.
func (r *Ring) Stats() (seen uint64, held int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.total, int(min(r.next, uint64(len(r.buf))))
}

// oldest is the first sequence number still held. Callers hold mu.
func (r *Ring) oldest() uint64 {
	if r.next > uint64(len(r.buf)) {
		return r.next - uint64(len(r.buf))
	}
	return 0
}

// Snapshot returns the held flows that match keep, oldest first, at most
// last of them (0: all).
func (r *Ring) Snapshot(keep func(*Flow) bool, last int) []Flow {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []Flow
	for seq := r.oldest(); seq < r.next; seq++ {
		f := &r.buf[seq%uint64(len(r.buf))]
		if keep == nil || keep(f) {
			out = append(out, *f)
		}
	}
	if last > 0 && len(out) > last {
		out = out[len(out)-last:]
	}
	return out
}

// Follow calls fn with every flow added from now on that keep matches,
// until ctx ends or fn returns false. missed counts flows overwritten
// before this follower read them.
func (r *Ring) Follow(ctx context.Context, keep func(*Flow) bool, fn func(f Flow) bool) (missed uint64) {
	r.mu.Lock()
	seq := r.next
	r.mu.Unlock()
	for {
		r.mu.Lock()
		if o := r.oldest(); seq < o {
			missed += o - seq
			seq = o
		}
		var batch []Flow
		for ; seq < r.next; seq++ {
			f := r.buf[seq%uint64(len(r.buf))]
			if keep == nil || keep(&f) {
				batch = append(batch, f)
			}
		}
		wake := r.wake
		r.waiting = true
		r.mu.Unlock()
		for _, f := range batch {
			if !fn(f) {
				return missed
			}
		}
		select {
		case <-ctx.Done():
			return missed
		case <-wake:
		}
	}
}
