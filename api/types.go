package api

import (
	"context"
	"net/netip"
	"time"
)

// FlowTable is the router's table of open flows, the API's one source of
// what is flowing. Every method must be safe for concurrent use.
type FlowTable interface {
	// Flows returns a snapshot of the open flows, in any order.
	Flows() []Flow
	// Totals are the bytes moved up (app to destination) and down since
	// start, by open and finished flows alike. They never decrease.
	Totals() (up, down int64)
	// CloseFlow ends the open flow with this id the way a failure would:
	// a TCP app gets a reset, a UDP flow is closed. It reports whether
	// such a flow was open.
	CloseFlow(id string) bool
	// CloseAll ends every open flow and returns how many it ended.
	CloseAll() int
}

// Flow is one open flow as the API shows it.
type Flow struct {
	ID      string // unique for the process's life, uuid-shaped
	Network string // "tcp" or "udp"
	// The inbound it came through: Type is tun, wireguard, exec, gateway
	// or socks; "" when unknown.
	InType, InName, InUser string
	Src                    netip.AddrPort
	// Dst is where the app sent it; its address is invalid when the
	// flow was asked for by name (a SOCKS client's domain request).
	Dst    netip.AddrPort
	Host   string // the name behind Dst, when known
	FakeIP bool   // Dst was a fake IP answered by our DNS
	// Process is the executable's path and UID its user, when looked up
	// (only rules that need them make the lookup); UID is -1 when unknown.
	Process string
	UID     int
	PID     int // 0 when unknown
	// The rule that decided it: RuleType is the rule's keyword as written
	// (DOMAIN-SUFFIX, MATCH...), "" when no rule matched (the default);
	// RuleLine says it whole with its position and file:line, as explain
	// does.
	RuleType, RulePayload, RuleLine string
	Outbound                        string   // DIRECT or the proxy or chain name
	Chain                           []string // for a chain, its hops' names in dialing order
	// Target is the address the outbound was asked for (the name when Dst
	// was a fake IP); Remote the other end of the socket tunsocks dialed
	// (the upstream proxy, or for DIRECT the destination); Upstream the
	// proxy's address ("" for DIRECT and UDP).
	Target, Remote, Upstream string
	Start                    time.Time
	Up, Down                 int64 // bytes so far
}

// Proxies are the outbounds, for /proxies.
type Proxies interface {
	// Proxies lists the outbounds, DIRECT and REJECT included.
	Proxies() []Proxy
	// Delay makes a real HTTP GET of url through the named outbound and
	// returns how long the response headers took. It fails with an error
	// wrapping ErrNotFound for an unknown name.
	Delay(ctx context.Context, name, url string) (time.Duration, error)
}

// Proxy is one outbound.
type Proxy struct {
	Name string
	// Type as Clash names it: Direct, Reject, Socks5, Socks4, Http,
	// Relay (a chain), Selector.
	Type     string
	UDP      bool
	Server   string   // host:port of the upstream; "" for DIRECT and REJECT
	Chain    []string // a Relay's hops, in dialing order
	All      []string // a Selector's members
	Now      string   // a Selector's choice
	Flows    uint64   // flows it has carried since start
	Up, Down int64    // bytes it has carried since start
}

// Rules are the configured rules, for /rules.
type Rules interface {
	Rules() []Rule
}

// Rule is one configured rule.
type Rule struct {
	Index   int    // 0-based position
	Type    string // the keyword as written: DOMAIN-SUFFIX, RULE-SET, MATCH...
	Payload string
	Target  string // DIRECT, REJECT, REJECT-DROP or the proxy name
	Line    string // the rule as written
	Source  string // file:line
	Size    int    // a RULE-SET's entries; -1 otherwise
	Hits    uint64 // flows it decided since the config was loaded
	HitAt   time.Time
}

// Control is what the API may change, for /configs.
type Control interface {
	// Settings are what GET /configs reports.
	Settings() Settings
	// SetMode switches between ModeRule, ModeGlobal and ModeDirect for
	// new flows.
	SetMode(mode string) error
	// SelectGlobal picks the outbound ModeGlobal sends every flow to.
	SelectGlobal(name string) error
	// Reload re-reads the config file (path "" means the one in use) and
	// switches new flows to it; open flows keep their outbounds. A bad
	// config is refused with its file:line errors and the old one stays.
	Reload(ctx context.Context, path string) error
}

// Modes of /configs.
const (
	ModeRule   = "rule"
	ModeGlobal = "global"
	ModeDirect = "direct"
)

// Settings are the values GET /configs reports.
type Settings struct {
	Mode       string
	Global     string // the outbound of ModeGlobal
	ConfigPath string
	IPv6       bool
	TUN        TUNSettings
	DNS        DNSSettings
}

// TUNSettings describe the capture device.
type TUNSettings struct {
	Enable bool
	Device string
	Stack  string // gvisor or system, or which family has which (a family failed the system self-test)
	FD     int    // an adopted descriptor, else 0
}

// DNSSettings describe the fake-IP DNS.
type DNSSettings struct {
	Enable      bool
	FakeIPRange string
	Nameservers []string
}

// Explainer says why an open flow went where it went, for
// /connections/{id}/explain. The value is encoded as JSON as it is.
type Explainer interface {
	Explain(id string) (any, bool)
}
