package socksserver

import (
	"context"
	"fmt"
	"net"
	"time"

	"github.com/tunsocks/tunsocks/internal/relay"
	"github.com/tunsocks/tunsocks/socks"
)

// connect serves CONNECT: check the rules, dial through the Dialer, reply
// with the outbound connection's local address and relay.
func (c *conn) connect(ctx context.Context, target socks.Addr) {
	if why := c.srv.denied(ctx, target); why != "" {
		c.fail(socks.NotAllowed, fmt.Errorf("%w: %s", socks.ErrNotAllowed, why))
		return
	}
	if c.srv.cfg.Emulate.ConnectOnly443 && target.Port != 443 {
		c.fail(socks.NotAllowed, fmt.Errorf("%w: port %d (emulating a server that allows only port 443)", socks.ErrNotAllowed, target.Port))
		return
	}
	// The dial is bounded by the handshake deadline too: a client that has
	// waited that long for its reply has given up.
	dctx, cancel := context.WithDeadline(ctx, c.start.Add(c.srv.cfg.HandshakeTimeout))
	var out net.Conn
	var err error
	if cd := c.srv.checked; cd != nil {
		out, err = cd.DialContextChecked(dctx, "tcp", target.String(), c.srv.checkDial)
	} else {
		out, err = c.srv.cfg.Dialer.DialContext(dctx, "tcp", target.String())
	}
	cancel()
	if err != nil {
		c.fail(socks.ReplyForError(err), err)
		return
	}
	if c.srv.cfg.DenyLoopback && c.srv.checked != nil {
		// The dialer connected from here: a connection whose two ends have
		// the same address went to this host, whatever the address list
		// said (an address added since it was read).
		local, remote := addrPortOf(out.LocalAddr()), addrPortOf(out.RemoteAddr())
		if local.Addr() == remote.Addr() && remote.IsValid() {
			out.Close()
			c.fail(socks.NotAllowed, fmt.Errorf("%w: the server's own host (%s)", socks.ErrNotAllowed, remote.Addr()))
			return
		}
	}
	if err := c.reply(socks.Succeeded, addrPortOf(out.LocalAddr())); err != nil {
		out.Close()
		c.logRequest(socks.GeneralFailure, fmt.Errorf("write reply: %w", err), 0, 0)
		return
	}
	c.nc.SetDeadline(time.Time{})
	c.relay(ctx, out, "bound", out.LocalAddr().String())
}

// relay runs the stream relay between the client and out and logs the
// request when it ends.
func (c *conn) relay(ctx context.Context, out net.Conn, extra ...any) {
	idle := c.srv.cfg.IdleTimeout
	if idle < 0 {
		idle = 0
	}
	// Bytes the client sent right behind its request (optimistic data) go
	// first; the handshake reader that took them in is no longer needed.
	var early int64
	if b := c.pending(); len(b) > 0 {
		n, err := out.Write(b)
		early = int64(n)
		if err != nil {
			c.releaseReader()
			out.Close()
			c.logRequest(socks.Succeeded, fmt.Errorf("pass on data sent with the request: %w", err), early, 0, extra...)
			return
		}
	}
	c.releaseReader()
	up, down, err := relay.Stream(ctx, c.nc, out, relay.StreamOptions{Idle: idle})
	up += early
	if err == relay.ErrIdle {
		extra = append(extra, "end", "idle")
		err = nil
	}
	c.logRequest(socks.Succeeded, err, up, down, extra...)
}
