// Package policy is the decision for a flow: which outbound carries it, and
// as which address. A Policy owns the compiled rules, the outbounds by
// name, the default outbound, the fake-IP pool and the real-name table, and
// answers every front door the same way: the router's flows from the TUN
// (and any other inbound), the SOCKS server's requests, the DNS server's
// choice between a fake and a real answer, and `tunsocks explain`.
//
// It builds nothing that touches the network; cmd builds the outbounds,
// the pool and the table and hands them in.
package policy

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sort"
	"strings"
	"time"

	"github.com/tunsocks/tunsocks/dns"
	"github.com/tunsocks/tunsocks/router"
	"github.com/tunsocks/tunsocks/rules"
)

// ProcessLookup finds the local process that owns a flow
// (procinfo.Finder.LookupOwner).
type ProcessLookup = router.ProcessLookup

// Config builds a Policy. Direct is required, and Default when there are no
// rules.
type Config struct {
	// Rules decide flows; nil or empty sends every flow to Default.
	Rules *rules.Ruleset
	// Outbounds are the proxies and chains the rules name.
	Outbounds map[string]router.Outbound
	// Direct is the DIRECT outbound.
	Direct router.Outbound
	// Default carries every flow when there are no rules.
	Default router.Outbound
	// Pool maps fake IPs back to names; nil when fake-IP DNS is off.
	Pool *dns.Pool
	// RealNames names real addresses DNS answered for a name; nil: none.
	RealNames *dns.RealNames
	// Process looks up the process behind a flow for PROCESS-NAME,
	// PROCESS-PATH and UID rules; nil: never.
	Process ProcessLookup
	// Nameservers are asked, through the proxy a name's rule picks, for
	// the real answers a proxied name needs (TXT, MX, SRV...).
	Nameservers []dns.Nameserver
	// ProxyDNSTimeout bounds one such exchange; 0 means 10 s.
	ProxyDNSTimeout time.Duration
	Logger          *slog.Logger
}

// Policy decides flows. It is immutable after New and safe for concurrent
// use.
type Policy struct {
	rs        *rules.Ruleset
	outbounds map[string]router.Outbound
	direct    router.Outbound
	def       router.Outbound
	pool      *dns.Pool
	names     *dns.RealNames
	process   ProcessLookup
	resolvers map[router.Outbound]dns.Resolver // DNS over TCP through each proxy
	hits      []router.RuleHits                // per rule, for the flows it decided
	log       *slog.Logger
}

// New checks cfg and returns a Policy.
func New(cfg Config) (*Policy, error) {
	if cfg.Direct == nil {
		return nil, errors.New("policy: Config.Direct is required")
	}
	p := &Policy{rs: cfg.Rules, outbounds: cfg.Outbounds, direct: cfg.Direct, def: cfg.Default,
		pool: cfg.Pool, names: cfg.RealNames, process: cfg.Process, log: cfg.Logger}
	if p.rs != nil && p.rs.Len() == 0 {
		p.rs = nil
	}
	if p.rs == nil && p.def == nil {
		return nil, errors.New("policy: no rules and no Config.Default: nothing says where flows go")
	}
	if p.rs != nil {
		p.hits = make([]router.RuleHits, p.rs.Len())
	}
	if p.log == nil {
		p.log = slog.New(slog.DiscardHandler)
	}
	if len(cfg.Nameservers) > 0 {
		timeout := cfg.ProxyDNSTimeout
		if timeout <= 0 {
			timeout = 10 * time.Second
		}
		p.resolvers = map[router.Outbound]dns.Resolver{}
		for _, out := range p.proxies() {
			p.resolvers[out] = dns.NewNameserversTCP(cfg.Nameservers, out.DialContext, timeout)
		}
	}
	return p, nil
}

// proxies are the outbounds other than DIRECT a decision can name.
func (p *Policy) proxies() []router.Outbound {
	var outs []router.Outbound
	for _, out := range p.outbounds {
		outs = append(outs, out)
	}
	if p.def != nil && p.def != p.direct {
		outs = append(outs, p.def)
	}
	return outs
}

// HasRules reports whether flows are decided by rules (else all take the
// default outbound).
func (p *Policy) HasRules() bool { return p.rs != nil }

// NeedsDomain reports whether a rule looks at the flow's name.
func (p *Policy) NeedsDomain() bool { return p.rs != nil && p.rs.NeedsDomain() }

// NameCouldMatter reports whether the name of the flow m to an address (a
// flow known by no name: m.Host is empty) could change its rule, so that
// sniffing it for its name is worth completing its handshake before its
// upstream is dialed (sniff: auto). See rules.Ruleset.NameCouldMatter.
func (p *Policy) NameCouldMatter(m *rules.Metadata) bool {
	return p.rs != nil && p.rs.NameCouldMatter(m, p.lookupProcess)
}

// Decide is the router's Decider.
func (p *Policy) Decide(m *rules.Metadata) router.Decision {
	d, _ := p.Match(m)
	return d
}

