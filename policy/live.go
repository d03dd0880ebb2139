package policy

import (
	"fmt"
	"net/netip"
	"sync/atomic"

	"github.com/tunsocks/tunsocks/dns"
	"github.com/tunsocks/tunsocks/router"
	"github.com/tunsocks/tunsocks/rules"
)

// Mode is how Live decides: by the rules, everything through one
// outbound, or everything DIRECT (the Clash modes).
type Mode int32

// Modes.
const (
	ModeRule Mode = iota
	ModeGlobal
	ModeDirect
)

func (m Mode) String() string {
	switch m {
	case ModeGlobal:
		return "global"
	case ModeDirect:
		return "direct"
	}
	return "rule"
}

// ParseMode reads rule, global or direct.
func ParseMode(s string) (Mode, error) {
	switch s {
	case "rule":
		return ModeRule, nil
	case "global":
		return ModeGlobal, nil
	case "direct":
		return ModeDirect, nil
	}
	return 0, fmt.Errorf("mode %q: want rule, global or direct", s)
}

// Live is the policy in force, which a config reload replaces whole: each
// decision reads the current Policy once, so new flows get the new rules
// and outbounds while open flows keep the outbound they were given. On top
// of it sit the Clash modes. Its methods are the router's and the DNS
// server's hooks, in place of the Policy's. Safe for concurrent use.
type Live struct {
	p      atomic.Pointer[Policy]
	mode   atomic.Int32
	global atomic.Pointer[string] // the outbound of ModeGlobal, by name
}

// NewLive starts with p, in ModeRule.
func NewLive(p *Policy) *Live {
	l := &Live{}
	l.p.Store(p)
	return l
}

// Policy is the policy in force.
func (l *Live) Policy() *Policy { return l.p.Load() }

// Swap puts p in force for every decision from now on and returns the one
// it replaces.
func (l *Live) Swap(p *Policy) *Policy { return l.p.Swap(p) }

// Mode is the current mode.
func (l *Live) Mode() Mode { return Mode(l.mode.Load()) }

// SetMode changes the mode for new flows.
func (l *Live) SetMode(m Mode) { l.mode.Store(int32(m)) }

// SelectGlobal picks, by name, the outbound of ModeGlobal; it must be one
// of the current policy's Outbounds.
func (l *Live) SelectGlobal(name string) error {
	if _, ok := l.Policy().Outbound(name); !ok {
		return fmt.Errorf("no outbound named %q", name)
	}
	l.global.Store(&name)
	return nil
}

// Global is the outbound ModeGlobal sends flows to: the one selected, while
// the policy has it; else the default proxy; else the first proxy by name;
// else DIRECT.
func (l *Live) Global() router.Outbound { return l.globalOf(l.Policy()) }

func (l *Live) globalOf(p *Policy) router.Outbound {
	if n := l.global.Load(); n != nil {
		if o, ok := p.Outbound(*n); ok {
			return o
		}
	}
	if p.def != nil && p.def != p.direct {
		return p.def
	}
	if outs := p.Outbounds(); len(outs) > 1 {
		return outs[1]
	}
	return p.direct
}

// Decide is the router's Decider.
func (l *Live) Decide(m *rules.Metadata) router.Decision {
	d, _ := l.Match(m)
	return d
}

// Match decides m by the mode and the policy in force; outside ModeRule no
// rule matches (Index -1).
func (l *Live) Match(m *rules.Metadata) (router.Decision, rules.Match) {
	return l.match(l.Policy(), m)
}

func (l *Live) match(p *Policy, m *rules.Metadata) (router.Decision, rules.Match) {
	switch l.Mode() {
	case ModeGlobal:
		out := l.globalOf(p)
		return router.Decision{Action: router.Proxy, Outbound: out, Rule: "global mode: " + out.Name()}, rules.Match{Index: -1}
	case ModeDirect:
		return router.Decision{Action: router.Proxy, Outbound: p.direct, Rule: "direct mode"}, rules.Match{Index: -1}
	}
	return p.Match(m)
}

// ReverseHost is the policy's ReverseHost.
func (l *Live) ReverseHost(a netip.Addr) (string, bool) { return l.Policy().ReverseHost(a) }

// AcquireHost is the policy's AcquireHost (the fake-IP pool outlives
// reloads: a hold taken before one is released after it).
func (l *Live) AcquireHost(a netip.Addr) (string, bool) { return l.Policy().AcquireHost(a) }

// ReleaseHost is the policy's ReleaseHost.
func (l *Live) ReleaseHost(a netip.Addr) { l.Policy().ReleaseHost(a) }

// RealHost is the policy's RealHost.
func (l *Live) RealHost(a netip.Addr) (string, bool) { return l.Policy().RealHost(a) }

// DNSRoute is the DNS server's Decider, by the mode and the policy in
// force: a name that goes DIRECT gets a real answer, others a fake IP.
func (l *Live) DNSRoute(host string) dns.Route {
	p := l.Policy()
	d, _ := l.match(p, &rules.Metadata{Network: "tcp", Host: host, UID: -1})
	return p.routeFor(d)
}

// DNSResolver is the DNS server's ProxyFor, by the mode and the policy in
// force.
func (l *Live) DNSResolver(host string) dns.Resolver {
	p := l.Policy()
	d, _ := l.match(p, &rules.Metadata{Network: "tcp", Host: host, UID: -1})
	return p.resolverFor(d)
}
