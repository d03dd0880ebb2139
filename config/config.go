// Package config is the typed configuration of `tunsocks run`: a YAML file
// decoded once, at start-up, into netip, time and url types, and checked as a
// whole (proxy names, chains, rules) before anything starts.
//
// Every flag of `tunsocks run` has a key; the CLI overrides the file's values
// with the flags the user set explicitly. Errors name the file and line and
// say what would be right:
//
//	tunsocks.yaml:12: unknown key "proxie"; did you mean "proxies"?
//	tunsocks.yaml:7: tcp-idle "5x": want a duration like 30s or 5m
//	tunsocks.yaml:20: proxy "corp": scheme "sock5" is not supported; want socks5, socks4, socks4a or http
//
// The package is pure apart from reading the config file and the RULE-SET
// files its rules name.
package config

import (
	"fmt"
	"math"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/tunsocks/tunsocks/dns"
	"github.com/tunsocks/tunsocks/hostnet"
	"github.com/tunsocks/tunsocks/rules"
)

// Config is everything `tunsocks run` can be told. Parse and Load fill in
// the defaults (the same as the flags' defaults) for keys the file leaves
// out; Default returns them alone.
type Config struct {
	// Proxy is the default outbound: "direct", a proxy URL
	// (socks5://[user:pass@]host:port, socks5h://, socks4://, socks4a://,
	// http://), or the name of an entry in Proxies. "" when not set.
	Proxy string `yaml:"proxy"`
	// ProxyURL is Proxy parsed by Validate when it is a URL; nil when it
	// is direct, a name or not set.
	ProxyURL *url.URL `yaml:"-"`

	Tun TunConfig `yaml:"tun"`

	TCPIdle         time.Duration `yaml:"tcp-idle"`         // close TCP flows idle this long (> 0)
	UDPIdle         time.Duration `yaml:"udp-idle"`         // expire UDP flows idle this long (> 0)
	DNSIdle         time.Duration `yaml:"dns-idle"`         // expire UDP flows to port 53 idle this long (> 0)
	DialTimeout     time.Duration `yaml:"dial-timeout"`     // time to reach the upstream (> 0)
	SummaryInterval time.Duration `yaml:"summary-interval"` // one-line summary period; 0: never

	Fwmark       uint32 `yaml:"fwmark"`        // SO_MARK of tunsocks' own sockets; 0: none
	OutInterface string `yaml:"out-interface"` // SO_BINDTODEVICE of tunsocks' own sockets; "": none

	TCP TCPConfig `yaml:",inline"`

	Limits LimitsConfig `yaml:",inline"`

	Sniff SniffConfig `yaml:",inline"`

	// Proxies are the named upstreams rules can send flows to.
	Proxies []Proxy `yaml:"proxies"`

	// Rules are the lines of `rules:`, each with its own file and line.
	Rules []rules.Line `yaml:"rules"`

	DNS DNSConfig `yaml:"dns"`

	API APIConfig `yaml:"api"`

	// WireGuard, when set, runs the WireGuard inbound (phones join by QR
	// code); nil: off.
	WireGuard *WireGuardConfig `yaml:"wireguard"`

	Route RouteConfig `yaml:"route"`

	// Path is the file the config came from ("" when built in code). It
	// names the file in errors and is the base of relative RULE-SET paths.
	Path string `yaml:"-"`

	// Ruleset is Rules parsed by Validate; nil before a successful Validate.
	Ruleset *rules.Ruleset `yaml:"-"`

	// lines maps a key path ("tun.mtu", "dns.nameserver.2") to the line
	// that set it, for Validate's messages.
	lines map[string]int
}

// TunConfig is the `tun:` section.
type TunConfig struct {
	Name    string         `yaml:"name"`    // device to create or attach to
	FD      int            `yaml:"fd"`      // adopt this open descriptor; -1: none
	Addrs   []netip.Prefix `yaml:"addrs"`   // addresses of the device
	MTU     int            `yaml:"mtu"`     // 576..65535; 1280 or more with an IPv6 address
	Offload bool           `yaml:"offload"` // TSO/GRO offload on Linux
	Pcap    string         `yaml:"pcap"`    // write every packet to this pcap file; "": none
}

