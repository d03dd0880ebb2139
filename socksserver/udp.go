package socksserver

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tunsocks/tunsocks/internal/lru"
	"github.com/tunsocks/tunsocks/internal/relay"
	"github.com/tunsocks/tunsocks/socks"
)

// udpAssociate serves UDP ASSOCIATE: a relay socket for the client on the
// control connection's local address, an outbound socket through the
// Dialer's PacketListener capability, and the packet relay between them
// until the control connection closes or the association is idle.
func (c *conn) udpAssociate(ctx context.Context, req socks.Addr) {
	local := addrPortOf(c.nc.LocalAddr())
	// The client-facing socket is a server socket like the TCP listener: it
	// is opened beside it (Config.ClientPacketListener), not through the
	// Dialer.
	cpc, err := c.srv.clientPackets.ListenPacket(ctx, "udp", netip.AddrPortFrom(local.Addr(), 0).String())
	if err != nil {
		c.fail(socks.ReplyForError(err), fmt.Errorf("UDP relay socket: %w", err))
		return
	}
	defer cpc.Close()
	opc, err := c.srv.packetListener.ListenPacket(ctx, "udp", ":0")
	if err != nil {
		c.fail(socks.ReplyForError(err), fmt.Errorf("UDP outbound socket: %w", err))
		return
	}
	if em := c.srv.cfg.Emulate; em.udpNAT() {
		opc = newNATConn(ctx, c.srv.packetListener, opc, em.UDPMapping, em.UDPFiltering)
	}
	defer opc.Close()

	relayAddr := addrPortOf(cpc.LocalAddr())
	report := relayAddr.Addr()
	if c.srv.cfg.ExternalAddr.IsValid() {
		report = c.srv.cfg.ExternalAddr
	}
	if err := c.reply(socks.Succeeded, netip.AddrPortFrom(report, relayAddr.Port())); err != nil {
		c.logRequest(socks.GeneralFailure, fmt.Errorf("write reply: %w", err), 0, 0)
		return
	}
	c.nc.SetDeadline(time.Time{})

	a := &association{
		srv:      c.srv,
		ctx:      ctx,
		client:   c.client().Addr(),
		clientPC: cpc,
		outPC:    opc,
		reasm: socks.Reassembler{
			Timeout: c.srv.cfg.UDPReassemblyTimeout,
			MaxSize: c.srv.cfg.UDPMaxReassembly,
		},
		names: lru.NewCache[string, netip.Addr](maxNames),
	}
	_, a.sendsNames = opc.(NamePacketConn)
	if req.Port != 0 {
		a.clientPort.Store(uint32(req.Port))
	}

	// The association lives as long as its control connection: read it to
	// EOF (anything the client sends there is meaningless and discarded).
	actx, cancel := context.WithCancel(ctx)
	defer cancel()
	controlDone := make(chan struct{})
	go func() {
		defer close(controlDone)
		io.Copy(io.Discard, c.nc)
		cancel()
	}()
	idle := c.srv.cfg.UDPIdleTimeout
	if idle < 0 {
		idle = 0
	}
	var closeOnce sync.Once
	up, down, err := relay.Packets(actx, relay.PacketOptions{Idle: idle}, a.up, a.down, func() {
		closeOnce.Do(func() {
			cpc.Close()
			opc.Close()
			c.nc.Close()
		})
	})
	<-controlDone
	extra := []any{"relay", relayAddr.String(), "dropped_foreign", a.foreign.Load(), "dropped", a.dropped.Load()}
	if err == relay.ErrIdle {
		extra = append(extra, "end", "idle")
		err = nil
	}
	c.logRequest(socks.Succeeded, err, up, down, extra...)
}

// association is one UDP ASSOCIATE.
type association struct {
	srv        *Server
	ctx        context.Context
	client     netip.Addr    // the control connection's remote IP
	clientPort atomic.Uint32 // 0 until known: from the request, or the first datagram
	clientPC   net.PacketConn
	outPC      net.PacketConn

	reasm      socks.Reassembler              // used by up only
	names      *lru.Cache[string, netip.Addr] // names resolved for up
	sendsNames bool                           // outPC takes names: see NamePacketConn

	foreign, dropped atomic.Int64
}

const (
	nameTTL      = 30 * time.Second
	maxNames     = 256
	resolveLimit = 5 * time.Second
)

