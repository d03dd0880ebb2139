package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/tunsocks/tunsocks/config"
	"github.com/tunsocks/tunsocks/internal/direct"
	"github.com/tunsocks/tunsocks/router"
	"github.com/tunsocks/tunsocks/rules"
	"github.com/tunsocks/tunsocks/socksserver"
	"github.com/tunsocks/tunsocks/stun"
)

// serverConfig is everything 'tunsocks server' needs, parsed and validated.
type serverConfig struct {
	Listen string
	Grace  time.Duration
	Server socksserver.Config
	// STUN, when valid, runs an RFC 5780 responder on these two
	// addresses (and their crossed IP/port pairs) beside the server.
	STUN, STUNAlt netip.AddrPort
	// Rules, when set, is the config whose policy decides every request
	// (--config); nil dials every request directly.
	Rules *config.Config
}

func serverFlags() []cli.Flag {
	env := func(name string) []string {
		return []string{"TUNSOCKS_" + strings.ToUpper(strings.ReplaceAll(name, "-", "_"))}
	}
	return append([]cli.Flag{
		&cli.StringFlag{Name: "config", Aliases: []string{"c"}, Usage: "route every request by the rules and proxies of this tunsocks config (as 'tunsocks run --config' does): DIRECT, REJECT (reply 0x02), a proxy or a chain", EnvVars: env("config")},
		&cli.StringFlag{Name: "listen", Value: "127.0.0.1:1080", Usage: "address to listen on, host:port; a non-loopback address needs --user/--users or --open", EnvVars: env("listen")},
		&cli.StringSliceFlag{Name: "user", Usage: "require SOCKS5 username/password auth; NAME:PASSWORD (repeatable; in the env var, comma-separated)", EnvVars: env("user")},
		&cli.StringFlag{Name: "users", Usage: "file of NAME:PASSWORD lines (# comments) to require SOCKS5 username/password auth", EnvVars: env("users")},
		&cli.BoolFlag{Name: "open", Usage: "allow listening on a non-loopback address without authentication", EnvVars: env("open")},
		&cli.BoolFlag{Name: "socks4-userid-must-match", Usage: "serve SOCKS4 when auth is on, if the USERID names a user (SOCKS4 carries no password)", EnvVars: env("socks4-userid-must-match")},
		&cli.StringSliceFlag{Name: "allow-client", Usage: "serve only clients in this network, CIDR or IP (repeatable; default all)", EnvVars: env("allow-client")},
		&cli.StringSliceFlag{Name: "deny-dest", Usage: "refuse destinations in this network, CIDR or IP (repeatable; CONNECT targets, BIND peers, UDP datagrams both ways)", EnvVars: env("deny-dest")},
		&cli.BoolFlag{Name: "allow-loopback", Usage: "allow destinations on this host: loopback, its own addresses (by default refused, reply 0x02: no reaching loopback-only services, no CONNECT to the server itself)", EnvVars: env("allow-loopback")},
		&cli.StringSliceFlag{Name: "deny-port", Usage: "refuse destination port N or range N-M (repeatable)", EnvVars: env("deny-port")},
		&cli.StringFlag{Name: "external-addr", Usage: "IP address to report in BIND and UDP ASSOCIATE replies (behind NAT)", EnvVars: env("external-addr")},
		&cli.DurationFlag{Name: "handshake-timeout", Value: socksserver.DefaultHandshakeTimeout, Usage: "drop clients that have not completed their request in this time", EnvVars: env("handshake-timeout")},
		&cli.DurationFlag{Name: "idle-timeout", Value: socksserver.DefaultIdleTimeout, Usage: "close TCP relays idle this long (0: never)", EnvVars: env("idle-timeout")},
		&cli.DurationFlag{Name: "bind-timeout", Value: socksserver.DefaultBindTimeout, Usage: "how long a BIND waits for its incoming connection", EnvVars: env("bind-timeout")},
		&cli.DurationFlag{Name: "udp-idle-timeout", Value: socksserver.DefaultUDPIdleTimeout, Usage: "end UDP associations idle this long (0: only when the control connection closes)", EnvVars: env("udp-idle-timeout")},
		&cli.IntFlag{Name: "max-conns", Usage: "serve at most this many requests at once: relays, BINDs, UDP associations (0: unlimited); connections still in their handshake do not count", EnvVars: env("max-conns")},
		&cli.IntFlag{Name: "max-handshakes", Value: socksserver.DefaultMaxHandshakes, Usage: "connections in their handshake at once; when full, a new one closes the oldest (-1: unlimited)", EnvVars: env("max-handshakes")},
		&cli.IntFlag{Name: "max-handshakes-per-client", Value: socksserver.DefaultMaxHandshakesPerClient, Usage: "a client address's share (IPv4 address, IPv6 /64): over it, its new connection closes its oldest handshake if that has lasted 2s (-1: unlimited)", EnvVars: env("max-handshakes-per-client")},
		&cli.IntFlag{Name: "auth-failures", Value: socksserver.DefaultAuthFailureLimit, Usage: "failed authentications a client address may make per minute; beyond, its attempts are refused unchecked while it keeps trying (-1: unlimited)", EnvVars: env("auth-failures")},
		&cli.DurationFlag{Name: "auth-failure-delay", Value: socksserver.DefaultAuthFailureDelay, Usage: "delay before answering a failed authentication, doubled with each recent failure of the client address, at most " + socksserver.MaxAuthFailureDelay.String() + " (0: none)", EnvVars: env("auth-failure-delay")},
		&cli.DurationFlag{Name: "grace", Value: 10 * time.Second, Usage: "on SIGINT/SIGTERM, let open relays finish for this long", EnvVars: env("grace")},
		&cli.StringFlag{Name: "stun", Usage: "also run an RFC 5780 STUN responder on IP1:PORT1,IP2:PORT2 (two IPs, two ports; for 'tunsocks check --stun')", EnvVars: env("stun")},
	}, serverTestFlags()...)
}

