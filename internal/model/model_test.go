package model

import (
	"net/netip"
	"strings"
	"testing"
	"time"
)

func TestParseL4Addr(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want string
		err  string
	}{
		{"10.96.0.10:80", "10.96.0.10:80/TCP", ""},
		{"10.96.0.10:53/udp", "10.96.0.10:53/UDP", ""},
		{"10.96.0.10:80/SCTP", "", "want TCP or UDP"},
		{"10.96.0.10", "", "ADDR:PORT"},
		{"[::1]:80", "", "only IPv4"},
		{"0.0.0.0:80", "", "unspecified"},
		{"10.96.0.10:0", "", "port 0"},
	} {
		got, err := ParseL4Addr(tc.in, TCP)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("ParseL4Addr(%q) error = %v, want one containing %q", tc.in, err, tc.err)
			}
			continue
		}
		if err != nil || got.String() != tc.want {
			t.Errorf("ParseL4Addr(%q) = %s, %v; want %s", tc.in, got, err, tc.want)
		}
	}
}

func TestServiceValidate(t *testing.T) {
	fe := L4Addr{Addr: netip.MustParseAddr("10.96.0.1"), Port: 80, Proto: TCP}
	be := L4Addr{Addr: netip.MustParseAddr("10.244.0.1"), Port: 8080, Proto: TCP}
	ok := Service{Frontend: fe, Backends: []L4Addr{be}, Affinity: time.Hour}
	if err := ok.Validate(); err != nil {
		t.Fatal(err)
	}
	udp := be
	udp.Proto = UDP
	for name, s := range map[string]Service{
		"duplicate backend":   {Frontend: fe, Backends: []L4Addr{be, be}},
		"mixed protocols":     {Frontend: fe, Backends: []L4Addr{udp}},
		"affinity too long":   {Frontend: fe, Affinity: 25 * time.Hour},
		"affinity below 1s":   {Frontend: fe, Affinity: time.Millisecond},
		"frontend without IP": {Frontend: L4Addr{Port: 80, Proto: TCP}},
	} {
		if err := s.Validate(); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if _, err := ParseSelection("roundrobin"); err == nil {
		t.Error("ParseSelection accepted roundrobin")
	}
}
