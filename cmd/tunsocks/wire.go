package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"net/url"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/dns/dnsmessage"

	"github.com/tunsocks/tunsocks/config"
	"github.com/tunsocks/tunsocks/dns"
	"github.com/tunsocks/tunsocks/httpconnect"
	"github.com/tunsocks/tunsocks/internal/direct"
	"github.com/tunsocks/tunsocks/outbound"
	"github.com/tunsocks/tunsocks/procinfo"
	"github.com/tunsocks/tunsocks/router"
	"github.com/tunsocks/tunsocks/rules"
	"github.com/tunsocks/tunsocks/socksclient"
)

// wiring is what a config becomes: outbounds by name, the decider, and the
// fake-IP DNS when it is on.
type wiring struct {
	cfg       *config.Config
	direct    *outbound.Direct
	outbounds map[string]router.Outbound // by proxy or chain name
	fallback  router.Outbound            // cfg.Proxy, when no rules are given
	rs        *rules.Ruleset
	finder    *procinfo.Finder

	pool       *dns.Pool
	realNames  *realNames // real answers given for DIRECT names, IP -> name
	dnsServer  *dns.Server
	dnsHandler router.DNSHandler
	log        *slog.Logger
}

// dialer is anything that dials; socksclient and httpconnect take one as
// the way to their server.
type dialer interface {
	DialContext(ctx context.Context, network, address string) (net.Conn, error)
}

// newHop builds the client for one proxy URL, reached through forward.
func newHop(u *url.URL, forward dialer) (dialer, *socksclient.Client, error) {
	if u.Scheme == "http" {
		c, err := httpconnect.New(u, forward)
		return c, nil, err
	}
	c, err := socksclient.New(u, forward)
	return c, c, err
}

// httpOutbound carries TCP through an HTTP CONNECT proxy; it has no UDP.
type httpOutbound struct {
	name string
	d    dialer
}

func (h *httpOutbound) Name() string { return h.name }
func (h *httpOutbound) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	return h.d.DialContext(ctx, network, address)
}
func (h *httpOutbound) ListenPacket(context.Context) (router.PacketConn, error) {
	return nil, fmt.Errorf("%s is an HTTP CONNECT proxy: %w", h.name, router.ErrUDPUnsupported)
}

// buildOutbound makes the outbound for a chain of hops (one hop: a proxy).
func buildOutbound(name string, hops []*url.URL, d *direct.Dialer) (router.Outbound, error) {
	var forward dialer = d
	var last *socksclient.Client
	for _, u := range hops {
		next, sc, err := newHop(u, forward)
		if err != nil {
			return nil, fmt.Errorf("proxy %q: %w", name, err)
		}
		forward, last = next, sc
	}
	if last != nil && len(hops) == 1 {
		return outbound.NewSocks(name, last), nil
	}
	if last != nil && hops[len(hops)-1].Scheme != "http" {
		// A chain: TCP through every hop; UDP ASSOCIATE cannot cross a chain,
		// and the client says so.
		return outbound.NewSocks(name, last), nil
	}
	return &httpOutbound{name: name, d: forward}, nil
}

