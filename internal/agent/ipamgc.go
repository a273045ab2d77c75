package agent

import (
	"context"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/kpath/kpath/internal/ipam"
)

// leakSweepInterval is how often the agent looks for addresses whose pods'
// interfaces are gone; an address is released on the second sweep that
// finds it so, never sooner than one interval after the first.
const leakSweepInterval = 30 * time.Second

// sweepLeaked releases the allocations (and their endpoints and bindings)
// whose host-side interface is gone now and was gone at the sweep before
// (suspects): a pod whose CNI DEL never came (its runtime gave up, or lost
// it to a crash). An interface that is gone takes the pod's network with
// it, so nothing can use the address; waiting a whole interval keeps clear
// of a CNI ADD between its allocation and its interface. Returns the
// suspects for the next sweep.
func (e *endpoints) sweepLeaked(suspects map[ipam.Owner]bool) map[ipam.Owner]bool {
	al, err := e.allocator()
	if err != nil {
		return nil
	}
	next := map[ipam.Owner]bool{}
	for _, a := range al.Allocations() {
		hostIf := a.Extra["hostIf"]
		if hostIf == "" {
			continue // allocated and not yet attached, or by hand
		}
		if _, err := netlink.LinkByName(hostIf); err == nil {
			continue
		}
		if !suspects[a.Owner] {
			next[a.Owner] = true
			continue
		}
		if _, _, err := e.release(al, a.Owner); err != nil {
			e.a.log.Error("release the address of a pod whose interface is gone", "addr", a.Addr, "pod", a.Extra[podExtraKey], "error", err)
			next[a.Owner] = true
			continue
		}
		e.leakedReleased.Inc()
		e.a.log.Warn("released the address of a pod whose interface is gone and whose CNI DEL never came",
			"addr", a.Addr, "pod", a.Extra[podExtraKey], "hostIf", hostIf, "container", a.ContainerID)
	}
	return next
}

// leakSweeps runs sweepLeaked every leakSweepInterval until ctx ends.
func (e *endpoints) leakSweeps(ctx context.Context, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	var suspects map[ipam.Owner]bool
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			suspects = e.sweepLeaked(suspects)
		}
	}
}
