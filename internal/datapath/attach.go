package datapath

import (
	"errors"
	"fmt"
	"hash/fnv"
	"os"
	"path/filepath"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// AttachMode chooses how tc programs are attached to interfaces.
type AttachMode string

// Attach modes. tcx links (Linux 6.6) are owned by kpath, survive the agent
// through their pins and cannot be replaced by accident; legacy clsact +
// cls_bpf filters work on older kernels such as AKS's 5.15.
const (
	AttachAuto   AttachMode = "auto"   // tcx where the kernel has it, else legacy
	AttachTCX    AttachMode = "tcx"    // tcx only; fails on older kernels
	AttachLegacy AttachMode = "legacy" // clsact qdisc and cls_bpf filters
)

// Filter priority and handle of kpath's legacy cls_bpf filters: fixed, so
// attaching again replaces the filter instead of stacking another one.
const (
	legacyFilterPriority = 1
	legacyFilterHandle   = 0x1
)

type tcHook struct {
	name   string // "ingress" or "egress"
	attach ebpf.AttachType
	parent uint32
	prog   func(*kpathPrograms) *ebpf.Program
}

var podHooks = []tcHook{
	{"ingress", ebpf.AttachTCXIngress, netlink.HANDLE_MIN_INGRESS, func(p *kpathPrograms) *ebpf.Program { return p.KpFromPod }},
	{"egress", ebpf.AttachTCXEgress, netlink.HANDLE_MIN_EGRESS, func(p *kpathPrograms) *ebpf.Program { return p.KpToPod }},
}

var deviceHooks = []tcHook{
	{"ingress", ebpf.AttachTCXIngress, netlink.HANDLE_MIN_INGRESS, func(p *kpathPrograms) *ebpf.Program { return p.KpHostIn }},
	{"egress", ebpf.AttachTCXEgress, netlink.HANDLE_MIN_EGRESS, func(p *kpathPrograms) *ebpf.Program { return p.KpHostOut }},
}

func (d *Datapath) linkPin(kind, name string) string {
	return filepath.Join(d.pinPath, "links", kind+"_"+name)
}

// AttachDevice attaches the uplink programs to a node device: kp_host_in on
// ingress (NodePorts, external and load-balancer IPs for traffic from
// outside) and kp_host_out on egress (replies). Idempotent like AttachPod.
func (d *Datapath) AttachDevice(ifname string) error {
	return d.attachTC(ifname, deviceHooks)
}

func (d *Datapath) attachTC(ifname string, hooks []tcHook) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	l, err := netlink.LinkByName(ifname)
	if err != nil {
		return fmt.Errorf("attach to %s: %w", ifname, err)
	}
	ifindex := l.Attrs().Index
	mode := d.cfg.TCAttach
	if mode != AttachLegacy {
		err := d.attachTCX(ifname, ifindex, hooks)
		if err == nil || mode == AttachTCX || !errors.Is(err, ebpf.ErrNotSupported) {
			if errors.Is(err, ebpf.ErrNotSupported) {
				return fmt.Errorf("attach to %s: kernel feature missing: tcx links (Linux 6.6); use tc attach mode auto or legacy: %w", ifname, err)
			}
			return err
		}
	}
	return d.attachLegacy(l, hooks)
}

func (d *Datapath) attachTCX(ifname string, ifindex int, hooks []tcHook) error {
	for _, h := range hooks {
		prog := h.prog(&d.objs.kpathPrograms)
		pin := d.linkPin("tcx", fmt.Sprintf("%s_%d_%s", ifname, ifindex, h.name))
		if l, err := link.LoadPinnedLink(pin, nil); err == nil {
			info, ierr := l.Info()
			if ierr == nil && info.TCX() != nil && int(info.TCX().Ifindex) == ifindex {
				err := l.Update(prog)
				l.Close()
				if err != nil {
					return fmt.Errorf("update %s program on %s: %w", h.name, ifname, err)
				}
				continue
			}
			// The interface went away and took the attachment with it.
			_ = l.Unpin()
			l.Close()
		}
		l, err := link.AttachTCX(link.TCXOptions{Interface: ifindex, Program: prog, Attach: h.attach})
		if err != nil {
			return fmt.Errorf("attach %s program to %s: %w", h.name, ifname, err)
		}
		err = l.Pin(pin)
		l.Close()
		if err != nil {
			return fmt.Errorf("pin %s link of %s: %w", h.name, ifname, err)
		}
	}
	return nil
}

