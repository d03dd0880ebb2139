// Package socksserver is the SOCKS4, SOCKS4a and SOCKS5 server of tunsocks:
// CONNECT, BIND and UDP ASSOCIATE, no-auth and RFC 1929 username/password,
// client and destination access rules, per-phase timeouts, a connection
// limit and graceful shutdown.
//
// The server opens nothing toward the network itself: every outbound
// connection goes through Config.Dialer (the direct dialer, an upstream SOCKS
// client or the router), BIND listeners through its optional Listener
// capability and UDP relay sockets through its optional PacketListener
// capability. Wire encoding lives in package socks and relaying in
// internal/relay; this package is the protocol state machine between them.
package socksserver

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/tunsocks/tunsocks/internal/direct"
	"github.com/tunsocks/tunsocks/socks"
	"github.com/tunsocks/tunsocks/stun"
)

// Dialer is what the server dials through for CONNECT. *direct.Dialer,
// *socksclient.Client and the router satisfy it. A domain target reaches
// DialContext as "host:port", unresolved.
type Dialer interface {
	DialContext(ctx context.Context, network, address string) (net.Conn, error)
}

// PacketListener is the optional capability of a Dialer to open the
// outbound UDP socket of a UDP ASSOCIATE. Without it the server uses a
// zero direct.Dialer.
type PacketListener interface {
	ListenPacket(ctx context.Context, network, address string) (net.PacketConn, error)
}

// NamePacketConn is the optional capability of a PacketListener's socket
// to send to a name itself: the server then hands WriteTo a socks.Addr for
// a domain destination, unresolved (only DenyDest, when set, resolves it
// to check it), and passes on a socks.Addr sender from ReadFrom as a name
// in the reply header. The router's front door has it, so a name reaches
// the outbound its rule picks as a name.
type NamePacketConn interface {
	net.PacketConn
	SendsToNames()
}

// Request is what the server knows of the request a Dialer, Listener or
// PacketListener call serves; RequestFromContext finds it in the call's
// ctx.
type Request struct {
	Client  netip.AddrPort // the client's address
	User    string         // the authenticated user; "" without authentication
	Command socks.Command
}

type requestKey struct{}

// RequestFromContext returns the request the ctx of a Dialer, Listener or
// PacketListener call belongs to.
func RequestFromContext(ctx context.Context) (Request, bool) {
	r, ok := ctx.Value(requestKey{}).(Request)
	return r, ok
}

// Listener is the optional capability of a Dialer to open the listener of a
// BIND. Without it the server uses a zero direct.Dialer.
type Listener interface {
	Listen(ctx context.Context, network, address string) (net.Listener, error)
}

// CheckedDialer is the optional capability of a Dialer to vet the address
// it connects to after resolving a name: DialContextChecked calls check
// with each IP address and port it is about to connect to, and fails the
// dial with check's error instead of connecting. *direct.Dialer has it.
// With it the destination rules (DenyDest, DenyPorts, DenyLoopback) see the
// address actually dialed, whatever a name resolves to (no DNS rebinding,
// no port probing of loopback through names); without it a domain target
// is checked by resolving it with LookupNetIP when DenyDest is set, and by
// its name ("localhost") for DenyLoopback.
type CheckedDialer interface {
	DialContextChecked(ctx context.Context, network, address string, check func(netip.AddrPort) error) (net.Conn, error)
}

// Defaults applied by New to zero fields of Config.
const (
	DefaultHandshakeTimeout     = 10 * time.Second
	DefaultIdleTimeout          = 10 * time.Minute
	DefaultBindTimeout          = 2 * time.Minute
	DefaultUDPIdleTimeout       = 2 * time.Minute
	DefaultFailureCloseDelay    = time.Second
	DefaultUDPReassemblyTimeout = 5 * time.Second
	DefaultUDPMaxReassembly     = 65507
	// DefaultMaxHandshakes and DefaultMaxHandshakesPerClient are the
	// handshake budgets (Config.MaxHandshakes): room for bursts of
	// legitimate connections over slow links, and few descriptors against
	// a 20,000 limit.
	DefaultMaxHandshakes          = 1024
	DefaultMaxHandshakesPerClient = 128

	// MaxFailureCloseDelay is RFC 1928's bound: a connection ends no more
	// than 10 s after the condition behind a failure reply.
	MaxFailureCloseDelay = 10 * time.Second
)