func wire(ctx context.Context, cfg *config.Config, d *direct.Dialer, log *slog.Logger) (*wiring, error) {
	w := &wiring{cfg: cfg, direct: &outbound.Direct{Dialer: d}, outbounds: map[string]router.Outbound{}, rs: cfg.Ruleset, log: log}
	for _, p := range cfg.Proxies {
		hops, err := cfg.Hops(p.Name)
		if err != nil {
			return nil, usageError{err}
		}
		out, err := buildOutbound(p.Name, hops, d)
		if err != nil {
			return nil, usageError{err}
		}
		w.outbounds[p.Name] = out
	}
	switch {
	case cfg.Proxy == "" || strings.EqualFold(cfg.Proxy, "direct"):
		w.fallback = w.direct
	case w.outbounds[cfg.Proxy] != nil:
		w.fallback = w.outbounds[cfg.Proxy]
	default:
		u, err := url.Parse(cfg.Proxy)
		if err != nil || u.Host == "" {
			return nil, usagef("proxy %q: want socks5://host:port, socks4://, socks4a://, http://, a proxy name or direct", cfg.Proxy)
		}
		out, err := buildOutbound(u.Scheme+"://"+u.Host, []*url.URL{u}, d)
		if err != nil {
			return nil, usageError{err}
		}
		w.fallback = out
	}
	if w.rs != nil && w.rs.Len() > 0 && w.rs.NeedsProcess() {
		w.finder = procinfo.NewFinder(2 * time.Second)
	}
	if err := w.wireDNS(ctx, d); err != nil {
		return nil, err
	}
	return w, nil
}

// hasRules reports whether flows are decided by rules (else all go to fallback).
func (w *wiring) hasRules() bool { return w.rs != nil && w.rs.Len() > 0 }

// lookupProcess is the rules' lazy process lookup.
func (w *wiring) lookupProcess(m *rules.Metadata) (string, int, bool) {
	if w.finder == nil || !m.Src.IsValid() {
		return "", -1, false // no socket to look up (a DNS name decision, explain)
	}
	path, uid, err := w.finder.LookupFlow(m.Network, m.Src, m.Dst)
	if err != nil {
		w.log.Debug("process lookup failed", "src", m.Src, "err", err)
		return "", -1, false
	}
	return path, uid, true
}

// match runs the rules; explain uses it too.
func (w *wiring) match(m *rules.Metadata) (router.Decision, rules.Match) {
	if !w.hasRules() {
		return router.Decision{Action: router.Proxy, Outbound: w.fallback, Rule: "default (no rules)"}, rules.Match{Index: -1}
	}
	mt := w.rs.Match(m, w.lookupProcess)
	d := router.Decision{Rule: mt.String()}
	switch mt.Action.Kind {
	case rules.Direct:
		d.Action, d.Outbound = router.Proxy, w.direct
	case rules.Reject:
		d.Action = router.Reject
	case rules.RejectDrop:
		d.Action = router.RejectDrop
	case rules.Proxy:
		d.Action, d.Outbound = router.Proxy, w.outbounds[mt.Action.Target]
		if d.Outbound == nil { // validated away; never a nil outbound
			d.Action = router.Reject
		}
	}
	return d, mt
}

func (w *wiring) decide(m *rules.Metadata) router.Decision {
	d, _ := w.match(m)
	return d
}

func (w *wiring) reverse(a netip.Addr) (string, bool) {
	if w.pool == nil {
		return "", false
	}
	return w.pool.Reverse(a)
}

func (w *wiring) realHost(a netip.Addr) (string, bool) { return w.realNames.lookup(a) }

// dnsEnabled: explicit setting, else on when a rule needs a domain.
func (w *wiring) dnsEnabled() bool {
	if w.cfg.DNS.Enable != nil {
		return *w.cfg.DNS.Enable
	}
	return w.hasRules() && w.rs.NeedsDomain()
}

