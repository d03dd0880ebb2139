package config

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/tunsocks/tunsocks/dns"
	"github.com/tunsocks/tunsocks/httpconnect"
	"github.com/tunsocks/tunsocks/rules"
	"github.com/tunsocks/tunsocks/socksclient"
)

// Validate checks every value and cross-checks the whole: proxy names are
// unique and not DIRECT, REJECT or REJECT-DROP; each proxy has a URL or a
// chain of known proxies, without cycles; the default proxy exists; the
// rules parse (RULE-SET paths relative to the config's directory) and name
// only known targets. On success it sets c.Ruleset (nil when there are no
// rules); otherwise it clears it and returns every problem found, joined.
// Messages cite the line of the file that set the value, when known. It
// also parses the values that have a type of their own: ProxyURL and
// DNS.Servers.
func (c *Config) Validate() error {
	c.Ruleset, c.ProxyURL, c.DNS.Servers = nil, nil, nil
	v := &validator{c: c, file: displayName(c.Path)}
	v.values()
	byName := v.proxies()
	v.defaultProxy(byName)
	rs := v.rules(byName)
	if len(v.errs) > 0 {
		c.ProxyURL, c.DNS.Servers = nil, nil
		return joinCapped(v.errs)
	}
	c.Ruleset = rs
	return nil
}

type validator struct {
	c    *Config
	file string
	errs []error
}

func (v *validator) failAt(line int, format string, args ...any) {
	v.errs = append(v.errs, &Error{File: v.file, Line: line, Msg: fmt.Sprintf(format, args...)})
}

// fail reports a problem with the value set at key.
func (v *validator) fail(key string, format string, args ...any) {
	v.failAt(v.c.lines[key], format, args...)
}

func (v *validator) values() {
	c := v.c
	switch {
	case c.Tun.FD < -1:
		v.fail("tun.fd", "tun.fd %d: want an open descriptor number (>= 0), or -1 for none", c.Tun.FD)
	case c.Tun.FD == -1 && c.Tun.Name == "":
		v.fail("tun.name", "tun.name is empty; want a device name like %s", DefaultTunName)
	}
	if len(c.Tun.Name) > 15 {
		v.fail("tun.name", "tun.name %q: longer than 15 bytes (the kernel's limit)", c.Tun.Name)
	}
	for i, p := range c.Tun.Addrs {
		if !p.IsValid() {
			v.fail("tun.addrs."+strconv.Itoa(i), "tun.addrs item %d is not a valid prefix; want an address with prefix length, like 198.18.0.1/15", i+1)
		}
	}
	switch c.Route.DNSConfig {
	case "auto", "resolved", "none":
	default:
		v.fail("route.dns-config", "route.dns-config %q: want auto, resolved or none", c.Route.DNSConfig)
	}
	if t := c.Route.RouteTable; t == 253 || t == 254 || t == 255 {
		v.fail("route.route-table", "route.route-table %d: that is a table of the system (default, main, local); want a free one like %d", t, DefaultRouteTable)
	}
	if len(c.Route.Gateway) > 15 {
		v.fail("route.gateway", "route.gateway %q: longer than 15 bytes (the kernel's limit for interface names)", c.Route.Gateway)
	}
	if (len(c.Route.IncludeCgroup) > 0 || len(c.Route.IncludeUID) > 0) && !c.Route.AutoRoute {
		key := "route.include-uid.0"
		if len(c.Route.IncludeCgroup) > 0 {
			key = "route.include-cgroup.0"
		}
		v.fail(key, "route.include-cgroup and route.include-uid choose what auto-route captures: set route.auto-route: true (--auto-route)")
	}
	if c.Tun.MTU < MinMTU || c.Tun.MTU > MaxMTU {
		v.fail("tun.mtu", "tun.mtu %d: want %d to %d", c.Tun.MTU, MinMTU, MaxMTU)
	} else if c.Tun.MTU < MinMTU6 && c.Tun.FD == -1 {
		// The kernel refuses IPv6 addresses on such a link, and the
		// netstack sends no IPv6 on it: say so before the TUN exists.
		for _, p := range c.Tun.Addrs {
			if p.IsValid() && p.Addr().Is6() {
				v.fail("tun.mtu", "tun.mtu %d: IPv6 needs an MTU of at least %d, and tun.addrs has %v; "+
					"give IPv4 addresses only (e.g. --tun-addr 198.18.0.1/15) or an MTU of %d or more", c.Tun.MTU, MinMTU6, p, MinMTU6)
				break
			}
		}
	}
	for _, d := range []struct {
		key string
		val time.Duration
	}{
		{"tcp-idle", c.TCPIdle}, {"udp-idle", c.UDPIdle},
		{"dns-idle", c.DNSIdle}, {"dial-timeout", c.DialTimeout},
	} {
		if d.val <= 0 {
			v.fail(d.key, "%s %v: want a positive duration like 30s", d.key, d.val)
		}
	}
	if c.SummaryInterval < 0 {
		v.fail("summary-interval", "summary-interval %v: want a duration like 5s, or 0 for never", c.SummaryInterval)
	}
	if b := c.TCP.Buf; b != 0 && (b < MinTCPBuf || b > MaxTCPBuf) {
		v.fail("tcp-buf", "tcp-buf %d: want %d to %d bytes", b, MinTCPBuf, MaxTCPBuf)
	}
	switch c.TCP.CC {
	case "", "cubic", "reno":
	default:
		v.fail("tcp-cc", "tcp-cc %q: want cubic or reno", c.TCP.CC)
	}
	if d := c.TCP.AckDelay; d < 0 || d > MaxTCPAckDelay {
		v.fail("tcp-ack-delay", "tcp-ack-delay %v: want a duration from 0 (off) to %v, like 500us", d, MaxTCPAckDelay)
	}
	switch c.TCP.Stack {
	case "", "gvisor", "system":
	default:
		v.fail("tcp-stack", "tcp-stack %q: want gvisor or system", c.TCP.Stack)
	}
	v.limits()
	if strings.ContainsAny(c.OutInterface, " \t/") || len(c.OutInterface) > 15 {
		v.fail("out-interface", "out-interface %q: want an interface name like eth0", c.OutInterface)
	}
	v.dns()
	v.api()
	v.sniff()
}