func (d *Datapath) attachLegacy(l netlink.Link, hooks []tcHook) error {
	ifname := l.Attrs().Name
	qdisc := &netlink.GenericQdisc{
		QdiscAttrs: netlink.QdiscAttrs{LinkIndex: l.Attrs().Index, Handle: netlink.MakeHandle(0xffff, 0), Parent: netlink.HANDLE_CLSACT},
		QdiscType:  "clsact",
	}
	if err := netlink.QdiscReplace(qdisc); err != nil {
		return fmt.Errorf("add clsact qdisc to %s: %w", ifname, err)
	}
	for _, h := range hooks {
		prog := h.prog(&d.objs.kpathPrograms)
		f := &netlink.BpfFilter{
			FilterAttrs: netlink.FilterAttrs{
				LinkIndex: l.Attrs().Index,
				Parent:    h.parent,
				Handle:    legacyFilterHandle,
				Protocol:  unix.ETH_P_ALL,
				Priority:  legacyFilterPriority,
			},
			Fd:           prog.FD(),
			Name:         progName(prog),
			DirectAction: true,
		}
		if err := netlink.FilterReplace(f); err != nil {
			return fmt.Errorf("attach %s filter to %s: %w", h.name, ifname, err)
		}
	}
	return nil
}

func progName(p *ebpf.Program) string {
	if info, err := p.Info(); err == nil {
		return info.Name
	}
	return "kpath"
}

// DetachPod removes kpath's programs from an interface (a pod's veth or a
// device), however they were attached. It is not an error when the
// interface or the programs are gone.
func (d *Datapath) DetachPod(ifname string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	pins, _ := filepath.Glob(d.linkPin("tcx", ifname+"_*"))
	var errs []error
	for _, pin := range pins {
		// Names are ifname_ifindex_dir; make sure the ifname matched whole.
		rest := strings.TrimPrefix(filepath.Base(pin), "tcx_"+ifname+"_")
		if strings.Count(rest, "_") != 1 {
			continue
		}
		if err := detachPinned(pin); err != nil {
			errs = append(errs, err)
		}
	}
	if l, err := netlink.LinkByName(ifname); err == nil {
		errs = append(errs, removeLegacyFilters(l))
	}
	return errors.Join(errs...)
}

// removeLegacyFilters removes kpath's tc filters (attached the legacy way)
// from a link.
func removeLegacyFilters(l netlink.Link) error {
	var errs []error
	for _, h := range podHooks {
		filters, err := netlink.FilterList(l, h.parent)
		if err != nil {
			continue // no clsact qdisc: nothing of ours
		}
		for _, f := range filters {
			bf, ok := f.(*netlink.BpfFilter)
			if ok && bf.Priority == legacyFilterPriority && bf.Handle == legacyFilterHandle && strings.HasPrefix(bf.Name, "kp_") {
				if err := netlink.FilterDel(bf); err != nil && !errors.Is(err, unix.ENOENT) {
					errs = append(errs, fmt.Errorf("remove %s filter from %s: %w", h.name, l.Attrs().Name, err))
				}
			}
		}
	}
	return errors.Join(errs...)
}

func detachPinned(pin string) error {
	l, err := link.LoadPinnedLink(pin, nil)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		// Not loadable as a link any more: drop the stale pin.
		return os.Remove(pin)
	}
	defer l.Close()
	if err := l.Unpin(); err != nil {
		return fmt.Errorf("unpin %s: %w", pin, err)
	}
	// The pin held the attachment; closing the last handle detaches it.
	// Detach explicitly too, in case another process still holds one.
	if err := l.Detach(); err != nil && !errors.Is(err, ebpf.ErrNotSupported) && !errors.Is(err, unix.ENOLINK) {
		return fmt.Errorf("detach %s: %w", pin, err)
	}
	return nil
}

type cgroupHook struct {
	name   string
	attach ebpf.AttachType
	prog   func(*kpathPrograms) *ebpf.Program
	kernel string
}

var cgroupHooks = []cgroupHook{
	{"connect4", ebpf.AttachCGroupInet4Connect, func(p *kpathPrograms) *ebpf.Program { return p.KpSockConnect4 }, "4.17"},
	{"sendmsg4", ebpf.AttachCGroupUDP4Sendmsg, func(p *kpathPrograms) *ebpf.Program { return p.KpSockSendmsg4 }, "4.18"},
	{"recvmsg4", ebpf.AttachCGroupUDP4Recvmsg, func(p *kpathPrograms) *ebpf.Program { return p.KpSockRecvmsg4 }, "5.2"},
	{"getpeername4", ebpf.AttachCgroupInet4GetPeername, func(p *kpathPrograms) *ebpf.Program { return p.KpSockGetpeername4 }, "5.8"},
	// Dual-stack sockets to v4-mapped service addresses.
	{"connect6", ebpf.AttachCGroupInet6Connect, func(p *kpathPrograms) *ebpf.Program { return p.KpSockConnect6 }, "4.17"},
	{"recvmsg6", ebpf.AttachCGroupUDP6Recvmsg, func(p *kpathPrograms) *ebpf.Program { return p.KpSockRecvmsg6 }, "5.2"},
	{"getpeername6", ebpf.AttachCgroupInet6GetPeername, func(p *kpathPrograms) *ebpf.Program { return p.KpSockGetpeername6 }, "5.8"},
}