// Config configures a Server. The zero value serves SOCKS4/4a/5 without
// authentication to every client, dialing directly.
type Config struct {
	// Dialer carries CONNECT requests; nil means &direct.Dialer{}.
	Dialer Dialer
	// LookupNetIP resolves names where the server itself needs addresses:
	// domain destinations of UDP datagrams, the expected peer of a BIND,
	// and domain targets checked against DenyDest. nil means a zero
	// net.Resolver's LookupNetIP (the system's resolver).
	LookupNetIP func(ctx context.Context, network, host string) ([]netip.Addr, error)

	// Users maps username to password. When it is not empty, SOCKS5
	// clients must authenticate with RFC 1929 username/password, and SOCKS4
	// (which carries no password) is refused unless Socks4UserMustMatch
	// admits it by USERID. Passwords are compared in constant time.
	Users map[string]string
	// Socks4UserMustMatch admits a SOCKS4 request only when its USERID
	// names a user in Users. It needs Users.
	Socks4UserMustMatch bool

	// AllowClients lists the client networks served; empty means all.
	// Other clients are closed at once, with a log line.
	AllowClients []netip.Prefix
	// DenyDest and DenyPorts refuse destinations with reply 0x02 (SOCKS4:
	// 0x5B) and a log line: CONNECT targets, the expected and the actual
	// peer of a BIND, and the destinations and sources of UDP datagrams
	// (dropped and counted). A domain target is resolved with LookupNetIP
	// to be checked when DenyDest is not empty, and is still passed to the
	// Dialer as a name; a Dialer with the CheckedDialer capability also
	// checks the address it actually connects to.
	DenyDest  []netip.Prefix
	DenyPorts []PortRange

	// HandshakeTimeout bounds everything from accept to the request's
	// reply (slow clients are dropped); 0 means DefaultHandshakeTimeout.
	HandshakeTimeout time.Duration
	// IdleTimeout closes a CONNECT or BIND relay idle this long; 0 means
	// DefaultIdleTimeout, negative disables it.
	IdleTimeout time.Duration
	// BindTimeout bounds the wait for the peer of a BIND; 0 means
	// DefaultBindTimeout.
	BindTimeout time.Duration
	// UDPIdleTimeout ends a UDP association idle this long; 0 means
	// DefaultUDPIdleTimeout, negative disables it (the association then
	// lasts as long as its control connection).
	UDPIdleTimeout time.Duration

	// MaxConns caps the requests served at once (CONNECT, BIND and UDP
	// ASSOCIATE from the moment their request is read, relays included);
	// 0 means unlimited. Connections still in their handshake do not count:
	// MaxHandshakes and MaxHandshakesPerClient bound those. At the limit a
	// new connection is closed at once, and a request read meanwhile is
	// refused with reply 0x01 (SOCKS4: 0x5B). Refusals are logged as one
	// line per 10 s, with their count.
	MaxConns int
	// MaxHandshakes caps the connections in their handshake (accepted,
	// request not read yet) at once: at the cap a new connection closes the
	// oldest handshake, so silent sockets (a slowloris) cannot keep other
	// clients out. MaxHandshakesPerClient is a client address's share (an
	// IPv4 address, or an IPv6 /64): over it, a new connection from that
	// client closes the client's oldest handshake if that one has lasted 2 s
	// (or half the HandshakeTimeout) already, so one client's silent
	// sockets cost it its own, while a client opening many connections at
	// once (another tunsocks carrying a desktop) loses none. 0 means
	// DefaultMaxHandshakes and DefaultMaxHandshakesPerClient; negative
	// means unlimited.
	MaxHandshakes          int
	MaxHandshakesPerClient int
	// AuthFailureLimit is how many failed username/password authentications
	// (and unknown SOCKS4 USERIDs under Socks4UserMustMatch) a client
	// address (IPv4 address, IPv6 /64) may make in a burst; the allowance
	// refills at AuthFailureLimit per minute. Beyond it the address's
	// attempts are refused without the password being checked, after
	// MaxAuthFailureDelay, for as long as it keeps trying. 0 means
	// DefaultAuthFailureLimit; negative means unlimited.
	AuthFailureLimit int
	// AuthFailureDelay is the wait before the failure reply to a client
	// address's first recent failed authentication; it doubles with each
	// further recent failure, up to MaxAuthFailureDelay. 0 means
	// DefaultAuthFailureDelay; negative means no delay.
	AuthFailureDelay time.Duration

	// DenyLoopback refuses destinations on the server's own host: loopback
	// (127.0.0.0/8, ::1), the unspecified addresses (0.0.0.0 and :: reach
	// the host itself), names under "localhost", and the host's own
	// addresses, which include the ones it listens on. Clients then cannot
	// reach services bound to loopback, or make the server connect to
	// itself (nested CONNECTs). It applies to CONNECT targets, BIND peers
	// and UDP datagrams (both ways), like DenyDest, with reply 0x02. The
	// library's zero value allows them (tests and embedders relay to
	// loopback); `tunsocks server` sets it unless --allow-loopback.
	DenyLoopback bool
	// FailureCloseDelay is the longest a connection lingers after a failure
	// reply (so the reply is read rather than lost to a reset); 0 means
	// DefaultFailureCloseDelay. At most MaxFailureCloseDelay.
	FailureCloseDelay time.Duration

	// UDPReassemblyTimeout is the fragment reassembly timer (at least 5 s,
	// RFC 1928 section 7); 0 means DefaultUDPReassemblyTimeout.
	UDPReassemblyTimeout time.Duration
	// UDPMaxReassembly caps a reassembled datagram; 0 means
	// DefaultUDPMaxReassembly.
	UDPMaxReassembly int

	// ExternalAddr, when valid, is the address reported in BIND and UDP
	// ASSOCIATE replies instead of the local address of the control
	// connection (for a server behind NAT or listening on 0.0.0.0).
	ExternalAddr netip.Addr

	// Logger receives one line per request and the server's events; nil
	// discards them.
	Logger *slog.Logger
	// ClientPacketListener opens the client-facing UDP relay sockets of UDP
	// ASSOCIATE, next to the TCP listener. nil means a plain
	// net.ListenConfig; a server whose listener lives in another network
	// namespace passes a listener for that namespace.
	ClientPacketListener PacketListener

	// Emulate makes the server behave like other servers on purpose, so
	// that what `tunsocks check` reports about them can be reproduced
	// offline. It is for tests and labs only; the zero value is the
	// server's own behaviour.
	Emulate Emulation
}