func (v *validator) api() {
	s := &v.c.API
	if s.Listen != "" {
		if msg := checkServe(s.Listen); msg != "" {
			v.fail("api.listen", "api.listen %q: %s", s.Listen, msg)
		} else if s.Secret == "" && !loopback(s.Listen) {
			v.fail("api.listen", "api.listen %q is reachable from other hosts and api.secret is empty: "+
				"anyone could watch and close every flow; set api.secret (--api-secret), or listen on 127.0.0.1", s.Listen)
		}
	}
	if s.Metrics != "" {
		if msg := checkServe(s.Metrics); msg != "" {
			v.fail("api.metrics", "api.metrics %q: %s", s.Metrics, msg)
		}
	}
	for i, o := range s.AllowOrigins {
		if o == "*" {
			continue
		}
		if u, err := url.Parse(o); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || (u.Path != "" && u.Path != "/") {
			v.fail("api.allow-origins."+strconv.Itoa(i), "api.allow-origins %q: want an origin like https://metacubex.github.io, or *", o)
		}
	}
}

// checkServe checks a listen address of the HTTP servers: address:port,
// the host an IP, localhost or empty (every address).
func checkServe(s string) string {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return "want address:port like 127.0.0.1:9090"
	}
	if host != "" && !strings.EqualFold(host, "localhost") {
		if a, err := netip.ParseAddr(host); err != nil || a.Zone() != "" {
			return "want an IP address or localhost, like 127.0.0.1:9090"
		}
	}
	if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
		return "want a port from 0 to 65535, like 127.0.0.1:9090"
	}
	return ""
}

// loopback reports whether a checked listen address only takes
// connections from this host.
func loopback(s string) bool {
	host, _, _ := net.SplitHostPort(s)
	if strings.EqualFold(host, "localhost") {
		return true
	}
	a, err := netip.ParseAddr(host)
	return err == nil && a.Unmap().IsLoopback()
}

