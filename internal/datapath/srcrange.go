package datapath

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/kpath/kpath/internal/model"
)

// A frontend's loadBalancerSourceRanges live in kp_lb_src_range, keyed by
// the frontend's ID and the prefix; the frontend's LB_F_SRC_RANGES flag
// turns the check on. The order of writes never admits a source that
// neither the old nor the new ranges admit: with ranges before and after,
// the ranges that left go first, then the new ones come; a frontend gaining
// ranges has them in place before its flag is set, and one losing them all
// clears its flag before they go.

func srcRangeKey(id uint32, p netip.Prefix) kpathLbSrcRangeKey {
	return kpathLbSrcRangeKey{Prefixlen: 32 + uint32(p.Bits()), Id: id, Addr: addrToBPF(p.Addr())}
}

func srcRangeFromKey(k kpathLbSrcRangeKey) (uint32, netip.Prefix) {
	return k.Id, netip.PrefixFrom(addrFromBPF(k.Addr), int(k.Prefixlen)-32)
}

// writeSourceRangesBefore brings the frontend's ranges from old to new
// where the frontend keeps or gains ranges; the caller writes the frontend
// next.
func (d *Datapath) writeSourceRangesBefore(id uint32, old, new []netip.Prefix) error {
	if len(new) == 0 {
		return nil
	}
	for _, p := range old {
		if !slices.Contains(new, p) {
			if err := d.deleteSourceRange(id, p); err != nil {
				return err
			}
		}
	}
	for _, p := range new {
		if slices.Contains(old, p) {
			continue
		}
		if err := d.objs.KpLbSrcRange.Put(srcRangeKey(id, p), uint8(1)); err != nil {
			if errors.Is(err, unix.E2BIG) || errors.Is(err, unix.ENOMEM) {
				return fmt.Errorf("map kp_lb_src_range is full (%d entries over every load-balancer frontend's loadBalancerSourceRanges): "+
					"merge the ranges of the Services into fewer prefixes: %w", d.objs.KpLbSrcRange.MaxEntries(), err)
			}
			return fmt.Errorf("write kp_lb_src_range: %w", err)
		}
	}
	return nil
}

// deleteSourceRangesAfter removes the ranges of a frontend that has none
// any more (its flag is already clear) or is gone.
func (d *Datapath) deleteSourceRangesAfter(id uint32, old, new []netip.Prefix) error {
	if len(new) > 0 {
		return nil
	}
	for _, p := range old {
		if err := d.deleteSourceRange(id, p); err != nil {
			return err
		}
	}
	return nil
}

func (d *Datapath) deleteSourceRange(id uint32, p netip.Prefix) error {
	if err := d.objs.KpLbSrcRange.Delete(srcRangeKey(id, p)); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("delete source range %s of frontend %d: %w", p, id, err)
	}
	return nil
}

// sourceRanges reads every frontend's ranges from the map, sorted.
func (d *Datapath) sourceRanges() (map[uint32][]netip.Prefix, error) {
	out := map[uint32][]netip.Prefix{}
	var (
		k kpathLbSrcRangeKey
		v uint8
	)
	it := d.objs.KpLbSrcRange.Iterate()
	for it.Next(&k, &v) {
		id, p := srcRangeFromKey(k)
		out[id] = append(out[id], p)
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("iterate kp_lb_src_range: %w", err)
	}
	for id := range out {
		out[id] = model.CanonicalPrefixes(out[id])
	}
	return out, nil
}

// pruneSourceRanges deletes the ranges of frontends that are gone or have
// no LB_F_SRC_RANGES flag (left by an update that failed half way).
func (d *Datapath) pruneSourceRanges(all map[uint32][]netip.Prefix, byID map[uint32]*frontendState) {
	for id, ps := range all {
		if fe := byID[id]; fe != nil && len(fe.svc.SourceRanges) > 0 {
			continue
		}
		for _, p := range ps {
			_ = d.deleteSourceRange(id, p)
		}
	}
}
