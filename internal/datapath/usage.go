package datapath

import (
	"errors"
	"fmt"

	"github.com/cilium/ebpf"
)

// MapUsage is how full one map is.
type MapUsage struct {
	Name    string `json:"name"`
	Entries int    `json:"entries"`
	Max     uint32 `json:"max"`
}

// MapUsages counts the entries of every sized map. Counting walks the maps
// (in batches where the kernel allows), so callers should cache the result.
func (d *Datapath) MapUsages() ([]MapUsage, error) {
	maps := []struct {
		name string
		m    *ebpf.Map
	}{
		{kpathMapKpLbFrontend, d.objs.KpLbFrontend}, {kpathMapKpLbSlot, d.objs.KpLbSlot},
		{kpathMapKpLbBackend, d.objs.KpLbBackend}, {kpathMapKpLbRevnat, d.objs.KpLbRevnat},
		{kpathMapKpLbMaglev, d.objs.KpLbMaglev}, {kpathMapKpLbAffinity, d.objs.KpLbAffinity},
		{kpathMapKpCt, d.objs.KpCt}, {kpathMapKpSockRevnat, d.objs.KpSockRevnat}, {kpathMapKpFrag, d.objs.KpFrag},
	}
	out := make([]MapUsage, 0, len(maps))
	for _, m := range maps {
		n, err := countEntries(m.m)
		if err != nil {
			return nil, fmt.Errorf("count %s: %w", m.name, err)
		}
		out = append(out, MapUsage{Name: m.name, Entries: n, Max: m.m.MaxEntries()})
	}
	return out, nil
}

func countEntries(m *ebpf.Map) (int, error) {
	if m.Type() != ebpf.HashOfMaps {
		const batch = 4096
		keys := make([]byte, int(m.KeySize())*batch)
		vals := make([]byte, int(m.ValueSize())*batch)
		var (
			cursor ebpf.MapBatchCursor
			total  int
		)
		for {
			n, err := m.BatchLookup(&cursor, keys, vals, nil)
			total += n
			if errors.Is(err, ebpf.ErrKeyNotExist) {
				return total, nil
			}
			if errors.Is(err, ebpf.ErrNotSupported) {
				break
			}
			if err != nil {
				return 0, err
			}
		}
	}
	var (
		total int
		prev  []byte
	)
	next := make([]byte, m.KeySize())
	for {
		var err error
		if prev == nil {
			err = m.NextKey(nil, next)
		} else {
			err = m.NextKey(prev, next)
		}
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return total, nil
		}
		if err != nil {
			return 0, err
		}
		total++
		prev = append(prev[:0], next...)
	}
}