func (v *validator) dns() {
	s := &v.c.DNS
	if s.Listen != "" {
		if msg := checkListen(s.Listen); msg != "" {
			v.fail("dns.listen", "dns.listen %q: %s", s.Listen, msg)
		}
	}
	p4 := s.FakeIPRange
	switch {
	case !p4.IsValid():
		v.fail("dns.fake-ip-range", "dns.fake-ip-range is not set; want an IPv4 prefix like %s", DefaultFakeIPRange)
	case !p4.Addr().Is4():
		v.fail("dns.fake-ip-range", "dns.fake-ip-range %s: want an IPv4 prefix like %s (IPv6 goes in fake-ip-range6)", p4, DefaultFakeIPRange)
	case p4.Bits() > 30:
		v.fail("dns.fake-ip-range", "dns.fake-ip-range %s: too small; want /30 or larger, like %s", p4, DefaultFakeIPRange)
	case p4.Masked() != p4:
		v.fail("dns.fake-ip-range", "dns.fake-ip-range %s: want the network address, %s", p4, p4.Masked())
	}
	if p6 := s.FakeIPRange6; p6.IsValid() {
		switch {
		case !p6.Addr().Is6() || p6.Addr().Is4In6():
			v.fail("dns.fake-ip-range6", "dns.fake-ip-range6 %s: want an IPv6 prefix like %s", p6, DefaultFakeIPRange6)
		case p6.Bits() > 126:
			v.fail("dns.fake-ip-range6", "dns.fake-ip-range6 %s: too small; want /126 or larger, like %s", p6, DefaultFakeIPRange6)
		case p6.Masked() != p6:
			v.fail("dns.fake-ip-range6", "dns.fake-ip-range6 %s: want the network address, %s", p6, p6.Masked())
		}
	}
	for i, f := range s.FakeIPFilter {
		if msg := checkFilter(f); msg != "" {
			v.fail("dns.fake-ip-filter."+strconv.Itoa(i), "dns.fake-ip-filter %q: %s", f, msg)
		}
	}
	for i, ns := range s.Nameservers {
		network, addr, err := ParseNameserver(ns)
		if err != nil {
			v.fail("dns.nameserver."+strconv.Itoa(i), "dns.nameserver %q: %v", ns, err)
			continue
		}
		s.Servers = append(s.Servers, dns.Nameserver{Network: network, Addr: addr})
	}
	if s.FakeIPTTL < MinFakeIPTTL || s.FakeIPTTL > MaxFakeIPTTL {
		v.fail("dns.fake-ip-ttl", "dns.fake-ip-ttl %v: want %v to %v", s.FakeIPTTL, MinFakeIPTTL, MaxFakeIPTTL)
	}
}

func checkListen(s string) string {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return "want address:port like 127.0.0.1:5353"
	}
	if host != "" {
		if a, err := netip.ParseAddr(host); err != nil || a.Zone() != "" {
			return "want an IP address, not a name, like 127.0.0.1:5353"
		}
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return "want a port from 1 to 65535, like 127.0.0.1:5353"
	}
	return ""
}

// checkFilter does the checks a fake-ip-filter pattern needs to be a
// domain pattern; the dns package compiles it.
func checkFilter(f string) string {
	t := strings.TrimSpace(f)
	switch {
	case t == "":
		return "empty pattern; want example.com, *.example.com, .example.com or +.example.com"
	case strings.ContainsAny(t, " \t,/"):
		return "want one domain pattern like +.example.com"
	case strings.Contains(t, ":"):
		return "only domain patterns are supported, like +.example.com"
	case len(t) > 253:
		return "longer than 253 bytes"
	}
	if err := dns.CheckFilterPattern(t); err != nil {
		return err.Error()
	}
	return ""
}

