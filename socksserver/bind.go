package socksserver

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"syscall"
	"time"

	"github.com/tunsocks/tunsocks/socks"
)

// errWrongPeer is the cause logged when a BIND's incoming peer is not the
// host the request named.
var errWrongPeer = errors.New("incoming connection is not from the expected peer")

// bind serves BIND (SOCKS5 and SOCKS4): listen, send the first reply with
// the listening address, wait up to BindTimeout for one incoming
// connection, check that it comes from the expected host, send the second
// reply with the peer's address and relay.
func (c *conn) bind(ctx context.Context, expect socks.Addr) {
	// The peer is a destination like a CONNECT target: DenyDest and
	// DenyLoopback apply to the host named, and below to the host that
	// connects (DenyPorts does not: DST.PORT of a BIND means little).
	if why := c.srv.deniedPeer(expect); why != "" {
		c.fail(socks.NotAllowed, fmt.Errorf("%w: BIND peer %s: %s", socks.ErrNotAllowed, expect.Host(), why))
		return
	}
	local := addrPortOf(c.nc.LocalAddr())
	ln, err := c.srv.listen(ctx, local.Addr())
	if err != nil {
		c.fail(socks.ReplyForError(err), fmt.Errorf("bind listener: %w", err))
		return
	}
	defer ln.Close()
	lnAddr := addrPortOf(ln.Addr())
	report := lnAddr.Addr()
	if report.IsUnspecified() || !report.IsValid() {
		report = local.Addr()
	}
	if c.srv.cfg.ExternalAddr.IsValid() {
		report = c.srv.cfg.ExternalAddr
	}
	if err := c.reply(socks.Succeeded, netip.AddrPortFrom(report, lnAddr.Port())); err != nil {
		c.logRequest(socks.GeneralFailure, fmt.Errorf("write first reply: %w", err), 0, 0)
		return
	}

	// Wait for the peer. The listener is closed when the timer runs out,
	// the server stops, or the client goes away (a watcher reads the
	// control connection; a client that sends before the second reply is
	// breaking the protocol, so its bytes are not kept).
	c.nc.SetDeadline(time.Time{})
	tctx, cancel := context.WithTimeoutCause(ctx, c.srv.cfg.BindTimeout, errBindTimeout)
	defer cancel()
	wctx, cancelCause := context.WithCancelCause(tctx)
	defer cancelCause(nil)
	if len(c.pending()) > 0 {
		// Sent with the request, so already read: it spoke too early.
		cancelCause(errClientSpoke)
	}
	c.releaseReader()
	stop := context.AfterFunc(wctx, func() { ln.Close() })
	watched := make(chan struct{})
	go func() {
		defer close(watched)
		var b [1]byte
		_, err := c.nc.Read(b[:])
		if err == nil {
			err = errClientSpoke
		} else if isTimeout(err) {
			return // stopped below: the peer has arrived
		}
		cancelCause(err)
	}()
	peer, err := ln.Accept()
	stop()
	c.nc.SetReadDeadline(time.Unix(1, 0))
	<-watched
	c.nc.SetReadDeadline(time.Time{})
	if err == nil && context.Cause(wctx) != nil {
		// The client left while the peer was arriving.
		peer.Close()
		err = context.Cause(wctx)
	}
	if err != nil {
		if cause := context.Cause(wctx); cause != nil {
			err = cause
		}
		rep := socks.ReplyForError(err)
		if errors.Is(err, errBindTimeout) {
			rep = socks.HostUnreachable
		}
		c.fail(rep, fmt.Errorf("waiting for the BIND peer: %w", err))
		return
	}
	peerAddr := addrPortOf(peer.RemoteAddr())
	if why := c.srv.deniedAddr(peerAddr.Addr()); why != "" {
		peer.Close()
		c.fail(socks.NotAllowed, fmt.Errorf("%w: BIND peer %s: %s", socks.ErrNotAllowed, peerAddr.Addr(), why))
		return
	}
	if !c.srv.expectedPeer(ctx, expect, peerAddr.Addr()) {
		peer.Close()
		c.fail(socks.NotAllowed, fmt.Errorf("%w: %s connected, %s expected", errWrongPeer, peerAddr.Addr(), expect.Host()))
		return
	}
	ln.Close()
	if err := c.reply(socks.Succeeded, peerAddr); err != nil {
		peer.Close()
		c.logRequest(socks.GeneralFailure, fmt.Errorf("write second reply: %w", err), 0, 0)
		return
	}
	c.relay(ctx, peer, "peer", peerAddr.String())
}

var errClientSpoke = errors.New("client sent data before the BIND's second reply")

var errBindTimeout = fmt.Errorf("no incoming connection before the BIND timeout: %w", context.DeadlineExceeded)

// listen opens a BIND listener on ip, port 0, through the Dialer's Listener
// capability. When ip is not available there (the Dialer creates sockets in
// another network namespace) it listens on every address of the family.
func (s *Server) listen(ctx context.Context, ip netip.Addr) (net.Listener, error) {
	network := "tcp4"
	if ip.Is6() {
		network = "tcp6"
	}
	ln, err := s.listener.Listen(ctx, network, netip.AddrPortFrom(ip, 0).String())
	if err != nil && errors.Is(err, syscall.EADDRNOTAVAIL) {
		ln, err = s.listener.Listen(ctx, network, ":0")
	}
	return ln, err
}

// expectedPeer checks the incoming peer of a BIND against DST.ADDR: any
// peer for an unspecified address, the same IP for an IP, one of the
// resolved addresses for a domain.
func (s *Server) expectedPeer(ctx context.Context, expect socks.Addr, peer netip.Addr) bool {
	peer = peer.Unmap()
	if expect.Name == "" {
		if !expect.IP.IsValid() || expect.IP.IsUnspecified() {
			return true
		}
		return expect.IP.Unmap() == peer
	}
	rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	ips, err := s.cfg.LookupNetIP(rctx, "ip", expect.Name)
	if err != nil {
		s.log.Debug("BIND: cannot resolve the expected peer", "host", expect.Name, "err", err)
		return false
	}
	return slices.ContainsFunc(ips, func(a netip.Addr) bool { return a.Unmap() == peer })
}

// deniedPeer reports the rule that forbids the peer a BIND names, or ""
// when none does. The unspecified address means any peer, which is checked
// when it connects.
func (s *Server) deniedPeer(expect socks.Addr) string {
	if expect.Name != "" {
		if s.cfg.DenyLoopback && isLocalhostName(expect.Name) {
			return "the server's own host (a localhost name)"
		}
		return ""
	}
	if !expect.IP.IsValid() || expect.IP.IsUnspecified() {
		return ""
	}
	return s.deniedAddr(expect.IP)
}
