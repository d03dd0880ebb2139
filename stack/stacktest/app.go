// Package stacktest plays "the app" in tests of package stack: a second,
// ordinary gVisor netstack wired to the kernel side of a tuntest pipe, with
// Dial and Listen helpers returning net.Conn and net.PacketConn. It is for
// tests only; no gVisor type appears in its API.
package stacktest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"syscall"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/link/channel"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv6"
	gstack "gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"

	"github.com/tunsocks/tunsocks/tun/tuntest"
)

// Conn is a TCP connection of the app.
type Conn interface {
	net.Conn
	CloseWrite() error
}

// App is an in-process network stack standing in for an application whose
// traffic the TUN device captures. Its packets go to the peer of a tuntest
// pipe and it receives what the device under test writes.
type App struct {
	gs     *gstack.Stack
	ep     *channel.Endpoint
	peer   *tuntest.Peer
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	once   sync.Once
}

const nicID = 1

// NewApp builds the app stack with the given addresses (the app's own, e.g.
// 10.0.0.2/24 and fd00::2/64) and a default route for each family through
// the pipe.
func NewApp(peer *tuntest.Peer, addrs ...netip.Prefix) (*App, error) {
	if peer == nil {
		return nil, errors.New("stacktest: nil peer")
	}
	gs := gstack.New(gstack.Options{
		NetworkProtocols:   []gstack.NetworkProtocolFactory{ipv4.NewProtocol, ipv6.NewProtocol},
		TransportProtocols: []gstack.TransportProtocolFactory{tcp.NewProtocol, udp.NewProtocol},
	})
	sack := tcpip.TCPSACKEnabled(true)
	_ = gs.SetTransportProtocolOption(tcp.ProtocolNumber, &sack)
	ep := channel.New(4096, uint32(peer.MTU()), "")
	if terr := gs.CreateNIC(nicID, ep); terr != nil {
		gs.Destroy()
		return nil, fmt.Errorf("stacktest: create NIC: %s", terr)
	}
	for _, p := range addrs {
		proto := tcpip.NetworkProtocolNumber(ipv4.ProtocolNumber)
		if p.Addr().Is6() {
			proto = ipv6.ProtocolNumber
		}
		pa := tcpip.ProtocolAddress{
			Protocol:          proto,
			AddressWithPrefix: tcpip.AddrFromSlice(p.Addr().AsSlice()).WithPrefix(),
		}
		pa.AddressWithPrefix.PrefixLen = p.Bits()
		if terr := gs.AddProtocolAddress(nicID, pa, gstack.AddressProperties{}); terr != nil {
			gs.Destroy()
			return nil, fmt.Errorf("stacktest: add address %v: %s", p, terr)
		}
	}
	gs.SetRouteTable([]tcpip.Route{
		{Destination: header.IPv4EmptySubnet, NIC: nicID},
		{Destination: header.IPv6EmptySubnet, NIC: nicID},
	})
	ctx, cancel := context.WithCancel(context.Background())
	a := &App{gs: gs, ep: ep, peer: peer, ctx: ctx, cancel: cancel}
	a.wg.Add(2)
	go a.outbound()
	go a.inbound()
	return a, nil
}

// outbound moves the app's packets into the pipe (the device reads them).
func (a *App) outbound() {
	defer a.wg.Done()
	for {
		pkt := a.ep.ReadContext(a.ctx)
		if pkt == nil {
			return
		}
		b := pkt.ToView().AsSlice()
		err := a.peer.InjectContext(a.ctx, b)
		pkt.DecRef()
		if err != nil {
			return
		}
	}
}

// inbound moves what the device wrote into the app's stack.
func (a *App) inbound() {
	defer a.wg.Done()
	for {
		select {
		case <-a.ctx.Done():
			return
		case <-a.peer.Done():
			return
		case b := <-a.peer.Packets():
			var proto tcpip.NetworkProtocolNumber
			switch header.IPVersion(b) {
			case header.IPv4Version:
				proto = ipv4.ProtocolNumber
			case header.IPv6Version:
				proto = ipv6.ProtocolNumber
			default:
				continue
			}
			pkt := gstack.NewPacketBuffer(gstack.PacketBufferOptions{Payload: buffer.MakeWithData(b)})
			a.ep.InjectInbound(proto, pkt)
			pkt.DecRef()
		}
	}
}

func fullAddr(ap netip.AddrPort) (tcpip.FullAddress, tcpip.NetworkProtocolNumber) {
	a := ap.Addr().Unmap()
	proto := tcpip.NetworkProtocolNumber(ipv4.ProtocolNumber)
	if a.Is6() {
		proto = ipv6.ProtocolNumber
	}
	return tcpip.FullAddress{NIC: nicID, Addr: tcpip.AddrFromSlice(a.AsSlice()), Port: ap.Port()}, proto
}

var refusedText = (&tcpip.ErrConnectionRefused{}).String()

// DialTCP connects from the app to dst. A RST answer yields an error for
// which errors.Is(err, syscall.ECONNREFUSED) holds.
func (a *App) DialTCP(ctx context.Context, dst netip.AddrPort) (Conn, error) {
	fa, proto := fullAddr(dst)
	c, err := gonet.DialContextTCP(ctx, a.gs, fa, proto)
	if err != nil {
		// gonet flattens tcpip errors into strings; restore the errno.
		var op *net.OpError
		if errors.As(err, &op) && op.Err != nil && op.Err.Error() == refusedText {
			op.Err = fmt.Errorf("%s: %w", refusedText, syscall.ECONNREFUSED)
		}
		return nil, err
	}
	return c, nil
}

// SetNagle turns Nagle's algorithm on (an app without TCP_NODELAY: a
// small segment waits while an earlier one is unacknowledged) or off, the
// default, for the connections dialed afterwards.
func (a *App) SetNagle(on bool) error {
	opt := tcpip.TCPDelayEnabled(on)
	if err := a.gs.SetTransportProtocolOption(tcp.ProtocolNumber, &opt); err != nil {
		return fmt.Errorf("stacktest: Nagle %v: %s", on, err)
	}
	return nil
}

// ListenUDP opens an unconnected UDP socket of the app bound to laddr (port
// 0 picks one); it can send to and receive from any address.
func (a *App) ListenUDP(laddr netip.AddrPort) (net.PacketConn, error) {
	fa, proto := fullAddr(laddr)
	return gonet.DialUDP(a.gs, &fa, nil, proto)
}

// Close stops the app stack (not the pipe). Idempotent.
func (a *App) Close() error {
	a.once.Do(func() {
		a.cancel()
		a.wg.Wait()
		a.gs.Destroy()
		a.ep.Close()
	})
	return nil
}
