// Package outbound adapts the ways tunsocks can carry a flow (direct
// sockets, a SOCKS upstream, an HTTP CONNECT proxy, a chain of them) to the
// router's Outbound interface. Chain is the one place a proxy URL, or a
// chain of them, becomes an outbound.
package outbound

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"syscall"
	"time"

	"github.com/tunsocks/tunsocks/httpconnect"
	"github.com/tunsocks/tunsocks/internal/direct"
	"github.com/tunsocks/tunsocks/internal/lru"
	"github.com/tunsocks/tunsocks/internal/relay"
	"github.com/tunsocks/tunsocks/router"
	"github.com/tunsocks/tunsocks/socks"
	"github.com/tunsocks/tunsocks/socksclient"
)

// Dialer reaches the first hop of a chain (internal/direct's dialer), and
// each hop's client reaches the next.
type Dialer interface {
	DialContext(ctx context.Context, network, address string) (net.Conn, error)
}

// Direct carries flows straight to their destination through the direct
// dialer, so they never loop back into the TUN. Domains (from fake IPs) are
// resolved locally with Resolver: DIRECT means the user chose that.
type Direct struct {
	Dialer   *direct.Dialer
	Resolver *net.Resolver // nil: net.DefaultResolver
}

// Name implements router.Outbound.
func (d *Direct) Name() string { return "DIRECT" }

// ResolvesLocally implements router.LocalResolver: a flow whose name was
// sniffed goes DIRECT to the address the app chose, not to a second
// resolution of the name.
func (d *Direct) ResolvesLocally() bool { return true }

// DialContext implements router.Outbound.
func (d *Direct) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	return d.Dialer.DialContext(ctx, network, address)
}

// DialContextChecked is DialContext that calls check with each address it
// is about to connect to, after resolving a name, and fails the dial with
// check's error instead of connecting (router.CheckedOutbound): a server's
// destination rules see the address DIRECT actually reaches.
func (d *Direct) DialContextChecked(ctx context.Context, network, address string, check func(netip.AddrPort) error) (net.Conn, error) {
	return d.Dialer.DialContextChecked(ctx, network, address, check)
}

// Limits of a DIRECT UDP session's own name cache.
const (
	directNames   = 64               // names a session remembers
	directNameTTL = 60 * time.Second // how long it trusts an answer
	resolveLimit  = 5 * time.Second  // one lookup at most
)

// ListenPacket implements router.Outbound. ctx is the flow's: it bounds the
// lookups of the names the flow sends to.
func (d *Direct) ListenPacket(ctx context.Context) (router.PacketConn, error) {
	pc, err := d.Dialer.ListenPacket(ctx, "udp", ":0")
	if err != nil {
		return nil, err
	}
	res := d.Resolver
	if res == nil {
		res = net.DefaultResolver
	}
	return &directPacket{ctx: ctx, pc: pc.(*net.UDPConn), res: res, names: lru.NewCache[string, netip.Addr](directNames)}, nil
}

type directPacket struct {
	ctx   context.Context
	pc    *net.UDPConn
	res   *net.Resolver
	names *lru.Cache[string, netip.Addr] // name -> address, for a minute at most
	rc    syscall.RawConn                // pc's, made by TryRecv's first call (one reader at a time)
}

// WaitRead blocks until a reply waits, without reading it (the router
// takes a buffer only then).
func (p *directPacket) WaitRead() error {
	rc, err := p.pc.SyscallConn()
	if err != nil {
		return err
	}
	return relay.WaitReadable(rc)
}

func (p *directPacket) Send(b []byte, to socks.Addr) error {
	ap, err := p.resolve(to)
	if err != nil {
		return err
	}
	_, err = p.pc.WriteToUDPAddrPort(b, ap)
	return err
}

// resolve returns the address to send to: to itself, or its name's first
// address.
func (p *directPacket) resolve(to socks.Addr) (netip.AddrPort, error) {
	if ap, ok := to.AddrPort(); ok {
		return ap, nil
	}
	now := time.Now()
	if ip, ok := p.names.Get(to.Name, now); ok {
		return netip.AddrPortFrom(ip, to.Port), nil
	}
	ctx, cancel := context.WithTimeout(p.ctx, resolveLimit)
	defer cancel()
	ips, err := p.res.LookupNetIP(ctx, "ip", to.Name)
	if err != nil {
		return netip.AddrPort{}, err
	}
	if len(ips) == 0 {
		return netip.AddrPort{}, &net.DNSError{Err: "no addresses", Name: to.Name, IsNotFound: true}
	}
	ip := ips[0].Unmap()
	p.names.Put(to.Name, ip, now.Add(directNameTTL))
	return netip.AddrPortFrom(ip, to.Port), nil
}

