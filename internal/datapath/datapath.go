// Package datapath is the only part of kpath that touches eBPF. It loads
// the programs generated from bpf/, pins their maps under a kpath directory
// in bpffs, attaches programs to pod interfaces and cgroups, and offers a
// typed API over the maps: services and backends, connection tracking and
// counters. State survives a restart: Open finds the pinned maps and
// rebuilds its view (IDs included) from them.
package datapath

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/features"
	"golang.org/x/sys/unix"

	"github.com/kpath/kpath/internal/lb"
	"github.com/kpath/kpath/internal/procstat"
)

// MapSizes sets the capacity of the maps whose size depends on the cluster.
type MapSizes struct {
	Frontends  uint32 `json:"frontends"`  // service (address, port, protocol) combinations
	Backends   uint32 `json:"backends"`   // distinct backend (address, port, protocol)
	Slots      uint32 `json:"slots"`      // sum over frontends of their backend count
	Maglev     uint32 `json:"maglev"`     // frontends using Maglev selection
	Affinity   uint32 `json:"affinity"`   // (client, frontend) pairs with session affinity
	Conntrack  uint32 `json:"conntrack"`  // tracked connections (two entries per translated one)
	SockRevNat uint32 `json:"sockRevNat"` // (socket, backend) pairs translated by the socket hook
	Fragments  uint32 `json:"fragments"`  // fragmented datagrams in flight
	// IPCache holds every pod and node address of the cluster.
	IPCache uint32 `json:"ipcache"`
	// Endpoints are this node's pods (their policy, and the addresses
	// bound to their interfaces).
	Endpoints uint32 `json:"endpoints"`
	// PolicyEntries and PolicyCIDRs are the policy sets' allow entries and
	// ipBlock prefixes, all sets together.
	PolicyEntries uint32 `json:"policyEntries"`
	PolicyCIDRs   uint32 `json:"policyCIDRs"`
}

// DefaultMapSizes suits a cluster of 100,000 backends.
func DefaultMapSizes() MapSizes {
	return MapSizes{
		Frontends:     65536,
		Backends:      131072,
		Slots:         262144,
		Maglev:        8192,
		Affinity:      65536,
		Conntrack:     524288,
		SockRevNat:    131072,
		Fragments:     8192,
		IPCache:       262144,
		Endpoints:     16384,
		PolicyEntries: 1 << 20,
		PolicyCIDRs:   262144,
	}
}

// CTLifetimes are how long a tracked connection lives without traffic.
type CTLifetimes struct {
	SYN         time.Duration // TCP before the other side answered
	Established time.Duration // TCP after it answered
	Closing     time.Duration // TCP after FIN or RST
	Other       time.Duration // UDP
}

// DefaultCTLifetimes match Cilium's defaults.
func DefaultCTLifetimes() CTLifetimes {
	return CTLifetimes{SYN: time.Minute, Established: 6 * time.Hour, Closing: 10 * time.Second, Other: time.Minute}
}

// Config says where the datapath lives and how big it is.
type Config struct {
	// BPFFS is the bpffs mount point; it is mounted there if it is not yet.
	BPFFS string
	// PinDir is the directory under BPFFS holding kpath's maps and links.
	PinDir string
	// Sizes of the maps.
	Sizes MapSizes
	// MaglevTableSize is the entries per Maglev table, a prime.
	MaglevTableSize uint32
	// CT lifetimes.
	CT CTLifetimes
	// TCAttach chooses how programs attach to interfaces.
	TCAttach AttachMode
	// MasqueradeMark is the skb->mark bit kp_host_in sets on traffic from
	// outside that it translated, so the node's masquerade rule (see
	// internal/masq) rewrites its source if it leaves through the uplink
	// again, towards a backend on another node. 0 disables marking.
	MasqueradeMark uint32
	// FlowEvents turns the flow events on.
	FlowEvents bool
	// DropEventsPerSec limits drop events per CPU (a token bucket).
	DropEventsPerSec uint32
	// HostNetnsCookie, when set, limits the socket hooks to the sockets of
	// the network namespace with this cookie (see NetnsCookie): the node's
	// own clients, while pods are translated per packet.
	HostNetnsCookie uint64
	// NodeNetnsCookie is the cookie of the node's own network namespace
	// (see NetnsCookie; 0: unknown). The socket hooks admit its sockets to
	// a load-balancer IP with loadBalancerSourceRanges only where a range
	// holds the node's address; a pod's socket is left to its veth, which
	// sees its source. Unknown, every socket is left to the per-packet path.
	NodeNetnsCookie uint64
}

