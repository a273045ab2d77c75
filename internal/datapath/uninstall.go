package datapath

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/vishvananda/netlink"
)

// Uninstall removes kpath's datapath from the node, as the last step of
// removing kpath: every program it attached in the caller's network
// namespace (tcx and cgroup links, detached explicitly in case another
// process still holds one; tc filters attached the legacy way, from every
// link), then every pinned map and link (Reset). Traffic of pods still
// running is no longer translated, policed or reported. It is not an
// error when nothing is there.
func Uninstall(cfg Config) error {
	var errs []error
	pins, _ := filepath.Glob(filepath.Join(cfg.BPFFS, cfg.PinDir, "links", "*"))
	for _, pin := range pins {
		errs = append(errs, detachPinned(pin))
	}
	links, err := netlink.LinkList()
	if err != nil {
		return fmt.Errorf("list links: %w", err)
	}
	for _, l := range links {
		errs = append(errs, removeLegacyFilters(l))
	}
	if _, err := os.Stat(filepath.Join(cfg.BPFFS, cfg.PinDir)); err == nil {
		errs = append(errs, Reset(cfg))
	}
	return errors.Join(errs...)
}