// Emulation is a set of test switches (Config.Emulate). The UDP relay's
// own behaviour is endpoint-independent mapping and filtering (one
// outbound socket per association, answers accepted from anyone).
type Emulation struct {
	// UDPMapping makes the UDP relay use one outbound socket per
	// destination IP (stun.AddressDependent) or per destination IP and
	// port (stun.AddressPortDependent), like a symmetric NAT.
	UDPMapping stun.Behaviour
	// UDPFiltering makes the UDP relay drop datagrams from a source IP
	// (stun.AddressDependent), or IP and port (stun.AddressPortDependent),
	// that the outbound socket has not sent to, like a restricted NAT.
	UDPFiltering stun.Behaviour
	// BoundZero replies 0.0.0.0 (or ::) as BND.ADDR of CONNECT and UDP
	// ASSOCIATE, with the real port, as many servers do.
	BoundZero bool
	// AcceptBadPassword accepts any username and password (an open proxy
	// that only pretends to authenticate). It needs Users.
	AcceptBadPassword bool
	// ConnectOnly443 refuses CONNECT (reply 0x02) to every port but 443,
	// like an HTTPS-only proxy.
	ConnectOnly443 bool
}

// udpNAT reports whether the UDP relay emulates a NAT other than its own
// endpoint-independent one.
func (e Emulation) udpNAT() bool {
	return e.UDPMapping > stun.EndpointIndependent || e.UDPFiltering > stun.EndpointIndependent
}

