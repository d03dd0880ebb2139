package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"net/url"
	"os"
	"slices"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/tunsocks/tunsocks/config"
	"github.com/tunsocks/tunsocks/hostnet"
)

// This file wires hostnet (routing the host into the TUN) into 'tunsocks
// run', 'tunsocks cleanup' and 'tunsocks explain --route'. hostnet does
// all of the host's configuration; here flags become its Config.

// routeFlags are run's flags for routing this host (or devices behind it)
// into the TUN.
func routeFlags() []cli.Flag {
	env := func(name string) []string {
		return []string{"TUNSOCKS_" + strings.ToUpper(strings.ReplaceAll(name, "-", "_"))}
	}
	return []cli.Flag{
		&cli.BoolFlag{Name: "auto-route", Usage: "route every app of this host through tunsocks (Linux, root): policy rules, DNS capture, no loop; all removed on exit", EnvVars: env("auto-route")},
		&cli.BoolFlag{Name: "kill-switch", Usage: "if tunsocks dies, captured traffic fails at once (ENETUNREACH) instead of going direct, until it runs again or 'tunsocks cleanup'", EnvVars: env("kill-switch")},
		&cli.BoolFlag{Name: "lan-access", Value: true, Usage: "the LAN and other non-default routes of the main table stay direct", EnvVars: env("lan-access")},
		&cli.StringSliceFlag{Name: "exclude", Usage: "destination CIDR that goes direct (repeatable)", EnvVars: env("exclude")},
		&cli.StringSliceFlag{Name: "exclude-uid", Usage: "user id, or range N-M, whose sockets go direct (repeatable)", EnvVars: env("exclude-uid")},
		&cli.StringSliceFlag{Name: "include-cgroup", Usage: "with --auto-route, capture only sockets created in this cgroup v2, e.g. /user.slice/user-1000.slice/app.scope (repeatable)", EnvVars: env("include-cgroup")},
		&cli.StringSliceFlag{Name: "include-uid", Usage: "with --auto-route, capture only sockets of this user id or range N-M (repeatable)", EnvVars: env("include-uid")},
		&cli.StringFlag{Name: "dns-config", Value: config.DefaultDNSConfig, Usage: "the system's DNS: auto (systemd-resolved's, when it runs), resolved or none (DNS to port 53 is captured and answered anyway)", EnvVars: env("dns-config")},
		&cli.IntFlag{Name: "rule-priority", Value: config.DefaultRulePriority, Usage: "first priority of tunsocks' block of 9 policy rules", EnvVars: env("rule-priority")},
		&cli.IntFlag{Name: "route-table", Value: config.DefaultRouteTable, Usage: "tunsocks' routing table (it holds one default route into the TUN)", EnvVars: env("route-table")},
		&cli.StringFlag{Name: "gateway", Usage: "capture what devices that use this host as their gateway on this interface send (Linux, root)", EnvVars: env("gateway")},
		stateDirFlag(),
	}
}

// applyRouteFlags lets the route flags the user set override cfg.Route.
func applyRouteFlags(c *cli.Context, cfg *config.Config) error {
	r := &cfg.Route
	set := c.IsSet
	for name, dst := range map[string]*bool{"auto-route": &r.AutoRoute, "kill-switch": &r.KillSwitch, "lan-access": &r.LANAccess} {
		if set(name) {
			*dst = c.Bool(name)
		}
	}
	if set("exclude") {
		r.Exclude = nil
		for _, s := range c.StringSlice("exclude") {
			p, err := netip.ParsePrefix(strings.TrimSpace(s))
			if err != nil {
				a, aerr := netip.ParseAddr(strings.TrimSpace(s))
				if aerr != nil {
					return usagef("--exclude %q: want a CIDR like 10.0.0.0/8 or 2001:db8::/32", s)
				}
				p = netip.PrefixFrom(a, a.BitLen())
			}
			r.Exclude = append(r.Exclude, p.Masked())
		}
	}
	for name, dst := range map[string]*[]config.UIDRange{"exclude-uid": &r.ExcludeUID, "include-uid": &r.IncludeUID} {
		if !set(name) {
			continue
		}
		*dst = nil
		for _, s := range c.StringSlice(name) {
			u, err := config.ParseUIDRange(s)
			if err != nil {
				return usagef("--%s: %v", name, err)
			}
			*dst = append(*dst, u)
		}
	}
	if set("include-cgroup") {
		r.IncludeCgroup = c.StringSlice("include-cgroup")
	}
	if set("dns-config") {
		r.DNSConfig = c.String("dns-config")
	}
	if set("rule-priority") {
		r.RulePriority = c.Int("rule-priority")
	}
	if set("route-table") {
		r.RouteTable = c.Int("route-table")
	}
	if set("gateway") {
		r.Gateway = c.String("gateway")
	}
	return nil
}