// TCPConfig is the netstack's TCP tuning (top-level keys tcp-sack,
// tcp-moderate-rcvbuf, tcp-buf, tcp-cc, tcp-stack and tcp-ack-delay).
type TCPConfig struct {
	SACK           *bool  `yaml:"tcp-sack"`            // nil: the netstack's default
	ModerateRcvbuf *bool  `yaml:"tcp-moderate-rcvbuf"` // nil: the netstack's default
	Buf            int    `yaml:"tcp-buf"`             // max send/receive buffer per flow, bytes; 0: default
	CC             string `yaml:"tcp-cc"`              // "cubic" or "reno"; "": default
	// Stack is who terminates the app's TCP: "gvisor" (the userspace
	// netstack) or "system" (the host kernel, through address
	// translation on the TUN); "": gvisor.
	Stack string `yaml:"tcp-stack"`
	// AckDelay is how long the netstack may hold a pure ACK toward the
	// app for a reply to carry it (see stack.TCPOptions.AckDelay); 0
	// turns the delay off.
	AckDelay time.Duration `yaml:"tcp-ack-delay"`
}

// LimitsConfig bounds what one app, device or flood can take (top-level
// keys max-memory, tcp-max-in-flight, tcp-max-in-flight-per-source,
// tcp-handshake-timeout, udp-max-flows, udp-max-flows-per-source,
// udp-flow-rate and udp-flow-rate-per-source). For every key but
// max-memory, 0 means the netstack's default (see package stack).
type LimitsConfig struct {
	// MaxMemory is the memory ceiling in bytes: near it new flows are
	// refused and the flows idle the longest closed (see
	// internal/memguard); 0 means none. Default DefaultMaxMemory.
	MaxMemory int64 `yaml:"max-memory"`
	// TCPMaxInFlight and TCPMaxInFlightPerSource bound the app's TCP
	// connection attempts in flight, in all and per app source address;
	// the oldest is shed at a bound.
	TCPMaxInFlight          int `yaml:"tcp-max-in-flight"`
	TCPMaxInFlightPerSource int `yaml:"tcp-max-in-flight-per-source"`
	// TCPHandshakeTimeout bounds how long an accepted attempt waits for
	// the app to complete its handshake.
	TCPHandshakeTimeout time.Duration `yaml:"tcp-handshake-timeout"`
	// UDPMaxFlows and UDPMaxFlowsPerSource bound the UDP flows open at
	// once, in all and per app source address; a new flow beyond either
	// closes the least recently active one.
	UDPMaxFlows          int `yaml:"udp-max-flows"`
	UDPMaxFlowsPerSource int `yaml:"udp-max-flows-per-source"`
	// UDPFlowRate and UDPFlowRatePerSource bound the new UDP flows a
	// second, in all and per app source address; datagrams that would
	// open more are dropped.
	UDPFlowRate          int `yaml:"udp-flow-rate"`
	UDPFlowRatePerSource int `yaml:"udp-flow-rate-per-source"`
}

// Proxy is one named upstream: either a URL or a chain of other proxies.
type Proxy struct {
	Name string `yaml:"name"`
	// URL is socks5://, socks5h://, socks4://, socks4a:// or http://, with
	// optional user:pass. Nil for a chain.
	URL *url.URL `yaml:"url"`
	// Chain names other proxies: [a, b] reaches b through a. Mutually
	// exclusive with URL.
	Chain []string `yaml:"chain"`
	// Line is where the entry starts in the config file; 0 when unknown.
	Line int `yaml:"-"`

	urlLine    int   // line of the url, when known
	decodeErr  bool  // url or chain did not decode (already reported)
	chainLines []int // line of each Chain member, when known
}

// RouteConfig is the `route:` section: how tunsocks routes the host (or
// devices behind it) into its TUN. The keys are the flags' names.
type RouteConfig struct {
	AutoRoute     bool               `yaml:"auto-route"`     // capture every app of this host
	KillSwitch    bool               `yaml:"kill-switch"`    // fail closed when tunsocks dies
	LANAccess     bool               `yaml:"lan-access"`     // non-default routes of main stay direct
	Exclude       []netip.Prefix     `yaml:"exclude"`        // destinations that go direct
	ExcludeUID    []hostnet.UIDRange `yaml:"exclude-uid"`    // users whose sockets go direct
	IncludeCgroup []string           `yaml:"include-cgroup"` // capture only these cgroups' sockets
	IncludeUID    []hostnet.UIDRange `yaml:"include-uid"`    // capture only these users' sockets
	DNSConfig     string             `yaml:"dns-config"`     // auto, resolved or none
	RulePriority  int                `yaml:"rule-priority"`  // first priority of the rule block
	RouteTable    int                `yaml:"route-table"`    // tunsocks' routing table
	Gateway       string             `yaml:"gateway"`        // capture what devices on this interface forward
}