func (p *directPacket) Recv(b []byte) (int, socks.Addr, error) {
	n, ap, err := p.pc.ReadFromUDPAddrPort(b)
	return n, socks.AddrFromAddrPort(ap), err
}

func (p *directPacket) Close() error { return p.pc.Close() }

// SyscallConn returns the socket's raw connection, for the router's
// Poller to watch while the flow idles.
func (p *directPacket) SyscallConn() (syscall.RawConn, error) { return p.pc.SyscallConn() }

// SetReadDeadline sets the socket's read deadline (for WaitRead; Recv's
// and TryRecv's callers do not set one).
func (p *directPacket) SetReadDeadline(t time.Time) error { return p.pc.SetReadDeadline(t) }

// TryRecv is Recv that does not wait: ok is false when no datagram waits.
func (p *directPacket) TryRecv(b []byte) (int, socks.Addr, bool, error) {
	if p.rc == nil {
		rc, err := p.pc.SyscallConn()
		if err != nil {
			return 0, socks.Addr{}, false, err
		}
		p.rc = rc
	}
	n, ap, ok, err := relay.RecvNow(p.rc, b)
	if err != nil || !ok {
		return 0, socks.Addr{}, false, err
	}
	return n, socks.AddrFromAddrPort(ap), true, nil
}

// Socks carries flows through a SOCKS upstream (or a chain ending in one).
type Socks struct {
	name   string
	client *socksclient.Client
	noUDP  error // why ListenPacket fails before asking, when it must
}

// NewSocks names a SOCKS client as an outbound.
func NewSocks(name string, c *socksclient.Client) *Socks { return &Socks{name: name, client: c} }

// Name implements router.Outbound.
func (s *Socks) Name() string { return s.name }

// DialContext implements router.Outbound: CONNECT, with a domain sent as a
// domain so the upstream resolves it.
func (s *Socks) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	return s.client.DialContext(ctx, network, address)
}

// ListenPacket implements router.Outbound: one UDP ASSOCIATE per flow.
func (s *Socks) ListenPacket(ctx context.Context) (router.PacketConn, error) {
	if s.noUDP != nil {
		return nil, s.noUDP
	}
	return s.ListenPacketPolled(ctx, nil)
}

// ListenPacketPolled is ListenPacket with the association's control
// connection watched by p instead of a goroutine (see
// socksclient.Client.ListenPacketPolled); the router uses it when it has
// a Poller.
func (s *Socks) ListenPacketPolled(ctx context.Context, p *relay.Poller) (router.PacketConn, error) {
	if s.noUDP != nil {
		return nil, s.noUDP
	}
	pc, err := s.client.ListenPacketPolled(ctx, p)
	if err != nil {
		if errors.Is(err, socksclient.ErrUDPUnsupported) {
			return nil, fmt.Errorf("%s: %w: %w", s.name, router.ErrUDPUnsupported, err)
		}
		return nil, err
	}
	return &socksPacket{pc: pc}, nil
}

type socksPacket struct{ pc *socksclient.UDPConn }

func (p *socksPacket) Send(b []byte, to socks.Addr) error {
	_, err := p.pc.WriteTo(b, to)
	return err
}

// Recv returns the next datagram and its sender, an address or a name as
// the server reports it.
func (p *socksPacket) Recv(b []byte) (int, socks.Addr, error) {
	n, from, err := p.pc.ReadFrom(b)
	if err != nil {
		return 0, socks.Addr{}, err
	}
	switch a := from.(type) {
	case *net.UDPAddr:
		return n, socks.AddrFromAddrPort(a.AddrPort()), nil
	case socks.Addr:
		return n, a, nil
	}
	return 0, socks.Addr{}, nil // not reached: socksclient reports one of the two
}

func (p *socksPacket) Close() error { return p.pc.Close() }

// WaitRead blocks until a reply is waiting, without reading it (the router
// takes a buffer only then).
func (p *socksPacket) WaitRead() error { return p.pc.WaitRead() }

// SyscallConn returns the association's UDP socket's raw connection, for
// the router's Poller to watch while the flow idles.
func (p *socksPacket) SyscallConn() (syscall.RawConn, error) { return p.pc.SyscallConn() }

// TryRecv is Recv that does not wait: ok is false when no datagram waits.
func (p *socksPacket) TryRecv(b []byte) (int, socks.Addr, bool, error) {
	return p.pc.TryReadFrom(b)
}