// serverTestFlags make the server misbehave or emulate a NAT on purpose,
// so that every verdict of 'tunsocks check' can be reproduced offline.
func serverTestFlags() []cli.Flag {
	const cat = "Test switches (emulate other servers; not for production)"
	return []cli.Flag{
		&cli.StringFlag{Name: "test-udp-mapping", Category: cat, Usage: "UDP relay mapping: eim (default), adm or apdm (one outbound socket per destination IP, or IP and port: a symmetric NAT)"},
		&cli.StringFlag{Name: "test-udp-filtering", Category: cat, Usage: "UDP relay filtering: eif (default), adf or apdf (drop answers from IPs, or IPs and ports, not sent to)"},
		&cli.BoolFlag{Name: "test-bnd-zero", Category: cat, Usage: "reply BND.ADDR 0.0.0.0 (or ::) to CONNECT and UDP ASSOCIATE"},
		&cli.BoolFlag{Name: "test-accept-bad-password", Category: cat, Usage: "accept any username and password (needs --user or --users)"},
		&cli.BoolFlag{Name: "test-connect-only-443", Category: cat, Usage: "refuse CONNECT to every port but 443 (reply 0x02)"},
	}
}

func parseServerConfig(c *cli.Context) (*serverConfig, error) {
	sc := &serverConfig{Listen: c.String("listen"), Grace: c.Duration("grace")}
	cfg := &sc.Server

	host, port, err := net.SplitHostPort(sc.Listen)
	if err != nil || port == "" {
		return nil, usagef("--listen %q: want host:port, like 127.0.0.1:1080 or [::1]:1080", sc.Listen)
	}

	users := map[string]string{}
	if path := c.String("users"); path != "" {
		f, err := os.Open(path)
		if err != nil {
			return nil, usagef("--users: %v", err)
		}
		users, err = socksserver.LoadUsers(f, path)
		f.Close()
		if err != nil {
			return nil, usagef("--users: %v", err)
		}
	}
	for _, s := range c.StringSlice("user") {
		name, pass, ok := strings.Cut(s, ":")
		if !ok || name == "" || pass == "" || len(name) > 255 || len(pass) > 255 {
			return nil, usagef("--user %q: want NAME:PASSWORD, each 1 to 255 bytes", redactUser(s))
		}
		if _, dup := users[name]; dup {
			return nil, usagef("--user: user %q is given twice", name)
		}
		users[name] = pass
	}
	if len(users) > 0 {
		cfg.Users = users
	}
	cfg.Socks4UserMustMatch = c.Bool("socks4-userid-must-match")
	if cfg.Socks4UserMustMatch && len(users) == 0 {
		return nil, usagef("--socks4-userid-must-match needs users (--user or --users)")
	}

	if !listenIsLoopback(host) && len(users) == 0 && !c.Bool("open") {
		where := "a non-loopback address"
		if a, err := netip.ParseAddr(host); host == "" || (err == nil && a.IsUnspecified()) {
			where = "every interface"
		}
		return nil, usagef("refusing to listen on %s (%s) without authentication: anyone who can reach it could use this proxy. "+
			"Add --user NAME:PASSWORD or --users FILE, or --open if an open proxy is intended (--allow-client can narrow who may use it)", sc.Listen, where)
	}

	prefixes := func(flag string) ([]netip.Prefix, error) {
		var out []netip.Prefix
		for _, s := range c.StringSlice(flag) {
			p, err := socksserver.ParsePrefix(s)
			if err != nil {
				return nil, usagef("--%s: %v", flag, err)
			}
			out = append(out, p)
		}
		return out, nil
	}
	if cfg.AllowClients, err = prefixes("allow-client"); err != nil {
		return nil, err
	}
	if cfg.DenyDest, err = prefixes("deny-dest"); err != nil {
		return nil, err
	}
	for _, s := range c.StringSlice("deny-port") {
		r, err := socksserver.ParsePortRange(s)
		if err != nil {
			return nil, usagef("--deny-port: %v", err)
		}
		cfg.DenyPorts = append(cfg.DenyPorts, r)
	}
	if s := c.String("external-addr"); s != "" {
		a, err := netip.ParseAddr(s)
		if err != nil || a.Zone() != "" {
			return nil, usagef("--external-addr %q: want an IP address like 203.0.113.7", s)
		}
		cfg.ExternalAddr = a.Unmap()
	}

	positive := func(name string) (time.Duration, error) {
		d := c.Duration(name)
		if d <= 0 {
			return 0, usagef("--%s %v: want a positive duration like 30s", name, d)
		}
		return d, nil
	}
	// 0 disables an idle timer on the command line; the library spells
	// that as a negative duration (its 0 means "default").
	optional := func(name string) (time.Duration, error) {
		d := c.Duration(name)
		if d < 0 {
			return 0, usagef("--%s %v: want a duration like 5m, or 0 to disable", name, d)
		}
		if d == 0 {
			return -1, nil
		}
		return d, nil
	}
	if cfg.HandshakeTimeout, err = positive("handshake-timeout"); err != nil {
		return nil, err
	}
	if cfg.BindTimeout, err = positive("bind-timeout"); err != nil {
		return nil, err
	}
	if cfg.IdleTimeout, err = optional("idle-timeout"); err != nil {
		return nil, err
	}
	if cfg.UDPIdleTimeout, err = optional("udp-idle-timeout"); err != nil {
		return nil, err
	}
	if cfg.MaxConns = c.Int("max-conns"); cfg.MaxConns < 0 {
		return nil, usagef("--max-conns %d: want 0 (unlimited) or a positive number", cfg.MaxConns)
	}
	// -1 means unlimited on the command line; the library's 0 means its
	// default, which the flags carry as their default value.
	budget := func(name string) (int, error) {
		n := c.Int(name)
		if n < -1 || n == 0 {
			return 0, usagef("--%s %d: want a positive number, or -1 for unlimited", name, n)
		}
		return n, nil
	}
	if cfg.MaxHandshakes, err = budget("max-handshakes"); err != nil {
		return nil, err
	}
	if cfg.MaxHandshakesPerClient, err = budget("max-handshakes-per-client"); err != nil {
		return nil, err
	}
	if cfg.AuthFailureLimit, err = budget("auth-failures"); err != nil {
		return nil, err
	}
	switch d := c.Duration("auth-failure-delay"); {
	case d < 0 || d > socksserver.MaxAuthFailureDelay:
		return nil, usagef("--auth-failure-delay %v: want 0 (none) up to %v", d, socksserver.MaxAuthFailureDelay)
	case d == 0:
		cfg.AuthFailureDelay = -1
	default:
		cfg.AuthFailureDelay = d
	}
	cfg.DenyLoopback = !c.Bool("allow-loopback")
	if sc.Grace < 0 {
		return nil, usagef("--grace %v: want a duration like 10s, or 0 to close relays at once", sc.Grace)
	}
	if err := parseServerTestFlags(c, sc); err != nil {
		return nil, err
	}
	if path := c.String("config"); path != "" {
		if sc.Rules, err = config.Load(path); err != nil {
			return nil, usageError{err}
		}
		if sc.Rules.Proxy == "" && len(sc.Rules.Rules) == 0 {
			return nil, usagef("--config %s: nothing says where requests go: give it proxy: or rules:", path)
		}
	}
	return sc, nil
}

