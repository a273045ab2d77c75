package flows

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"
)

// Filter selects flows, with Hubble's observe flags' meaning: every field
// set must match (AND); a list matches any of its values (OR).
type Filter struct {
	Pods     []string     `json:"pod,omitempty"`      // ns/pod (or pod, in Namespace or default) at either end
	FromPods []string     `json:"from_pod,omitempty"` // source
	ToPods   []string     `json:"to_pod,omitempty"`   // destination
	NS       []string     `json:"namespace,omitempty"`
	Verdicts []Verdict    `json:"verdict,omitempty"`
	Types    []string     `json:"type,omitempty"` // drop, policy-verdict, trace, translation (and our own: new, flags)
	Protos   []string     `json:"protocol,omitempty"`
	Ports    []uint16     `json:"port,omitempty"`    // either end
	IPs      []netip.Addr `json:"ip,omitempty"`      // either end
	Services []string     `json:"service,omitempty"` // ns/name
	Since    time.Time    `json:"since,omitzero"`
	Until    time.Time    `json:"until,omitzero"`
}

// podKey qualifies a bare pod name with the filter's namespace (or default).
func (f *Filter) podKey(p string) string {
	if strings.Contains(p, "/") {
		return p
	}
	ns := "default"
	if len(f.NS) == 1 {
		ns = f.NS[0]
	}
	return ns + "/" + p
}

// typeOf maps a flow to Hubble's event type names.
func typeOf(fl *Flow) []string {
	switch fl.Type {
	case "drop":
		if fl.Policy != nil {
			return []string{"drop", "policy-verdict"}
		}
		return []string{"drop"}
	case "new":
		return []string{"new", "policy-verdict", "trace"}
	case "translation":
		return []string{"translation", "trace"}
	}
	return []string{fl.Type, "trace"}
}

// Match reports whether fl passes the filter.
func (f *Filter) Match(fl *Flow) bool {
	src, dst := fl.Source.Name(), fl.Destination.Name()
	if len(f.Pods) > 0 && !slices.ContainsFunc(f.Pods, func(p string) bool { k := f.podKey(p); return k == src || k == dst }) {
		return false
	}
	if len(f.FromPods) > 0 && !slices.ContainsFunc(f.FromPods, func(p string) bool { return f.podKey(p) == src }) {
		return false
	}
	if len(f.ToPods) > 0 && !slices.ContainsFunc(f.ToPods, func(p string) bool { return f.podKey(p) == dst }) {
		return false
	}
	if len(f.NS) > 0 && len(f.Pods)+len(f.FromPods)+len(f.ToPods) == 0 &&
		!slices.Contains(f.NS, fl.Source.Namespace) && !slices.Contains(f.NS, fl.Destination.Namespace) {
		return false
	}
	if len(f.Verdicts) > 0 && !slices.Contains(f.Verdicts, fl.Verdict) {
		return false
	}
	if len(f.Types) > 0 && !slices.ContainsFunc(typeOf(fl), func(t string) bool { return slices.Contains(f.Types, t) }) {
		return false
	}
	if len(f.Protos) > 0 && !slices.ContainsFunc(f.Protos, func(p string) bool { return strings.EqualFold(p, fl.Proto) }) {
		return false
	}
	if len(f.Ports) > 0 && !slices.Contains(f.Ports, fl.Source.Port) && !slices.Contains(f.Ports, fl.Destination.Port) &&
		(fl.Service == nil || !slices.Contains(f.Ports, fl.Service.Frontend.Port())) {
		return false
	}
	if len(f.IPs) > 0 && !slices.Contains(f.IPs, fl.Source.IP) && !slices.Contains(f.IPs, fl.Destination.IP) &&
		(fl.Service == nil || !slices.Contains(f.IPs, fl.Service.Frontend.Addr())) {
		return false
	}
	if len(f.Services) > 0 && (fl.Service == nil || !slices.Contains(f.Services, fl.Service.Namespace+"/"+fl.Service.Name)) {
		return false
	}
	if !f.Since.IsZero() && fl.Time.Before(f.Since) {
		return false
	}
	if !f.Until.IsZero() && fl.Time.After(f.Until) {
		return false
	}
	return true
}

// Validate reports values no flow can have.
func (f *Filter) Validate() error {
	for _, v := range f.Verdicts {
		if v != Forwarded && v != Dropped && v != Translated {
			return fmt.Errorf("verdict %q: want FORWARDED, DROPPED or TRANSLATED", v)
		}
	}
	for _, t := range f.Types {
		if !slices.Contains([]string{"drop", "policy-verdict", "trace", "translation", "new", "flags", "end"}, t) {
			return fmt.Errorf("type %q: want drop, policy-verdict, trace or translation", t)
		}
	}
	return nil
}

// Compact is the one-line form kpath observe prints.
func (fl *Flow) Compact() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s: %s", fl.Time.Format("Jan 2 15:04:05.000"), fl.Node, endpointPort(fl.Source))
	if fl.Service != nil {
		svc := fl.Service.Frontend.String()
		if fl.Service.Name != "" {
			svc = fl.Service.Namespace + "/" + fl.Service.Name + " " + svc
		}
		fmt.Fprintf(&b, " -> [%s]", svc)
	}
	fmt.Fprintf(&b, " -> %s %s", endpointPort(fl.Destination), fl.Proto)
	if fl.TCPFlags != "" {
		fmt.Fprintf(&b, " (%s)", fl.TCPFlags)
	}
	fmt.Fprintf(&b, " %s %s", fl.Type, fl.Verdict)
	if fl.Type == "end" {
		fmt.Fprintf(&b, " after %s: %d packets / %d bytes out, %d / %d back", fl.Duration, fl.PacketsToDst, fl.BytesToDst, fl.PacketsToSrc, fl.BytesToSrc)
	}
	if fl.DropReason != "" {
		fmt.Fprintf(&b, " (%s)", fl.DropReason)
	}
	if p := fl.Policy; p != nil {
		dir := "egress"
		if p.Ingress {
			dir = "ingress"
		}
		switch {
		case p.Rule != "":
			fmt.Fprintf(&b, " %s allowed by %s", dir, p.Rule)
		case p.Match == "denied" && len(p.Policies) > 0:
			fmt.Fprintf(&b, " %s: isolated by %s, no rule allows", dir, strings.Join(p.Policies, ", "))
		case p.Match != "" && p.Match != "denied":
			fmt.Fprintf(&b, " %s %s", dir, p.Match)
		}
	}
	return b.String()
}

func endpointPort(e Endpoint) string {
	if e.Port == 0 {
		return e.Name()
	}
	if e.Pod != "" || e.Node != "" {
		return fmt.Sprintf("%s:%d", e.Name(), e.Port)
	}
	return netip.AddrPortFrom(e.IP, e.Port).String()
}