func cgroupPinName(path, hook string) string {
	h := fnv.New32a()
	h.Write([]byte(filepath.Clean(path)))
	base := strings.ReplaceAll(filepath.Base(filepath.Clean(path)), "_", "-")
	return fmt.Sprintf("%s-%08x_%s", base, h.Sum32(), hook)
}

// AttachCgroup attaches the socket hooks to a cgroup v2 directory (the
// root cgroup in production, so every pod's sockets are covered). The
// attachments are bpf_links pinned under the pin directory, so they outlive
// the agent. Attaching again is a no-op that upgrades the programs.
func (d *Datapath) AttachCgroup(path string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		return fmt.Errorf("cgroup %s: %w", path, err)
	}
	if st.Type != unix.CGROUP2_SUPER_MAGIC {
		return fmt.Errorf("%s is not a cgroup v2 directory: socket hooks need cgroup v2 (mount -t cgroup2)", path)
	}
	for _, h := range cgroupHooks {
		prog := h.prog(&d.objs.kpathPrograms)
		pin := d.linkPin("cgroup", cgroupPinName(path, h.name))
		if l, err := link.LoadPinnedLink(pin, nil); err == nil {
			err := l.Update(prog)
			l.Close()
			if err != nil {
				return fmt.Errorf("update %s hook on %s: %w", h.name, path, err)
			}
			continue
		}
		l, err := link.AttachCgroup(link.CgroupOptions{Path: path, Attach: h.attach, Program: prog})
		if err != nil {
			if errors.Is(err, ebpf.ErrNotSupported) {
				return fmt.Errorf("attach %s hook to %s: kernel feature missing (Linux %s): %w", h.name, path, h.kernel, err)
			}
			return fmt.Errorf("attach %s hook to %s: %w", h.name, path, err)
		}
		if err := l.Pin(pin); err != nil {
			l.Close()
			if errors.Is(err, ebpf.ErrNotSupported) {
				return fmt.Errorf("attach %s hook to %s: kernel feature missing: bpf_link for cgroups (Linux 5.7)", h.name, path)
			}
			return fmt.Errorf("pin %s hook of %s: %w", h.name, path, err)
		}
		l.Close()
	}
	return nil
}

// DetachCgroup removes the socket hooks from a cgroup. It is not an error
// when they are not attached.
func (d *Datapath) DetachCgroup(path string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	var errs []error
	for _, h := range cgroupHooks {
		if err := detachPinned(d.linkPin("cgroup", cgroupPinName(path, h.name))); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// CgroupV2Root finds where the unified cgroup hierarchy is mounted.
func CgroupV2Root() (string, error) {
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return "", fmt.Errorf("read mountinfo: %w", err)
	}
	for line := range strings.SplitSeq(string(data), "\n") {
		// ... mount-point ... - fstype source options
		pre, post, ok := strings.Cut(line, " - ")
		if !ok {
			continue
		}
		fields := strings.Fields(pre)
		if len(fields) >= 5 && strings.HasPrefix(post, "cgroup2 ") {
			return fields[4], nil
		}
	}
	return "", errors.New("no cgroup v2 hierarchy is mounted: the socket hooks need one (mount -t cgroup2 none /sys/fs/cgroup)")
}

// PodAttached reports whether kpath's programs are attached in both
// directions of ifname, by tcx or by legacy filter (matched by program
// name, so programs loaded by an earlier agent count).
func (d *Datapath) PodAttached(ifname string) (bool, error) {
	l, err := netlink.LinkByName(ifname)
	if err != nil {
		return false, fmt.Errorf("check %s: %w", ifname, err)
	}
	for _, h := range podHooks {
		want := progName(h.prog(&d.objs.kpathPrograms))
		found := false
		if res, err := link.QueryPrograms(link.QueryOptions{Target: l.Attrs().Index, Attach: h.attach}); err == nil {
			for _, p := range res.Programs {
				if prog, err := ebpf.NewProgramFromID(p.ID); err == nil {
					if info, err := prog.Info(); err == nil && info.Name == want {
						found = true
					}
					prog.Close()
				}
			}
		}
		if !found {
			if filters, err := netlink.FilterList(l, h.parent); err == nil {
				for _, f := range filters {
					if bf, ok := f.(*netlink.BpfFilter); ok && strings.HasPrefix(bf.Name, want) {
						found = true
					}
				}
			}
		}
		if !found {
			return false, nil
		}
	}
	return true, nil
}