// listenConfig is the default ClientPacketListener.
type listenConfig struct{}

func (listenConfig) ListenPacket(ctx context.Context, network, address string) (net.PacketConn, error) {
	var lc net.ListenConfig
	return lc.ListenPacket(ctx, network, address)
}

// Server is a SOCKS server. Build it with New; it is safe for concurrent use.
type Server struct {
	cfg            Config
	log            *slog.Logger
	packetListener PacketListener
	clientPackets  PacketListener
	listener       Listener
	checked        CheckedDialer // nil when the Dialer has no such capability

	hs      handshakes
	auth    authLimiter
	self    ownAddrs
	relays  atomic.Int64 // requests being served (MaxConns counts these)
	counts  counters
	tallies struct {
		conns, shed, clients, authFail, authBlocked, noMethod *tally
	}

	mu        sync.Mutex
	listeners map[net.Listener]struct{}
	conns     map[*conn]struct{}
	serves    map[*serveState]struct{}
	shutdown  bool
	wg        sync.WaitGroup

	active atomic.Int64
}

// serveState is one call of Serve: its context's cancel func force-closes
// the connections it accepted.
type serveState struct {
	cancel context.CancelFunc
}

// New checks cfg, fills in defaults and returns a Server.
func New(cfg Config) (*Server, error) {
	if cfg.Dialer == nil {
		cfg.Dialer = &direct.Dialer{}
	}
	if cfg.LookupNetIP == nil {
		cfg.LookupNetIP = (&net.Resolver{}).LookupNetIP
	}
	if cfg.Socks4UserMustMatch && len(cfg.Users) == 0 {
		return nil, errors.New("socksserver: Socks4UserMustMatch needs Users")
	}
	for u, p := range cfg.Users {
		if len(u) == 0 || len(u) > 255 || len(p) == 0 || len(p) > 255 {
			return nil, fmt.Errorf("socksserver: user %.32q: username and password must each be 1 to 255 bytes (RFC 1929)", u)
		}
	}
	for _, p := range append(append([]netip.Prefix(nil), cfg.AllowClients...), cfg.DenyDest...) {
		if !p.IsValid() {
			return nil, fmt.Errorf("socksserver: invalid prefix %v in AllowClients or DenyDest", p)
		}
	}
	for _, r := range cfg.DenyPorts {
		if r.Lo > r.Hi {
			return nil, fmt.Errorf("socksserver: port range %d-%d is empty: the first port must not exceed the second", r.Lo, r.Hi)
		}
	}
	if cfg.Emulate.AcceptBadPassword && len(cfg.Users) == 0 {
		return nil, errors.New("socksserver: Emulate.AcceptBadPassword needs Users")
	}
	if cfg.Emulate.UDPMapping > stun.AddressPortDependent || cfg.Emulate.UDPFiltering > stun.AddressPortDependent ||
		cfg.Emulate.UDPMapping < 0 || cfg.Emulate.UDPFiltering < 0 {
		return nil, errors.New("socksserver: Emulate.UDPMapping and UDPFiltering must be one of the stun behaviours")
	}
	if cfg.AuthFailureDelay > MaxAuthFailureDelay {
		return nil, fmt.Errorf("socksserver: AuthFailureDelay %v: at most %v", cfg.AuthFailureDelay, MaxAuthFailureDelay)
	}
	if cfg.MaxConns < 0 {
		return nil, fmt.Errorf("socksserver: MaxConns %d: want 0 (unlimited) or more", cfg.MaxConns)
	}
	if cfg.HandshakeTimeout < 0 || cfg.BindTimeout < 0 || cfg.FailureCloseDelay < 0 || cfg.UDPReassemblyTimeout < 0 {
		return nil, errors.New("socksserver: HandshakeTimeout, BindTimeout, FailureCloseDelay and UDPReassemblyTimeout must not be negative")
	}
	if cfg.FailureCloseDelay > MaxFailureCloseDelay {
		return nil, fmt.Errorf("socksserver: FailureCloseDelay %v: at most %v (RFC 1928)", cfg.FailureCloseDelay, MaxFailureCloseDelay)
	}
	if cfg.UDPReassemblyTimeout != 0 && cfg.UDPReassemblyTimeout < 5*time.Second {
		return nil, fmt.Errorf("socksserver: UDPReassemblyTimeout %v: RFC 1928 asks for at least 5s", cfg.UDPReassemblyTimeout)
	}
	if cfg.UDPMaxReassembly < 0 || cfg.UDPMaxReassembly > 65535 {
		return nil, fmt.Errorf("socksserver: UDPMaxReassembly %d: want 0 (default) to 65535", cfg.UDPMaxReassembly)
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	def(&cfg.HandshakeTimeout, DefaultHandshakeTimeout)
	def(&cfg.IdleTimeout, DefaultIdleTimeout)
	def(&cfg.BindTimeout, DefaultBindTimeout)
	def(&cfg.UDPIdleTimeout, DefaultUDPIdleTimeout)
	def(&cfg.FailureCloseDelay, DefaultFailureCloseDelay)
	def(&cfg.UDPReassemblyTimeout, DefaultUDPReassemblyTimeout)
	if cfg.UDPMaxReassembly == 0 {
		cfg.UDPMaxReassembly = DefaultUDPMaxReassembly
	}
	defInt := func(n *int, v int) {
		if *n == 0 {
			*n = v
		}
	}
	defInt(&cfg.MaxHandshakes, DefaultMaxHandshakes)
	defInt(&cfg.MaxHandshakesPerClient, DefaultMaxHandshakesPerClient)
	defInt(&cfg.AuthFailureLimit, DefaultAuthFailureLimit)
	def(&cfg.AuthFailureDelay, DefaultAuthFailureDelay)
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Server{
		cfg:       cfg,
		log:       log,
		listeners: map[net.Listener]struct{}{},
		conns:     map[*conn]struct{}{},
		serves:    map[*serveState]struct{}{},
		hs:        handshakes{max: cfg.MaxHandshakes, perClient: cfg.MaxHandshakesPerClient, stale: min(staleHandshake, cfg.HandshakeTimeout/2)},
		auth:      authLimiter{limit: cfg.AuthFailureLimit, delay: cfg.AuthFailureDelay, now: time.Now},
		self:      ownAddrs{now: time.Now},
	}
	s.tallies.conns = newTally(log, slog.LevelWarn, "connection limit reached; new connections closed")
	s.tallies.shed = newTally(log, slog.LevelWarn, "handshake budget full; oldest handshake closed")
	s.tallies.clients = newTally(log, slog.LevelWarn, "client not allowed")
	s.tallies.authFail = newTally(log, slog.LevelWarn, "authentication failed")
	s.tallies.authBlocked = newTally(log, slog.LevelWarn, "too many failed authentications; attempt refused unchecked")
	s.tallies.noMethod = newTally(log, slog.LevelInfo, "no acceptable authentication method")
	s.checked, _ = cfg.Dialer.(CheckedDialer)
	fallback := &direct.Dialer{}
	s.clientPackets = cfg.ClientPacketListener
	if s.clientPackets == nil {
		s.clientPackets = listenConfig{}
	}
	s.packetListener, _ = cfg.Dialer.(PacketListener)
	if s.packetListener == nil {
		s.packetListener = fallback
	}
	s.listener, _ = cfg.Dialer.(Listener)
	if s.listener == nil {
		s.listener = fallback
	}
	return s, nil
}

// ErrServerClosed is returned by ListenAndServe when it is called after
// Shutdown (Serve returns nil then, closing the listener it was given).
var ErrServerClosed = errors.New("socksserver: server closed")

// ListenAndServe listens on the TCP address addr and serves it like Serve.
func (s *Server) ListenAndServe(ctx context.Context, addr string) error {
	s.mu.Lock()
	closed := s.shutdown
	s.mu.Unlock()
	if closed {
		return ErrServerClosed
	}
	ln, err := Listen(ctx, "tcp", addr)
	if err != nil {
		return fmt.Errorf("socksserver: %w", err)
	}
	return s.Serve(ctx, ln)
}

// Serve accepts connections on ln and serves each on a goroutine of its own
// until Shutdown is called or ctx is done. It closes ln. When ctx is done
// every connection it accepted is closed at once; after Shutdown they get
// Shutdown's grace period. Serve returns nil in both cases, once its
// connections have all ended, and the accept error otherwise.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	st := &serveState{cancel: cancel}
	s.mu.Lock()
	if s.shutdown {
		s.mu.Unlock()
		ln.Close()
		return nil
	}
	s.listeners[ln] = struct{}{}
	s.serves[st] = struct{}{}
	s.mu.Unlock()
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	var wg sync.WaitGroup
	defer func() {
		stop()
		ln.Close()
		s.mu.Lock()
		delete(s.listeners, ln)
		s.mu.Unlock()
		wg.Wait()
		s.mu.Lock()
		delete(s.serves, st)
		last := len(s.serves) == 0
		s.mu.Unlock()
		if last {
			s.flushTallies()
		}
	}()

	backoff := time.Duration(0)
	for {
		nc, err := ln.Accept()
		if err != nil {
			s.mu.Lock()
			closing := s.shutdown
			s.mu.Unlock()
			if closing || ctx.Err() != nil {
				return nil
			}
			if retryable(err) {
				// Out of descriptors or an aborted handshake: wait and retry,
				// like net/http, at most one second at a time.
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				s.log.Warn("accept failed; retrying", "err", err, "in", backoff)
				t := time.NewTimer(backoff)
				select {
				case <-t.C:
				case <-ctx.Done():
					t.Stop()
				}
				continue
			}
			return fmt.Errorf("socksserver: accept: %w", err)
		}
		backoff = 0
		if !s.admit(nc) {
			continue
		}
		c := &conn{srv: s, nc: nc, start: time.Now(), key: keyOf(addrPortOf(nc.RemoteAddr()).Addr())}
		if !s.track(c, &wg) {
			nc.Close()
			continue
		}
		for _, old := range s.hs.add(c, c.start) {
			s.counts.shed.Add(1)
			s.tallies.shed.add(old.client().Addr(), "age", time.Since(old.start).Round(time.Millisecond),
				"max_handshakes", s.cfg.MaxHandshakes, "max_handshakes_per_client", s.cfg.MaxHandshakesPerClient)
			old.nc.Close()
		}
		go func() {
			defer s.untrack(c, &wg)
			c.serve(ctx)
		}()
	}
}