func (w *wiring) wireDNS(ctx context.Context, d *direct.Dialer) error {
	if !w.dnsEnabled() {
		return nil
	}
	pool, err := dns.NewPool(w.cfg.DNS.FakeIPRange, w.cfg.DNS.FakeIPRange6, dns.PoolOptions{
		TTL: w.cfg.DNS.FakeIPTTL, CacheFile: w.cfg.DNS.CacheFile, Logger: w.log,
	})
	if err != nil {
		return usageError{fmt.Errorf("dns: %w", err)}
	}
	var filter *dns.Filter
	if len(w.cfg.DNS.FakeIPFilter) > 0 {
		if filter, err = dns.NewFilter(w.cfg.DNS.FakeIPFilter); err != nil {
			return usageError{fmt.Errorf("dns fake-ip-filter: %w", err)}
		}
	}
	var directRes, proxyRes dns.Resolver
	if len(w.cfg.DNS.Nameservers) > 0 {
		type nameserver struct {
			network string
			addr    netip.AddrPort
		}
		var nss []nameserver
		var direct, proxied []dns.Resolver
		for _, s := range w.cfg.DNS.Nameservers {
			network, addr, err := config.ParseNameserver(s)
			if err != nil {
				return usageError{fmt.Errorf("dns nameserver %q: %w", s, err)}
			}
			nss = append(nss, nameserver{network, addr})
			if network == "tcp" {
				direct = append(direct, dns.NewTCPResolver(addr.String(), d.DialContext, 5*time.Second))
			} else {
				direct = append(direct, dns.NewUDPResolver(addr.String(), d.DialContext, 5*time.Second))
			}
			// Real answers for proxied names travel as DNS over TCP
			// through the proxy that carries the resolver's own address
			// (or the default outbound): the query never leaves the host
			// in the clear.
			if via := w.outboundFor(addr); via != nil && via != router.Outbound(w.direct) {
				proxied = append(proxied, dns.NewTCPResolver(addr.String(), via.DialContext, 10*time.Second))
			}
		}
		// Several nameservers: each query tries them in turn, starting
		// with the one that answered last.
		directRes = dns.NewFallback(direct...)
		if len(proxied) > 0 {
			proxyRes = dns.NewFallback(proxied...)
		}
		// DIRECT flows known only by name (a fake IP whose flow a port or
		// process rule sent DIRECT) resolve through the same nameservers,
		// never through the system's resolver, which may point at us. Go's
		// resolver dials again for each retry; each dial takes the next
		// nameserver, so a dead one costs one attempt.
		var next atomic.Uint32
		res := &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, _, _ string) (net.Conn, error) {
			ns := nss[int(next.Add(1)-1)%len(nss)]
			return d.DialContext(ctx, ns.network, ns.addr.String())
		}}
		w.direct.Resolver = res
		d.Resolver = res
	} else {
		directRes = failingResolver{}
	}
	srv, err := dns.NewServer(dns.Config{
		Pool: pool, Filter: filter, Direct: directRes, Proxy: proxyRes, Logger: w.log.With("component", "dns"),
		Decide: func(host string) dns.Route {
			d, _ := w.match(&rules.Metadata{Network: "tcp", Host: host, UID: -1})
			if d.Action == router.Proxy && d.Outbound == router.Outbound(w.direct) {
				return dns.RouteDirect
			}
			return dns.RouteFakeIP // proxied and rejected names never resolve here
		},
	})
	if err != nil {
		return err
	}
	w.pool, w.dnsServer = pool, srv
	w.realNames = newRealNames(4096)
	w.dnsHandler = &dnsIntercept{srv: srv, addr4: pool.DNSAddr(), addr6: pool.DNSAddr6(), hijack: w.cfg.DNS.Hijack, names: w.realNames}
	return nil
}

// outboundFor is where a connection to ap would go by the rules (ignoring
// ports and processes), or the fallback.
func (w *wiring) outboundFor(ap netip.AddrPort) router.Outbound {
	d, _ := w.match(&rules.Metadata{Network: "tcp", Dst: ap, UID: -1})
	if d.Action == router.Proxy {
		return d.Outbound
	}
	return nil
}

// failingResolver answers SERVFAIL: no nameserver was configured.
type failingResolver struct{}

func (failingResolver) Exchange(context.Context, []byte) ([]byte, error) {
	return nil, errors.New("no nameserver configured (dns: nameserver:)")
}

// dnsIntercept claims queries to the DNS address inside the fake-IP range,
// or every query to port 53 when hijacking.
type dnsIntercept struct {
	srv          *dns.Server
	addr4, addr6 netip.Addr
	hijack       bool
	names        *realNames
}