// up moves one datagram client -> destination. Datagrams from any source
// but the client, malformed ones and denied destinations are dropped.
func (a *association) up(buf []byte) (int, error) {
	n, from, err := a.clientPC.ReadFrom(buf)
	if err != nil {
		return 0, err
	}
	src := addrPortOf(from)
	if src.Addr() != a.client {
		a.foreign.Add(1)
		a.srv.log.Debug("UDP: datagram from a foreign source dropped", "from", src.String(), "client", a.client.String())
		return 0, nil
	}
	if want := a.clientPort.Load(); want != 0 && uint32(src.Port()) != want {
		a.foreign.Add(1)
		a.srv.log.Debug("UDP: datagram from a foreign port dropped", "from", src.String(), "client_port", want)
		return 0, nil
	}
	frag, dst, payload, err := socks.ParseUDP(buf[:n])
	if err != nil {
		a.drop("malformed datagram", err)
		return 0, nil
	}
	// The first well-formed datagram from the client's IP fixes the port
	// when the request did not name one.
	a.clientPort.CompareAndSwap(0, uint32(src.Port()))
	payload, dst, ok := a.reasm.Add(frag, dst, payload)
	if !ok {
		return 0, nil
	}
	if dst.Name != "" && a.sendsNames {
		if why := a.srv.denied(a.ctx, dst); why != "" {
			a.drop("destination denied", errors.New(why))
			return 0, nil
		}
		return a.send(payload, dst)
	}
	ip, err := a.resolve(dst)
	if err != nil {
		a.drop("cannot resolve destination", err)
		return 0, nil
	}
	if why := a.srv.deniedIP(ip, dst.Port); why != "" {
		a.drop("destination denied", errors.New(why))
		return 0, nil
	}
	return a.send(payload, &net.UDPAddr{IP: ip.AsSlice(), Port: int(dst.Port)})
}

// send writes one datagram to the outbound socket.
func (a *association) send(payload []byte, to net.Addr) (int, error) {
	if _, err := a.outPC.WriteTo(payload, to); err != nil {
		if errors.Is(err, net.ErrClosed) {
			return 0, err
		}
		// ICMP errors surface here as ECONNREFUSED and friends, and a
		// rule's refusal as ErrNotAllowed: a single datagram was lost,
		// not the association.
		a.drop("send failed", err)
		return 0, nil
	}
	return len(payload), nil
}

// down moves one datagram destination -> client, with the sender's address
// in the header.
func (a *association) down(buf []byte) (int, error) {
	// Leave room at the front for the largest header (IPv6: 22 bytes).
	const room = 3 + 1 + 16 + 2
	n, from, err := a.outPC.ReadFrom(buf[room:])
	if err != nil {
		return 0, err
	}
	port := a.clientPort.Load()
	if port == 0 {
		a.drop("reply before the client's first datagram", nil)
		return 0, nil
	}
	var src socks.Addr
	if name, ok := from.(socks.Addr); ok && a.sendsNames {
		src = name
	} else if ap := addrPortOf(from); ap.IsValid() {
		src = socks.AddrFromAddrPort(ap)
	} else {
		a.drop("reply from an address that is not IP", nil)
		return 0, nil
	}
	// Anyone may send to the outbound socket: what the client may not
	// send to may not send to it either. (A source the outbound reports by
	// name is checked by its name only.)
	if why := a.srv.deniedSource(src); why != "" {
		a.drop("source denied", errors.New(why))
		return 0, nil
	}
	hdr, err := socks.AppendUDPHeader(nil, 0, src)
	if err != nil {
		a.drop("reply header", err)
		return 0, nil
	}
	var out []byte
	if len(hdr) <= room {
		start := room - len(hdr)
		copy(buf[start:], hdr)
		out = buf[start : room+n]
	} else { // a long name: no room in front
		out = append(hdr, buf[room:room+n]...)
	}
	to := &net.UDPAddr{IP: a.client.AsSlice(), Port: int(port)}
	if _, err := a.clientPC.WriteTo(out, to); err != nil {
		if errors.Is(err, net.ErrClosed) {
			return 0, err
		}
		a.drop("send to client failed", err)
		return 0, nil
	}
	return n, nil
}

func (a *association) drop(why string, err error) {
	a.dropped.Add(1)
	a.srv.log.Debug("UDP: datagram dropped", "why", why, "client", a.client.String(), "err", err)
}

// resolve returns the address to send to: the IP itself, or the domain's
// first IPv4 address (else its first address), cached for nameTTL.
func (a *association) resolve(dst socks.Addr) (netip.Addr, error) {
	if dst.Name == "" {
		return dst.IP.Unmap(), nil
	}
	now := time.Now()
	if ip, ok := a.names.Get(dst.Name, now); ok {
		return ip, nil
	}
	ctx, cancel := context.WithTimeout(a.ctx, resolveLimit)
	defer cancel()
	ips, err := a.srv.cfg.LookupNetIP(ctx, "ip", dst.Name)
	if err != nil {
		return netip.Addr{}, err
	}
	if len(ips) == 0 {
		return netip.Addr{}, fmt.Errorf("%s has no addresses", dst.Name)
	}
	ip := ips[0].Unmap()
	for _, c := range ips {
		if c.Unmap().Is4() {
			ip = c.Unmap()
			break
		}
	}
	a.names.Put(dst.Name, ip, now.Add(nameTTL))
	return ip, nil
}

// deniedSource reports the rule that forbids a datagram from src to reach
// the client, or "" when none does.
func (s *Server) deniedSource(src socks.Addr) string {
	if src.Name == "" {
		return s.deniedIP(src.IP, src.Port)
	}
	for _, r := range s.cfg.DenyPorts {
		if r.Contains(src.Port) {
			return "deny-port " + r.String()
		}
	}
	if s.cfg.DenyLoopback && isLocalhostName(src.Name) {
		return "the server's own host (a localhost name)"
	}
	return ""
}