// ParseNameserver parses a dns.nameserver entry: an IP address with an
// optional port (default 53), optionally prefixed by udp:// or tcp://
// (default udp). It returns "udp" or "tcp" and the address.
func ParseNameserver(s string) (network string, addr netip.AddrPort, err error) {
	network, rest := "udp", strings.TrimSpace(s)
	if scheme, r, ok := strings.Cut(rest, "://"); ok {
		switch strings.ToLower(scheme) {
		case "udp", "tcp":
			network, rest = strings.ToLower(scheme), r
		case "tls", "https", "quic":
			return "", netip.AddrPort{}, fmt.Errorf("%s:// is not supported; want udp:// or tcp://", scheme)
		default:
			return "", netip.AddrPort{}, fmt.Errorf("scheme %q is not supported; want udp:// or tcp://", scheme)
		}
	}
	if a, err := netip.ParseAddr(rest); err == nil {
		return network, netip.AddrPortFrom(a, 53), nil
	}
	if ap, err := netip.ParseAddrPort(rest); err == nil {
		if ap.Port() == 0 {
			return "", netip.AddrPort{}, errors.New("port 0; want a port from 1 to 65535, usually 53")
		}
		return network, ap, nil
	}
	host := rest
	if h, _, err := net.SplitHostPort(rest); err == nil {
		host = h
	}
	if host != "" && !strings.ContainsAny(host, "[]") {
		if _, err := netip.ParseAddr(host); err != nil && strings.Trim(host, "0123456789.") != "" {
			return "", netip.AddrPort{}, errors.New("want an IP address, not a name (a name would need a resolver to find the resolver), like 1.1.1.1 or tcp://1.1.1.1:53")
		}
	}
	return "", netip.AddrPort{}, errors.New("want an IP address with optional port, like 1.1.1.1, 10.0.0.53:53, [2606:4700::1111]:53 or tcp://1.1.1.1:53")
}

// isReserved reports whether name is a rule target that is not a proxy
// (DIRECT, REJECT, REJECT-DROP, in any case).
func isReserved(name string) bool {
	switch strings.ToUpper(name) {
	case "DIRECT", "REJECT", "REJECT-DROP":
		return true
	}
	return false
}

func (v *validator) proxies() map[string]*Proxy {
	c := v.c
	before := len(v.errs)
	byName := make(map[string]*Proxy, len(c.Proxies))
	for i := range c.Proxies {
		p := &c.Proxies[i]
		label := fmt.Sprintf("proxy %q", p.Name)
		switch {
		case p.Name == "":
			v.failAt(p.Line, "proxies item %d has no name; want name: corp", i+1)
			label = fmt.Sprintf("proxies item %d", i+1)
		case isReserved(p.Name):
			v.failAt(p.Line, "proxy name %q is reserved for the built-in target; pick another name", p.Name)
		case strings.ContainsAny(p.Name, ",()#\r\n\t") || strings.TrimSpace(p.Name) != p.Name:
			v.failAt(p.Line, "proxy name %q cannot be used in rules (no commas, parentheses, #, or surrounding spaces); pick a name like corp-eu", p.Name)
		default:
			if q, dup := byName[p.Name]; dup {
				v.failAt(p.Line, "proxy name %q is used twice (first at line %d); names must be unique", p.Name, q.Line)
			} else {
				byName[p.Name] = p
			}
		}
		switch {
		case p.decodeErr:
			// reported while decoding
		case p.URL != nil && p.Chain != nil:
			v.failAt(p.Line, "%s has both url and chain; give one (chain: [a, b] reaches b through a)", label)
		case p.URL == nil && p.Chain == nil:
			v.failAt(p.Line, "%s has neither url nor chain; want url: socks5://host:1080 or chain: [a, b]", label)
		case p.URL != nil:
			if msg := checkProxyURL(p.URL); msg != "" {
				line := p.Line
				if p.urlLine > 0 {
					line = p.urlLine
				}
				v.failAt(line, "%s: %s", label, msg)
			}
		case len(p.Chain) == 0:
			v.failAt(p.Line, "%s: empty chain; want chain: [a, b] (reaches b through a)", label)
		}
	}
	// Chain members exist, and no chain reaches itself.
	names := sortedNames(byName)
	for i := range c.Proxies {
		p := &c.Proxies[i]
		for j, m := range p.Chain {
			line := p.Line
			if j < len(p.chainLines) {
				line = p.chainLines[j]
			}
			if _, ok := byName[m]; ok {
				continue
			}
			hint := "known proxies: " + strings.Join(names, ", ")
			if len(names) == 0 {
				hint = "no proxies are defined"
			}
			if s := closest(m, names); s != "" {
				hint = fmt.Sprintf("did you mean %q? %s", s, hint)
			}
			v.failAt(line, "proxy %q: chain member %q is not a proxy; %s", p.Name, m, hint)
		}
	}
	v.cycles(byName)
	if len(v.errs) == before {
		v.longChains(byName)
	}
	return byName
}

