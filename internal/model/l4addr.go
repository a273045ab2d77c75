package model

import (
	"cmp"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// Protocol is an IP protocol number that kpath translates.
type Protocol uint8

// The protocols a service port can use.
const (
	TCP Protocol = 6
	UDP Protocol = 17
)

// String returns the protocol's name as Kubernetes spells it.
func (p Protocol) String() string {
	switch p {
	case TCP:
		return "TCP"
	case UDP:
		return "UDP"
	}
	return "proto-" + strconv.Itoa(int(p))
}

// ParseProtocol accepts "TCP" or "UDP" in any case.
func ParseProtocol(s string) (Protocol, error) {
	switch strings.ToUpper(s) {
	case "TCP":
		return TCP, nil
	case "UDP":
		return UDP, nil
	}
	return 0, fmt.Errorf("protocol %q: want TCP or UDP", s)
}

// L4Addr is an IPv4 address, port and protocol: a service frontend or a backend.
type L4Addr struct {
	Addr  netip.Addr
	Port  uint16
	Proto Protocol
}

// String formats a as "10.96.0.10:80/TCP".
func (a L4Addr) String() string {
	return netip.AddrPortFrom(a.Addr, a.Port).String() + "/" + a.Proto.String()
}

// Validate reports what makes a unusable by the datapath.
func (a L4Addr) Validate() error {
	if !a.Addr.Is4() {
		return fmt.Errorf("address %s: only IPv4 is supported", a.Addr)
	}
	if a.Addr.IsUnspecified() {
		return fmt.Errorf("address %s: unspecified address", a.Addr)
	}
	if a.Port == 0 {
		return fmt.Errorf("%s: port 0", a)
	}
	if a.Proto != TCP && a.Proto != UDP {
		return fmt.Errorf("%s: protocol %d is not TCP or UDP", a, a.Proto)
	}
	return nil
}

// ParseL4Addr parses "ADDR:PORT[/PROTO]"; the protocol defaults to def.
func ParseL4Addr(s string, def Protocol) (L4Addr, error) {
	hostport, proto, hasProto := strings.Cut(s, "/")
	p := def
	if hasProto {
		var err error
		if p, err = ParseProtocol(proto); err != nil {
			return L4Addr{}, fmt.Errorf("parse %q: %w", s, err)
		}
	}
	ap, err := netip.ParseAddrPort(hostport)
	if err != nil {
		return L4Addr{}, fmt.Errorf("parse %q: want ADDR:PORT[/TCP|UDP]: %w", s, err)
	}
	a := L4Addr{Addr: ap.Addr().Unmap(), Port: ap.Port(), Proto: p}
	if err := a.Validate(); err != nil {
		return L4Addr{}, fmt.Errorf("parse %q: %w", s, err)
	}
	return a, nil
}

// Compare orders addresses by address, then port, then protocol.
func (a L4Addr) Compare(b L4Addr) int {
	if c := a.Addr.Compare(b.Addr); c != 0 {
		return c
	}
	if c := cmp.Compare(a.Port, b.Port); c != 0 {
		return c
	}
	return cmp.Compare(a.Proto, b.Proto)
}