func (h *dnsIntercept) Intercept(dst netip.AddrPort) bool {
	if dst.Port() != 53 {
		return false
	}
	a := dst.Addr().Unmap()
	return h.hijack || a == h.addr4 || (h.addr6.IsValid() && a == h.addr6)
}

func (h *dnsIntercept) Handle(ctx context.Context, q []byte) ([]byte, error) {
	resp, err := h.srv.Handle(ctx, q)
	if err == nil && resp != nil { // not for a SERVFAIL that comes with an error
		// A real address answered for a name (DIRECT or filtered) is
		// remembered, so a flow to it is still known by its name and the
		// name's rule applies, as it does for fake IPs.
		h.names.learn(resp)
	}
	return resp, err
}

// serveExtraDNS starts the optional plain UDP listener (dns: listen:).
func (w *wiring) serveExtraDNS(ctx context.Context, log *slog.Logger) error {
	if w.dnsServer == nil || w.cfg.DNS.Listen == "" {
		return nil
	}
	pc, err := net.ListenPacket("udp", w.cfg.DNS.Listen)
	if err != nil {
		return fmt.Errorf("dns listen: %w", err)
	}
	go func() {
		if err := w.dnsServer.ServePacket(ctx, pc); err != nil && ctx.Err() == nil {
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

func (w *wiring) summary() string {
	if !w.hasRules() {
		return w.fallback.Name()
	}
	names := make([]string, 0, len(w.outbounds))
	for n := range w.outbounds {
		names = append(names, n)
	}
	sort.Strings(names)
	return fmt.Sprintf("%d rules over DIRECT, %s", w.rs.Len(), strings.Join(names, ", "))
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
	return fmt.Sprintf("fake-IP %s %s, answering at %s:53", v4, v6, w.pool.DNSAddr())
}

// realNames remembers which name a real (non-fake) address was answered for,
// bounded, most recent answer wins.
type realNames struct {
	mu    sync.Mutex
	max   int
	names map[netip.Addr]realName
}

type realName struct {
	name string
	exp  time.Time
}

func newRealNames(max int) *realNames {
	return &realNames{max: max, names: make(map[netip.Addr]realName)}
}

// learn records the A and AAAA answers of a DNS response.
func (r *realNames) learn(resp []byte) {
	var p dnsmessage.Parser
	if _, err := p.Start(resp); err != nil {
		return
	}
	if err := p.SkipAllQuestions(); err != nil {
		return
	}
	now := time.Now()
	for {
		h, err := p.AnswerHeader()
		if err != nil {
			return
		}
		var ip netip.Addr
		switch h.Type {
		case dnsmessage.TypeA:
			a, err := p.AResource()
			if err != nil {
				return
			}
			ip = netip.AddrFrom4(a.A)
		case dnsmessage.TypeAAAA:
			a, err := p.AAAAResource()
			if err != nil {
				return
			}
			ip = netip.AddrFrom16(a.AAAA)
		default:
			if err := p.SkipAnswer(); err != nil {
				return
			}
			continue
		}
		ttl := max(time.Duration(h.TTL)*time.Second, time.Minute)
		name := strings.TrimSuffix(strings.ToLower(h.Name.String()), ".")
		r.mu.Lock()
		if len(r.names) >= r.max {
			for k, v := range r.names { // drop expired, else any one
				if now.After(v.exp) || len(r.names) >= r.max {
					delete(r.names, k)
				}
				if len(r.names) < r.max*3/4 {
					break
				}
			}
		}
		r.names[ip] = realName{name: name, exp: now.Add(ttl)}
		r.mu.Unlock()
	}
}

func (r *realNames) lookup(a netip.Addr) (string, bool) {
	if r == nil {
		return "", false
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	n, ok := r.names[a.Unmap()]
	if !ok || time.Now().After(n.exp) {
		return "", false
	}
	return n.name, true
}