// parseServerTestFlags reads --stun and the test switches.
func parseServerTestFlags(c *cli.Context, sc *serverConfig) error {
	if s := c.String("stun"); s != "" {
		p, a, err := stun.ParseServerAddrs(s)
		if err != nil {
			return usagef("--stun: %v", err)
		}
		sc.STUN, sc.STUNAlt = p, a
	}
	em := &sc.Server.Emulate
	for _, f := range []struct {
		name string
		dst  *stun.Behaviour
	}{{"test-udp-mapping", &em.UDPMapping}, {"test-udp-filtering", &em.UDPFiltering}} {
		if s := c.String(f.name); s != "" {
			b, err := stun.ParseBehaviour(s)
			if err != nil {
				return usagef("--%s %v", f.name, err)
			}
			*f.dst = b
		}
	}
	em.BoundZero = c.Bool("test-bnd-zero")
	em.ConnectOnly443 = c.Bool("test-connect-only-443")
	em.AcceptBadPassword = c.Bool("test-accept-bad-password")
	if em.AcceptBadPassword && len(sc.Server.Users) == 0 {
		return usagef("--test-accept-bad-password needs users (--user or --users)")
	}
	return nil
}

// serverFrontDoor is the dialer of a server that obeys cfg's policy: each
// request is decided like a captured flow, as inbound type socks named
// "socks", with the client's address as its source and the authenticated
// user as its user. The server has no fake-IP DNS and no process lookups.
func serverFrontDoor(cfg *config.Config, d *direct.Dialer, log *slog.Logger) (*router.FrontDoor, string, error) {
	w, err := wire(cfg, d, log, wireOptions{})
	if err != nil {
		return nil, "", err
	}
	rc := w.routerConfig()
	rc.DialTimeout, rc.Logger = cfg.DialTimeout, log
	rt, err := router.New(rc)
	if err != nil {
		return nil, "", err
	}
	fd := rt.FrontDoor(router.Inbound{Type: rules.InSocks, Name: "socks"}, func(ctx context.Context) (netip.AddrPort, string) {
		r, _ := socksserver.RequestFromContext(ctx)
		return r.Client, r.User
	})
	return fd, w.policy.Summary(), nil
}