func retryable(err error) bool {
	return errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) ||
		errors.Is(err, syscall.ECONNABORTED) || errors.Is(err, syscall.ENOBUFS) || errors.Is(err, syscall.ENOMEM)
}

// admit applies AllowClients and MaxConns to a new connection; it closes
// the ones it turns away.
func (s *Server) admit(nc net.Conn) bool {
	client := addrPortOf(nc.RemoteAddr())
	if len(s.cfg.AllowClients) > 0 && !inPrefixes(s.cfg.AllowClients, client.Addr()) {
		s.counts.notAllowed.Add(1)
		s.tallies.clients.add(client.Addr())
		nc.Close()
		return false
	}
	if s.cfg.MaxConns > 0 && s.relays.Load() >= int64(s.cfg.MaxConns) {
		s.counts.connLimited.Add(1)
		s.tallies.conns.add(client.Addr(), "max_conns", s.cfg.MaxConns, "at", "accept")
		nc.Close()
		return false
	}
	return true
}

// acquireRelay takes one of the MaxConns slots for a request; false means
// none is free.
func (s *Server) acquireRelay() bool {
	if s.cfg.MaxConns <= 0 {
		s.relays.Add(1)
		return true
	}
	for {
		n := s.relays.Load()
		if n >= int64(s.cfg.MaxConns) {
			return false
		}
		if s.relays.CompareAndSwap(n, n+1) {
			return true
		}
	}
}

