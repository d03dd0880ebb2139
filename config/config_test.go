package config

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tunsocks/tunsocks/dns"
	"github.com/tunsocks/tunsocks/hostnet"
	"github.com/tunsocks/tunsocks/internal/testenv"
	"github.com/tunsocks/tunsocks/rules"
)

const file = "tunsocks.yaml"

func mustParse(t *testing.T, src string) *Config {
	t.Helper()
	c, err := Parse([]byte(src), file)
	if err != nil {
		t.Fatalf("Parse:\n%s\nerror: %v", src, err)
	}
	return c
}

func TestExample(t *testing.T) {
	c := mustParse(t, Example())
	if c.Ruleset == nil || c.Ruleset.Len() != 7 {
		t.Fatalf("Ruleset = %v, want 7 rules", c.Ruleset)
	}
	if c.Proxy != "corp" || len(c.Proxies) != 4 {
		t.Fatalf("Proxy %q, %d proxies", c.Proxy, len(c.Proxies))
	}
	hops, err := c.Hops("corp-via-jump")
	if err != nil || len(hops) != 2 || hops[0].Scheme != "socks4a" || hops[1].Host != "10.0.0.1:1080" {
		t.Fatalf("Hops(corp-via-jump) = %v, %v", hops, err)
	}
	m := c.Ruleset.Match(&rules.Metadata{Network: "tcp", Host: "git.internal.example.com", Dst: netip.MustParseAddrPort("198.18.0.5:443"), UID: -1}, nil)
	wantLine := 1 + strings.Count(Example()[:strings.Index(Example(), "- DOMAIN-SUFFIX,internal")], "\n")
	if want := file + ":" + strconv.Itoa(wantLine); m.Action.Target != "corp" || m.Source != want {
		t.Fatalf("match = %v (source %q), want corp from %s", m, m.Source, want)
	}
	// The example shows the defaults: apart from what it sets on purpose,
	// it decodes to Default().
	want := Default()
	want.Path, want.Proxy, want.Proxies, want.Rules, want.Ruleset = c.Path, c.Proxy, c.Proxies, c.Rules, c.Ruleset
	want.DNS.FakeIPFilter, want.DNS.Nameservers = c.DNS.FakeIPFilter, c.DNS.Nameservers
	want.DNS.Servers = c.DNS.Servers // parsed from Nameservers: see TestTypedValues
	want.lines = c.lines
	if !reflect.DeepEqual(c, want) {
		t.Fatalf("example differs from the defaults:\n got %+v\nwant %+v", c, want)
	}
}

// TestTypedValues: Validate parses the nameservers and a proxy URL once,
// into the types the rest of the program uses, and clears them when the
// config is bad.
func TestTypedValues(t *testing.T) {
	c := mustParse(t, "proxy: 'socks5://u:p@10.0.0.1:1080'\ndns:\n  nameserver: [10.0.0.53, 'tcp://[2001:db8::53]:5353', 'udp://1.1.1.1']\n")
	want := []dns.Nameserver{
		{Network: "udp", Addr: netip.MustParseAddrPort("10.0.0.53:53")},
		{Network: "tcp", Addr: netip.MustParseAddrPort("[2001:db8::53]:5353")},
		{Network: "udp", Addr: netip.MustParseAddrPort("1.1.1.1:53")},
	}
	if !reflect.DeepEqual(c.DNS.Servers, want) {
		t.Errorf("Servers = %v, want %v", c.DNS.Servers, want)
	}
	if c.ProxyURL == nil || c.ProxyURL.Scheme != "socks5" || c.ProxyURL.Host != "10.0.0.1:1080" || c.ProxyURL.User.Username() != "u" {
		t.Errorf("ProxyURL = %v", c.ProxyURL)
	}
	for _, src := range []string{"proxy: direct", "proxy: corp\nproxies: [{name: corp, url: 'socks5://h'}]", ""} {
		if c := mustParse(t, src); c.ProxyURL != nil {
			t.Errorf("%q: ProxyURL = %v, want none", src, c.ProxyURL)
		}
	}
	c.TCP.CC = "vegas"
	if err := c.Validate(); err == nil || c.ProxyURL != nil || c.DNS.Servers != nil || c.Ruleset != nil {
		t.Errorf("after a failed Validate: %v, ProxyURL %v, Servers %v", err, c.ProxyURL, c.DNS.Servers)
	}
}

