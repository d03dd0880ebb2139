package socksserver

import (
	"bufio"
	"container/list"
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"sync"
	"time"

	"github.com/tunsocks/tunsocks/socks"
)

// conn is one client connection.
type conn struct {
	srv *Server
	nc  net.Conn
	// br reads the handshake from nc: one read takes in a whole message (or
	// several), instead of one read per field. What it holds after the
	// request was sent by the client right behind it; relay passes it on.
	br    *bufio.Reader
	ctx   context.Context // the Serve context, for log records
	start time.Time
	// active is set (under srv.mu) once a request has been read; Shutdown
	// closes connections that are not active yet.
	active bool

	key             clientKey     // the client's budget key
	hsAll, hsClient *list.Element // in srv.hs while handshaking (under srv.hs.mu)

	// for the request's log line
	version byte
	cmd     socks.Command
	target  string
	user    string
	// authUser is the user the server authenticated: the RFC 1929
	// username, or a SOCKS4 USERID that Socks4UserMustMatch admitted.
	authUser string
}

// closeIfHandshaking is called by Shutdown with srv.mu held.
func (c *conn) closeIfHandshaking() {
	if !c.active {
		c.nc.Close()
	}
}

// activate marks the connection as serving a request; false means the
// server is shutting down and the request must not start.
func (c *conn) activate() bool {
	c.srv.mu.Lock()
	defer c.srv.mu.Unlock()
	if c.srv.shutdown {
		return false
	}
	c.active = true
	return true
}

func (c *conn) client() netip.AddrPort { return addrPortOf(c.nc.RemoteAddr()) }

// serve runs the whole life of the connection and closes it.
func (c *conn) serve(ctx context.Context) {
	defer c.nc.Close()
	defer c.srv.hs.done(c)
	c.ctx = ctx
	c.nc.SetDeadline(time.Now().Add(c.srv.cfg.HandshakeTimeout))
	c.br = handshakeReaders.Get().(*bufio.Reader)
	c.br.Reset(c.nc)
	defer c.releaseReader()
	ver, err := c.br.Peek(1)
	if err != nil {
		c.debug("no request", err)
		return
	}
	c.version = ver[0]
	switch ver[0] {
	case socks.Version5:
		c.serve5(ctx, c.br)
	case socks.Version4:
		c.serve4(ctx, c.br)
	default:
		// No reply exists for a version the server does not speak.
		c.srv.log.Debug("unsupported SOCKS version; closing", "client", c.client().String(), "version", fmt.Sprintf("0x%02x", ver[0]))
	}
}

// handshakeReaders are the connections' handshake buffers. 512 bytes hold
// any SOCKS5 message but the longest username/password request, and any
// SOCKS4a request with a short USERID; longer ones take more reads.
var handshakeReaders = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, 512) }}

// pending returns the bytes the client sent after its request, which the
// handshake reader has already taken in. They stay valid until
// releaseReader.
func (c *conn) pending() []byte {
	if c.br == nil {
		return nil
	}
	b, _ := c.br.Peek(c.br.Buffered())
	return b
}

// releaseReader returns the handshake reader to the pool; from then on
// only nc is read.
func (c *conn) releaseReader() {
	if c.br != nil {
		c.br.Reset(nil)
		handshakeReaders.Put(c.br)
		c.br = nil
	}
}

func (c *conn) debug(msg string, err error) {
	c.srv.log.Debug(msg, "client", c.client().String(), "err", err)
}

// serve5 negotiates the method, authenticates and runs one request.
func (c *conn) serve5(ctx context.Context, r io.Reader) {
	methods, err := socks.ReadGreeting(r)
	if err != nil {
		c.debug("bad SOCKS5 greeting; closing", err)
		return
	}
	want := socks.MethodNoAuth
	if len(c.srv.cfg.Users) > 0 {
		want = socks.MethodUserPass
	}
	chosen := socks.MethodNoAcceptable
	for _, m := range methods {
		if m == want {
			chosen = want
			break
		}
	}
	if _, err := c.nc.Write([]byte{socks.Version5, byte(chosen)}); err != nil {
		c.debug("write method selection", err)
		return
	}
	if chosen == socks.MethodNoAcceptable {
		c.srv.tallies.noMethod.add(c.client().Addr(), "offered", fmt.Sprint(methods), "want", byte(want))
		c.lingerClose()
		return
	}
	if chosen == socks.MethodUserPass {
		user, pass, err := socks.ReadUserPass(r)
		if err != nil {
			c.debug("bad username/password request; closing", err)
			return
		}
		ok := c.authenticate(user, pass)
		status := socks.UserPassSuccess
		if !ok {
			status = socks.UserPassFailure
		}
		if _, err := c.nc.Write([]byte{socks.UserPassVersion, status}); err != nil {
			c.debug("write authentication status", err)
			return
		}
		if !ok {
			c.lingerClose()
			return
		}
		c.user, c.authUser = user, user
	}

	req, err := socks.ReadRequest(r)
	if !c.requestRead("SOCKS5", req.Command, req.Addr, err) {
		return
	}
	c.run(ctx, req.Command, req.Addr)
}