// redactUser hides the password of a NAME:PASSWORD flag value.
func redactUser(s string) string {
	if name, _, ok := strings.Cut(s, ":"); ok {
		return name + ":***"
	}
	return s
}

// listenIsLoopback reports whether a listen host is reachable only from
// this machine. An empty host (every interface) and names other than
// "localhost" count as reachable from elsewhere.
func listenIsLoopback(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	a, err := netip.ParseAddr(host)
	return err == nil && a.Unmap().IsLoopback()
}

func serverCommand() *cli.Command {
	return &cli.Command{
		Name:  "server",
		Usage: "run a SOCKS4/4a/5 server",
		Description: "Serves SOCKS4, SOCKS4a and SOCKS5 (CONNECT, BIND, UDP ASSOCIATE) with optional\n" +
			"username/password authentication, dialing directly from this host, or, with --config,\n" +
			"through the rules and proxies of a tunsocks config (IN-TYPE socks, IN-USER the SOCKS user).\n" +
			"Runs until SIGINT or SIGTERM, then stops accepting and lets open relays finish within --grace.",
		Flags: serverFlags(),
		Action: func(c *cli.Context) error {
			log, err := newLogger(c)
			if err != nil {
				return err
			}
			sc, err := parseServerConfig(c)
			if err != nil {
				return err
			}
			return runServer(c.Context, sc, log)
		},
	}
}