// DefaultConfig is the production configuration.
func DefaultConfig() Config {
	return Config{
		BPFFS:            "/sys/fs/bpf",
		PinDir:           "kpath",
		Sizes:            DefaultMapSizes(),
		MaglevTableSize:  lb.DefaultMaglevTableSize,
		CT:               DefaultCTLifetimes(),
		TCAttach:         AttachAuto,
		MasqueradeMark:   DefaultMasqueradeMark,
		FlowEvents:       true,
		DropEventsPerSec: 1000,
	}
}

// DefaultMasqueradeMark is a mark bit of kpath's own: not kube-proxy's
// 0x4000, so the two never act on each other's traffic.
const DefaultMasqueradeMark = 0x00200000

// Validate reports what is wrong with c, before anything is loaded.
func (c Config) Validate() error {
	if !filepath.IsAbs(c.BPFFS) {
		return fmt.Errorf("bpffs path %q must be absolute", c.BPFFS)
	}
	if c.PinDir == "" || filepath.IsAbs(c.PinDir) || filepath.Clean(c.PinDir) != c.PinDir || c.PinDir == ".." {
		return fmt.Errorf("pin directory %q must be a plain relative name under the bpffs", c.PinDir)
	}
	if err := lb.ValidMaglevTableSize(uint64(c.MaglevTableSize)); err != nil {
		return fmt.Errorf("maglev table size: %w", err)
	}
	s := c.Sizes
	for _, f := range []struct {
		name string
		v    uint32
	}{
		{"frontends", s.Frontends}, {"backends", s.Backends}, {"slots", s.Slots}, {"maglev", s.Maglev},
		{"affinity", s.Affinity}, {"conntrack", s.Conntrack}, {"sock-revnat", s.SockRevNat}, {"fragments", s.Fragments},
		{"ipcache", s.IPCache}, {"endpoints", s.Endpoints}, {"policy-entries", s.PolicyEntries}, {"policy-cidrs", s.PolicyCIDRs},
	} {
		if f.v < 16 {
			return fmt.Errorf("map size %s = %d: must be at least 16", f.name, f.v)
		}
	}
	if s.Frontends > 1<<24 || s.Backends > 1<<24 {
		return fmt.Errorf("map sizes for frontends and backends must stay below %d (IDs are 24-bit safe)", 1<<24)
	}
	for _, l := range []struct {
		name string
		d    time.Duration
	}{{"syn", c.CT.SYN}, {"established", c.CT.Established}, {"closing", c.CT.Closing}, {"other", c.CT.Other}} {
		if l.d < time.Second || l.d > 7*24*time.Hour {
			return fmt.Errorf("conntrack lifetime %s = %s: must be between 1s and 168h", l.name, l.d)
		}
	}
	switch c.TCAttach {
	case AttachAuto, AttachTCX, AttachLegacy:
	default:
		return fmt.Errorf("tc attach mode %q: want auto, tcx or legacy", c.TCAttach)
	}
	return nil
}

// Datapath is the loaded programs and their pinned maps.
type Datapath struct {
	cfg     Config
	pinPath string
	objs    kpathObjects

	mu  sync.Mutex // guards the service state below and attachments
	svc *serviceState
}