// TestOverridesValidatedOnce: overrides (the flags) apply between decoding
// and the one Validate, and their errors join the file's.
func TestOverridesValidatedOnce(t *testing.T) {
	dir := t.TempDir()
	set := filepath.Join(dir, "set.txt")
	if err := os.WriteFile(set, []byte("example.com\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "c.yaml")
	if err := os.WriteFile(path, []byte("tcp-cc: reno\nrules:\n  - RULE-SET,set.txt,DIRECT\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := Load(path, func(c *Config) error { c.TCP.CC = "cubic"; return nil })
	if err != nil || c.TCP.CC != "cubic" || c.Ruleset == nil {
		t.Fatalf("Load with an override: %v, %+v", err, c)
	}
	_, err = Load(path, func(c *Config) error { c.TCP.CC = "vegas"; return nil }, func(*Config) error { return errors.New("--tun-addr: bad") })
	if err == nil || !strings.Contains(err.Error(), "--tun-addr: bad") || !strings.Contains(err.Error(), `tcp-cc "vegas"`) {
		t.Errorf("errors of overrides and validation: %v", err)
	}
}

func TestDefaults(t *testing.T) {
	for _, src := range []string{"", "# only a comment\n", "---\n", "{}\n"} {
		c := mustParse(t, src)
		want := Default()
		want.Path = file
		if !reflect.DeepEqual(c, want) {
			t.Errorf("Parse(%q) = %+v, want the defaults %+v", src, c, want)
		}
	}
	d := Default()
	if d.Tun.Name != "tunsocks0" || d.Tun.FD != -1 || d.Tun.MTU != 1500 || !d.Tun.Offload || len(d.Tun.Addrs) != 2 ||
		d.TCPIdle != 10*time.Minute || d.UDPIdle != time.Minute || d.DNSIdle != 10*time.Second ||
		d.DialTimeout != 10*time.Second || d.SummaryInterval != 5*time.Second ||
		!*d.TCP.SACK || !*d.TCP.ModerateRcvbuf || d.TCP.Buf != 4<<20 || d.TCP.CC != "cubic" ||
		d.DNS.FakeIPRange.String() != "198.18.0.0/15" || d.DNS.FakeIPRange6.String() != "fc00::/18" ||
		d.DNS.FakeIPTTL != 10*time.Second || d.DNS.Enable != nil {
		t.Fatalf("Default() = %+v", d)
	}
	if err := d.Validate(); err != nil {
		t.Fatalf("Default().Validate() = %v", err)
	}
	// Default returns fresh values each time.
	*d.TCP.SACK = false
	if !*Default().TCP.SACK {
		t.Fatal("Default shares its *bool between calls")
	}
}

func TestKeys(t *testing.T) {
	pfx := netip.MustParsePrefix
	tests := []struct {
		src   string
		check func(c *Config) bool
	}{
		{"proxy: direct", func(c *Config) bool { return c.Proxy == "direct" }},
		{"proxy: socks5://u:p@10.0.0.1:1080", func(c *Config) bool { return c.Proxy == "socks5://u:p@10.0.0.1:1080" }},
		{"proxy: http://127.0.0.1:8080", func(c *Config) bool { return c.Proxy == "http://127.0.0.1:8080" }},
		{"proxy: a\nproxies: [{name: a, url: 'socks4://h:1'}]", func(c *Config) bool { return c.Proxy == "a" }},
		{"tun: {name: tun7}", func(c *Config) bool { return c.Tun.Name == "tun7" }},
		{"tun: {fd: 3}", func(c *Config) bool { return c.Tun.FD == 3 }},
		{"tun:\n  addrs:\n    - 10.9.0.1/24\n    - fd00::1/64", func(c *Config) bool {
			return reflect.DeepEqual(c.Tun.Addrs, []netip.Prefix{pfx("10.9.0.1/24"), pfx("fd00::1/64")}) && c.Line("tun.addrs.1") == 4
		}},
		{"tun: {addrs: 10.9.0.1/24}", func(c *Config) bool { return reflect.DeepEqual(c.Tun.Addrs, []netip.Prefix{pfx("10.9.0.1/24")}) }},
		{"tun: {mtu: 9000}", func(c *Config) bool { return c.Tun.MTU == 9000 }},
		// Below 1280 an IPv4-only device is fine.
		{"tun: {mtu: 576, addrs: [198.18.0.1/15]}", func(c *Config) bool { return c.Tun.MTU == 576 }},
		{"tun: {offload: false}", func(c *Config) bool { return !c.Tun.Offload }},
		{"tun: {offload: off}", func(c *Config) bool { return !c.Tun.Offload }},
		{"tun: {pcap: /tmp/x.pcap}", func(c *Config) bool { return c.Tun.Pcap == "/tmp/x.pcap" }},
		{"tcp-idle: 30s", func(c *Config) bool { return c.TCPIdle == 30*time.Second && c.Line("tcp-idle") == 1 }},
		{"udp-idle: 2m", func(c *Config) bool { return c.UDPIdle == 2*time.Minute }},
		{"dns-idle: 1500ms", func(c *Config) bool { return c.DNSIdle == 1500*time.Millisecond }},
		{"dial-timeout: 1h30m", func(c *Config) bool { return c.DialTimeout == 90*time.Minute }},
		{"summary-interval: 0", func(c *Config) bool { return c.SummaryInterval == 0 }},
		{"fwmark: 0x2a", func(c *Config) bool { return c.Fwmark == 42 }},
		{"fwmark: 4294967295", func(c *Config) bool { return c.Fwmark == 1<<32-1 }},
		{"out-interface: eth1", func(c *Config) bool { return c.OutInterface == "eth1" }},
		{"tcp-sack: false", func(c *Config) bool { return !*c.TCP.SACK }},
		{"tcp-moderate-rcvbuf: false", func(c *Config) bool { return !*c.TCP.ModerateRcvbuf }},
		{"tcp-buf: 1_048_576", func(c *Config) bool { return c.TCP.Buf == 1<<20 }},
		{"tcp-cc: reno", func(c *Config) bool { return c.TCP.CC == "reno" }},
		{"tcp-stack: system", func(c *Config) bool { return c.TCP.Stack == "system" }},
		{"tcp-ack-delay: 1ms", func(c *Config) bool { return c.TCP.AckDelay == time.Millisecond }},
		{"tcp-ack-delay: 0s", func(c *Config) bool { return c.TCP.AckDelay == 0 }},
		{"max-memory: 512MiB", func(c *Config) bool { return c.Limits.MaxMemory == 512<<20 && c.Line("max-memory") == 1 }},
		{"max-memory: 2G", func(c *Config) bool { return c.Limits.MaxMemory == 2<<30 }},
		{"max-memory: 0", func(c *Config) bool { return c.Limits.MaxMemory == 0 }},
		{"max-memory: 134217728", func(c *Config) bool { return c.Limits.MaxMemory == 128<<20 }},
		{"tcp-max-in-flight: 64\ntcp-max-in-flight-per-source: 16\ntcp-handshake-timeout: 2s", func(c *Config) bool {
			return c.Limits.TCPMaxInFlight == 64 && c.Limits.TCPMaxInFlightPerSource == 16 && c.Limits.TCPHandshakeTimeout == 2*time.Second
		}},
		{"udp-max-flows: 100\nudp-max-flows-per-source: 10\nudp-flow-rate: 50\nudp-flow-rate-per-source: 5", func(c *Config) bool {
			l := c.Limits
			return l.UDPMaxFlows == 100 && l.UDPMaxFlowsPerSource == 10 && l.UDPFlowRate == 50 && l.UDPFlowRatePerSource == 5
		}},
		{"proxies:\n  - name: a\n    url: socks5h://h\n  - name: b\n    chain: [a]", func(c *Config) bool {
			return len(c.Proxies) == 2 && c.Proxies[0].URL.Scheme == "socks5h" && c.Proxies[0].Line == 2 &&
				reflect.DeepEqual(c.Proxies[1].Chain, []string{"a"}) && c.Proxies[1].Line == 4
		}},
		{"rules:\n  - MATCH,DIRECT", func(c *Config) bool {
			return reflect.DeepEqual(c.Rules, []rules.Line{{Text: "MATCH,DIRECT", File: file, Line: 2}}) && c.Ruleset.Len() == 1
		}},
		{"rules: ['DOMAIN,a.com,DIRECT']", func(c *Config) bool { return len(c.Rules) == 1 && c.Ruleset != nil }},
		{"rules:", func(c *Config) bool { return len(c.Rules) == 0 && c.Ruleset == nil }},
		{"api: {listen: '127.0.0.1:9090'}", func(c *Config) bool { return c.API.Listen == "127.0.0.1:9090" && c.API.Secret == "" }},
		{"api: {listen: 'localhost:9090', metrics: ':9091'}", func(c *Config) bool { return c.API.Metrics == ":9091" }},
		{"api: {listen: '0.0.0.0:9090', secret: 'a&b'}", func(c *Config) bool { return c.API.Secret == "a&b" }},
		{"api: {listen: '[::1]:0', allow-origins: ['https://metacubex.github.io', '*']}", func(c *Config) bool {
			return reflect.DeepEqual(c.API.AllowOrigins, []string{"https://metacubex.github.io", "*"})
		}},
		{"dns: {enable: true}", func(c *Config) bool { return c.DNS.Enable != nil && *c.DNS.Enable }},
		{"dns: {enable: false}", func(c *Config) bool { return c.DNS.Enable != nil && !*c.DNS.Enable }},
		{"dns: {listen: '127.0.0.1:5353'}", func(c *Config) bool { return c.DNS.Listen == "127.0.0.1:5353" }},
		{"dns: {listen: '[::1]:53'}", func(c *Config) bool { return c.DNS.Listen == "[::1]:53" }},
		{"dns: {fake-ip-range: 100.64.0.0/10}", func(c *Config) bool { return c.DNS.FakeIPRange == pfx("100.64.0.0/10") }},
		{"dns: {fake-ip-range6: 'fd00:1::/64'}", func(c *Config) bool { return c.DNS.FakeIPRange6 == pfx("fd00:1::/64") }},
		{"dns: {fake-ip-range6: ''}", func(c *Config) bool { return !c.DNS.FakeIPRange6.IsValid() }},
		{"dns: {fake-ip-range6: }", func(c *Config) bool { return !c.DNS.FakeIPRange6.IsValid() }},
		{"dns: {fake-ip-filter: [+.lan, '*.local', .corp]}", func(c *Config) bool {
			return reflect.DeepEqual(c.DNS.FakeIPFilter, []string{"+.lan", "*.local", ".corp"})
		}},
		{"dns: {nameserver: ['10.0.0.53:53', 'udp://1.1.1.1', 'tcp://1.1.1.1:53', '::1']}", func(c *Config) bool {
			return len(c.DNS.Nameservers) == 4
		}},
		{"dns: {dns-hijack: true}", func(c *Config) bool { return c.DNS.Hijack }},
		{"dns: {cache-file: /var/lib/tunsocks/fakeip}", func(c *Config) bool { return c.DNS.CacheFile == "/var/lib/tunsocks/fakeip" }},
		{"dns: {fake-ip-ttl: 1m}", func(c *Config) bool { return c.DNS.FakeIPTTL == time.Minute }},
		{"route: {auto-route: true, kill-switch: yes, lan-access: false}", func(c *Config) bool {
			return c.Route.AutoRoute && c.Route.KillSwitch && !c.Route.LANAccess
		}},
		{"route: {exclude: [10.1.2.3/8, '2001:db8::/32']}", func(c *Config) bool {
			return reflect.DeepEqual(c.Route.Exclude, []netip.Prefix{pfx("10.0.0.0/8"), pfx("2001:db8::/32")})
		}},
		{"route: {auto-route: true, exclude-uid: ['1000', '2000-2999'], include-uid: [0]}", func(c *Config) bool {
			return reflect.DeepEqual(c.Route.ExcludeUID, []hostnet.UIDRange{{Start: 1000, End: 1000}, {Start: 2000, End: 2999}}) && reflect.DeepEqual(c.Route.IncludeUID, []hostnet.UIDRange{{Start: 0, End: 0}})
		}},
		{"route: {auto-route: true, include-cgroup: [/user.slice/a.scope]}", func(c *Config) bool {
			return reflect.DeepEqual(c.Route.IncludeCgroup, []string{"/user.slice/a.scope"})
		}},
		{"route: {dns-config: resolved, rule-priority: 500, route-table: 77, gateway: eth1}", func(c *Config) bool {
			return c.Route.DNSConfig == "resolved" && c.Route.RulePriority == 500 && c.Route.RouteTable == 77 && c.Route.Gateway == "eth1"
		}},
		// Anchors and aliases work.
		{"x-common: &d 42s\n", nil},
		{"tcp-idle: &d 42s\nudp-idle: *d", func(c *Config) bool { return c.UDPIdle == 42*time.Second }},
	}
	for _, tt := range tests {
		if tt.check == nil {
			continue // documents that unknown keys are errors (see TestErrors)
		}
		c := mustParse(t, tt.src)
		if !tt.check(c) {
			t.Errorf("Parse(%q): unexpected result %+v", tt.src, c)
		}
	}
}

func TestErrors(t *testing.T) {
	tests := []struct {
		src  string
		want []string // each must appear in the error text
	}{
		// YAML and structure.
		{"proxy: [", []string{file + ":1: YAML syntax:"}},
		{"a: 1\nb: 2\nc 2\nd: 3\n", []string{file + ":3: YAML syntax:"}},
		{"- 1\n- 2", []string{file + ":1: the file must be a mapping"}},
		{"proxy: direct\n---\nproxy: direct", []string{file + ":2: a second YAML document"}},
		{"proxie: x", []string{file + `:1: unknown key "proxie"; did you mean "proxies"?`}},
		{"zzzzzzzz: 1", []string{file + `:1: unknown key "zzzzzzzz"; known keys: api, dial-timeout, dns,`}},
		{"\nmtu: 1400", []string{file + `:2: unknown key "mtu"; write it under tun: as "mtu"`}},
		{"proxy-groups: []", []string{file + `:1: unknown key "proxy-groups"; proxy groups are not supported`}},
		{"tcp-idle: 1s\ntcp-idle: 2s", []string{file + `:2: key "tcp-idle" repeated (first at line 1)`}},
		{"base: &b {name: t}\ntun:\n  <<: *b", []string{file + `:1: unknown key "base"`, file + ":3: merge keys (<<) are not supported"}},
		{"? [a]\n: 1", []string{file + ":1: top level: a key must be a plain name"}},
		// Values.
		{"proxy: [a]", []string{file + ":1: proxy: want a string, not a list"}},
		{"max-memory: lots", []string{file + `:1: max-memory "lots": want a size like 512MiB or 1GiB, or 0 for none`}},
		{"max-memory: 1MB", []string{file + `:1: max-memory "1MB": want a size`}},
		{"max-memory: 1MiB", []string{file + ":1: max-memory 1048576 bytes: want at least 64MiB, or 0 for none"}},
		{"udp-max-flows: -1", []string{file + ":1: udp-max-flows -1: want 0 to"}},
		{"udp-max-flows: 10\nudp-max-flows-per-source: 20", []string{file + ":2: udp-max-flows-per-source 20 exceeds udp-max-flows 10"}},
		{"tcp-handshake-timeout: -1s", []string{file + ":1: tcp-handshake-timeout -1s: want a positive duration"}},
		{"proxy:", []string{file + ":1: proxy has no value"}},
		{"tun: 3", []string{file + ":1: tun: want a mapping of keys, not a single value"}},
		{"tun:\n  nme: x", []string{file + `:2: unknown key "nme" in tun; did you mean "name"?`}},
		{"tun:\n  address: 10.0.0.1/8", []string{file + `:2: unknown key "address" in tun; did you mean "addrs"? it is a list`}},
		{"tun: {name: abcdefghijklmnopq}", []string{file + `:1: tun.name "abcdefghijklmnopq": longer than 15 bytes`}},
		{"tun: {name: ''}", []string{file + ":1: tun.name is empty"}},
		{"tun: {fd: -2}", []string{file + ":1: tun.fd -2: want -1 to"}},
		{"tun: {fd: x}", []string{file + `:1: tun.fd "x": want a whole number`}},
		{"tun:\n  addrs:\n    - 10.0.0.1\n    - bogus", []string{
			file + `:3: tun.addrs "10.0.0.1": want the address with its prefix length, like 10.0.0.1/32`,
			file + `:4: tun.addrs "bogus": want an address with prefix length`}},
		{"tun: {addrs: {a: 1}}", []string{file + ":1: tun.addrs: want a list of"}},
		{"tun: {mtu: 99999}", []string{file + ":1: tun.mtu 99999: want 576 to 65535"}},
		{"tun: {mtu: 1e3}", []string{file + `:1: tun.mtu "1e3": want a whole number`}},
		{"tun: {mtu: 99999999999999999999}", []string{file + ":1: tun.mtu 99999999999999999999: want 576 to 65535"}},
		{"tun: {mtu: 576}", []string{file + ":1: tun.mtu 576: IPv6 needs an MTU of at least 1280, and tun.addrs has fc00::1/18"}},
		{"tun: {offload: maybe}", []string{file + `:1: tun.offload "maybe": want true or false`}},
		{"\n\n\n\n\n\ntcp-idle: 5x", []string{file + `:7: tcp-idle "5x": want a duration like 30s or 5m`}},
		{"tcp-idle: 30", []string{file + ":1: tcp-idle 30: want a duration with a unit, like 30s or 5m"}},
		{"udp-idle: 0s", []string{file + ":1: udp-idle 0s: want a positive duration"}},
		{"dns-idle: -1s", []string{file + ":1: dns-idle -1s: want a positive duration"}},
		{"dial-timeout: 0s", []string{file + ":1: dial-timeout 0s: want a positive duration"}},
		{"summary-interval: -5s", []string{file + ":1: summary-interval -5s: want a duration like 5s, or 0 for never"}},
		{"fwmark: 4294967296", []string{file + ":1: fwmark 4294967296: want 0 to 4294967295"}},
		{"route: {exclude: [10.0.0.300/8]}", []string{file + `:1: route.exclude "10.0.0.300/8": want a CIDR like 10.0.0.0/8`}},
		{"route:\n  exclude-uid: [5-3]", []string{file + `:2: route.exclude-uid: uid range "5-3": want N or N-M with N <= M`}},
		{"route: {dns-config: systemd}", []string{file + `:1: route.dns-config "systemd": want auto, resolved or none`}},
		{"route: {route-table: 254}", []string{file + ":1: route.route-table 254: that is a table of the system"}},
		{"route: {rule-priority: 32766}", []string{file + ":1: route.rule-priority 32766: want 1 to 32756"}},
		{"route:\n  include-uid: [1000]", []string{file + ":2: route.include-cgroup and route.include-uid choose what auto-route captures: set route.auto-route: true"}},
		{"route: {strict-route: true}", []string{file + `:1: unknown key "strict-route" in route; tunsocks' strict route is "kill-switch: true"`}},
		{"fwmark: -1", []string{file + ":1: fwmark -1: want 0 to 4294967295"}},
		{"out-interface: 'eth 0'", []string{file + `:1: out-interface "eth 0": want an interface name`}},
		{"tcp-sack: 2", []string{file + `:1: tcp-sack "2": want true or false`}},
		{"tcp-moderate-rcvbuf: [x]", []string{file + ":1: tcp-moderate-rcvbuf: want true or false, not a list"}},
		{"tcp-buf: 1024", []string{file + ":1: tcp-buf 1024: want 65536 to 67108864"}},
		{"tcp-cc: bbr", []string{file + `:1: tcp-cc "bbr": want cubic or reno`}},
		{"tcp-stack: kernel", []string{file + `:1: tcp-stack "kernel": want gvisor or system`}},
		{"tcp-ack-delay: 1s", []string{file + ":1: tcp-ack-delay 1s: want a duration from 0 (off) to 100ms, like 500us"}},
		{"tcp-ack-delay: 200", []string{file + ":1: tcp-ack-delay 200: want a duration with a unit"}},
		// The default proxy.
		{"proxy: sock5://h:1", []string{file + `:1: proxy: scheme "sock5" is not supported; want socks5, socks4, socks4a or http`}},
		{"proxy: https://h:1", []string{file + `:1: proxy: scheme "https" is not supported yet`}},
		{"proxy: corp", []string{file + `:1: proxy "corp" is not a defined proxy`}},
		{"proxy: corq\nproxies: [{name: corp, url: 'socks5://h'}]", []string{file + `:1: proxy "corq" is not a defined proxy; did you mean "corp"?`}},
		{"proxy: 10.0.0.1:1080", []string{file + `:1: proxy "10.0.0.1:1080" has no scheme; want socks5://10.0.0.1:1080, http://10.0.0.1:1080`}},
		{"proxy: 'u:secret@h:1'", []string{file + ":1: proxy: not a URL, direct or a proxy name"}},
		// Proxies.
		{"proxies: x", []string{file + ":1: proxies item 1: want an entry like"}},
		{"proxies:\n  - name: corp\n    url: sock5://h:1", []string{file + `:3: proxy "corp": scheme "sock5" is not supported; want socks5, socks4, socks4a or http`}},
		{"proxies:\n  - name: corp\n    url: h:1080", []string{file + `:3: proxy "corp": url has no scheme`}},
		{"proxies:\n  - name: corp\n    url: 'socks5://h:99999'", []string{file + `:3: proxy "corp": url "socks5://h:99999": port "99999" is not a number from 1 to 65535`}},
		{"proxies:\n  - name: corp\n    url: 'socks5://u:secret@h:abc'", []string{file + `:3: proxy "corp": url does not parse`}},
		{"proxies:\n  - name: corp\n    url: 'socks5:///x'", []string{file + `:3: proxy "corp": url "socks5:///x" names no host`}},
		{"proxies:\n  - name: corp\n    url: 'socks5://h:1/path'", []string{file + `:3: proxy "corp": url "socks5://h:1/path": only socks5://[user:pass@]host:port`}},
		{"proxies:\n  - name: corp\n    url: 'socks4://u:p@h'", []string{file + `:3: proxy "corp": socks4 has no passwords`}},
		{"proxies:\n  - name: corp\n    url: 'socks5://u@h'", []string{file + `:3: proxy "corp": socks5 username and password`}},
		{"proxies:\n  - name: corp\n    url: 'https://h'", []string{file + `:3: proxy "corp": scheme "https" is not supported yet`}},
		{"proxies:\n  - url: 'socks5://h'", []string{file + ":2: proxies item 1 has no name"}},
		{"proxies:\n  - name: DIRECT\n    url: 'socks5://h'", []string{file + `:2: proxy name "DIRECT" is reserved`}},
		{"proxies:\n  - name: reject-drop\n    url: 'socks5://h'", []string{file + `:2: proxy name "reject-drop" is reserved`}},
		{"proxies:\n  - name: 'a,b'\n    url: 'socks5://h'", []string{file + `:2: proxy name "a,b" cannot be used in rules`}},
		{"proxies:\n  - name: a\n    url: 'socks5://h'\n  - name: a\n    url: 'socks5://g'", []string{file + `:4: proxy name "a" is used twice (first at line 2)`}},
		{"proxies:\n  - name: a", []string{file + `:2: proxy "a" has neither url nor chain`}},
		{"proxies:\n  - name: a\n    url: 'socks5://h'\n    chain: [b]", []string{file + `:2: proxy "a" has both url and chain`}},
		{"proxies:\n  - name: a\n    chain: []", []string{file + `:2: proxy "a": empty chain`}},
		{"proxies:\n  - name: a\n    type: socks5\n    server: h", []string{file + `:3: unknown key "type" in proxy "a"; write the upstream as one url`}},
		{"proxies:\n  - name: [a]", []string{file + ":2: proxies item 1 name: want a name like corp, not a list"}},
		// Rules.
		{"rules: MATCH,DIRECT", []string{file + ":1: rules: want a list"}},
		{"rules: [DOMAIN,a.com,DIRECT]", []string{file + ":1: rules: in [ ... ] commas separate list items"}},
		{"rules:\n  - {a: 1}", []string{file + ":2: rules: want a rule written as text"}},
		{"rules:\n  -\n", []string{file + ":2: rules: empty rule"}},
		{"rules:\n  - |\n    MATCH,DIRECT\n    MATCH,DIRECT\n", []string{file + ":2: rules: a rule is one line"}},
		// API.
		{"api:\n  listen: '0.0.0.0:9090'", []string{file + `:2: api.listen "0.0.0.0:9090" is reachable from other hosts and api.secret is empty`}},
		{"api: {listen: ':9090'}", []string{file + `:1: api.listen ":9090" is reachable from other hosts and api.secret is empty`}},
		{"api: {listen: 'example.com:9090', secret: secret}", []string{file + `:1: api.listen "example.com:9090": want an IP address or localhost`}},
		{"api: {listen: '127.0.0.1'}", []string{file + `:1: api.listen "127.0.0.1": want address:port`}},
		{"api: {metrics: '127.0.0.1:x'}", []string{file + `:1: api.metrics "127.0.0.1:x": want a port`}},
		{"api: {allow-origins: ['metacubex.github.io']}", []string{file + `:1: api.allow-origins "metacubex.github.io": want an origin like https://`}},
		{"api:\n  external-controller: 127.0.0.1:9090", []string{file + `:2: unknown key "external-controller" in api; write the address as "listen"`}},
		{"external-controller: 127.0.0.1:9090", []string{file + `:1: unknown key "external-controller"; write it under api: as "listen"`}},
		// DNS.
		{"dns: [x]", []string{file + ":1: dns: want a mapping of keys, not a list"}},
		{"dns:\n  nameservers: [1.1.1.1]", []string{file + `:2: unknown key "nameservers" in dns; did you mean "nameserver"?`}},
		{"dns:\n  enhanced-mode: fake-ip", []string{file + `:2: unknown key "enhanced-mode" in dns; tunsocks always answers with fake IPs`}},
		{"dns: {enable: sometimes}", []string{file + `:1: dns.enable "sometimes": want true or false`}},
		{"dns: {listen: 'localhost:53'}", []string{file + `:1: dns.listen "localhost:53": want an IP address, not a name`}},
		{"dns: {listen: '127.0.0.1'}", []string{file + `:1: dns.listen "127.0.0.1": want address:port`}},
		{"dns: {listen: '127.0.0.1:0'}", []string{file + `:1: dns.listen "127.0.0.1:0": want a port from 1 to 65535`}},
		{"dns: {fake-ip-range: x}", []string{file + `:1: dns.fake-ip-range "x": want a prefix like 198.18.0.0/15`}},
		{"dns: {fake-ip-range: 'fc00::/18'}", []string{file + ":1: dns.fake-ip-range fc00::/18: want an IPv4 prefix"}},
		{"dns: {fake-ip-range: 198.18.0.1/15}", []string{file + ":1: dns.fake-ip-range 198.18.0.1/15: want the network address, 198.18.0.0/15"}},
		{"dns: {fake-ip-range: 10.0.0.0/31}", []string{file + ":1: dns.fake-ip-range 10.0.0.0/31: too small"}},
		{"dns: {fake-ip-range: }", []string{file + ":1: dns.fake-ip-range has no value"}},
		{"dns: {fake-ip-range6: 10.0.0.0/8}", []string{file + ":1: dns.fake-ip-range6 10.0.0.0/8: want an IPv6 prefix"}},
		{"dns: {fake-ip-range6: 'fc00::1/18'}", []string{file + ":1: dns.fake-ip-range6 fc00::1/18: want the network address, fc00::/18"}},
		{"dns: {fake-ip-range6: 'fc00::/127'}", []string{file + ":1: dns.fake-ip-range6 fc00::/127: too small"}},
		{"dns:\n  fake-ip-filter:\n    - ok.com\n    - 'a b'\n    - 'geosite:cn'\n    - ''", []string{
			file + `:4: dns.fake-ip-filter "a b": want one domain pattern`,
			file + `:5: dns.fake-ip-filter "geosite:cn": only domain patterns`,
			file + `:6: dns.fake-ip-filter "": empty pattern`}},
		{"dns:\n  fake-ip-filter:\n    - +.bücher.de\n    - 'ab*.com'\n    - '+.-bücher.de'", []string{
			file + `:4: dns.fake-ip-filter "ab*.com": label "ab*": character '*' not allowed`,
			file + `:5: dns.fake-ip-filter "+.-bücher.de": label "-bücher" is not a valid internationalised domain label`}},
		{"dns:\n  nameserver:\n    - 1.1.1.1\n    - dns.google\n    - 'https://1.1.1.1/dns-query'\n    - '1.1.1.1:0'\n    - 'ftp://1.1.1.1'", []string{
			file + `:4: dns.nameserver "dns.google": want an IP address, not a name`,
			file + `:5: dns.nameserver "https://1.1.1.1/dns-query": https:// is not supported; want udp:// or tcp://`,
			file + `:6: dns.nameserver "1.1.1.1:0": port 0`,
			file + `:7: dns.nameserver "ftp://1.1.1.1": scheme "ftp" is not supported`}},
		{"dns: {dns-hijack: 1}", []string{file + `:1: dns.dns-hijack "1": want true or false`}},
		{"dns: {fake-ip-ttl: 2h}", []string{file + ":1: dns.fake-ip-ttl 2h0m0s: want 1s to 1h0m0s"}},
		{"dns: {fake-ip-ttl: 500ms}", []string{file + ":1: dns.fake-ip-ttl 500ms: want 1s to 1h0m0s"}},
		{"dns: {cache-file: [a]}", []string{file + ":1: dns.cache-file: want a string, not a list"}},
	}
	for _, tt := range tests {
		c, err := Parse([]byte(tt.src), file)
		if err == nil {
			t.Errorf("Parse(%q) = %+v, want an error", tt.src, c)
			continue
		}
		if c != nil {
			t.Errorf("Parse(%q) returned a Config along with error %v", tt.src, err)
		}
		for _, w := range tt.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("Parse(%q) error:\n%v\nwant it to contain %q", tt.src, err, w)
			}
		}
		// Passwords never appear in errors (the tests' password is
		// "secret"; the key api.secret and its flag may be named).
		if strings.Contains(strings.NewReplacer("api.secret", "", "--api-secret", "").Replace(err.Error()), "secret") {
			t.Errorf("Parse(%q) error leaks a password: %v", tt.src, err)
		}
		// Every line of the message names the file and a line.
		for _, l := range strings.Split(err.Error(), "\n") {
			if !strings.HasPrefix(l, file+":") {
				t.Errorf("Parse(%q): error line %q does not start with %q", tt.src, l, file+":")
			}
		}
	}
}

// A value that failed to decode is reported once, not again by Validate.
func TestNoDoubleReports(t *testing.T) {
	for _, src := range []string{
		"proxies:\n  - name: corp\n    url: h:1080",
		"proxies:\n  - name: corp\n    url: [x]",
		"proxies:\n  - name: corp\n    chain: [{a: 1}]",
		"proxies:\n  - name: corp\n    chain: [{a: 1}]\n  - name: b\n    chain: [corp]",
		"tcp-idle: x",
		"tun: {mtu: 1}",
		"tun: {addrs: [x]}",
		"dns: {fake-ip-range: x}",
	} {
		_, err := Parse([]byte(src), file)
		if err == nil {
			t.Errorf("Parse(%q): no error", src)
			continue
		}
		if n := strings.Count(err.Error(), "\n") + 1; n != 1 {
			t.Errorf("Parse(%q): %d errors, want 1:\n%v", src, n, err)
		}
	}
}

func TestSeveralErrors(t *testing.T) {
	src := "tcp-idle: 5x\nudp-idle: 0s\nproxie: 1\nproxies:\n  - name: a\n    chain: [nope]\nrules:\n  - DOMAIN,x.com,ghost\n"
	_, err := Parse([]byte(src), file)
	if err == nil {
		t.Fatal("no error")
	}
	for _, w := range []string{":1: tcp-idle", ":2: udp-idle", ":3: unknown key", `:6: proxy "a": chain member "nope"`, `:8: unknown target "ghost"`} {
		if !strings.Contains(err.Error(), file+w) {
			t.Errorf("error:\n%v\nwant it to contain %q", err, file+w)
		}
	}

	// Errors are capped.
	var b strings.Builder
	for range 100 {
		b.WriteString("- x\n")
	}
	_, err = Parse([]byte("tun:\n  addrs:\n"+indent(b.String())), file)
	if err == nil || strings.Count(err.Error(), "\n") > maxErrors+1 || !strings.Contains(err.Error(), "too many errors") {
		t.Fatalf("100 bad addresses: %v", err)
	}
}

func indent(s string) string {
	return "    " + strings.ReplaceAll(strings.TrimSuffix(s, "\n"), "\n", "\n    ") + "\n"
}

func TestChains(t *testing.T) {
	const base = "proxies:\n" +
		"  - name: a\n" + // 2
		"    url: socks5://a.example:1080\n" +
		"  - name: b\n" + // 4
		"    url: http://b.example\n" +
		"  - name: ab\n" + // 6
		"    chain: [a, b]\n" +
		"  - name: abab\n" + // 8
		"    chain: [ab, ab]\n"
	c := mustParse(t, base)
	hops, err := c.Hops("abab")
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, h := range hops {
		got = append(got, h.Hostname())
	}
	if strings.Join(got, ",") != "a.example,b.example,a.example,b.example" {
		t.Fatalf("Hops(abab) = %v", got)
	}
	if _, err := c.Hops("zzz"); err == nil {
		t.Fatal("Hops of an unknown name: no error")
	}

	tests := []struct {
		src  string
		want []string
	}{
		{"  - name: c\n    chain:\n      - a\n      - abb\n", []string{file + `:13: proxy "c": chain member "abb" is not a proxy; did you mean "ab"?`}},
		{"  - name: x\n    chain: [y]\n  - name: y\n    chain: [x]\n", []string{`proxy "x": chain cycle x -> y -> x`}},
		{"  - name: self\n    chain: [a, self]\n", []string{file + `:10: proxy "self": chain cycle self -> self`}},
		{"  - name: p\n    chain: [q]\n  - name: q\n    chain: [r]\n  - name: r\n    chain: [a, q]\n", []string{"chain cycle q -> r -> q"}},
	}
	for _, tt := range tests {
		_, err := Parse([]byte(base+tt.src), file)
		if err == nil {
			t.Errorf("Parse(%q): no error", tt.src)
			continue
		}
		for _, w := range tt.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("Parse(%q) error:\n%v\nwant it to contain %q", tt.src, err, w)
			}
		}
		if strings.Contains(err.Error(), "no proxy named") {
			t.Errorf("Parse(%q): a missing member reported twice: %v", tt.src, err)
		}
		if n := strings.Count(err.Error(), "chain cycle"); n > 1 {
			t.Errorf("Parse(%q): cycle reported %d times: %v", tt.src, n, err)
		}
	}

	// A chain flattening to too many hops.
	var b strings.Builder
	b.WriteString("proxies:\n  - name: p0\n    url: socks5://h\n")
	for i := 1; i <= 7; i++ {
		b.WriteString("  - name: p" + itoa(i) + "\n    chain: [p" + itoa(i-1) + ", p" + itoa(i-1) + "]\n")
	}
	_, err = Parse([]byte(b.String()), file)
	if err == nil || !strings.Contains(err.Error(), "chain too long (more than 32 hops)") {
		t.Fatalf("128-hop chain: %v", err)
	}
}