// Route defaults.
const (
	DefaultRulePriority = 9100
	DefaultRouteTable   = 29811
	DefaultDNSConfig    = "auto"
)

// DNSConfig is the `dns:` section: the fake-IP responder.
type DNSConfig struct {
	// Enable turns the DNS responder on or off; nil leaves the choice to
	// the CLI.
	Enable *bool `yaml:"enable"`
	// Listen is an optional extra UDP listener, e.g. 127.0.0.1:5353.
	Listen string `yaml:"listen"`
	// FakeIPRange is the IPv4 fake-IP range (default 198.18.0.0/15).
	FakeIPRange netip.Prefix `yaml:"fake-ip-range"`
	// FakeIPRange6 is the IPv6 fake-IP range (default fc00::/18); the zero
	// Prefix (written "" in the file) disables IPv6 fake addresses.
	FakeIPRange6 netip.Prefix `yaml:"fake-ip-range6"`
	// FakeIPFilter are domain patterns that get real answers instead of
	// fake IPs: example.com, *.example.com, .example.com, +.example.com.
	FakeIPFilter []string `yaml:"fake-ip-filter"`
	// Nameservers are upstream resolvers: "10.0.0.53", "10.0.0.53:53",
	// "udp://1.1.1.1", "tcp://1.1.1.1:53", "[2606:4700::1111]:53".
	Nameservers []string `yaml:"nameserver"`
	// Servers are Nameservers parsed by Validate.
	Servers []dns.Nameserver `yaml:"-"`
	// Hijack answers every query to port 53, whatever its destination.
	Hijack bool `yaml:"dns-hijack"`
	// CacheFile persists the fake-IP mappings across restarts; "": none.
	CacheFile string `yaml:"cache-file"`
	// FakeIPTTL is the TTL of fake answers, 1s..1h (default 10s).
	FakeIPTTL time.Duration `yaml:"fake-ip-ttl"`
}

// APIConfig is the `api:` section: the Clash-compatible HTTP API, its
// page at /ui/ and /metrics.
type APIConfig struct {
	// Listen is the API's address, like 127.0.0.1:9090; "" turns it off.
	// An address other hosts can reach needs a Secret.
	Listen string `yaml:"listen"`
	// Secret is the Bearer token every request must carry ("" for none).
	Secret string `yaml:"secret"`
	// Metrics is an extra listener serving only /metrics, without the
	// secret, like 127.0.0.1:9091; "": /metrics on the API listener only.
	Metrics string `yaml:"metrics"`
	// AllowOrigins are the web origins whose pages may call the API, like
	// https://metacubex.github.io; empty: any (the secret guards it).
	AllowOrigins []string `yaml:"allow-origins"`
}

// Defaults, the same as the flags of `tunsocks run`.
const (
	DefaultTunName         = "tunsocks0"
	DefaultMTU             = 1500
	DefaultTCPIdle         = 10 * time.Minute
	DefaultUDPIdle         = 60 * time.Second
	DefaultDNSIdle         = 10 * time.Second
	DefaultDialTimeout     = 10 * time.Second
	DefaultSummaryInterval = 5 * time.Second
	DefaultTCPBuf          = 4 << 20
	DefaultTCPAckDelay     = 20 * time.Millisecond
	MaxTCPAckDelay         = 100 * time.Millisecond
	DefaultTCPCC           = "cubic"
	DefaultTCPStack        = "gvisor"
	DefaultFakeIPRange     = "198.18.0.0/15"
	DefaultFakeIPRange6    = "fc00::/18"
	DefaultFakeIPTTL       = 10 * time.Second
	// DefaultMaxMemory is a desktop's ceiling: far above what carrying a
	// busy desktop takes (tens of MiB), far below what would make the
	// machine swap.
	DefaultMaxMemory = 1 << 30
)