// Match decides m and says which rule matched (Index -1 when none did, or
// when there are no rules); explain prints both.
func (p *Policy) Match(m *rules.Metadata) (router.Decision, rules.Match) {
	if p.rs == nil {
		return router.Decision{Action: router.Proxy, Outbound: p.def, Rule: "default (no rules)"}, rules.Match{Index: -1}
	}
	mt := p.rs.Match(m, p.lookupProcess)
	d := router.Decision{Rule: mt.String(), Match: &mt}
	if mt.Index >= 0 {
		d.Hits = &p.hits[mt.Index]
	}
	switch mt.Action.Kind {
	case rules.Direct:
		d.Action, d.Outbound = router.Proxy, p.direct
	case rules.Reject:
		d.Action = router.Reject
	case rules.RejectDrop:
		d.Action = router.RejectDrop
	case rules.Proxy:
		d.Action, d.Outbound = router.Proxy, p.outbounds[mt.Action.Target]
		if d.Outbound == nil { // the config's validation rules it out
			d.Action = router.Reject
		}
	}
	return d, mt
}

// lookupProcess is the rules' lazy process lookup.
func (p *Policy) lookupProcess(m *rules.Metadata) (string, int, bool) {
	if p.process == nil || !m.Src.IsValid() {
		return "", -1, false // no socket to look up (a DNS name decision, explain)
	}
	o, err := p.process(m.Network, m.Src, m.Dst)
	if err != nil {
		p.log.Debug("process lookup failed", "src", m.Src, "err", err)
		return "", -1, false
	}
	if o.PID > 0 {
		m.PID = o.PID // the rules see path and uid; the flow record the pid too
	}
	return o.Path, o.UID, true
}

// ReverseHost returns the name a fake IP stands for.
func (p *Policy) ReverseHost(a netip.Addr) (string, bool) {
	if p.pool == nil {
		return "", false
	}
	return p.pool.Reverse(a)
}

// AcquireHost returns the name a fake IP stands for and holds the mapping
// for a flow (see dns.Pool.Acquire); each successful call needs one
// ReleaseHost.
func (p *Policy) AcquireHost(a netip.Addr) (string, bool) {
	if p.pool == nil {
		return "", false
	}
	return p.pool.Acquire(a)
}

// ReleaseHost ends a hold taken by AcquireHost.
func (p *Policy) ReleaseHost(a netip.Addr) {
	if p.pool != nil {
		p.pool.Release(a)
	}
}

// RealHost returns the name DNS last answered a real address for.
func (p *Policy) RealHost(a netip.Addr) (string, bool) { return p.names.Lookup(a) }

// nameDecision decides a name alone, as the DNS server must: TCP, no port,
// no source, no inbound.
func (p *Policy) nameDecision(host string) router.Decision {
	return p.Decide(&rules.Metadata{Network: "tcp", Host: host, UID: -1})
}

// DNSRoute is the DNS server's Decider: a name whose rule is DIRECT gets a
// real answer from the nameservers; every other name (proxied, rejected) a
// fake IP, so it is never resolved on this host.
func (p *Policy) DNSRoute(host string) dns.Route { return p.routeFor(p.nameDecision(host)) }

func (p *Policy) routeFor(d router.Decision) dns.Route {
	if d.Action == router.Proxy && d.Outbound == p.direct {
		return dns.RouteDirect
	}
	return dns.RouteFakeIP
}

// DNSResolver is the DNS server's ProxyFor: the nameservers asked through
// the proxy the name's rule picks (DNS over TCP through its CONNECT), for
// the queries a fake IP cannot answer (TXT, MX, SRV...). nil for a name
// that is rejected, or when no nameserver is configured: it gets SERVFAIL.
func (p *Policy) DNSResolver(host string) dns.Resolver { return p.resolverFor(p.nameDecision(host)) }

func (p *Policy) resolverFor(d router.Decision) dns.Resolver {
	if d.Action != router.Proxy {
		return nil
	}
	if r, ok := p.resolvers[d.Outbound]; ok {
		return r
	}
	return nil
}

// Direct is the DIRECT outbound.
func (p *Policy) Direct() router.Outbound { return p.direct }

// Default is the outbound of every flow when there are no rules; nil when
// rules decide and no default was given.
func (p *Policy) Default() router.Outbound { return p.def }

// Outbound returns the outbound of this name: DIRECT, a proxy or chain of
// the config, or the default's own name.
func (p *Policy) Outbound(name string) (router.Outbound, bool) {
	for _, o := range p.Outbounds() {
		if o.Name() == name {
			return o, true
		}
	}
	return nil, false
}

// Outbounds lists DIRECT, then the named proxies and chains in name order,
// then the default when it is none of those.
func (p *Policy) Outbounds() []router.Outbound {
	out := []router.Outbound{p.direct}
	names := make([]string, 0, len(p.outbounds))
	for n := range p.outbounds {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		out = append(out, p.outbounds[n])
	}
	if p.def != nil && p.def != p.direct && p.outbounds[p.def.Name()] != p.def {
		out = append(out, p.def)
	}
	return out
}

// RuleStat is a rule with the flows it decided since the policy was built.
type RuleStat struct {
	rules.Rule
	Hits    uint64
	LastHit time.Time // zero when none
}

// Rules lists the rules in order with their hits.
func (p *Policy) Rules() []RuleStat {
	rs := p.rs.Rules()
	out := make([]RuleStat, len(rs))
	for i, r := range rs {
		out[i].Rule = r
		out[i].Hits, out[i].LastHit = p.hits[i].Count()
	}
	return out
}

// Summary names what decides flows, for the startup line.
func (p *Policy) Summary() string {
	if p.rs == nil {
		return p.def.Name()
	}
	names := make([]string, 0, len(p.outbounds))
	for n := range p.outbounds {
		names = append(names, n)
	}
	sort.Strings(names)
	return fmt.Sprintf("%d rules over DIRECT, %s", p.rs.Len(), strings.Join(names, ", "))
}
