package stack

import (
	"net"
	"os"
	"sync"
	"time"

	"gvisor.dev/gvisor/pkg/waiter"
)

// WaitRead returns once a Read would not block: the app's bytes, its FIN
// or an error are waiting, or the connection was closed. It holds no
// buffer while it waits, so a relay of an idle connection holds none
// (relay.ReadWaiter). When the read deadline passes first it returns an
// error wrapping os.ErrDeadlineExceeded, as Read would. One goroutine at a
// time may call it (the connection's reader). In system TCP mode it
// returns at once (the relay splices on the kernel socket there).
func (c *tcpConn) WaitRead() error {
	if c.ep == nil || c.ep.Readiness(waiter.ReadableEvents) != 0 {
		return nil
	}
	entry, notify := waiter.NewChannelEntry(waiter.ReadableEvents)
	c.wq.EventRegister(&entry)
	defer c.wq.EventUnregister(&entry)
	for c.ep.Readiness(waiter.ReadableEvents) == 0 {
		var expired <-chan time.Time
		if d := c.readDeadline.Load(); d != 0 {
			left := time.Until(time.Unix(0, d))
			if left <= 0 {
				return &net.OpError{Op: "read", Net: "tcp", Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: os.ErrDeadlineExceeded}
			}
			if c.waitTimer == nil {
				c.waitTimer = time.NewTimer(left)
			} else {
				c.waitTimer.Reset(left)
			}
			expired = c.waitTimer.C
		}
		select {
		case <-notify:
		case <-expired:
		}
		if c.waitTimer != nil {
			c.waitTimer.Stop()
		}
	}
	return nil
}

// NotifyRead calls fn once, when a Read would not block (the app's bytes,
// its FIN or an error are waiting, or the connection was closed), at once
// if that is so already: from the goroutine that made it readable, so fn
// must not block. A relay direction parks on it instead of a goroutine
// (relay.ReadNotifier). A later call replaces the earlier registration.
// In system TCP mode it calls fn at once.
func (c *tcpConn) NotifyRead(fn func()) {
	if c.ep == nil {
		fn()
		return
	}
	c.nmu.Lock()
	n := c.notify
	if n == nil {
		// One registration for the connection's life, armed by each
		// call: parking again allocates nothing.
		n = new(readNotify)
		n.e.Init(n, waiter.ReadableEvents)
		c.notify = n
		c.wq.EventRegister(&n.e)
	}
	n.arm(fn)
	c.nmu.Unlock()
	if c.ep.Readiness(waiter.ReadableEvents) != 0 {
		n.NotifyEvent(waiter.ReadableEvents)
	}
}

// readNotify is NotifyRead's registration on the connection's queue: it
// calls the function it holds once per NotifyRead. The function is kept
// under a mutex of its own rather than behind an atomic pointer, which
// would take its address (an allocation at every park, once per
// request of a request/response exchange).
type readNotify struct {
	e  waiter.Entry
	mu sync.Mutex
	fn func() // armed: the function to call; nil once called
}

func (n *readNotify) arm(fn func()) {
	n.mu.Lock()
	n.fn = fn
	n.mu.Unlock()
}

func (n *readNotify) NotifyEvent(waiter.EventMask) {
	n.mu.Lock()
	fn := n.fn
	n.fn = nil
	n.mu.Unlock()
	if fn != nil {
		fn()
	}
}

// SetDeadline and SetReadDeadline also wake a WaitRead, which looks at the
// new deadline.
func (c *tcpConn) SetDeadline(t time.Time) error {
	c.noteWriteDeadline(t)
	err := c.Conn.SetDeadline(t)
	c.setReadDeadline(t)
	return err
}

// SetWriteDeadline is gonet's; Write then leaves the writing to gonet,
// which keeps the deadline (see writeNow).
func (c *tcpConn) SetWriteDeadline(t time.Time) error {
	c.noteWriteDeadline(t)
	return c.Conn.SetWriteDeadline(t)
}

// noteWriteDeadline records whether writes have a deadline, before gonet
// is given it: a Write that sees none may write what fits at once, as
// gonet does before it looks at its deadline again.
func (c *tcpConn) noteWriteDeadline(t time.Time) {
	if c.wq != nil {
		c.writeDeadline.Store(!t.IsZero())
	}
}

func (c *tcpConn) SetReadDeadline(t time.Time) error {
	err := c.Conn.SetReadDeadline(t)
	c.setReadDeadline(t)
	return err
}

func (c *tcpConn) setReadDeadline(t time.Time) {
	if c.wq == nil {
		return
	}
	var d int64
	if !t.IsZero() {
		d = t.UnixNano()
	}
	if c.readDeadline.Swap(d) != d {
		c.wq.Notify(waiter.ReadableEvents)
	}
}

var _ interface {
	WaitRead() error
	NotifyRead(func())
	SetDeadline(time.Time) error
	SetReadDeadline(time.Time) error
	SetWriteDeadline(time.Time) error
} = (*tcpConn)(nil)
