// Package relaytest has test doubles for code built on internal/relay.
package relaytest

import (
	"net"
	"sync"
)

// KernelConn is a kernel TCP socket behind a wrapper, as the system TCP
// stack's connections are: a relay.KernelConner (the relay splices on the
// socket and parks it on its Poller) and a relay.CloseNotifier (closing
// an fd drops it from epoll without an event, so the wrapper says when).
type KernelConn struct {
	*net.TCPConn
	mu      sync.Mutex
	closed  bool
	onClose func()
}

// NewKernelConn wraps c.
func NewKernelConn(c *net.TCPConn) *KernelConn { return &KernelConn{TCPConn: c} }

// KernelConn is the socket.
func (c *KernelConn) KernelConn() *net.TCPConn { return c.TCPConn }

// NotifyClose calls fn once after Close, or at once if already closed.
func (c *KernelConn) NotifyClose(fn func()) {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		fn()
		return
	}
	c.onClose = fn
	c.mu.Unlock()
}

// Close closes the socket, then calls the NotifyClose function.
func (c *KernelConn) Close() error {
	err := c.TCPConn.Close()
	c.mu.Lock()
	c.closed = true
	fn := c.onClose
	c.onClose = nil
	c.mu.Unlock()
	if fn != nil {
		fn()
	}
	return err
}
