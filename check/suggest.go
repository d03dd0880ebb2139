package check

import (
	"fmt"
	"net/url"
	"strings"
	"time"
)

// suggest writes a config snippet for `tunsocks run --config` from the
// findings: the proxy, rules that keep flows it cannot carry off it, and
// idle timers below its own.
func suggest(c *checker) string {
	f := &c.r.Facts
	var b strings.Builder
	u := *c.o.Proxy
	if f.SuggestedURL != "" {
		if su, err := url.Parse(f.SuggestedURL); err == nil {
			u.Scheme = su.Scheme
		}
	}
	if u.User != nil {
		if _, ok := u.User.Password(); ok {
			u.User = url.UserPassword(u.User.Username(), "PASSWORD")
		}
	}
	fmt.Fprintf(&b, "# suggested by tunsocks check %s\n", time.Now().UTC().Format("2006-01-02"))
	b.WriteString("proxies:\n  - name: checked\n")
	fmt.Fprintf(&b, "    url: %s\n", u.String())
	var rules []string
	if f.UDP != nil && (!f.UDP.Supported || (f.UDP.DNS != nil && !*f.UDP.DNS)) {
		rules = append(rules, "  - NETWORK,udp,REJECT   # the upstream carries no UDP: apps fall back to TCP at once")
	}
	if f.Connect.IPv6 != nil && !*f.Connect.IPv6 && f.Connect.IPv4 != nil && *f.Connect.IPv4 {
		rules = append(rules, "  - IP-CIDR6,::/0,REJECT   # the upstream cannot reach IPv6: apps fall back to IPv4 at once")
	}
	if f.Connect.Only443 != nil && *f.Connect.Only443 {
		rules = append(rules, "  - AND,((NETWORK,tcp),(NOT,((DST-PORT,443)))),DIRECT   # the upstream allows only port 443")
	}
	b.WriteString("rules:\n")
	for _, r := range rules {
		b.WriteString(r + "\n")
	}
	b.WriteString("  - MATCH,checked\n")
	switch {
	case f.Connect.Domain != nil && *f.Connect.Domain:
		b.WriteString("dns:\n  enable: true   # fake-IP: names travel to the upstream, which resolves them (remote DNS works)\n")
	case f.Connect.Domain != nil:
		b.WriteString("dns:\n  enable: false   # the upstream cannot resolve names: resolve them here\n")
	}
	if i := f.Idle; i != nil {
		below := time.Duration(i.HeldMS*float64(time.Millisecond)) * 3 / 4
		if below >= 10*time.Second {
			below = below.Truncate(time.Second)
		} else {
			below = below.Truncate(time.Millisecond)
		}
		if i.TCPAlive != nil && !*i.TCPAlive && below > 0 {
			fmt.Fprintf(&b, "tcp-idle: %v   # the upstream closed a CONNECT idle for %v (its limit is lower)\n", below, time.Duration(i.HeldMS*float64(time.Millisecond)))
		}
		if i.UDPAlive != nil && !*i.UDPAlive && below > 0 {
			fmt.Fprintf(&b, "udp-idle: %v   # the upstream ended a UDP association idle for %v (its limit is lower)\n", below, time.Duration(i.HeldMS*float64(time.Millisecond)))
		}
	}
	return b.String()
}
