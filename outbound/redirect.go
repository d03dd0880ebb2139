package outbound

import (
	"context"
	"fmt"
	"net"
	"net/netip"

	"github.com/tunsocks/tunsocks/internal/direct"
	"github.com/tunsocks/tunsocks/router"
	"github.com/tunsocks/tunsocks/socks"
)

// Redirect carries flows addressed to From to the same port on To, through
// Dialer, and makes the replies come from From again: `tunsocks exec
// --allow-host-loopback` sends the sandbox's host address to the host's
// 127.0.0.1 this way.
type Redirect struct {
	Label    string // the outbound's name in logs
	From, To netip.Addr
	// Dialer opens the sockets. It must reach To: a Dialer bound to an
	// uplink interface cannot reach 127.0.0.1.
	Dialer *direct.Dialer
}

// Name implements router.Outbound.
func (r *Redirect) Name() string { return r.Label }

// target maps address (From:port) to To:port.
func (r *Redirect) target(address string) (netip.AddrPort, error) {
	ap, err := netip.ParseAddrPort(address)
	if err != nil || ap.Addr().Unmap() != r.From {
		return netip.AddrPort{}, fmt.Errorf("%s carries only flows to %s, not to %s", r.Label, r.From, address)
	}
	return netip.AddrPortFrom(r.To, ap.Port()), nil
}

// DialContext implements router.Outbound.
func (r *Redirect) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	to, err := r.target(address)
	if err != nil {
		return nil, err
	}
	return r.Dialer.DialContext(ctx, network, to.String())
}

// ListenPacket implements router.Outbound.
func (r *Redirect) ListenPacket(ctx context.Context) (router.PacketConn, error) {
	pc, err := r.Dialer.ListenPacket(ctx, "udp", ":0")
	if err != nil {
		return nil, err
	}
	return &redirectPacket{r: r, pc: pc.(*net.UDPConn)}, nil
}

type redirectPacket struct {
	r  *Redirect
	pc *net.UDPConn
}

func (p *redirectPacket) Send(b []byte, to socks.Addr) error {
	dst, err := p.r.target(to.String())
	if err != nil {
		return err
	}
	_, err = p.pc.WriteToUDPAddrPort(b, dst)
	return err
}

// Recv returns datagrams from To as from From; others are dropped (0
// bytes, no sender, no error), as the app never sent anywhere else.
func (p *redirectPacket) Recv(b []byte) (int, socks.Addr, error) {
	n, ap, err := p.pc.ReadFromUDPAddrPort(b)
	if err != nil {
		return 0, socks.Addr{}, err
	}
	if ap.Addr().Unmap() != p.r.To {
		return 0, socks.Addr{}, nil
	}
	return n, socks.Addr{IP: p.r.From, Port: ap.Port()}, nil
}

func (p *redirectPacket) Close() error { return p.pc.Close() }
