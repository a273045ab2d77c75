package datapath

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/kpath/kpath/internal/model"
)

// CTEntry is one connection-tracking entry.
type CTEntry struct {
	Src      netip.AddrPort `json:"src"`
	Dst      netip.AddrPort `json:"dst"`
	Proto    string         `json:"proto"`
	Service  bool           `json:"service"` // keyed by the frontend tuple; Backend is the choice
	State    string         `json:"state"`
	TCPFlags string         `json:"tcp_flags,omitempty"`
	// Backend the connection was sent to (service entries).
	Backend   netip.AddrPort `json:"backend,omitzero"`
	BackendID uint32         `json:"backend_id,omitempty"`
	RevNatID  uint32         `json:"rev_nat_id,omitempty"`
	ExpiresIn time.Duration  `json:"expires_in"`
	Age       time.Duration  `json:"age"`
}

// MonotonicNow reads the clock the datapath stamps entries with.
func MonotonicNow() (uint32, error) {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		return 0, fmt.Errorf("read monotonic clock: %w", err)
	}
	return uint32(ts.Sec), nil
}

var ctStateNames = map[uint8]string{
	uint8(kpathCtStateCT_NEW):         "new",
	uint8(kpathCtStateCT_ESTABLISHED): "established",
	uint8(kpathCtStateCT_CLOSING):     "closing",
}

// TCPFlagNames names the SYN, ACK, FIN and RST bits set in f, in that order.
func TCPFlagNames(f uint8) []string {
	var s []string
	for _, n := range []struct {
		bit  uint8
		name string
	}{{0x02, "SYN"}, {0x10, "ACK"}, {0x01, "FIN"}, {0x04, "RST"}} {
		if f&n.bit != 0 {
			s = append(s, n.name)
		}
	}
	return s
}

func tcpFlagString(f uint8) string { return strings.Join(TCPFlagNames(f), "|") }

// Conntrack lists the connection-tracking table, expired entries included
// (they stay until the next garbage collection).
func (d *Datapath) Conntrack() ([]CTEntry, error) {
	now, err := MonotonicNow()
	if err != nil {
		return nil, err
	}
	var (
		k   kpathCtKey
		v   kpathCtEntry
		out []CTEntry
	)
	it := d.objs.KpCt.Iterate()
	for it.Next(&k, &v) {
		e := CTEntry{
			Src:       netip.AddrPortFrom(addrFromBPF(k.Saddr), portFromBPF(k.Sport)),
			Dst:       netip.AddrPortFrom(addrFromBPF(k.Daddr), portFromBPF(k.Dport)),
			Proto:     model.Protocol(k.Proto).String(),
			Service:   k.Flags&uint8(kpathCtKeyFlagsCT_KEY_SERVICE) != 0,
			State:     ctStateNames[v.State],
			RevNatID:  v.RevNatId,
			ExpiresIn: time.Duration(int64(v.Expires)-int64(now)) * time.Second,
			Age:       time.Duration(int64(now)-int64(v.Created)) * time.Second,
		}
		if k.Proto == uint8(model.TCP) {
			e.TCPFlags = tcpFlagString(v.TcpFlags)
		}
		if e.Service {
			e.Backend = netip.AddrPortFrom(addrFromBPF(v.BackendAddr), portFromBPF(v.BackendPort))
			e.BackendID = v.BackendId
		}
		out = append(out, e)
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("iterate conntrack: %w", err)
	}
	slices.SortFunc(out, func(a, b CTEntry) int {
		if c := a.Src.Compare(b.Src); c != 0 {
			return c
		}
		return a.Dst.Compare(b.Dst)
	})
	return out, nil
}

// testHookCTScanned, when set by a test, runs between ConntrackGC's scan
// and its deletes.
var testHookCTScanned func()

// ConntrackGC deletes expired entries and returns how many it deleted and
// how many remain. LRU eviction alone would keep dead connections until the
// table fills and then evict live ones with them.
//
// The table is scanned in batches (Linux 5.6+; one syscall per entry would
// cost a busy node tens of millicores), but each expired entry is read again
// just before it is deleted: between the scan and the delete, a client that
// reuses its source port reopens the entry with a new connection, and
// deleting that one would send the server's answer back untranslated (the
// client resets it and waits for an answer that never comes). What remains
// is the microseconds between the second read and the delete.
func (d *Datapath) ConntrackGC() (deleted, remaining int, err error) {
	deleted, remaining, err = d.conntrackGC(nil)
	return deleted, remaining, err
}

