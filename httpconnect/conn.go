package httpconnect

import "net"

// wrap returns conn itself when the proxy sent nothing past its header (so
// a *net.TCPConn stays one and the relay can splice), or a conn that yields
// those bytes first. The wrapper keeps CloseWrite when conn has it.
func wrap(conn net.Conn, early []byte) net.Conn {
	if len(early) == 0 {
		return conn
	}
	b := &bufConn{Conn: conn, buf: early}
	if _, ok := conn.(closeWriter); ok {
		return &bufConnCW{b}
	}
	return b
}

type closeWriter interface{ CloseWrite() error }

// bufConn is a conn with bytes already read from it. Like any net.Conn it
// supports one reader at a time.
type bufConn struct {
	net.Conn
	buf []byte
}

func (c *bufConn) Read(p []byte) (int, error) {
	if len(c.buf) > 0 {
		n := copy(p, c.buf)
		c.buf = c.buf[n:]
		if len(c.buf) == 0 {
			c.buf = nil
		}
		return n, nil
	}
	return c.Conn.Read(p)
}

// bufConnCW is a bufConn over a conn that can half-close.
type bufConnCW struct{ *bufConn }

// CloseWrite shuts down the writing side of the underlying connection.
func (c *bufConnCW) CloseWrite() error { return c.Conn.(closeWriter).CloseWrite() }
