package datapath

import (
	"encoding/binary"
	"net/netip"

	"github.com/kpath/kpath/internal/model"
)

// The generated structs hold addresses and ports as the kernel stores them:
// in network byte order, read as native integers. These helpers convert
// without assuming the host's byte order.

func addrToBPF(a netip.Addr) uint32 {
	b := a.As4()
	return binary.NativeEndian.Uint32(b[:])
}

func addrFromBPF(v uint32) netip.Addr {
	var b [4]byte
	binary.NativeEndian.PutUint32(b[:], v)
	return netip.AddrFrom4(b)
}

func portToBPF(p uint16) uint16 {
	var b [2]byte
	binary.BigEndian.PutUint16(b[:], p)
	return binary.NativeEndian.Uint16(b[:])
}

func portFromBPF(v uint16) uint16 {
	var b [2]byte
	binary.NativeEndian.PutUint16(b[:], v)
	return binary.BigEndian.Uint16(b[:])
}

func frontendKey(k model.FrontendKey) kpathLbFrontendKey {
	scope := uint8(kpathLbScopeLB_SCOPE_INTERNAL)
	if k.External {
		scope = uint8(kpathLbScopeLB_SCOPE_EXTERNAL)
	}
	return kpathLbFrontendKey{Addr: addrToBPF(k.Addr), Port: portToBPF(k.Port), Proto: uint8(k.Proto), Scope: scope}
}

func frontendFromKey(k kpathLbFrontendKey) model.FrontendKey {
	return model.FrontendKey{
		L4Addr:   model.L4Addr{Addr: addrFromBPF(k.Addr), Port: portFromBPF(k.Port), Proto: model.Protocol(k.Proto)},
		External: k.Scope == uint8(kpathLbScopeLB_SCOPE_EXTERNAL),
	}
}

func backendValue(a model.L4Addr) kpathLbBackend {
	return kpathLbBackend{Addr: addrToBPF(a.Addr), Port: portToBPF(a.Port), Proto: uint8(a.Proto)}
}

func backendFromValue(v kpathLbBackend) model.L4Addr {
	return model.L4Addr{Addr: addrFromBPF(v.Addr), Port: portFromBPF(v.Port), Proto: model.Protocol(v.Proto)}
}