// SetReadDeadline sets the association's read deadline.
func (p *socksPacket) SetReadDeadline(t time.Time) error { return p.pc.SetReadDeadline(t) }

// NotifyClose calls fn once the association has ended (see
// socksclient.UDPConn.NotifyEnd).
func (p *socksPacket) NotifyClose(fn func()) { p.pc.NotifyEnd(fn) }

// HTTP carries TCP through an HTTP CONNECT proxy (or a chain ending in
// one); it has no UDP.
type HTTP struct {
	name string
	d    Dialer
}

// Name implements router.Outbound.
func (h *HTTP) Name() string { return h.name }

// DialContext implements router.Outbound: CONNECT, with a domain sent as a
// domain so the proxy resolves it.
func (h *HTTP) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	return h.d.DialContext(ctx, network, address)
}

// ListenPacket implements router.Outbound: it fails, wrapping
// router.ErrUDPUnsupported.
func (h *HTTP) ListenPacket(context.Context) (router.PacketConn, error) {
	return nil, fmt.Errorf("%s is an HTTP CONNECT proxy: %w", h.name, router.ErrUDPUnsupported)
}

// Chain builds the outbound called name that goes through hops in order:
// forward reaches hops[0], hops[0]'s client reaches hops[1], and so on; one
// hop is a plain proxy. A hop is socks5://, socks5h://, socks4://,
// socks4a:// or http:// (HTTP CONNECT). UDP works through a single SOCKS5
// hop only: a later hop's UDP relay cannot be reached through the earlier
// hops' streams, so a chain's ListenPacket fails with
// router.ErrUDPUnsupported, as an HTTP hop's does.
func Chain(name string, forward Dialer, hops ...*url.URL) (router.Outbound, error) {
	if len(hops) == 0 {
		return nil, fmt.Errorf("proxy %q: a chain needs at least one hop", name)
	}
	var last *socksclient.Client
	afterHTTP := false // the last hop is reached through an HTTP hop
	for i, u := range hops {
		var err error
		if u.Scheme == "http" {
			forward, err = httpconnect.New(u, forward)
			last = nil
		} else {
			afterHTTP = i > 0 && hops[i-1].Scheme == "http"
			last, err = socksclient.New(u, forward)
			forward = last
		}
		if err != nil {
			if len(hops) > 1 {
				return nil, fmt.Errorf("proxy %q: hop %d: %w", name, i+1, err)
			}
			return nil, fmt.Errorf("proxy %q: %w", name, err)
		}
	}
	if last == nil {
		return &HTTP{name: name, d: forward}, nil
	}
	s := NewSocks(name, last)
	if afterHTTP {
		// A SOCKS hop behind another SOCKS hop refuses UDP itself and
		// says why; behind an HTTP hop it would try and fail obscurely.
		s.noUDP = fmt.Errorf("%s: %w: the last hop's UDP relay cannot be reached through the HTTP CONNECT hop before it", name, router.ErrUDPUnsupported)
	}
	return s, nil
}

// DialReason names the cause of a failed dial through an outbound, for the
// router's dial errors metric, where the cause is the upstream's: auth (the
// proxy refused the credentials), refused (the target refused, or the
// proxy's rules did), unreachable, timeout (reported by the proxy), proto
// (the upstream spoke something else, or refused the command). "" leaves a
// local cause (a refused or timed-out connection to the proxy itself) to
// the router.
func DialReason(err error) string {
	var re *socks.ReplyError
	var se *httpconnect.StatusError
	switch {
	case errors.Is(err, socksclient.ErrAuthFailed), errors.Is(err, socksclient.ErrNoAcceptableMethod), errors.Is(err, httpconnect.ErrAuth):
		return "auth"
	case errors.As(err, &re):
		switch re.Code {
		case socks.ConnectionRefused, socks.NotAllowed:
			return "refused"
		case socks.NetworkUnreachable, socks.HostUnreachable:
			return "unreachable"
		case socks.TTLExpired:
			return "timeout"
		}
		return "proto"
	case errors.Is(err, socks.ErrNotAllowed):
		return "refused"
	case errors.As(err, &se):
		if se.Err == nil {
			return "proto"
		}
		return "" // its cause (EHOSTUNREACH, ETIMEDOUT...) says it
	case errors.Is(err, socks.ErrVersion), errors.Is(err, socks.ErrCommand), errors.Is(err, socks.ErrAddressType),
		errors.Is(err, router.ErrUDPUnsupported), errors.Is(err, socksclient.ErrUDPUnsupported):
		return "proto"
	}
	return ""
}