// run serves a request that was read and allowed, unless Shutdown has
// begun. SOCKS4 requests never carry UDP ASSOCIATE (ReadRequest4 refuses it).
func (c *conn) run(ctx context.Context, cmd socks.Command, addr socks.Addr) {
	c.srv.hs.done(c)
	if !c.srv.acquireRelay() {
		c.srv.counts.connLimited.Add(1)
		c.srv.tallies.conns.add(c.client().Addr(), "max_conns", c.srv.cfg.MaxConns, "at", "request")
		c.nc.SetWriteDeadline(time.Now().Add(c.srv.cfg.FailureCloseDelay))
		c.reply(socks.GeneralFailure, netip.AddrPort{})
		c.lingerClose()
		return
	}
	defer c.srv.relays.Add(-1)
	if !c.activate() {
		return
	}
	ctx = context.WithValue(ctx, requestKey{}, Request{Client: c.client(), User: c.authUser, Command: cmd})
	switch cmd {
	case socks.CmdConnect:
		c.connect(ctx, addr)
	case socks.CmdBind:
		c.bind(ctx, addr)
	case socks.CmdUDPAssociate:
		c.udpAssociate(ctx, addr)
	}
}

// requestRead records what a request asked for (for the request's log
// line) and, when it could not be read, ends the connection: quietly when it
// was cut short, otherwise with the reply its cause deserves. SOCKS5 answers
// an unknown command 0x07, an unknown ATYP 0x08, anything else malformed
// 0x01; SOCKS4 has one failure reply, 0x5B, whatever the cause.
// socks.ReplyForError knows the causes. It reports whether serving goes on.
func (c *conn) requestRead(version string, cmd socks.Command, addr socks.Addr, err error) bool {
	c.cmd = cmd
	if addr.Name != "" || addr.IP.IsValid() {
		c.target = addr.String()
	}
	if err == nil {
		return true
	}
	if truncated(err) {
		c.debug(version+" request cut short; closing", err)
		return false
	}
	c.fail(socks.ReplyForError(err), err)
	return false
}

// serve4 runs one SOCKS4 or SOCKS4a request.
func (c *conn) serve4(ctx context.Context, r io.Reader) {
	req, err := socks.ReadRequest4(r)
	if !c.requestRead("SOCKS4", req.Command, req.Addr, err) {
		return
	}
	c.user = req.UserID
	if len(c.srv.cfg.Users) > 0 {
		if !c.srv.cfg.Socks4UserMustMatch {
			c.fail(socks.NotAllowed, errors.New("SOCKS4 carries no password and the server requires authentication"))
			return
		}
		// A USERID is all SOCKS4 has to authenticate with: guessing one is
		// throttled like guessing a password.
		if !c.authenticate4(req.UserID) {
			c.fail(socks.NotAllowed, errors.New("SOCKS4 USERID does not name a user"))
			return
		}
		c.authUser = req.UserID
	}
	c.run(ctx, req.Command, req.Addr)
}

// authenticate checks a username and password within the client's budget
// of failures (Config.AuthFailureLimit): over it, the attempt is refused
// unchecked; a failure is answered after a delay that grows with the
// client's recent failures.
func (c *conn) authenticate(user, pass string) bool {
	return c.throttled(user, func() bool { return c.srv.checkPassword(user, pass) })
}

// authenticate4 is authenticate for a SOCKS4 USERID, all SOCKS4 has.
func (c *conn) authenticate4(userID string) bool {
	return c.throttled(userID, func() bool { _, known := c.srv.cfg.Users[userID]; return known })
}

func (c *conn) throttled(user string, check func() bool) bool {
	s := c.srv
	res, d := s.auth.check(c.key, check)
	switch res {
	case authOK:
		return true
	case authBlocked:
		s.counts.authRefused.Add(1)
		s.tallies.authBlocked.add(c.client().Addr(), "user", user, "limit_per_minute", s.cfg.AuthFailureLimit, "delay", d)
	default:
		s.counts.authFailed.Add(1)
		s.tallies.authFail.add(c.client().Addr(), "user", user, "delay", d)
	}
	c.pause(d)
	return false
}

