package main

import (
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/tunsocks/tunsocks/config"
	"github.com/tunsocks/tunsocks/router"
	"github.com/tunsocks/tunsocks/rules"
)

// sniffFlags are the flags of the sniff keys (see config.SniffConfig).
func sniffFlags(env func(string) []string) []cli.Flag {
	d := config.Default().Sniff
	return []cli.Flag{
		&cli.StringFlag{Name: "sniff", Value: d.Mode.String(), Usage: "read the name of a flow to a real address from its first bytes (TLS SNI, HTTP Host, QUIC): auto (when a domain rule could match it), true (every flow) or false", EnvVars: env("sniff")},
		&cli.DurationFlag{Name: "sniff-timeout", Value: d.Timeout, Usage: "wait this long for a flow's first bytes, then go by its address", EnvVars: env("sniff-timeout")},
		&cli.BoolFlag{Name: "sniff-override-destination", Value: d.OverrideDestination, Usage: "give the upstream the sniffed name (false: the address; rules still see the name)", EnvVars: env("sniff-override-destination")},
		&cli.StringFlag{Name: "sniff-ports", Usage: "sniff only flows to these ports, e.g. 443,80,8000-9000 (default: all)", EnvVars: env("sniff-ports")},
		&cli.StringSliceFlag{Name: "sniff-cidr", Usage: "sniff only flows to this destination prefix (repeatable; default: all)", EnvVars: env("sniff-cidr")},
		&cli.StringFlag{Name: "sniff-server-first-ports", Value: config.DefaultServerFirstPorts, Usage: "TCP ports whose server speaks first: never waited for, dialed at once", EnvVars: env("sniff-server-first-ports")},
	}
}

// applySniffFlags lets the sniff flags the user set override the config.
func applySniffFlags(c *cli.Context, cfg *config.Config) error {
	s := &cfg.Sniff
	if c.IsSet("sniff") {
		m, err := config.ParseSniffMode(c.String("sniff"))
		if err != nil {
			return usagef("--%v", err)
		}
		s.Mode = m
	}
	if c.IsSet("sniff-timeout") {
		s.Timeout = c.Duration("sniff-timeout")
	}
	if c.IsSet("sniff-override-destination") {
		s.OverrideDestination = c.Bool("sniff-override-destination")
	}
	for name, dst := range map[string]*[]config.PortRange{"sniff-ports": &s.Ports, "sniff-server-first-ports": &s.ServerFirstPorts} {
		if !c.IsSet(name) {
			continue
		}
		if v := strings.TrimSpace(c.String(name)); v == "" {
			*dst = nil
			continue
		}
		p, err := config.ParsePorts(c.String(name))
		if err != nil {
			return usagef("--%s %v", name, err)
		}
		*dst = p
	}
	if c.IsSet("sniff-cidr") {
		s.CIDRs = nil
		for _, v := range c.StringSlice("sniff-cidr") {
			p, err := netip.ParsePrefix(v)
			if err != nil {
				a, aerr := netip.ParseAddr(v)
				if aerr != nil {
					return usagef("--sniff-cidr %q: want a prefix like 203.0.113.0/24 or an address", v)
				}
				p = netip.PrefixFrom(a, a.BitLen())
			}
			s.CIDRs = append(s.CIDRs, p.Masked())
		}
	}
	return nil
}

// sniffConfig is the router's sniffing, nil when it is off.
func (w *wiring) sniffConfig() *router.SniffConfig {
	if w.cfg.Sniff.Mode == config.SniffOff {
		return nil
	}
	return &router.SniffConfig{
		Want:                func(m *rules.Metadata) bool { ok, _ := w.sniffWant(m); return ok },
		Timeout:             w.cfg.Sniff.Timeout,
		OverrideDestination: w.cfg.Sniff.OverrideDestination,
	}
}

// sniffWant decides whether a flow to a real address, whose name is not
// known, waits for its name; why says which key decided, for explain.
func (w *wiring) sniffWant(m *rules.Metadata) (ok bool, why string) {
	s := &w.cfg.Sniff
	port := m.Dst.Port()
	switch {
	case s.Mode == config.SniffOff:
		return false, "off (sniff: false)"
	case m.Network == "tcp" && config.InPorts(s.ServerFirstPorts, port):
		return false, fmt.Sprintf("no: the server of port %d speaks first (sniff-server-first-ports); dialed at once by address", port)
	case len(s.Ports) > 0 && !config.InPorts(s.Ports, port):
		return false, fmt.Sprintf("no: port %d is not in sniff-ports", port)
	case len(s.CIDRs) > 0 && !inPrefixes(s.CIDRs, m.Dst.Addr()):
		return false, fmt.Sprintf("no: %s is not in sniff-cidrs", m.Dst.Addr())
	case s.Mode == config.SniffOn:
		return true, "yes (sniff: true)"
	case !w.live.Policy().NeedsDomain():
		return false, "no: no rule looks at the domain (sniff: auto)"
	case !w.live.Policy().NameCouldMatter(m):
		return false, "no: the rule its address matches comes before every domain rule (sniff: auto)"
	}
	return true, "yes: a domain rule could match it (sniff: auto)"
}

func inPrefixes(ps []netip.Prefix, a netip.Addr) bool {
	a = a.Unmap()
	for _, p := range ps {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// sniffDial tells, for explain, how a sniffed flow m (with its name in
// m.Host, or none) is carried after decision d.
func (w *wiring) sniffDial(m *rules.Metadata, d router.Decision) string {
	if d.Action != router.Proxy || d.Outbound == nil {
		return "nothing: the flow's handshake is already done, so it is reset right after its first bytes"
	}
	target, note := m.Dst.String(), ""
	switch l, local := d.Outbound.(router.LocalResolver); {
	case m.Host == "":
		note = "the address: no name was sniffed"
	case m.Network == "udp":
		note = "the address: QUIC datagrams go where the app sent them, so replies come from there"
	case local && l.ResolvesLocally():
		note = "the address: DIRECT never resolves a sniffed name again"
	case !w.cfg.Sniff.OverrideDestination:
		note = "the address (sniff-override-destination: false)"
	default:
		target = net.JoinHostPort(m.Host, strconv.Itoa(int(m.Dst.Port())))
		note = "the sniffed name (sniff-override-destination)"
	}
	return target + ", " + note
}
