package flows

import (
	"encoding/json"
	"net/netip"
	"testing"
	"time"
)

func fuzzFlows() []Flow {
	pod := func(ip string, port uint16, ns, name string) Endpoint {
		return Endpoint{IP: netip.MustParseAddr(ip), Port: port, Namespace: ns, Pod: name}
	}
	return []Flow{
		{Time: time.Unix(100, 0), Type: "drop", Verdict: Dropped, DropReason: "policy denied", Proto: "TCP",
			Source: pod("10.0.1.2", 40000, "y", "b"), Destination: pod("10.0.0.2", 80, "x", "a"), Policy: &Policy{Ingress: true}},
		{Time: time.Unix(200, 0), Type: "translation", Verdict: Translated, Proto: "UDP",
			Source: pod("10.0.1.2", 40001, "y", "b"), Destination: pod("10.0.0.9", 53, "kube-system", "dns-1"),
			Service: &Service{Namespace: "kube-system", Name: "dns", Frontend: netip.MustParseAddrPort("10.96.0.10:53")}},
		{Time: time.Unix(300, 0), Type: "new", Verdict: Forwarded, Proto: "ICMP",
			Source: pod("10.0.2.7", 0, "z", "c"), Destination: Endpoint{IP: netip.MustParseAddr("192.168.200.11"), Node: "node-1"}},
	}
}

// FuzzFilter: any filter kpath observe (and the flow export) may be given
// is refused by Validate or evaluated without a panic; a filter of a flow's
// own fields (pod, namespace, verdict, type, protocol, port, address,
// service, time), as the flags name them, selects it.
func FuzzFilter(f *testing.F) {
	for _, s := range []string{`{"pod":["x/a"]}`, `{"verdict":["DROPPED"],"type":["policy-verdict"]}`,
		`{"namespace":["y"],"port":[53],"ip":["10.96.0.10"]}`, `{"service":["kube-system/dns"],"since":"1970-01-01T00:00:00Z"}`} {
		f.Add([]byte(s), uint16(0))
	}
	f.Add([]byte(nil), uint16(0x1ff))
	fls := fuzzFlows()
	f.Fuzz(func(t *testing.T, data []byte, mask uint16) {
		var flt Filter
		if json.Unmarshal(data, &flt) == nil && flt.Validate() == nil {
			for i := range fls {
				flt.Match(&fls[i])
			}
		}
		for i := range fls {
			fl := &fls[i]
			own := Filter{}
			bit := func(b int) bool { return mask&(1<<b) != 0 }
			if bit(0) && fl.Source.Pod != "" {
				own.FromPods = []string{fl.Source.Name()}
			}
			if bit(1) && fl.Destination.Pod != "" {
				own.Pods = []string{fl.Destination.Name()}
			}
			if bit(2) {
				own.Verdicts = []Verdict{fl.Verdict}
			}
			if bit(3) {
				own.Types = []string{typeOf(fl)[0]}
			}
			if bit(4) {
				own.Protos = []string{fl.Proto}
			}
			if bit(5) {
				own.Ports = []uint16{fl.Destination.Port}
			}
			if bit(6) {
				own.IPs = []netip.Addr{fl.Source.IP}
			}
			if bit(7) && fl.Service != nil {
				own.Services = []string{fl.Service.Namespace + "/" + fl.Service.Name}
			}
			if bit(8) {
				own.Since, own.Until = fl.Time, fl.Time
			}
			if err := own.Validate(); err != nil {
				t.Fatalf("filter %+v of flow %+v's own fields refused: %v", own, fl, err)
			}
			if !own.Match(fl) {
				t.Fatalf("filter %+v of its own fields does not select flow %+v", own, fl)
			}
		}
	})
}
