package agent

import (
	"testing"

	"github.com/kpath/kpath/internal/model"
)

func TestParsePortProto(t *testing.T) {
	for _, c := range []struct {
		in    string
		proto model.Protocol
		port  uint16
		bad   bool
	}{
		{in: "80/TCP", proto: model.TCP, port: 80},
		{in: "53/udp", proto: model.UDP, port: 53},
		{in: "9000/SCTP", proto: model.SCTP, port: 9000},
		{in: "8080", proto: model.TCP, port: 8080},
		{in: "icmp", proto: 1},
		{in: "0/TCP", bad: true},
		{in: "65536/TCP", bad: true},
		{in: "80/ICMP", bad: true},
		{in: "http", bad: true},
		{in: "", bad: true},
	} {
		proto, port, err := ParsePortProto(c.in)
		if c.bad != (err != nil) || !c.bad && (proto != c.proto || port != c.port) {
			t.Errorf("ParsePortProto(%q) = %v, %d, %v", c.in, proto, port, err)
		}
	}
	for _, s := range []string{"ns/pod", "a/b"} {
		if _, ok := parsePodKey(s); !ok {
			t.Errorf("parsePodKey(%q) refused", s)
		}
	}
	for _, s := range []string{"pod", "/pod", "ns/", ""} {
		if _, ok := parsePodKey(s); ok {
			t.Errorf("parsePodKey(%q) accepted", s)
		}
	}
}
