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

// Defaults applied by New to zero fields of Config.
const (
	DefaultHandshakeTimeout     = 10 * time.Second
	DefaultIdleTimeout          = 10 * time.Minute
	DefaultBindTimeout          = 2 * time.Minute
	DefaultUDPIdleTimeout       = 2 * time.Minute
	DefaultFailureCloseDelay    = time.Second
	DefaultUDPReassemblyTimeout = 5 * time.Second
	DefaultUDPMaxReassembly     = 65507

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
	// DenyDest and DenyPorts refuse destinations (CONNECT targets and UDP
	// datagram destinations) with reply 0x02 (SOCKS4: 0x5B) and a log line.
	// A domain target is resolved with LookupNetIP to be checked when
	// DenyDest is not empty, and is still passed to the Dialer as a name.
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

	// MaxConns caps the connections served at once; 0 means unlimited.
	// Over the limit a connection is accepted and closed at once.
	MaxConns int
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
	}
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
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", addr)
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
		s.mu.Unlock()
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
		c := &conn{srv: s, nc: nc, start: time.Now()}
		if !s.track(c, &wg) {
			nc.Close()
			continue
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
		s.log.Warn("client not allowed", "client", client.String())
		nc.Close()
		return false
	}
	if s.cfg.MaxConns > 0 && s.active.Load() >= int64(s.cfg.MaxConns) {
		s.log.Warn("connection limit reached; closing new connection", "client", client.String(), "max_conns", s.cfg.MaxConns)
		nc.Close()
		return false
	}
	return true
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
