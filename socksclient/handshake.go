package socksclient

import (
	"bufio"
	"net"
	"sync"
)

// handshakeConn reads the server's replies through a small buffer: a reply
// arrives in one segment, and reading it whole costs one system call
// instead of one per field (three for a SOCKS5 reply). Writes go straight
// to the connection.
type handshakeConn struct {
	net.Conn
	br *bufio.Reader
}

// 512 bytes hold any reply: SOCKS5's longest is 262.
var replyReaders = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, 512) }}

func newHandshakeConn(c net.Conn) *handshakeConn {
	br := replyReaders.Get().(*bufio.Reader)
	br.Reset(c)
	return &handshakeConn{Conn: c, br: br}
}

func (h *handshakeConn) Read(p []byte) (int, error) { return h.br.Read(p) }

// finish ends the handshake and returns the connection for what follows:
// the dialed one itself or, when bytes of the stream came in right behind
// the reply, a wrapper that returns those first. h must not be used after.
func (h *handshakeConn) finish() net.Conn {
	c := h.Conn
	if n := h.br.Buffered(); n > 0 {
		b, _ := h.br.Peek(n)
		p := &prefixConn{Conn: c, pending: append([]byte(nil), b...)}
		c = p
		if cw, ok := h.Conn.(closeWriter); ok {
			c = &prefixCloseWriter{prefixConn: p, cw: cw}
		}
	}
	h.release()
	return c
}

// release returns the buffer to the pool (also on failure).
func (h *handshakeConn) release() {
	if h.br != nil {
		h.br.Reset(nil)
		replyReaders.Put(h.br)
		h.br = nil
	}
}

type closeWriter interface{ CloseWrite() error }

// prefixConn returns pending before reading on from Conn.
type prefixConn struct {
	net.Conn
	mu      sync.Mutex
	pending []byte
}

func (p *prefixConn) Read(b []byte) (int, error) {
	p.mu.Lock()
	if len(p.pending) > 0 {
		n := copy(b, p.pending)
		p.pending = p.pending[n:]
		p.mu.Unlock()
		return n, nil
	}
	p.mu.Unlock()
	return p.Conn.Read(b)
}

// prefixCloseWriter is a prefixConn over a connection that can half-close.
type prefixCloseWriter struct {
	*prefixConn
	cw closeWriter
}

func (p *prefixCloseWriter) CloseWrite() error { return p.cw.CloseWrite() }