// cycles reports each chain that reaches itself, once per cycle, and
// chains that flatten to more than maxChain hops.
func (v *validator) cycles(byName map[string]*Proxy) {
	const (
		white = iota
		grey
		black
	)
	color := map[string]int{}
	var path []string
	var visit func(name string, depth int) bool
	visit = func(name string, depth int) bool {
		p, ok := byName[name]
		if !ok || depth > len(byName) {
			return true
		}
		switch color[name] {
		case grey:
			i := len(path) - 1
			for i > 0 && path[i] != name {
				i--
			}
			cyc := append(append([]string(nil), path[i:]...), name)
			v.failAt(p.Line, "proxy %q: chain cycle %s; a chain cannot reach itself", name, strings.Join(cyc, " -> "))
			return false
		case black:
			return true
		}
		color[name] = grey
		path = append(path, name)
		ok = true
		for _, m := range p.Chain {
			if !visit(m, depth+1) {
				ok = false
				break
			}
		}
		path = path[:len(path)-1]
		color[name] = black
		return ok
	}
	for _, name := range sortedNames(byName) {
		if color[name] == white {
			visit(name, 0)
		}
	}
}

// longChains reports chains that flatten to more than maxChain hops. It
// runs only on proxies free of other errors (no unknown members, no cycles).
func (v *validator) longChains(byName map[string]*Proxy) {
	for _, name := range sortedNames(byName) {
		if p := byName[name]; len(p.Chain) > 0 && !p.decodeErr {
			// Other failures (a member without url or chain) were
			// reported where they are.
			if _, err := v.c.hops(byName, name, 0); errors.Is(err, errTooLong) {
				v.failAt(p.Line, "proxy %q: %v", name, err)
			}
		}
	}
}