// counters are the Server's event counts (see Stats).
type counters struct {
	connLimited, shed, notAllowed, authFailed, authRefused, authDelay atomic.Int64
}

// Stats is a snapshot of a Server's state and counters.
type Stats struct {
	// Handshakes is the connections in their handshake now; Relays the
	// requests being served now (what MaxConns counts).
	Handshakes, Relays int
	// ConnLimited counts connections closed at accept and requests refused
	// because MaxConns requests were being served.
	ConnLimited int64
	// HandshakesShed counts handshakes closed to make room for new
	// connections (MaxHandshakes, MaxHandshakesPerClient).
	HandshakesShed int64
	// ClientsRefused counts connections from outside AllowClients.
	ClientsRefused int64
	// AuthFailed counts authentications checked and wrong; AuthRefused the
	// ones refused unchecked because the client address was over
	// AuthFailureLimit; AuthDelay the total wait added before their
	// failure replies.
	AuthFailed, AuthRefused int64
	AuthDelay               time.Duration
}

// Stats returns the server's state and counters.
func (s *Server) Stats() Stats {
	return Stats{
		Handshakes:     s.hs.len(),
		Relays:         int(s.relays.Load()),
		ConnLimited:    s.counts.connLimited.Load(),
		HandshakesShed: s.counts.shed.Load(),
		ClientsRefused: s.counts.notAllowed.Load(),
		AuthFailed:     s.counts.authFailed.Load(),
		AuthRefused:    s.counts.authRefused.Load(),
		AuthDelay:      time.Duration(s.counts.authDelay.Load()),
	}
}