// Open loads the datapath, reusing maps already pinned under the pin
// directory (their contents survive), and restores the service state from
// them. The programs are not attached; see AttachPod and AttachCgroup.
func Open(cfg Config) (*Datapath, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("invalid datapath configuration: %w", err)
	}
	if err := checkKernel(); err != nil {
		return nil, err
	}
	if err := ensureBPFFS(cfg.BPFFS); err != nil {
		return nil, err
	}
	pinPath := filepath.Join(cfg.BPFFS, cfg.PinDir)
	for _, dir := range []string{pinPath, filepath.Join(pinPath, "links")} {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, fmt.Errorf("create pin directory: %w", err)
		}
	}

	spec, err := loadKpath()
	if err != nil {
		return nil, fmt.Errorf("read embedded BPF object: %w", err)
	}
	if err := configureSpec(spec, cfg); err != nil {
		return nil, err
	}
	if err := dropIncompatiblePins(spec, pinPath); err != nil {
		return nil, err
	}
	d := &Datapath{cfg: cfg, pinPath: pinPath}
	err = spec.LoadAndAssign(&d.objs, &ebpf.CollectionOptions{Maps: ebpf.MapOptions{PinPath: pinPath}})
	if err != nil {
		return nil, explainLoadError(err, pinPath)
	}
	if err := d.restoreServices(); err != nil {
		d.objs.Close()
		return nil, fmt.Errorf("restore service state from pinned maps: %w", err)
	}
	if rev, err := d.PolicyRevision(); err == nil && rev == 0 {
		// 0 is "never decided": a fresh datapath starts at 1.
		if _, err := d.BumpPolicyRevision(); err != nil {
			d.objs.Close()
			return nil, err
		}
	}
	return d, nil
}

// PinPath is the bpffs directory holding the datapath's maps and links.
func (d *Datapath) PinPath() string { return d.pinPath }

// Config returns the configuration the datapath was opened with.
func (d *Datapath) Config() Config { return d.cfg }

// Close releases this process's handles. Pinned maps and attached programs
// stay in the kernel and keep working; use Reset to remove them.
func (d *Datapath) Close() error {
	return d.objs.Close()
}

// Reset removes everything kpath pinned under cfg's pin directory: maps and
// links, which detaches the programs attached through links. Connection
// state is lost. Programs attached the legacy way (tc filters) stay until
// their interfaces go or DetachPod removes them.
func Reset(cfg Config) error {
	dir := filepath.Join(cfg.BPFFS, cfg.PinDir)
	if cfg.PinDir == "" || dir == cfg.BPFFS {
		return fmt.Errorf("refusing to remove the bpffs root %s", cfg.BPFFS)
	}
	if err := os.RemoveAll(dir); err != nil {
		return fmt.Errorf("remove pinned datapath %s: %w", dir, err)
	}
	return nil
}

// rebuildable are the maps whose contents are rebuilt without loss that
// matters: counters, the drop-event rate limiter, and the local pods that
// the agent binds again at start. When a new version changes the layout of
// one of them, its pin is replaced by a new map instead of refusing to load
// (the other maps hold connections and policy, and refuse; see
// explainLoadError). Programs attached by the old version keep the old map
// until they are attached again.
var rebuildable = []string{kpathMapKpMetrics, kpathMapKpEventStats, kpathMapKpEventRl, kpathMapKpLocalPod}

func dropIncompatiblePins(spec *ebpf.CollectionSpec, pinPath string) error {
	for _, name := range rebuildable {
		pin := filepath.Join(pinPath, name)
		m, err := ebpf.LoadPinnedMap(pin, nil)
		if err != nil {
			continue // not pinned yet; anything else, the load reports
		}
		err = spec.Maps[name].Compatible(m)
		m.Close()
		if err == nil {
			continue
		}
		if err := os.Remove(pin); err != nil {
			return fmt.Errorf("replace map %s of an older layout: %w", pin, err)
		}
	}
	return nil
}

