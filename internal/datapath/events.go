package datapath

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"time"
	"unsafe"

	"github.com/cilium/ebpf/ringbuf"
	"golang.org/x/sys/unix"

	"github.com/kpath/kpath/internal/model"
)

// FlowType is what a flow event reports.
type FlowType uint8

// Flow event types, as bpf/lib/types.h numbers them (append only).
const (
	FlowNew   = FlowType(kpathFlowTypeFLOW_NEW)   // a new connection of a local endpoint, with its policy verdict
	FlowFlags = FlowType(kpathFlowTypeFLOW_FLAGS) // the first SYN, FIN or RST of a direction
	FlowDrop  = FlowType(kpathFlowTypeFLOW_DROP)  // a dropped packet or refused socket call
	FlowXlate = FlowType(kpathFlowTypeFLOW_XLATE) // a service translated to a backend
)

// String names the type.
func (t FlowType) String() string {
	switch t {
	case FlowNew:
		return "new"
	case FlowFlags:
		return "flags"
	case FlowDrop:
		return "drop"
	case FlowXlate:
		return "translation"
	}
	return fmt.Sprintf("type-%d", uint8(t))
}

// FlowMatch is what decided a policy verdict.
type FlowMatch uint8

// Policy matches, as bpf/lib/types.h numbers them (append only).
const (
	MatchNone     = FlowMatch(kpathFlowMatchFLOW_MATCH_NONE)     // not isolated
	MatchIdentity = FlowMatch(kpathFlowMatchFLOW_MATCH_IDENTITY) // an entry for the peer's identity
	MatchCIDR     = FlowMatch(kpathFlowMatchFLOW_MATCH_CIDR)     // an entry for the peer's address
	MatchHost     = FlowMatch(kpathFlowMatchFLOW_MATCH_HOST)     // the node or the pod itself
	MatchDenied   = FlowMatch(kpathFlowMatchFLOW_MATCH_DENIED)   // nothing allowed
	MatchReply    = FlowMatch(kpathFlowMatchFLOW_MATCH_REPLY)    // a reply of an allowed connection
)

// String names the match.
func (m FlowMatch) String() string {
	switch m {
	case MatchNone:
		return "not-isolated"
	case MatchIdentity:
		return "identity"
	case MatchCIDR:
		return "cidr"
	case MatchHost:
		return "node-or-self"
	case MatchDenied:
		return "denied"
	case MatchReply:
		return "reply"
	}
	return fmt.Sprintf("match-%d", uint8(m))
}

// FlowEvent is one decoded datapath event.
type FlowEvent struct {
	Time     time.Time
	Type     FlowType
	Reason   string // drop reason (FlowDrop)
	Dir      string // from-pod, to-pod, socket, host-in, host-out
	Proto    model.Protocol
	TCPFlags uint8
	Src, Dst netip.AddrPort
	// Service is the frontend the connection was sent to, when translated.
	Service   netip.AddrPort
	ServiceID uint32
	Cookie    uint64 // socket cookie (socket path)
	// Policy: the deciding endpoint's set and rule (index + 1), the peer's
	// identity, what matched, and the direction of the verdict.
	Set, Rule, PeerIdentity uint32
	Match                   FlowMatch
	PolicyIngress           bool
	// IfIndex is the interface a dropped packet came in on when its
	// source address could not be trusted (invalid source): the sender is
	// the pod behind it, not the owner of Src. 0 otherwise.
	IfIndex int
}

// Events reads flow events from the datapath's ring buffer. One reader at
// a time (the agent's).
type Events struct {
	r       *ringbuf.Reader
	rec     ringbuf.Record
	bootOff time.Duration // wall clock - monotonic clock
}

// OpenEvents opens the ring buffer for reading.
func (d *Datapath) OpenEvents() (*Events, error) {
	r, err := ringbuf.NewReader(d.objs.KpEvents)
	if err != nil {
		return nil, fmt.Errorf("open flow event ring buffer: %w", err)
	}
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		r.Close()
		return nil, fmt.Errorf("read monotonic clock: %w", err)
	}
	return &Events{r: r, bootOff: time.Duration(time.Now().UnixNano() - ts.Nano())}, nil
}

