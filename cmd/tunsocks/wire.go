package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"time"

	"github.com/tunsocks/tunsocks/config"
	"github.com/tunsocks/tunsocks/dns"
	"github.com/tunsocks/tunsocks/internal/direct"
	"github.com/tunsocks/tunsocks/outbound"
	"github.com/tunsocks/tunsocks/policy"
	"github.com/tunsocks/tunsocks/procinfo"
	"github.com/tunsocks/tunsocks/router"
)

// wiring is what a config becomes: the policy over its outbounds, and the
// fake-IP DNS when it is on.
type wiring struct {
	cfg    *config.Config
	policy *policy.Policy // the policy the config gave at start
	live   *policy.Live   // the policy in force: reloads swap it
	pool   *dns.Pool      // nil when DNS is off
	names  *dns.RealNames // nil when DNS is off
	dns    *dns.Server    // nil when DNS is off
	hook   *dns.Intercept // the router's DNS hook; nil when DNS is off
	d      *direct.Dialer
	opts   wireOptions
}

// wireOptions say what a command needs of the wiring.
type wireOptions struct {
	// dns builds the fake-IP pool (loading its cache file) and the DNS
	// server when the config turns DNS on; explain does without.
	dns bool
	// process looks up the process of a flow for process rules.
	process bool
	// lookup, when set, is how: exec looks sockets up in its sandbox's
	// network namespace. nil: a Finder of this one.
	lookup policy.ProcessLookup
	// dnsObserve, when set, is told of every DNS query answered (metrics).
	dnsObserve func(qtype, answer string)
}

// wire builds the outbounds of cfg over d, the policy and, if asked, the
// DNS. When DNS is on with nameservers, d resolves names through them too.
func wire(cfg *config.Config, d *direct.Dialer, log *slog.Logger, opts wireOptions) (*wiring, error) {
	w := &wiring{cfg: cfg, d: d, opts: opts}
	dnsOn := opts.dns && dnsEnabled(cfg)
	if dnsOn && len(cfg.DNS.Servers) > 0 {
		// DIRECT flows known only by name (a fake IP a port or process
		// rule sent DIRECT), and proxy hosts given by name, resolve
		// through the configured nameservers, never through the system's
		// resolver, which may point at us.
		d.Resolver = dns.GoResolver(cfg.DNS.Servers, d.DialContext)
	}
	if dnsOn {
		pool, err := dns.NewPool(cfg.DNS.FakeIPRange, cfg.DNS.FakeIPRange6, dns.PoolOptions{
			TTL: cfg.DNS.FakeIPTTL, CacheFile: cfg.DNS.CacheFile, Logger: log,
		})
		if err != nil {
			return nil, usageError{fmt.Errorf("dns: %w", err)}
		}
		w.pool, w.names = pool, dns.NewRealNames(0, pool)
	}
	var err error
	if w.policy, err = w.buildPolicy(cfg, log); err != nil {
		return nil, err
	}
	w.live = policy.NewLive(w.policy)
	if dnsOn {
		if err := w.wireDNS(d, w.names, log); err != nil {
			return nil, err
		}
	}
	return w, nil
}

// buildPolicy builds the outbounds of cfg and the policy over them, on the
// wiring's dialer, fake-IP pool and real-name table (which a reload
// keeps: apps hold fake IPs across it).
func (w *wiring) buildPolicy(cfg *config.Config, log *slog.Logger) (*policy.Policy, error) {
	d := w.d
	direct := &outbound.Direct{Dialer: d, Resolver: d.Resolver}
	outbounds := map[string]router.Outbound{}
	for _, p := range cfg.Proxies {
		hops, err := cfg.Hops(p.Name)
		if err != nil {
			return nil, usageError{err}
		}
		if outbounds[p.Name], err = outbound.Chain(p.Name, d, hops...); err != nil {
			return nil, usageError{err}
		}
	}
	pc := policy.Config{Rules: cfg.Ruleset, Outbounds: outbounds, Direct: direct, Logger: log}
	switch u := cfg.ProxyURL; {
	case u != nil:
		out, err := outbound.Chain(u.Scheme+"://"+u.Host, d, u)
		if err != nil {
			return nil, usageError{err}
		}
		pc.Default = out
	case cfg.Proxy == "" || strings.EqualFold(cfg.Proxy, "direct"):
		pc.Default = direct
	default:
		pc.Default = outbounds[cfg.Proxy]
	}
	if w.opts.process && cfg.Ruleset != nil && cfg.Ruleset.NeedsProcess() {
		pc.Process = w.opts.lookup
		if pc.Process == nil {
			pc.Process = procinfo.NewFinder(2 * time.Second).LookupOwner
		}
	}
	if w.pool != nil {
		pc.Pool, pc.RealNames, pc.Nameservers = w.pool, w.names, cfg.DNS.Servers
	}
	return policy.New(pc)
}