func configureSpec(spec *ebpf.CollectionSpec, cfg Config) error {
	s := cfg.Sizes
	sizes := map[string]uint32{
		kpathMapKpLbFrontend: s.Frontends,
		kpathMapKpLbSlot:     s.Slots,
		kpathMapKpLbBackend:  s.Backends,
		kpathMapKpLbRevnat:   s.Frontends,
		kpathMapKpLbMaglev:   s.Maglev,
		kpathMapKpLbAffinity: s.Affinity,
		kpathMapKpCt:         s.Conntrack,
		kpathMapKpSockRevnat: s.SockRevNat,
		kpathMapKpFrag:       s.Fragments,
		kpathMapKpIpcache:    s.IPCache,
		kpathMapKpEndpoint:   s.Endpoints,
		kpathMapKpLocalPod:   s.Endpoints,
		kpathMapKpPolicy:     s.PolicyEntries,
		kpathMapKpPolicyCidr: s.PolicyCIDRs,
	}
	for name, n := range sizes {
		m, ok := spec.Maps[name]
		if !ok {
			return fmt.Errorf("embedded BPF object has no map %s", name)
		}
		m.MaxEntries = n
	}
	spec.Maps[kpathMapKpLbMaglev].InnerMap.MaxEntries = cfg.MaglevTableSize
	vars := map[string]uint32{
		kpathVarCfgMaglevSize:       cfg.MaglevTableSize,
		kpathVarCfgCtLifetimeSyn:    uint32(cfg.CT.SYN / time.Second),
		kpathVarCfgCtLifetimeTcp:    uint32(cfg.CT.Established / time.Second),
		kpathVarCfgCtLifetimeClose:  uint32(cfg.CT.Closing / time.Second),
		kpathVarCfgCtLifetimeOther:  uint32(cfg.CT.Other / time.Second),
		kpathVarCfgMasqMark:         cfg.MasqueradeMark,
		kpathVarCfgFlowEvents:       boolU32(cfg.FlowEvents),
		kpathVarCfgDropEventsPerSec: cfg.DropEventsPerSec,
	}
	for name, v := range vars {
		if err := spec.Variables[name].Set(v); err != nil {
			return fmt.Errorf("set %s: %w", name, err)
		}
	}
	for name, v := range map[string]uint64{kpathVarCfgHostNetnsCookie: cfg.HostNetnsCookie, kpathVarCfgNodeNetnsCookie: cfg.NodeNetnsCookie} {
		if err := spec.Variables[name].Set(v); err != nil {
			return fmt.Errorf("set %s: %w", name, err)
		}
	}
	return nil
}

// SetNodeAddr tells the datapath its node's address (IPv4; the invalid
// address clears it): the source a pod reaching itself through a Service
// per packet sees, as with kube-proxy.
func (d *Datapath) SetNodeAddr(a netip.Addr) error {
	var n kpathNodeInfo
	if a.IsValid() {
		if !a.Is4() {
			return fmt.Errorf("node address %s: want IPv4", a)
		}
		n.Addr = addrToBPF(a)
	}
	if err := d.objs.KpNode.Put(uint32(0), n); err != nil {
		return fmt.Errorf("write node address: %w", err)
	}
	return nil
}

// NetnsCookie is the cookie of the calling thread's network namespace,
// as bpf_get_netns_cookie() reports it for its sockets (SO_NETNS_COOKIE,
// Linux 5.14).
func NetnsCookie() (uint64, error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return 0, fmt.Errorf("netns cookie: %w", err)
	}
	defer unix.Close(fd)
	v, err := unix.GetsockoptUint64(fd, unix.SOL_SOCKET, unix.SO_NETNS_COOKIE)
	if err != nil {
		return 0, fmt.Errorf("netns cookie: SO_NETNS_COOKIE (Linux 5.14): %w", err)
	}
	return v, nil
}

func boolU32(b bool) uint32 {
	if b {
		return 1
	}
	return 0
}

func explainLoadError(err error, pinPath string) error {
	var ve *ebpf.VerifierError
	if errors.As(err, &ve) {
		// Without CAP_PERFMON the verifier checks the programs as an
		// unprivileged loader's and refuses what it allows a
		// tracing-capable one ("... prohibited for !root").
		if strings.Contains(fmt.Sprintf("%+v", ve), "for !root") {
			return fmt.Errorf("the kernel's verifier checked kpath's programs as an unprivileged loader's (%s): %w", needCaps, err)
		}
		return fmt.Errorf("the kernel's verifier rejected a kpath program (a kernel too old or a bug; the log follows): %+v", ve)
	}
	if errors.Is(err, ebpf.ErrMapIncompatible) {
		return fmt.Errorf("a map pinned under %s was created with other parameters (map sizes or Maglev table size changed): %w; "+
			"keep the old configuration, or remove the pinned state with `kpath dp reset` (drops connection tracking)", pinPath, err)
	}
	if errors.Is(err, unix.EPERM) {
		return fmt.Errorf("load datapath: %w (%s)", err, needCaps)
	}
	return fmt.Errorf("load datapath: %w", err)
}