func sortedNames(byName map[string]*Proxy) []string {
	names := make([]string, 0, len(byName))
	for n := range byName {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// checkProxyURL returns what is wrong with a proxy URL, or "": the scheme
// picks the client, whose own check says the rest.
func checkProxyURL(u *url.URL) string {
	var err error
	switch strings.ToLower(u.Scheme) {
	case "socks5", "socks5h", "socks4", "socks4a":
		err = socksclient.CheckURL(u)
	case "http":
		err = httpconnect.CheckURL(u)
	case "https":
		return `scheme "https" is not supported yet (TLS to the proxy); use http:// (CONNECT over plain TCP)`
	case "":
		return "url has no scheme; want socks5://host:port, socks4://host:port, socks4a://host:port or http://host:port"
	default:
		msg := fmt.Sprintf("scheme %q is not supported; want socks5, socks4, socks4a or http", u.Scheme)
		if s := closest(u.Scheme, []string{"socks5", "socks4", "socks4a", "http"}); s != "" {
			msg += fmt.Sprintf(" (did you mean %s?)", s)
		}
		return msg
	}
	if err != nil {
		return err.Error()
	}
	return ""
}

// defaultProxy checks c.Proxy: "direct", a URL or the name of a proxy.
func (v *validator) defaultProxy(byName map[string]*Proxy) {
	s := v.c.Proxy
	switch {
	case s == "", strings.EqualFold(s, "direct"):
		return
	case strings.Contains(s, "://"):
		u, msg := parseProxyURL(s)
		if msg == "" {
			msg = checkProxyURL(u)
		}
		if msg != "" {
			v.fail("proxy", "proxy: %s", msg)
			return
		}
		v.c.ProxyURL = u
		return
	}
	if _, ok := byName[s]; ok {
		return
	}
	hint := "want direct, a URL like socks5://host:1080, or the name of an entry in proxies"
	if s2 := closest(s, sortedNames(byName)); s2 != "" {
		hint = fmt.Sprintf("did you mean %q? ", s2) + hint
	}
	if _, _, err := net.SplitHostPort(s); err == nil && !strings.Contains(s, "@") {
		v.fail("proxy", "proxy %q has no scheme; want socks5://%s, http://%s, direct, or the name of an entry in proxies", s, s, s)
		return
	}
	if !strings.ContainsAny(s, "/@:") {
		v.fail("proxy", "proxy %q is not a defined proxy; %s", s, hint)
		return
	}
	v.fail("proxy", "proxy: not a URL, direct or a proxy name; want direct, a URL like socks5://host:1080, or the name of an entry in proxies")
}

func (v *validator) rules(byName map[string]*Proxy) *rules.Ruleset {
	if len(v.c.Rules) == 0 {
		return nil
	}
	base := "."
	if v.c.Path != "" {
		base = filepath.Dir(v.c.Path)
	}
	names := sortedNames(byName)
	lines := v.c.Rules
	for i := range lines {
		if lines[i].File == "" {
			lines = append([]rules.Line(nil), v.c.Rules...)
			for j := range lines {
				if lines[j].File == "" {
					lines[j].File = v.file
				}
			}
			break
		}
	}
	rs, err := rules.ParseLines(lines, rules.ParseOptions{
		Targets:     func(name string) bool { _, ok := byName[name]; return ok },
		TargetNames: names,
		BaseDir:     base,
	})
	if err != nil {
		v.errs = append(v.errs, flatten(err)...)
		return nil
	}
	return rs
}

var errTooLong = errors.New("chain too long")

// Hops flattens the proxy called name into the URLs to go through, in
// order: a URL proxy is one hop; a chain [a, b] is a's hops followed by b's.
func (c *Config) Hops(name string) ([]*url.URL, error) {
	byName := make(map[string]*Proxy, len(c.Proxies))
	for i := range c.Proxies {
		byName[c.Proxies[i].Name] = &c.Proxies[i]
	}
	return c.hops(byName, name, 0)
}

func (c *Config) hops(byName map[string]*Proxy, name string, depth int) ([]*url.URL, error) {
	if depth > maxChain {
		return nil, fmt.Errorf("chain nested deeper than %d (is there a cycle?): %w", maxChain, errTooLong)
	}
	p, ok := byName[name]
	if !ok {
		return nil, fmt.Errorf("no proxy named %q", name)
	}
	if p.URL != nil {
		return []*url.URL{p.URL}, nil
	}
	var out []*url.URL
	for _, m := range p.Chain {
		h, err := c.hops(byName, m, depth+1)
		if err != nil {
			return nil, err
		}
		out = append(out, h...)
		if len(out) > maxChain {
			return nil, fmt.Errorf("%w (more than %d hops)", errTooLong, maxChain)
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("proxy %q has neither url nor chain", name)
	}
	return out, nil
}

func (v *validator) limits() {
	l := &v.c.Limits
	if l.MaxMemory != 0 && l.MaxMemory < MinMaxMemory {
		v.fail("max-memory", "max-memory %d bytes: want at least %dMiB, or 0 for none", l.MaxMemory, MinMaxMemory>>20)
	}
	for _, n := range []struct {
		key string
		val int
	}{
		{"tcp-max-in-flight", l.TCPMaxInFlight}, {"tcp-max-in-flight-per-source", l.TCPMaxInFlightPerSource},
		{"udp-max-flows", l.UDPMaxFlows}, {"udp-max-flows-per-source", l.UDPMaxFlowsPerSource},
		{"udp-flow-rate", l.UDPFlowRate}, {"udp-flow-rate-per-source", l.UDPFlowRatePerSource},
	} {
		if n.val < 0 {
			v.fail(n.key, "%s %d: want a positive number, or 0 for the default", n.key, n.val)
		}
	}
	if l.TCPHandshakeTimeout < 0 {
		v.fail("tcp-handshake-timeout", "tcp-handshake-timeout %v: want a positive duration like 5s, or 0 for the default", l.TCPHandshakeTimeout)
	}
	for _, pair := range []struct {
		per, all       string
		perVal, allVal int
	}{
		{"tcp-max-in-flight-per-source", "tcp-max-in-flight", l.TCPMaxInFlightPerSource, l.TCPMaxInFlight},
		{"udp-max-flows-per-source", "udp-max-flows", l.UDPMaxFlowsPerSource, l.UDPMaxFlows},
		{"udp-flow-rate-per-source", "udp-flow-rate", l.UDPFlowRatePerSource, l.UDPFlowRate},
	} {
		if pair.perVal > 0 && pair.allVal > 0 && pair.perVal > pair.allVal {
			v.fail(pair.per, "%s %d exceeds %s %d: a source's share is at most the whole", pair.per, pair.perVal, pair.all, pair.allVal)
		}
	}
}