// routing reports whether cfg asks tunsocks to route the host.
func routing(cfg *config.Config) bool { return cfg.Route.AutoRoute || cfg.Route.Gateway != "" }

// hostRoute is a run's host routing, from before the TUN exists to exit.
type hostRoute struct {
	cfg      hostnet.Config
	notice   io.Writer
	log      *slog.Logger
	pinned   map[string][]netip.Addr
	host     *hostnet.Host
	stateDir string
}

// prepareRoute is called before anything dials or the TUN is made: it
// settles the defaults routing implies (tunsocks' own sockets are marked,
// DNS to port 53 is answered with fake IPs), resolves the upstreams' names
// once (later the system's DNS may point at tunsocks) and clears a dead
// run's leftovers. It returns nil when cfg does not route.
func prepareRoute(ctx context.Context, cfg *config.Config, stateDir string, notice io.Writer, log *slog.Logger) (*hostRoute, error) {
	if !routing(cfg) {
		return nil, nil
	}
	if cfg.Tun.FD >= 0 {
		return nil, usagef("--auto-route and --gateway route into a TUN tunsocks creates; with --tun-fd the owner of the descriptor routes")
	}
	if err := hostnet.CheckDNSConfig(cfg.Route.DNSConfig); err != nil {
		return nil, usageError{err}
	}
	if cfg.Fwmark == 0 {
		cfg.Fwmark = hostnet.DefaultMark
	}
	// IPv6 is always captured with --auto-route, even when the upstream
	// has none (the app then gets a RST at once and falls back to IPv4):
	// the TUN needs an IPv6 address for that.
	if r := cfg.Route; r.AutoRoute && !slices.ContainsFunc(cfg.Tun.Addrs, func(p netip.Prefix) bool { return p.Addr().Is6() }) {
		v6 := netip.MustParsePrefix("fc00::1/18")
		if fr := cfg.DNS.FakeIPRange6; fr.IsValid() {
			v6 = netip.PrefixFrom(fr.Masked().Addr().Next(), fr.Bits())
		}
		cfg.Tun.Addrs = append(cfg.Tun.Addrs, v6)
		log.Info("--auto-route: the TUN gets an IPv6 address too, so IPv6 is captured rather than leaked", "addr", v6)
	}
	// Captured DNS (to any resolver, port 53) must be answered here.
	if cfg.DNS.Enable == nil {
		on := true
		cfg.DNS.Enable = &on
	}
	cfg.DNS.Hijack = true

	hr := &hostRoute{notice: notice, log: log, stateDir: stateDir, pinned: map[string][]netip.Addr{}}
	r := cfg.Route
	o := hostnet.Options{Mark: cfg.Fwmark, Table: r.RouteTable, Priority: r.RulePriority, AutoRoute: r.AutoRoute,
		KillSwitch: r.KillSwitch, LANAccess: r.LANAccess, Exclude: r.Exclude, Gateway: r.Gateway}
	for _, u := range r.ExcludeUID {
		o.ExcludeUIDs = append(o.ExcludeUIDs, hostnet.UIDRange{Start: u.Start, End: u.End})
	}
	for _, u := range r.IncludeUID {
		o.IncludeUIDs = append(o.IncludeUIDs, hostnet.UIDRange{Start: u.Start, End: u.End})
	}
	hr.cfg = hostnet.Config{Options: o, IncludeCgroupPaths: r.IncludeCgroup, DNSConfig: r.DNSConfig, StateDir: stateDir, Logger: log}
	if r.DNSConfig == config.DefaultDNSConfig {
		hr.cfg.DNSConfig = "" // auto: hostnet decides by mode
	}
	hr.cfg.Tun = cfg.Tun.Name
	// A dead run's kill switch would make the names unresolvable: clear
	// its leftovers first.
	if err := hostnet.Recover(hr.cfg); err != nil {
		return nil, err
	}
	ups, err := hr.resolveUpstreams(ctx, cfg)
	if err != nil {
		return nil, err
	}
	hr.cfg.Upstreams = ups
	return hr, nil
}

