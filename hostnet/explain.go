package hostnet

import (
	"fmt"
	"net/netip"
)

// Flow is a connection from this host that Explain follows through the
// rule block.
type Flow struct {
	Network string // "tcp" or "udp"
	Dst     netip.AddrPort
	UID     uint32 // the socket's owner
	Mark    uint32 // its fwmark (0 for an app; tunsocks' own sockets carry the mark)
	Iif     string // "" for a local socket; the input interface of a forwarded packet
}

// Verdict is where a flow goes.
type Verdict struct {
	Rule    *Rule  // the rule that decided; nil when none of tunsocks' did
	Outcome string // "proxied" (into the TUN), "direct" or "unreachable"
	Route   string // the route used, when direct
}

func (v Verdict) String() string {
	switch {
	case v.Rule == nil:
		return fmt.Sprintf("no tunsocks rule catches it: %s by the main table (%s)", v.Outcome, v.Route)
	case v.Outcome == "direct":
		return fmt.Sprintf("rule %s (%s): direct, route %s", v.Rule, v.Rule.Why, v.Route)
	}
	return fmt.Sprintf("rule %s (%s): %s", v.Rule, v.Rule.Why, v.Outcome)
}

// RouteLookup answers a lookup in the main table: the route's prefix and
// a description, or false when main has no route.
type RouteLookup func(dst netip.Addr) (netip.Prefix, string, bool)

// Explain follows f through the rules of s in the kernel's order (by
// priority, then as installed): which rule decides, and how. tunUp says
// whether the TUN, and so its table's route, exists.
func Explain(s *State, f Flow, main RouteLookup, tunUp bool) Verdict {
	fam := 4
	if f.Dst.Addr().Is6() && !f.Dst.Addr().Is4In6() {
		fam = 6
	}
	dst := f.Dst.Addr().Unmap()
	proto := 6
	if f.Network == "udp" {
		proto = 17
	}
	rules := make([]Rule, 0, len(s.Rules))
	for _, r := range s.Rules {
		if r.Family == fam {
			rules = append(rules, r)
		}
	}
	// Stable by priority: equal priorities keep their installed order.
	for i := 1; i < len(rules); i++ {
		for j := i; j > 0 && rules[j].Priority < rules[j-1].Priority; j-- {
			rules[j], rules[j-1] = rules[j-1], rules[j]
		}
	}
	for i := range rules {
		r := rules[i]
		if r.Mask != 0 && f.Mark&r.Mask != r.Mark {
			continue
		}
		if r.To.IsValid() && !r.To.Contains(dst) {
			continue
		}
		if r.Iif != "" && r.Iif != f.Iif && !(r.Iif == "lo" && f.Iif == "") {
			continue
		}
		if r.UIDs != nil && !r.UIDs.Contains(f.UID) {
			continue
		}
		if r.IPProto != 0 && r.IPProto != proto {
			continue
		}
		if r.DPort != 0 && r.DPort != f.Dst.Port() {
			continue
		}
		switch {
		case r.Action == ActionUnreachable:
			return Verdict{Rule: &r, Outcome: "unreachable"}
		case r.Table == mainTable:
			p, desc, ok := main(dst)
			if !ok || p.Bits() <= r.SuppressPrefixlen() {
				continue // no route, or one the rule suppresses: on to the next rule
			}
			return Verdict{Rule: &r, Outcome: "direct", Route: desc}
		default:
			if !tunUp {
				continue // the TUN is gone and its table empty
			}
			return Verdict{Rule: &r, Outcome: "proxied (into the TUN " + s.Tun + ")"}
		}
	}
	if _, desc, ok := main(dst); ok {
		return Verdict{Outcome: "direct", Route: desc}
	}
	return Verdict{Outcome: "unreachable", Route: "no route"}
}