// dnsEnabled: explicit setting, else on when a rule needs a domain.
func dnsEnabled(cfg *config.Config) bool {
	if cfg.DNS.Enable != nil {
		return *cfg.DNS.Enable
	}
	if cfg.WireGuard != nil {
		return true // phones' names become fake IPs, so a CONNECT carries the name
	}
	return cfg.Ruleset != nil && cfg.Ruleset.NeedsDomain()
}

// wireDNS builds the DNS server over the pool, deciding names by the
// policy: DIRECT and filtered names resolved by the nameservers, through
// d; other queries of proxied names through their proxy.
func (w *wiring) wireDNS(d *direct.Dialer, names *dns.RealNames, log *slog.Logger) error {
	cfg := w.cfg
	var filter *dns.Filter
	if len(cfg.DNS.FakeIPFilter) > 0 {
		var err error
		if filter, err = dns.NewFilter(cfg.DNS.FakeIPFilter); err != nil {
			return usageError{fmt.Errorf("dns fake-ip-filter: %w", err)}
		}
	}
	var directRes dns.Resolver = failingResolver{}
	if len(cfg.DNS.Servers) > 0 {
		directRes = dns.NewNameservers(cfg.DNS.Servers, d.DialContext, 5*time.Second)
	}
	srv, err := dns.NewServer(dns.Config{
		Pool: w.pool, Filter: filter, Direct: directRes, Names: names,
		Decide: w.live.DNSRoute, ProxyFor: w.live.DNSResolver, Logger: log.With("component", "dns"),
		Observe: w.opts.dnsObserve,
	})
	if err != nil {
		return err
	}
	w.dns, w.hook = srv, dns.NewIntercept(srv, cfg.DNS.Hijack)
	return nil
}

// failingResolver answers SERVFAIL: no nameserver was configured.
type failingResolver struct{}

func (failingResolver) Exchange(context.Context, []byte) ([]byte, error) {
	return nil, errors.New("no nameserver configured (dns: nameserver:)")
}

// routerConfig is the router's part of the wiring.
func (w *wiring) routerConfig() router.Config {
	rc := router.Config{Decide: w.live.Decide, ReverseHost: w.live.ReverseHost, RealHost: w.live.RealHost,
		AcquireHost: w.live.AcquireHost, ReleaseHost: w.live.ReleaseHost, DialReason: outbound.DialReason}
	if w.hook != nil {
		rc.DNS = w.hook
	}
	return rc
}

// serveExtraDNS starts the optional plain UDP listener (dns: listen:).
func (w *wiring) serveExtraDNS(ctx context.Context, log *slog.Logger) error {
	if w.dns == nil || w.cfg.DNS.Listen == "" {
		return nil
	}
	pc, err := net.ListenPacket("udp", w.cfg.DNS.Listen)
	if err != nil {
		return fmt.Errorf("dns listen: %w", err)
	}
	go func() {
		if err := w.dns.ServePacket(ctx, pc); err != nil && ctx.Err() == nil {
			log.Warn("dns listener stopped", "err", err)
		}
	}()
	return nil
}

func (w *wiring) close(log *slog.Logger) {
	if w.pool != nil && w.cfg.DNS.CacheFile != "" {
		if err := w.pool.Save(); err != nil {
			log.Warn("saving the fake-IP cache", "file", w.cfg.DNS.CacheFile, "err", err)
		}
	}
}

// dnsAddrs are the addresses the fake-IP DNS answers at on the TUN.
func (w *wiring) dnsAddrs() []netip.Addr {
	if w.pool == nil {
		return nil
	}
	out := []netip.Addr{w.pool.DNSAddr()}
	if a := w.pool.DNSAddr6(); a.IsValid() {
		out = append(out, a)
	}
	return out
}

func (w *wiring) dnsSummary() string {
	if w.pool == nil {
		return "off"
	}
	v4, v6 := w.pool.Prefixes()
	return fmt.Sprintf("fake-IP %s %s, answering at %s:53 (UDP and TCP)", v4, v6, w.pool.DNSAddr())
}