// needCaps is what loading and attaching kpath's programs takes.
const needCaps = "needs root, or CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN (Linux 5.8+)"

// checkKernel names the first kernel feature kpath needs and lacks, or
// says the process may not use BPF at all.
func checkKernel() error {
	progs := []struct {
		t    ebpf.ProgramType
		what string
	}{
		{ebpf.SchedCLS, "tc (sched_cls) programs"},
		{ebpf.CGroupSockAddr, "cgroup socket-address programs (Linux 4.17)"},
	}
	for _, p := range progs {
		if err := features.HaveProgramType(p.t); err != nil {
			if errors.Is(err, unix.EPERM) {
				// Not the kernel: this process may not load programs.
				return fmt.Errorf("cannot load BPF programs (%s): %w", needCaps, err)
			}
			return fmt.Errorf("kernel feature missing: %s: %w", p.what, err)
		}
	}
	maps := []struct {
		t    ebpf.MapType
		what string
	}{
		{ebpf.LRUHash, "LRU hash maps (Linux 4.10)"},
		{ebpf.HashOfMaps, "hash-of-maps (Linux 4.12)"},
		{ebpf.PerCPUArray, "per-CPU arrays (Linux 4.6)"},
		{ebpf.LPMTrie, "longest-prefix-match tries (Linux 4.11), for NetworkPolicy"},
		{ebpf.RingBuf, "BPF ring buffers (Linux 5.8), for flow events"},
	}
	for _, m := range maps {
		if err := features.HaveMapType(m.t); err != nil {
			if errors.Is(err, unix.EPERM) {
				return fmt.Errorf("cannot create BPF maps (%s): %w", needCaps, err)
			}
			return fmt.Errorf("kernel feature missing: %s: %w", m.what, err)
		}
	}
	return nil
}

// ensureBPFFS mounts bpffs at dir unless it is mounted there already.
func ensureBPFFS(dir string) error {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err == nil && st.Type == unix.BPF_FS_MAGIC {
		return nil
	}
	// `ip netns exec` runs commands in a private mount namespace with a
	// fresh /sys, where bpffs is not mounted. Mounting one there would
	// silently split kpath's state in two.
	if pid, ok := ancestorWithBPFFS(dir); ok {
		return fmt.Errorf("bpffs is mounted at %s in the mount namespace of process %d but not in this one (as under `ip netns exec`, which remounts /sys): "+
			"enter only the network namespace instead (nsenter --net=/run/netns/NAME), so the pinned state is shared", dir, pid)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("create bpffs mount point %s: %w", dir, err)
	}
	if err := unix.Mount("bpffs", dir, "bpf", 0, "mode=0700"); err != nil {
		return fmt.Errorf("mount bpffs at %s: %w (kernel without bpffs, or not root)", dir, err)
	}
	return nil
}

// ancestorWithBPFFS walks up the process tree for a process in another
// mount namespace that has bpffs mounted at dir.
func ancestorWithBPFFS(dir string) (int, bool) {
	self, err := os.Readlink("/proc/self/ns/mnt")
	if err != nil {
		return 0, false
	}
	pid := os.Getppid()
	for range 64 {
		if pid <= 0 {
			return 0, false
		}
		if ns, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/mnt", pid)); err == nil && ns != self {
			var st unix.Statfs_t
			if unix.Statfs(fmt.Sprintf("/proc/%d/root%s", pid, dir), &st) == nil && st.Type == unix.BPF_FS_MAGIC {
				return pid, true
			}
		}
		if pid == 1 {
			return 0, false
		}
		pid = parentOf(pid)
	}
	return 0, false
}

func parentOf(pid int) int {
	st, err := procstat.Read(pid)
	if err != nil {
		return 0
	}
	return st.PPID
}
