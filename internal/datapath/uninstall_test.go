package datapath

import (
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"

	"github.com/kpath/kpath/internal/testutil"
)

// TestUninstall: after the agent is gone, Uninstall leaves no kpath
// program on an interface however it was attached (tcx links, legacy tc
// filters), none on the cgroup, and no pin.
func TestUninstall(t *testing.T) {
	testutil.RequireRoot(t)
	root, err := CgroupV2Root()
	if err != nil {
		testutil.SkipOrFail(t, err.Error())
	}
	for _, mode := range []AttachMode{AttachTCX, AttachLegacy} {
		t.Run(string(mode), func(t *testing.T) {
			cfg := testConfig(t)
			cfg.TCAttach = mode
			ns := testutil.NewNetns(t, "kpu-"+testutil.UniqueID())
			testutil.Run(t, "ip", "-n", ns, "link", "add", "kpu0", "type", "veth", "peer", "name", "kpu1")
			testutil.Run(t, "ip", "-n", ns, "link", "set", "kpu0", "up")
			cg := testutil.NewCgroup(t, root)
			d, err := Open(cfg)
			if err != nil {
				_ = Reset(cfg)
				if mode == AttachTCX && strings.Contains(err.Error(), "tcx") {
					t.Skip("no tcx on this kernel")
				}
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = Reset(cfg) })
			err = testutil.InNetns(ns, func() error { return d.AttachPod("kpu0", netip.MustParseAddr("10.9.0.2")) })
			if err != nil {
				d.Close()
				t.Fatal(err)
			}
			if err := d.AttachCgroup(cg); err != nil {
				d.Close()
				t.Fatal(err)
			}
			d.Close() // the agent is gone; its pins hold the attachments
			if n := attachedKpathPrograms(t, ns, "kpu0", cg); n == 0 {
				t.Fatal("nothing attached before Uninstall: the test proves nothing")
			}
			if err := testutil.InNetns(ns, func() error { return Uninstall(cfg) }); err != nil {
				t.Fatal(err)
			}
			if n := attachedKpathPrograms(t, ns, "kpu0", cg); n != 0 {
				t.Errorf("%d kpath programs left attached", n)
			}
			if _, err := os.Stat(filepath.Join(cfg.BPFFS, cfg.PinDir)); err == nil {
				t.Error("pins left")
			}
			// Nothing there: no error.
			if err := testutil.InNetns(ns, func() error { return Uninstall(cfg) }); err != nil {
				t.Errorf("second Uninstall: %v", err)
			}
		})
	}
}

// attachedKpathPrograms counts kpath's programs on ifname in ns (tcx and legacy
// filters, both directions) and on the cgroup.
func attachedKpathPrograms(t *testing.T, ns, ifname, cgroup string) int {
	t.Helper()
	n := 0
	count := func(ids []link.AttachedProgram) {
		for _, p := range ids {
			if prog, err := ebpf.NewProgramFromID(p.ID); err == nil {
				if info, err := prog.Info(); err == nil && strings.HasPrefix(info.Name, "kp_") {
					n++
				}
				prog.Close()
			}
		}
	}
	err := testutil.InNetns(ns, func() error {
		l, err := netlink.LinkByName(ifname)
		if err != nil {
			return err
		}
		for _, h := range podHooks {
			if res, err := link.QueryPrograms(link.QueryOptions{Target: l.Attrs().Index, Attach: h.attach}); err == nil {
				count(res.Programs)
			}
			filters, _ := netlink.FilterList(l, h.parent)
			for _, f := range filters {
				if bf, ok := f.(*netlink.BpfFilter); ok && strings.HasPrefix(bf.Name, "kp_") {
					n++
				}
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(cgroup)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if res, err := link.QueryPrograms(link.QueryOptions{Target: int(f.Fd()), Attach: ebpf.AttachCGroupInet4Connect}); err == nil {
		count(res.Programs)
	}
	return n
}
