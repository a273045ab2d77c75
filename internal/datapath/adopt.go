package datapath

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/cilium/ebpf"
)

// AdoptPinned returns cfg with its map sizes and Maglev table size taken
// from the maps already pinned under cfg's pin directory, so a tool can open
// a datapath that another process configured. Sizes of maps not pinned yet
// keep cfg's values.
func AdoptPinned(cfg Config) (Config, error) {
	dir := filepath.Join(cfg.BPFFS, cfg.PinDir)
	sizes := map[string]*uint32{
		kpathMapKpLbFrontend: &cfg.Sizes.Frontends,
		kpathMapKpLbSlot:     &cfg.Sizes.Slots,
		kpathMapKpLbBackend:  &cfg.Sizes.Backends,
		kpathMapKpLbMaglev:   &cfg.Sizes.Maglev,
		kpathMapKpLbAffinity: &cfg.Sizes.Affinity,
		kpathMapKpCt:         &cfg.Sizes.Conntrack,
		kpathMapKpSockRevnat: &cfg.Sizes.SockRevNat,
		kpathMapKpFrag:       &cfg.Sizes.Fragments,
	}
	for name, dst := range sizes {
		m, err := ebpf.LoadPinnedMap(filepath.Join(dir, name), &ebpf.LoadPinOptions{ReadOnly: true})
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return cfg, fmt.Errorf("open pinned map %s: %w", name, err)
		}
		*dst = m.MaxEntries()
		if name == kpathMapKpLbMaglev {
			if ids, err := keys32(m); err == nil && len(ids) > 0 {
				var innerID ebpf.MapID
				if err := m.Lookup(ids[0], &innerID); err == nil {
					if inner, err := ebpf.NewMapFromID(innerID); err == nil {
						cfg.MaglevTableSize = inner.MaxEntries()
						inner.Close()
					}
				}
			}
		}
		m.Close()
	}
	return cfg, nil
}