// Limits checked by Validate. MinMTU is what the netstack takes for IPv4
// (stack.MinMTU); a TUN with an IPv6 address needs MinMTU6 (the kernel and
// the netstack both refuse IPv6 below it).
const (
	MinMTU       = 576
	MinMTU6      = 1280
	MaxMTU       = 65535
	MinTCPBuf    = 64 << 10
	MaxTCPBuf    = 64 << 20
	MinFakeIPTTL = time.Second
	MaxFakeIPTTL = time.Hour
	// MinMaxMemory is the smallest memory ceiling: below it the runtime's
	// own needs would have flows refused.
	MinMaxMemory = 64 << 20
	maxFileSize  = 16 << 20 // largest config file Load reads
	maxErrors    = 20       // errors collected before giving up
	maxChain     = 32       // hops in one flattened chain
)

// Default returns a Config holding only the defaults.
func Default() *Config {
	sack, mod := true, true
	return &Config{
		Tun: TunConfig{
			Name:    DefaultTunName,
			FD:      -1,
			Addrs:   []netip.Prefix{netip.MustParsePrefix("198.18.0.1/15"), netip.MustParsePrefix("fc00::1/18")},
			MTU:     DefaultMTU,
			Offload: true,
		},
		TCPIdle:         DefaultTCPIdle,
		UDPIdle:         DefaultUDPIdle,
		DNSIdle:         DefaultDNSIdle,
		DialTimeout:     DefaultDialTimeout,
		SummaryInterval: DefaultSummaryInterval,
		TCP:             TCPConfig{SACK: &sack, ModerateRcvbuf: &mod, Buf: DefaultTCPBuf, CC: DefaultTCPCC, Stack: DefaultTCPStack, AckDelay: DefaultTCPAckDelay},
		Limits:          LimitsConfig{MaxMemory: DefaultMaxMemory},
		Sniff:           defaultSniff(),
		DNS: DNSConfig{
			FakeIPRange:  netip.MustParsePrefix(DefaultFakeIPRange),
			FakeIPRange6: netip.MustParsePrefix(DefaultFakeIPRange6),
			FakeIPTTL:    DefaultFakeIPTTL,
		},
		Route: RouteConfig{LANAccess: true, DNSConfig: DefaultDNSConfig, RulePriority: DefaultRulePriority, RouteTable: DefaultRouteTable},
	}
}

// Error is one problem with a config, at a place in its file.
type Error struct {
	File string // "" when the config was built in code
	Line int    // 0 when unknown
	Msg  string // what is wrong and what would be right
	Err  error  // the cause, if any
}

func (e *Error) Error() string {
	var s string
	switch {
	case e.File != "" && e.Line > 0:
		s = e.File + ":" + strconv.Itoa(e.Line) + ": "
	case e.File != "":
		s = e.File + ": "
	case e.Line > 0:
		s = "config:" + strconv.Itoa(e.Line) + ": "
	default:
		s = "config: "
	}
	return s + e.Msg
}

func (e *Error) Unwrap() error { return e.Err }

// Line returns the line of the file that set key (a path such as "tun.mtu",
// "tcp-idle" or "dns.nameserver.0"), or 0 when the file did not set it.
func (c *Config) Line(key string) int { return c.lines[key] }

func (c *Config) setLine(key string, line int) {
	if c.lines == nil {
		c.lines = map[string]int{}
	}
	c.lines[key] = line
}

// ParseSize parses a size in bytes: a whole number, or one with a binary
// unit, K, M, G or T, optionally written KiB, MiB, GiB or TiB ("512MiB",
// "1G"). "0" is 0.
func ParseSize(s string) (int64, error) {
	t := strings.TrimSpace(s)
	num := strings.TrimRight(t, "KMGTiBkmgtb")
	unit := strings.ToUpper(strings.TrimSpace(t[len(num):]))
	num = strings.ReplaceAll(strings.TrimSpace(num), "_", "")
	shift := 0
	switch unit {
	case "", "B":
	case "K", "KIB":
		shift = 10
	case "M", "MIB":
		shift = 20
	case "G", "GIB":
		shift = 30
	case "T", "TIB":
		shift = 40
	default:
		return 0, fmt.Errorf("size %q: want a number of bytes, or one with a unit like 512MiB or 1GiB", s)
	}
	n, err := strconv.ParseInt(num, 10, 64)
	if err != nil || n < 0 || n > math.MaxInt64>>shift {
		return 0, fmt.Errorf("size %q: want a number of bytes, or one with a unit like 512MiB or 1GiB", s)
	}
	return n << shift, nil
}