// flushTallies writes the refusals counted but not yet logged.
func (s *Server) flushTallies() {
	for _, t := range []*tally{s.tallies.conns, s.tallies.shed, s.tallies.clients, s.tallies.authFail, s.tallies.authBlocked, s.tallies.noMethod} {
		t.stop()
	}
}

func (s *Server) track(c *conn, wg *sync.WaitGroup) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.shutdown {
		return false
	}
	s.conns[c] = struct{}{}
	s.active.Add(1)
	wg.Add(1)
	s.wg.Add(1)
	return true
}

func (s *Server) untrack(c *conn, wg *sync.WaitGroup) {
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
	s.active.Add(-1)
	wg.Done()
	s.wg.Done()
}

// Shutdown stops accepting, closes the connections still in their
// handshake, and lets relays finish until ctx is done; then it closes every
// remaining connection and returns ctx's error. It returns nil once all
// connections have ended within the grace period.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.shutdown = true
	for ln := range s.listeners {
		ln.Close()
	}
	for c := range s.conns {
		c.closeIfHandshaking()
	}
	s.mu.Unlock()

	done := make(chan struct{})
	go func() {
		s.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
		s.flushTallies()
		return nil
	case <-ctx.Done():
	}
	s.mu.Lock()
	n := len(s.conns)
	for st := range s.serves {
		st.cancel()
	}
	s.mu.Unlock()
	s.log.Warn("grace period over; closing remaining connections", "open", n)
	<-done
	s.flushTallies()
	return ctx.Err()
}

// Active returns the number of connections being served.
func (s *Server) Active() int { return int(s.active.Load()) }

// addrPortOf converts a net.Addr of a TCP or UDP socket to a netip.AddrPort
// with an unmapped address; anything else gives the zero AddrPort.
func addrPortOf(a net.Addr) netip.AddrPort {
	switch a := a.(type) {
	case *net.TCPAddr:
		ap := a.AddrPort()
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	case *net.UDPAddr:
		ap := a.AddrPort()
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	case nil:
		return netip.AddrPort{}
	}
	ap, err := netip.ParseAddrPort(a.String())
	if err != nil {
		return netip.AddrPort{}
	}
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}
