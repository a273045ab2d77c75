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
		name  string
		m     *ebpf.Map
		count func(*ebpf.Map) (int, error)
	}{
		{kpathMapKpLbFrontend, d.objs.KpLbFrontend, countBatch[kpathLbFrontendKey, kpathLbFrontend]},
		{kpathMapKpLbSlot, d.objs.KpLbSlot, countBatch[kpathLbSlotKey, uint32]},
		{kpathMapKpLbBackend, d.objs.KpLbBackend, countBatch[uint32, kpathLbBackend]},
		{kpathMapKpLbRevnat, d.objs.KpLbRevnat, countBatch[uint32, kpathLbRevNat]},
		{kpathMapKpLbMaglev, d.objs.KpLbMaglev, countKeys},
		{kpathMapKpLbAffinity, d.objs.KpLbAffinity, countBatch[kpathLbAffinityKey, kpathLbAffinity]},
		{kpathMapKpCt, d.objs.KpCt, countBatch[kpathCtKey, kpathCtEntry]},
		{kpathMapKpSockRevnat, d.objs.KpSockRevnat, countBatch[kpathSockRevnatKey, kpathSockRevnat]},
		{kpathMapKpFrag, d.objs.KpFrag, countBatch[kpathFragKey, kpathFragPorts]},
		{kpathMapKpIpcache, d.objs.KpIpcache, countBatch[uint32, kpathIpcacheEntry]},
		{kpathMapKpEndpoint, d.objs.KpEndpoint, countBatch[uint32, kpathEndpoint]},
		{kpathMapKpLocalPod, d.objs.KpLocalPod, countBatch[uint32, kpathLocalPod]},
		{kpathMapKpPolicy, d.objs.KpPolicy, countKeys},
		{kpathMapKpPolicyCidr, d.objs.KpPolicyCidr, countKeys},
	}
	out := make([]MapUsage, 0, len(maps))
	for _, m := range maps {
		n, err := m.count(m.m)
		if err != nil {
			return nil, fmt.Errorf("count %s: %w", m.name, err)
		}
		out = append(out, MapUsage{Name: m.name, Entries: n, Max: m.m.MaxEntries()})
	}
	return out, nil
}

// countBatch counts entries 4096 at a time (Linux 5.6 batch lookups),
// falling back to walking keys one by one.
func countBatch[K, V any](m *ebpf.Map) (int, error) {
	const batch = 4096
	keys, vals := make([]K, batch), make([]V, batch)
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
			return countKeys(m)
		}
		if err != nil {
			return 0, err
		}
	}
}

// countKeys walks the keys one syscall each.
func countKeys(m *ebpf.Map) (int, error) {
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

// CountPinned counts the entries of the map pinned at path, opened
// read-only: another agent's map (the benchmarks count Cilium's ipcache and
// backends this way, through /proc/PID/root into its mount namespace).
func CountPinned(path string) (int, error) {
	m, err := ebpf.LoadPinnedMap(path, &ebpf.LoadPinOptions{ReadOnly: true})
	if err != nil {
		return 0, fmt.Errorf("open pinned map %s: %w", path, err)
	}
	defer m.Close()
	n, err := countKeys(m)
	if err != nil {
		return 0, fmt.Errorf("count %s: %w", path, err)
	}
	return n, nil
}