// runServer serves until ctx is done, then shuts down gracefully.
func runServer(ctx context.Context, sc *serverConfig, log *slog.Logger) error {
	cfg := sc.Server
	cfg.Dialer = &direct.Dialer{}
	cfg.Logger = log
	outbounds := "direct"
	if sc.Rules != nil {
		d := &direct.Dialer{Mark: sc.Rules.Fwmark, Interface: sc.Rules.OutInterface, Timeout: sc.Rules.DialTimeout}
		fd, summary, err := serverFrontDoor(sc.Rules, d, log)
		if err != nil {
			return err
		}
		cfg.Dialer, outbounds = fd, summary
	}
	srv, err := socksserver.New(cfg)
	if err != nil {
		return usageError{err}
	}
	ln, err := socksserver.Listen(ctx, "tcp", sc.Listen)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	log.Info("SOCKS server listening", "addr", ln.Addr().String(), "auth", len(cfg.Users) > 0, "users", len(cfg.Users), "outbound", outbounds)
	if sc.STUN.IsValid() {
		st, err := stun.Listen(ctx, nil, sc.STUN, sc.STUNAlt, log)
		if err != nil {
			ln.Close()
			return err
		}
		stunDone := make(chan struct{})
		go func() { st.Serve(context.WithoutCancel(ctx)); close(stunDone) }()
		defer func() { st.Close(); <-stunDone }()
		log.Info("STUN responder listening", "primary", sc.STUN.String(), "alternate", sc.STUNAlt.String())
	}
	if em := cfg.Emulate; em != (socksserver.Emulation{}) {
		log.Warn("test switches on: the server emulates other servers' behaviour", "udp_mapping", em.UDPMapping.String(), "udp_filtering", em.UDPFiltering.String(),
			"bnd_zero", em.BoundZero, "accept_bad_password", em.AcceptBadPassword, "connect_only_443", em.ConnectOnly443)
	}

	// Serve outlives the signal: after it, relays get the grace period.
	serveCtx, cancelServe := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelServe()
	served := make(chan error, 1)
	go func() { served <- srv.Serve(serveCtx, ln) }()
	select {
	case err := <-served:
		return err
	case <-ctx.Done():
	}
	log.Info("shutting down", "grace", sc.Grace, "open", srv.Active())
	gctx, cancel := context.WithTimeout(serveCtx, sc.Grace)
	err = srv.Shutdown(gctx)
	cancel()
	if errors.Is(err, context.DeadlineExceeded) {
		log.Info("grace period over; remaining connections closed")
	}
	cancelServe()
	if err := <-served; err != nil {
		return err
	}
	log.Info("stopped")
	return nil
}