// pause waits d before a failure reply, discarding what the client sends
// meanwhile; it ends early when the connection is closed (shed, Shutdown)
// or the server's context is done.
func (c *conn) pause(d time.Duration) {
	if d <= 0 {
		return
	}
	c.srv.counts.authDelay.Add(int64(d))
	c.nc.SetReadDeadline(time.Now().Add(d))
	stop := context.AfterFunc(c.ctx, func() { c.nc.SetReadDeadline(time.Unix(1, 0)) })
	defer stop()
	var buf [256]byte
	for {
		if _, err := c.nc.Read(buf[:]); err != nil {
			return
		}
	}
}

// checkPassword compares in constant time, and takes the same time whether
// or not the user exists: both sides are hashed first so neither the
// length nor the content of the password leaks through timing.
func (s *Server) checkPassword(user, pass string) bool {
	want, known := s.cfg.Users[user]
	if s.cfg.Emulate.AcceptBadPassword {
		return true
	}
	if !known {
		want = "\x00unknown user"
	}
	a, b := sha256.Sum256([]byte(pass)), sha256.Sum256([]byte(want))
	return subtle.ConstantTimeCompare(a[:], b[:]) == 1 && known
}

// reply sends a success or failure reply in the connection's protocol
// version with bound as BND.ADDR/BND.PORT.
func (c *conn) reply(rep socks.Reply, bound netip.AddrPort) error {
	var b []byte
	if c.version == socks.Version4 {
		b = socks.AppendReply4(nil, rep.Reply4(), bound)
	} else {
		var a socks.Addr
		if bound.IsValid() {
			a = socks.AddrFromAddrPort(bound)
			if rep == socks.Succeeded && c.srv.cfg.Emulate.BoundZero && (c.cmd == socks.CmdConnect || c.cmd == socks.CmdUDPAssociate) {
				a.IP = netip.IPv4Unspecified()
				if bound.Addr().Is6() && !bound.Addr().Is4In6() {
					a.IP = netip.IPv6Unspecified()
				}
			}
		}
		var err error
		if b, err = socks.AppendReply(nil, rep, a); err != nil {
			return err
		}
	}
	_, err := c.nc.Write(b)
	return err
}

// fail sends a failure reply, logs the request and closes within
// FailureCloseDelay.
func (c *conn) fail(rep socks.Reply, cause error) {
	c.nc.SetWriteDeadline(time.Now().Add(c.srv.cfg.FailureCloseDelay))
	if err := c.reply(rep, netip.AddrPort{}); err != nil {
		c.debug("write failure reply", err)
	}
	c.logRequest(rep, cause, 0, 0)
	c.lingerClose()
}

// lingerClose ends the connection after a failure reply: it sends a FIN so
// the client reads the reply and then EOF, drains what the client still
// sends (a close with unread data would reset the connection and could
// destroy the reply in flight), and closes when the client closes or
// FailureCloseDelay has passed, whichever is first.
func (c *conn) lingerClose() {
	deadline := time.Now().Add(c.srv.cfg.FailureCloseDelay)
	c.nc.SetDeadline(deadline)
	if cw, ok := c.nc.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
		var buf [512]byte
		for time.Now().Before(deadline) {
			if _, err := c.nc.Read(buf[:]); err != nil {
				break
			}
		}
	}
	c.nc.Close()
}

// logRequest writes the request's one log line.
func (c *conn) logRequest(rep socks.Reply, cause error, up, down int64, extra ...any) {
	level := slog.LevelInfo
	if rep == socks.NotAllowed {
		level = slog.LevelWarn
	}
	version := "socks5"
	switch {
	case c.version == socks.Version4 && c.target != "" && c.targetIsName():
		version = "socks4a"
	case c.version == socks.Version4:
		version = "socks4"
	}
	args := []any{
		"client", c.client().String(),
		"version", version,
		"command", c.cmd.String(),
		"target", c.target,
		"reply", rep.String(),
		"up", up,
		"down", down,
		"duration", time.Since(c.start).Round(time.Millisecond),
	}
	if c.user != "" {
		args = append(args, "user", c.user)
	}
	args = append(args, extra...)
	if cause != nil && !ordinary(cause) {
		args = append(args, "err", cause)
	}
	c.srv.log.Log(c.ctx, level, "request", args...)
}

func (c *conn) targetIsName() bool {
	a, err := socks.ParseAddr(c.target)
	return err == nil && a.Name != ""
}

// ordinary reports whether err is how a connection normally ends.
func ordinary(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) || errors.Is(err, context.Canceled)
}

// truncated reports whether a read ended before the message did: the
// client went away or was too slow, and nobody is left to read a reply.
func truncated(err error) bool {
	return errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) || isTimeout(err) || errors.Is(err, net.ErrClosed)
}

// isTimeout reports a deadline error.
func isTimeout(err error) bool {
	return errors.Is(err, os.ErrDeadlineExceeded) || errors.Is(err, context.DeadlineExceeded)
}