func itoa(i int) string { return strconv.Itoa(i) }

func TestRulesWithFiles(t *testing.T) {
	dir := t.TempDir()
	write := func(name, text string) string {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	write("lists/ads.txt", "# ads\n+.ads.example\n10.66.0.0/16\n")
	cfg := write("tunsocks.yaml", "proxies:\n  - name: corp\n    url: socks5://10.0.0.1:1080\nrules:\n  - RULE-SET,lists/ads.txt,REJECT\n  - DOMAIN-SUFFIX,corp.example,corp\n")
	// Load from another working directory: the set is found next to the config.
	c, err := Load(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if c.Path != cfg {
		t.Fatalf("Path = %q", c.Path)
	}
	m := c.Ruleset.Match(&rules.Metadata{Network: "tcp", Host: "x.ads.example", UID: -1}, nil)
	if m.Action.Kind != rules.Reject || m.Source != cfg+":5" || m.EntrySource != "lists/ads.txt:2" {
		t.Fatalf("match = %+v", m)
	}

	// A bad line in the set file is reported with the set file's line; a
	// bad rule with the config's line.
	write("lists/bad.txt", "ok.example\nbad..example\n")
	bad := write("bad.yaml", "\nrules:\n  - RULE-SET,lists/bad.txt,DIRECT\n  - IP-CIDR,10.0.0.0/33,DIRECT\n  - RULE-SET,lists/missing.txt,DIRECT\n")
	c, err = Load(bad)
	if err == nil || c != nil {
		t.Fatalf("Load(bad) = %v, %v", c, err)
	}
	for _, w := range []string{"lists/bad.txt:2:", bad + ":4: bad CIDR", bad + `:5: RULE-SET "lists/missing.txt"`} {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error:\n%v\nwant it to contain %q", err, w)
		}
	}
	var pe *rules.ParseError
	if !errors.As(err, &pe) {
		t.Errorf("error does not carry *rules.ParseError: %v", err)
	}
}

func TestLoad(t *testing.T) {
	dir := t.TempDir()
	if _, err := Load(filepath.Join(dir, "nope.yaml")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("Load(missing) = %v, want ErrNotExist", err)
	}
	big := filepath.Join(dir, "big.yaml")
	if err := os.WriteFile(big, make([]byte, maxFileSize+1), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(big); err == nil || !strings.Contains(err.Error(), big+": file larger than") {
		t.Fatalf("Load(big) = %v", err)
	}
	ok := filepath.Join(dir, "ok.yaml")
	if err := os.WriteFile(ok, []byte("tcp-idle: 1m\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	c, err := Load(ok)
	if err != nil || c.TCPIdle != time.Minute || c.Path != ok {
		t.Fatalf("Load(ok) = %+v, %v", c, err)
	}
	// The type of one error: *Error with file and line.
	_, err = Parse([]byte("\ntcp-idle: x"), "f.yaml")
	var ce *Error
	if !errors.As(err, &ce) || ce.File != "f.yaml" || ce.Line != 2 {
		t.Fatalf("error %v: want *Error at f.yaml:2", err)
	}
	// Without a path, errors say "config".
	_, err = Parse([]byte("\ntcp-idle: x"), "")
	if err == nil || !strings.HasPrefix(err.Error(), "config:2: ") {
		t.Fatalf("error without a path: %v", err)
	}
}

func TestValidateBuiltInCode(t *testing.T) {
	c := Default()
	c.TCPIdle = 0
	c.Tun.MTU = 100
	c.Proxies = []Proxy{{Name: "x", Chain: []string{"y"}}}
	c.Rules = []rules.Line{{Text: "MATCH,x"}, {Text: "MATCH,nope", Line: 2}}
	err := c.Validate()
	if err == nil || c.Ruleset != nil {
		t.Fatalf("Validate = %v, Ruleset %v", err, c.Ruleset)
	}
	for _, w := range []string{"config: tcp-idle 0s", "config: tun.mtu 100", `config: proxy "x": chain member "y"`, `config:2: unknown target "nope"`} {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error:\n%v\nwant it to contain %q", err, w)
		}
	}
	// Fix it: Validate now succeeds and sets the Ruleset.
	c.TCPIdle, c.Tun.MTU = time.Minute, 1500
	c.Proxies = append(c.Proxies, Proxy{Name: "y", URL: testenv.MustURL(t, "socks5://h:1")})
	c.Rules = c.Rules[:1]
	if err := c.Validate(); err != nil || c.Ruleset == nil || c.Ruleset.Len() != 1 {
		t.Fatalf("Validate = %v, Ruleset %v", err, c.Ruleset)
	}
	// A value the CLI overrides is checked and cited at the file's line.
	c2 := mustParse(t, "\ntcp-cc: reno\n")
	c2.TCP.CC = "vegas"
	if err := c2.Validate(); err == nil || !strings.Contains(err.Error(), file+`:2: tcp-cc "vegas"`) {
		t.Fatalf("Validate = %v", err)
	}
}

func TestParseNameserver(t *testing.T) {
	tests := []struct {
		in, network, addr string
	}{
		{"1.1.1.1", "udp", "1.1.1.1:53"},
		{"10.0.0.53:5353", "udp", "10.0.0.53:5353"},
		{"udp://1.1.1.1", "udp", "1.1.1.1:53"},
		{"TCP://1.1.1.1:53", "tcp", "1.1.1.1:53"},
		{"2606:4700::1111", "udp", "[2606:4700::1111]:53"},
		{"[2606:4700::1111]:5353", "udp", "[2606:4700::1111]:5353"},
		{"tcp://[::1]:53", "tcp", "[::1]:53"},
		{"", "", ""},
		{"dns.google", "", ""},
		{"dns.google:53", "", ""},
		{"tls://1.1.1.1", "", ""},
		{"1.1.1.1:0", "", ""},
		{"1.1.1.1:99999", "", ""},
		{"1.1.1", "", ""},
	}
	for _, tt := range tests {
		n, a, err := ParseNameserver(tt.in)
		if tt.network == "" {
			if err == nil {
				t.Errorf("ParseNameserver(%q) = %s %s, want an error", tt.in, n, a)
			}
			continue
		}
		if err != nil || n != tt.network || a.String() != tt.addr {
			t.Errorf("ParseNameserver(%q) = %s %s %v, want %s %s", tt.in, n, a, err, tt.network, tt.addr)
		}
	}
}

func FuzzParse(f *testing.F) {
	f.Add(Example())
	f.Add("proxies:\n  - name: a\n    chain: [a]\nrules: [x]\n")
	f.Add("a: &a [*a, *a]\n")
	f.Add("tun: {addrs: [1.2.3.4/5]}\ndns: {nameserver: ['[::1]:53']}\n")
	f.Fuzz(func(t *testing.T, src string) {
		if strings.Contains(strings.ToUpper(src), "RULE-SET") {
			t.Skip("RULE-SET reads files")
		}
		var (
			c    *Config
			err  error
			done = make(chan struct{})
		)
		go func() { c, err = Parse([]byte(src), "fuzz.yaml"); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			panic("Parse hangs on " + strconv.Quote(src))
		}
		if (c == nil) == (err == nil) {
			t.Fatalf("Parse = %v, %v: want exactly one of them", c, err)
		}
		if err != nil && !strings.HasPrefix(err.Error(), "fuzz.yaml") {
			t.Fatalf("error without the file name: %v", err)
		}
	})
}

func TestParseSize(t *testing.T) {
	for s, want := range map[string]int64{"0": 0, "1024": 1024, "64K": 64 << 10, "512MiB": 512 << 20, "1G": 1 << 30,
		"1 GiB": 1 << 30, "2gib": 2 << 30, "1_000B": 1000, "1T": 1 << 40} {
		if got, err := ParseSize(s); err != nil || got != want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d", s, got, err, want)
		}
	}
	for _, s := range []string{"", "x", "1MB", "1.5G", "-1", "GiB", "99999999999T"} {
		if got, err := ParseSize(s); err == nil {
			t.Errorf("ParseSize(%q) = %d, want an error", s, got)
		}
	}
}