// resolveUpstreams finds the address of every upstream proxy, pinning
// names to what they resolve to now.
func (hr *hostRoute) resolveUpstreams(ctx context.Context, cfg *config.Config) ([]netip.AddrPort, error) {
	var urls []*url.URL
	if cfg.ProxyURL != nil {
		urls = append(urls, cfg.ProxyURL)
	}
	for _, p := range cfg.Proxies {
		if p.URL != nil {
			urls = append(urls, p.URL)
		}
	}
	var out []netip.AddrPort
	for _, u := range urls {
		host, port := u.Hostname(), u.Port()
		if port == "" {
			port = "1080"
			if u.Scheme == "http" {
				port = "80"
			}
		}
		pn, err := net.LookupPort("tcp", port)
		if err != nil {
			return nil, usagef("proxy %s: port %q: %v", u.Redacted(), port, err)
		}
		addrs := []netip.Addr{}
		if a, err := netip.ParseAddr(host); err == nil {
			addrs = append(addrs, a)
		} else {
			if addrs, err = net.DefaultResolver.LookupNetIP(ctx, "ip", host); err != nil {
				return nil, fmt.Errorf("proxy %s: resolving %s before routing the host: %w", u.Redacted(), host, err)
			}
			hr.pinned[host] = addrs
		}
		for _, a := range addrs {
			out = append(out, netip.AddrPortFrom(a.Unmap(), uint16(pn)))
		}
	}
	return out, nil
}

// install routes the host into the TUN dev, whose fake-IP DNS answers at
// dns, and prints what it installed and how to undo it.
func (hr *hostRoute) install(ctx context.Context, dev string, addrs []netip.Prefix, dns []netip.Addr) error {
	hr.cfg.Tun, hr.cfg.TunAddrs, hr.cfg.DNS = dev, addrs, dns
	h, err := hostnet.Install(ctx, hr.cfg)
	if err != nil {
		return err
	}
	hr.host = h
	block := hostnet.Block(h.State())
	if gw := hr.cfg.Gateway; gw != "" {
		block = gatewayHint(gw) + "\n" + block
	}
	fmt.Fprintln(hr.notice, block) // one write: one block
	return nil
}

// gatewayHint tells what to set on the devices behind interface gw.
func gatewayHint(gw string) string {
	var mine []string
	if ifc, err := net.InterfaceByName(gw); err == nil {
		as, _ := ifc.Addrs()
		for _, a := range as {
			if p, err := netip.ParsePrefix(a.String()); err == nil && p.Addr().Is4() {
				mine = append(mine, p.Addr().String())
			}
		}
	}
	if len(mine) == 0 {
		return fmt.Sprintf("gateway mode on %s: %s has no IPv4 address; give it one on the devices' network, then set it as their gateway and DNS server", gw, gw)
	}
	return fmt.Sprintf("gateway mode on %s: on each device set gateway %s and DNS server %s (by hand, or in your DHCP server: router and dns-server options)", gw, mine[0], mine[0])
}

// close removes everything install installed.
func (hr *hostRoute) close() error {
	if hr == nil || hr.host == nil {
		return nil
	}
	if err := hr.host.Close(); err != nil {
		return fmt.Errorf("restoring the host's network: %w (run '%s')", err, hostnet.UndoHint(hr.cfg.Tun))
	}
	return nil
}

// explainRoute is 'tunsocks explain --route HOST:PORT': which of the
// installed policy rules catches a flow from this host.
func explainRoute(c *cli.Context, target string) error {
	host, port, err := net.SplitHostPort(target)
	if err != nil {
		return usagef("--route %q: want HOST:PORT, like example.com:443 or 10.0.0.1:22", target)
	}
	pn, err := net.LookupPort(c.String("network"), port)
	if err != nil {
		return usagef("--route %q: port: %v", target, err)
	}
	var addrs []netip.Addr
	if a, err := netip.ParseAddr(host); err == nil {
		addrs = []netip.Addr{a}
	} else if addrs, err = net.DefaultResolver.LookupNetIP(c.Context, "ip", host); err != nil {
		return fmt.Errorf("--route: resolving %s: %w", host, err)
	}
	uid := c.Int("uid")
	if uid < 0 {
		uid = os.Getuid()
	}
	out := c.App.Writer
	for _, a := range addrs {
		f := hostnet.Flow{Network: c.String("network"), Dst: netip.AddrPortFrom(a.Unmap(), uint16(pn)), UID: uint32(uid)}
		v, st, err := hostnet.ExplainHere(c.String("state-dir"), c.String("tun"), f)
		if err != nil {
			return err
		}
		if st == nil {
			fmt.Fprintf(out, "no tunsocks run routes this host (nothing in %s for this network namespace): %s goes by the system's routes\n", c.String("state-dir"), f.Dst)
			return nil
		}
		fmt.Fprintf(out, "flow:  %s %s (uid %d) from this host\n", f.Network, f.Dst, uid)
		fmt.Fprintf(out, "route: %s\n", v)
	}
	return nil
}