// CTEnd is a connection whose entry the garbage collector deleted: its
// tuple, and its counters in both directions.
type CTEnd struct {
	Src, Dst netip.AddrPort
	Proto    model.Protocol
	// Service: the entry is keyed by the frontend (Dst) and Backend is
	// the connection's backend; its counters are the forward packets the
	// service path counted.
	Service              bool
	Backend              netip.AddrPort
	TCPFlags             uint8
	PacketsFwd, BytesFwd uint64
	PacketsRev, BytesRev uint64
	Age                  time.Duration
}

// ConntrackGCEnded is ConntrackGC that also returns what it deleted, for
// the flows' connection-end records.
func (d *Datapath) ConntrackGCEnded() (deleted, remaining int, ended []CTEnd, err error) {
	var out []CTEnd
	deleted, remaining, err = d.conntrackGC(func(k *kpathCtKey, v *kpathCtEntry, age time.Duration) {
		e := CTEnd{
			Src:   netip.AddrPortFrom(addrFromBPF(k.Saddr), portFromBPF(k.Sport)),
			Dst:   netip.AddrPortFrom(addrFromBPF(k.Daddr), portFromBPF(k.Dport)),
			Proto: model.Protocol(k.Proto), Service: k.Flags&uint8(kpathCtKeyFlagsCT_KEY_SERVICE) != 0,
			TCPFlags: v.TcpFlags, PacketsFwd: uint64(v.PacketsFwd), BytesFwd: v.BytesFwd,
			PacketsRev: uint64(v.PacketsRev), BytesRev: v.BytesRev, Age: age,
		}
		if e.Service {
			e.Backend = netip.AddrPortFrom(addrFromBPF(v.BackendAddr), portFromBPF(v.BackendPort))
		}
		out = append(out, e)
	})
	return deleted, remaining, out, err
}

func (d *Datapath) conntrackGC(onDelete func(*kpathCtKey, *kpathCtEntry, time.Duration)) (deleted, remaining int, err error) {
	now, err := MonotonicNow()
	if err != nil {
		return 0, 0, err
	}
	// Signed difference, as the datapath's ct_expired: the clock is 32-bit
	// seconds and may wrap.
	expired := func(_ *kpathCtKey, v *kpathCtEntry) bool { return int32(v.Expires-now) < 0 }
	return d.ctSweep(expired, func(k *kpathCtKey, v *kpathCtEntry) {
		if onDelete != nil {
			onDelete(k, v, time.Duration(int64(now)-int64(v.Created))*time.Second)
		}
	})
}

// ConntrackFlush deletes the entries of every connection to or from one
// of addrs, or translated to one of them as its backend: the addresses of
// pods that are gone. An entry left behind would hand a later pod at the
// same address the dead one's connections: their policy verdicts, their
// backends, replies that match them. Returns how many it deleted.
func (d *Datapath) ConntrackFlush(addrs map[netip.Addr]struct{}) (int, error) {
	if len(addrs) == 0 {
		return 0, nil
	}
	in := make(map[uint32]struct{}, len(addrs))
	for a := range addrs {
		if a.Is4() {
			in[addrToBPF(a)] = struct{}{}
		}
	}
	of := func(k *kpathCtKey, v *kpathCtEntry) bool {
		_, src := in[k.Saddr]
		_, dst := in[k.Daddr]
		_, backend := in[v.BackendAddr]
		return src || dst || backend && k.Flags&uint8(kpathCtKeyFlagsCT_KEY_SERVICE) != 0
	}
	deleted, _, err := d.ctSweep(of, nil)
	return deleted, err
}

// ctSweep deletes the entries dead says are dead and counts the rest.
// dead is asked again of each entry just before it is deleted (see
// ConntrackGC).
func (d *Datapath) ctSweep(dead func(*kpathCtKey, *kpathCtEntry) bool, onDelete func(*kpathCtKey, *kpathCtEntry)) (deleted, remaining int, err error) {
	var doomed []kpathCtKey
	const batch = 4096
	keys, vals := make([]kpathCtKey, batch), make([]kpathCtEntry, batch)
	var cursor ebpf.MapBatchCursor
	for {
		n, err := d.objs.KpCt.BatchLookup(&cursor, keys, vals, nil)
		for i := range n {
			if dead(&keys[i], &vals[i]) {
				doomed = append(doomed, keys[i])
			} else {
				remaining++
			}
		}
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			break
		}
		if errors.Is(err, ebpf.ErrNotSupported) {
			doomed, remaining = doomed[:0], 0
			var (
				k kpathCtKey
				v kpathCtEntry
			)
			it := d.objs.KpCt.Iterate()
			for it.Next(&k, &v) {
				if dead(&k, &v) {
					doomed = append(doomed, k)
				} else {
					remaining++
				}
			}
			if err := it.Err(); err != nil {
				return 0, 0, fmt.Errorf("iterate conntrack: %w", err)
			}
			break
		}
		if err != nil {
			return 0, 0, fmt.Errorf("read conntrack: %w", err)
		}
	}
	if testHookCTScanned != nil {
		testHookCTScanned()
	}
	var v kpathCtEntry
	for _, k := range doomed {
		if err := d.objs.KpCt.Lookup(&k, &v); err != nil {
			if errors.Is(err, ebpf.ErrKeyNotExist) {
				continue // evicted meanwhile
			}
			return deleted, remaining, fmt.Errorf("read conntrack entry: %w", err)
		}
		if !dead(&k, &v) {
			remaining++ // reopened since the scan
			continue
		}
		if err := d.objs.KpCt.Delete(&k); err == nil {
			deleted++
			if onDelete != nil {
				onDelete(&k, &v)
			}
		} else if !errors.Is(err, ebpf.ErrKeyNotExist) {
			return deleted, remaining, fmt.Errorf("delete conntrack entry: %w", err)
		}
	}
	return deleted, remaining, nil
}

