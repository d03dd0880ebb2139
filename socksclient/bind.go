package socksclient

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"

	"github.com/tunsocks/tunsocks/socks"
)

// Bind asks the server to accept one incoming connection for the client (the
// BIND command, SOCKS5 and SOCKS4/4a). address is the peer expected to
// connect; servers may refuse connections from anyone else. The returned
// listener's Addr is where the peer must connect (the first reply); Accept
// waits for the second reply and returns the connection.
func (c *Client) Bind(ctx context.Context, address string) (*BindListener, error) {
	dst, err := c.destination("tcp", address)
	if err != nil {
		return nil, c.opError("socks bind", "tcp", addrOf(address), err)
	}
	conn, bound, err := c.request(ctx, "tcp", socks.CmdBind, dst)
	if err != nil {
		return nil, err
	}
	return &BindListener{c: c, conn: conn, dst: dst, addr: netAddr("tcp", c.boundAddr(conn, bound))}, nil
}

// BindListener is a net.Listener for one connection accepted by the server.
type BindListener struct {
	c    *Client
	conn net.Conn
	dst  socks.Addr
	addr net.Addr

	mu    sync.Mutex
	state bindState
}

type bindState int

const (
	bindOpen bindState = iota
	bindAccepting
	bindAccepted
	bindClosed
)

// errBindDone is returned by Accept after the listener's one connection was
// accepted or it was closed.
var errBindDone = fmt.Errorf("socksclient: BIND listener accepts one connection and is done: %w", net.ErrClosed)

// Addr returns the address the server listens on for the peer (a
// *net.TCPAddr, with the server's IP when the server answered 0.0.0.0).
func (l *BindListener) Addr() net.Addr { return l.addr }

// Accept waits until the peer connects to Addr and returns the connection,
// whose RemoteAddr is the peer as the server reports it. It can succeed
// once; Close aborts a waiting Accept.
func (l *BindListener) Accept() (net.Conn, error) {
	return l.accept(func(read func() error) error { return read() })
}

// AcceptContext is Accept bounded by ctx.
func (l *BindListener) AcceptContext(ctx context.Context) (net.Conn, error) {
	return l.accept(func(read func() error) error { return withContext(ctx, l.conn, read) })
}

// accept waits for the second reply; run does the blocking read (under a
// context or not).
func (l *BindListener) accept(run func(read func() error) error) (net.Conn, error) {
	l.mu.Lock()
	switch l.state {
	case bindAccepting:
		l.mu.Unlock()
		return nil, l.c.opError("socks bind", "tcp", l.dst, errors.New("socksclient: Accept is already waiting on this BIND listener"))
	case bindAccepted, bindClosed:
		l.mu.Unlock()
		return nil, l.c.opError("socks bind", "tcp", l.dst, errBindDone)
	}
	l.state = bindAccepting
	l.mu.Unlock()

	var peer socks.Addr
	read := func() error {
		var err error
		if l.c.version == socks.Version4 {
			peer, err = readReply4(l.conn)
		} else {
			peer, err = readReply5(l.conn)
		}
		return err
	}
	err := run(read)

	l.mu.Lock()
	defer l.mu.Unlock()
	if err != nil {
		if l.state == bindClosed {
			err = errBindDone
		}
		l.state = bindClosed
		l.conn.Close()
		return nil, l.c.opError("socks bind", "tcp", l.dst, err)
	}
	if l.state == bindClosed { // Close raced with a successful reply
		return nil, l.c.opError("socks bind", "tcp", l.dst, errBindDone)
	}
	l.state = bindAccepted
	return &bindConn{Conn: l.conn, remote: netAddr("tcp", l.c.boundAddr(l.conn, peer))}, nil
}

// Close gives up the BIND: it closes the control connection unless Accept
// has already handed it out as the accepted connection.
func (l *BindListener) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	switch l.state {
	case bindAccepted, bindClosed:
		return nil
	}
	l.state = bindClosed
	return l.conn.Close()
}

var _ net.Listener = (*BindListener)(nil)

// bindConn is the accepted connection: the control connection, reporting
// the peer as its remote address.
type bindConn struct {
	net.Conn
	remote net.Addr
}

func (b *bindConn) RemoteAddr() net.Addr { return b.remote }

// CloseWrite half-closes the connection when the transport can.
func (b *bindConn) CloseWrite() error {
	if cw, ok := b.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return &net.OpError{Op: "close", Net: "tcp", Addr: b.remote, Err: errors.ErrUnsupported}
}

// NetConn returns the underlying connection (like tls.Conn.NetConn), so a
// relay can splice it.
func (b *bindConn) NetConn() net.Conn { return b.Conn }