// Close stops reading; a blocked Read returns an error.
func (e *Events) Close() error { return e.r.Close() }

// ErrNoEvent is returned by Read when no event arrived within its wait.
var ErrNoEvent = errors.New("no flow event")

// Read decodes the next event into ev, waiting at most wait. The programs
// wake the reader only once events have gathered, so waiting in short
// slices is what picks up a quiet node's events promptly.
func (e *Events) Read(ev *FlowEvent, wait time.Duration) error {
	e.r.SetDeadline(time.Now().Add(wait))
	if err := e.r.ReadInto(&e.rec); err != nil {
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return ErrNoEvent
		}
		return err
	}
	if len(e.rec.RawSample) < int(unsafe.Sizeof(kpathFlowEvent{})) {
		return fmt.Errorf("flow event of %d bytes, want %d", len(e.rec.RawSample), unsafe.Sizeof(kpathFlowEvent{}))
	}
	// The record is the C struct in host layout (the generated type says
	// so): read it in place, no reflection, no copy. RawSample is 8-byte
	// aligned in the ring.
	raw := (*kpathFlowEvent)(unsafe.Pointer(&e.rec.RawSample[0]))
	decodeEvent(raw, ev, e.bootOff)
	return nil
}

func decodeEvent(raw *kpathFlowEvent, ev *FlowEvent, bootOff time.Duration) {
	*ev = FlowEvent{
		Time:          time.Unix(0, int64(raw.TsNs)+int64(bootOff)),
		Type:          FlowType(raw.Type),
		Dir:           dirNames[kpathKpDir(raw.Dir)],
		Proto:         model.Protocol(raw.Proto),
		TCPFlags:      raw.TcpFlags,
		Src:           netip.AddrPortFrom(addrFromBPF(raw.Saddr), portFromBPF(raw.Sport)),
		Dst:           netip.AddrPortFrom(addrFromBPF(raw.Daddr), portFromBPF(raw.Dport)),
		ServiceID:     raw.SvcId,
		Cookie:        raw.Cookie,
		Set:           raw.Set,
		Rule:          raw.Rule,
		PeerIdentity:  raw.PeerIdentity,
		Match:         FlowMatch(raw.Match),
		PolicyIngress: raw.PolDir == uint8(kpathPolDirPOL_INGRESS),
		IfIndex:       int(raw.Ifindex),
	}
	if raw.Type == uint8(kpathFlowTypeFLOW_DROP) {
		ev.Reason = reasonNames[kpathKpReason(raw.Reason)]
	}
	if raw.OrigDaddr != 0 {
		ev.Service = netip.AddrPortFrom(addrFromBPF(raw.OrigDaddr), portFromBPF(raw.OrigDport))
	}
}

// EventStats are the flow event counters, summed over CPUs.
type EventStats struct {
	Sent        uint64 `json:"sent"`
	Lost        uint64 `json:"lost"`         // the ring buffer was full
	RateLimited uint64 `json:"rate_limited"` // drop events over the per-CPU rate
}

// EventStats reads the kernel's flow event counters.
func (d *Datapath) EventStats() (EventStats, error) {
	var out EventStats
	for idx, dst := range map[uint32]*uint64{
		uint32(kpathEventStatEVENT_SENT): &out.Sent, uint32(kpathEventStatEVENT_LOST): &out.Lost,
		uint32(kpathEventStatEVENT_RATE_LIMITED): &out.RateLimited,
	} {
		var per []uint64
		if err := d.objs.KpEventStats.Lookup(idx, &per); err != nil {
			return out, fmt.Errorf("read flow event counters: %w", err)
		}
		for _, v := range per {
			*dst += v
		}
	}
	return out, nil
}