// Counter is the sum over CPUs of one (reason, direction) counter.
type Counter struct {
	Reason  string `json:"reason"`
	Dir     string `json:"dir"`
	Drop    bool   `json:"drop"`
	Packets uint64 `json:"packets"`
	Bytes   uint64 `json:"bytes"`
}

// Drop reasons other packages name, as Counters and flows spell them.
const (
	ReasonInvalidSource = "invalid source address"  // a pod sent from an address not its own
	ReasonUnsupportedL3 = "unsupported L3 protocol" // a pod sent neither IPv4 nor ARP
	// ReasonSourceRange: a new connection to a load-balancer IP from a
	// source outside its loadBalancerSourceRanges.
	ReasonSourceRange = "denied by load-balancer source range"
)

// Reason names, as metrics and the CLI show them.
var reasonNames = map[kpathKpReason]string{
	kpathKpReasonKP_PASS:                "pass",
	kpathKpReasonKP_SVC_XLATE:           "service translated",
	kpathKpReasonKP_REV_XLATE:           "reply translated",
	kpathKpReasonKP_DROP_NO_BACKEND:     "no service backend",
	kpathKpReasonKP_DROP_MALFORMED:      "malformed packet",
	kpathKpReasonKP_DROP_FRAG_NO_FIRST:  "fragment without state",
	kpathKpReasonKP_DROP_CT_CREATE:      "conntrack write failed",
	kpathKpReasonKP_DROP_REWRITE:        "header rewrite failed",
	kpathKpReasonKP_DROP_POLICY:         "policy denied",
	kpathKpReasonKP_DROP_INVALID_SOURCE: ReasonInvalidSource,
	kpathKpReasonKP_DROP_UNSUPPORTED_L3: ReasonUnsupportedL3,
	kpathKpReasonKP_DROP_SOURCE_RANGE:   ReasonSourceRange,
}

var dirNames = map[kpathKpDir]string{
	kpathKpDirKP_DIR_FROM_POD: "from-pod",
	kpathKpDirKP_DIR_TO_POD:   "to-pod",
	kpathKpDirKP_DIR_SOCK:     "socket",
	kpathKpDirKP_DIR_HOST_IN:  "host-in",
	kpathKpDirKP_DIR_HOST_OUT: "host-out",
}

// Counters returns every non-zero counter.
func (d *Datapath) Counters() ([]Counter, error) {
	var out []Counter
	for r := kpathKpReason(0); r < kpathKpReasonKP_REASON_MAX; r++ {
		for dir := kpathKpDir(0); dir < kpathKpDirKP_DIR_MAX; dir++ {
			var per []kpathKpCounter
			idx := uint32(r)*uint32(kpathKpDirKP_DIR_MAX) + uint32(dir)
			if err := d.objs.KpMetrics.Lookup(idx, &per); err != nil {
				return nil, fmt.Errorf("read counter %d: %w", idx, err)
			}
			c := Counter{Reason: reasonNames[r], Dir: dirNames[dir], Drop: r >= kpathKpReasonKP_DROP_NO_BACKEND}
			for _, p := range per {
				c.Packets += p.Packets
				c.Bytes += p.Bytes
			}
			if c.Packets > 0 {
				out = append(out, c)
			}
		}
	}
	return out, nil
}

// CounterPackets returns the packets counted for a reason and direction,
// named as in Counters; 0 when none were.
func CounterPackets(cs []Counter, reason, dir string) uint64 {
	for _, c := range cs {
		if c.Reason == reason && c.Dir == dir {
			return c.Packets
		}
	}
	return 0
}
