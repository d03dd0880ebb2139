// Package outbound adapts the ways tunsocks can carry a flow (direct
// sockets, a SOCKS upstream, a chain of them, a refusal) to the router's
// Outbound interface.
package outbound

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"time"

	"github.com/tunsocks/tunsocks/internal/direct"
	"github.com/tunsocks/tunsocks/router"
	"github.com/tunsocks/tunsocks/socks"
	"github.com/tunsocks/tunsocks/socksclient"
)

// Direct carries flows straight to their destination through the direct
// dialer, so they never loop back into the TUN. Domains (from fake IPs) are
// resolved locally with Resolver: DIRECT means the user chose that.
type Direct struct {
	Dialer   *direct.Dialer
	Resolver *net.Resolver // nil: net.DefaultResolver
}

// Name implements router.Outbound.
func (d *Direct) Name() string { return "DIRECT" }

// DialContext implements router.Outbound.
func (d *Direct) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	return d.Dialer.DialContext(ctx, network, address)
}

// ListenPacket implements router.Outbound.
func (d *Direct) ListenPacket(ctx context.Context) (router.PacketConn, error) {
	pc, err := d.Dialer.ListenPacket(ctx, "udp", ":0")
	if err != nil {
		return nil, err
	}
	res := d.Resolver
	if res == nil {
		res = net.DefaultResolver
	}
	return &directPacket{pc: pc.(*net.UDPConn), res: res, cache: map[string]cached{}}, nil
}

type cached struct {
	ip  netip.Addr
	exp time.Time
}

type directPacket struct {
	pc  *net.UDPConn
	res *net.Resolver

	mu    sync.Mutex
	cache map[string]cached // domain -> address, for a flow's lifetime at most 60 s
}

func (p *directPacket) Send(b []byte, address string) error {
	ap, err := p.resolve(address)
	if err != nil {
		return err
	}
	_, err = p.pc.WriteToUDPAddrPort(b, ap)
	return err
}

func (p *directPacket) resolve(address string) (netip.AddrPort, error) {
	if ap, err := netip.ParseAddrPort(address); err == nil {
		return ap, nil
	}
	host, portStr, err := net.SplitHostPort(address)
	if err != nil {
		return netip.AddrPort{}, err
	}
	port, err := strconv.ParseUint(portStr, 10, 16)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("port %q: %w", portStr, err)
	}
	p.mu.Lock()
	c, ok := p.cache[host]
	p.mu.Unlock()
	if ok && time.Now().Before(c.exp) {
		return netip.AddrPortFrom(c.ip, uint16(port)), nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	ips, err := p.res.LookupNetIP(ctx, "ip", host)
	if err != nil {
		return netip.AddrPort{}, err
	}
	if len(ips) == 0 {
		return netip.AddrPort{}, &net.DNSError{Err: "no addresses", Name: host, IsNotFound: true}
	}
	ip := ips[0].Unmap()
	p.mu.Lock()
	p.cache[host] = cached{ip: ip, exp: time.Now().Add(60 * time.Second)}
	p.mu.Unlock()
	return netip.AddrPortFrom(ip, uint16(port)), nil
}

func (p *directPacket) Recv(b []byte) (int, netip.AddrPort, error) {
	n, ap, err := p.pc.ReadFromUDPAddrPort(b)
	return n, netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), err
}

func (p *directPacket) Close() error { return p.pc.Close() }

// Socks carries flows through a SOCKS upstream (or a chain ending in one).
type Socks struct {
	name   string
	client *socksclient.Client
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
	pc, err := s.client.ListenPacket(ctx)
	if err != nil {
		if errors.Is(err, socksclient.ErrUDPUnsupported) {
			return nil, fmt.Errorf("%s: %w: %w", s.name, router.ErrUDPUnsupported, err)
		}
		return nil, err
	}
	return &socksPacket{pc: pc}, nil
}

type socksPacket struct{ pc net.PacketConn }

func (p *socksPacket) Send(b []byte, address string) error {
	var to net.Addr
	if ap, err := netip.ParseAddrPort(address); err == nil {
		to = net.UDPAddrFromAddrPort(ap)
	} else {
		host, portStr, err := net.SplitHostPort(address)
		if err != nil {
			return err
		}
		port, err := strconv.ParseUint(portStr, 10, 16)
		if err != nil {
			return fmt.Errorf("port %q: %w", portStr, err)
		}
		to = socks.Addr{Name: host, Port: uint16(port)}
	}
	_, err := p.pc.WriteTo(b, to)
	return err
}

func (p *socksPacket) Recv(b []byte) (int, netip.AddrPort, error) {
	n, from, err := p.pc.ReadFrom(b)
	if err != nil {
		return 0, netip.AddrPort{}, err
	}
	if u, ok := from.(*net.UDPAddr); ok {
		ap := u.AddrPort()
		return n, netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), nil
	}
	// A reply from a domain address cannot be given to the app as a source;
	// the caller drops it (0 bytes, no error).
	return 0, netip.AddrPort{}, nil
}

func (p *socksPacket) Close() error { return p.pc.Close() }
